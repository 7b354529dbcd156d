// Vector and index helpers of the per-ISA CPU kernel bodies (contmix_cpu_body.h, depthwise_cpu_body.h), over
// GCC/Clang vector types of any width (or a plain scalar). Included *inside* a body's anonymous namespace, after the wrapper switched
// the compiler's target, so there is no include guard and nothing is included here.

// A body's vector types for vectors of `Bytes` bytes: `vec` of scalar_t, `ivec` of same-width integers (`index`:
// int32 for float, int64 for double) and the lanes of each.
template <typename scalar_t, int Bytes>
struct SimdTraits {
  using index = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;
  typedef scalar_t vec __attribute__((vector_size(Bytes)));
  typedef index ivec __attribute__((vector_size(Bytes)));
  static constexpr int64_t lanes = Bytes / sizeof(scalar_t);
};

// Unaligned loads and stores (a memcpy of a whole vector compiles to one move).
template <typename V, typename scalar_t>
inline V load(const scalar_t* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename scalar_t>
inline void store(scalar_t* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

template <typename V, typename scalar_t>
inline V splat(scalar_t x) {
  return x - V{};  // a broadcast (x - 0 is x for every x, unlike x + 0); for V = scalar_t this is x itself
}

// Horizontal reduction by halving over the lanes of a local copy (a tree, not a chain; the vector itself is never
// addressed, so loops that accumulate it keep it in a register). `op` combines two scalars.
template <typename scalar_t, typename V, typename Op>
inline scalar_t hreduce(V v, Op op) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  scalar_t x[L];
  store(x, v);
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) x[l] = op(x[l], x[l + w]);
  return x[0];
}

template <typename scalar_t, typename V>
inline scalar_t hsum(V v) {
  return hreduce<scalar_t>(v, [](scalar_t a, scalar_t b) { return a + b; });
}

template <typename scalar_t, typename V>
inline scalar_t hmax(V v) {  // a NaN lane may or may not win, as with the max of scalars
  return hreduce<scalar_t>(v, [](scalar_t a, scalar_t b) { return a > b ? a : b; });
}

// Asks for every 64-byte cache line of [p, p + n) (a software prefetch, for data a loop reads soon).
template <typename scalar_t>
inline void prefetch_span(const scalar_t* p, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < n * int64_t(sizeof(scalar_t)); b += 64) __builtin_prefetch(bytes + b);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
