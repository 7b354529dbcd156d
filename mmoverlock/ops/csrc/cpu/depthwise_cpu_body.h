// The depthwise CPU kernels, written once over GCC/Clang vector types of DEPTHWISE_VEC_BYTES bytes and compiled once
// per instruction set (depthwise_cpu_<isa>.cpp includes this file after switching the target, as ContMix's kernels).
// No include guard and no includes: the wrapper includes every header before the target switch.
//
// Channels-last maps are vectorised over channels. The forward (and so the input gradient) keeps a tile of output
// columns x the taps of a kernel-row chunk in registers and slides the input columns through it, one load per
// input vector for all the FMAs that use it; larger kernels first pack the input into zero-padded slices of one
// vector of channels (no border tests, compile-time offsets), small ones read it in place. The weight gradient of
// the larger kernels packs the input (and each grad_out row) likewise and keeps a tile of taps x output columns in
// registers, each loaded input vector feeding every tap of the tile that reads it; the small kernels' read the
// input in place, register-blocked over taps.
// NCHW maps are vectorised over output columns of a zero-padded copy of the input plane (per thread scratch), with
// the kernel taps broadcast, so no border tests at all.
#if !defined(DEPTHWISE_VEC_BYTES)
#error "define DEPTHWISE_VEC_BYTES before including depthwise_cpu_body.h"
#endif

namespace {

#include "cpu_vector_ops.h"  // SimdTraits, load, store, splat, hsum, hmax, prefetch_span, round_up, ...

template <typename scalar_t>
struct Simd : SimdTraits<scalar_t, DEPTHWISE_VEC_BYTES> {
  static constexpr int per_line = 64 / DEPTHWISE_VEC_BYTES;  // vectors per 64-byte cache line of channels
};

// Accumulator vectors a register block may hold (of 16 registers on SSE/AVX2, 32 on AVX-512).
constexpr int kAccumulators = 8;

#include "cpu_math_ops.h"  // gelu

// ---- software prefetch ---------------------------------------------------------------------------------------
// Passes that compute a lot per element they stream (a GELU, an erf for GELU's gradient) left the memory idle while
// they computed: on the 2-core Xeon VM of benchmarks/README.md the GELU'd 3 x 3 forward over a 256 x 128 x 128 map
// took 5.1 ms when the map came from memory and 2.5 ms when it sat in cache (AVX2, 2 threads; a plain copy of the
// map, 1.0 ms). So they ask for what they read next themselves: the GELU prologue and the GELU-gradient epilogue
// kPrefetchAhead bytes ahead, the direct channels-last forward the next output row's new input row, a block's
// columns at a time. With them, cold: 4.3 -> 2.3 ms, 7.0 -> 3.2 ms and 2.9 -> 1.8 ms there (AVX-512: 2.4 -> 1.7,
// 3.7 -> 2.6, 2.1 -> 1.4 ms). The packed forward (K > kDirectMaxK, compute-bound) and the weight gradient (its
// line-strided walks over rows that stay in L2) showed no change with prefetches and have none.
constexpr int64_t kPrefetchAhead = 4096;

template <typename scalar_t>
inline void prefetch_ahead(const scalar_t* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + kPrefetchAhead);
}

// y[0, n) *= gelu'(at[0, n)): GELU's backward applied to an output row or plane just written.
template <typename scalar_t>
inline void scale_by_gelu_grad(scalar_t* y, const scalar_t* at, int64_t n) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  int64_t k = 0;
  for (; k + L <= n; k += L) {
    prefetch_ahead(at + k);  // (y was just written: in cache)
    store(y + k, load<V>(y + k) * gelu_grad(load<V>(at + k)));
  }
  for (; k < n; ++k) y[k] *= gelu_grad(at[k]);
}

// dst[0, n) = gelu(src[0, n)) (dst may be src).
template <typename scalar_t>
inline void gelu_span(const scalar_t* src, scalar_t* dst, int64_t n) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  int64_t k = 0;
  for (; k + L <= n; k += L) {
    prefetch_ahead(src + k);
    store(dst + k, gelu(load<V>(src + k)));
  }
  for (; k < n; ++k) dst[k] = gelu(src[k]);
}

// ---- per-channel sums of products: GRN's statistics ----------------------------------------------------------

// sums[c] = sum over the `pixels` pixels of a channels-last block (`C` channels each) of a * b: a row's share of a
// map's per-channel dot product (with a = b, its sum of squares), e.g. of an output row just written, in cache.
// b = null: the plain sums of a.
template <typename scalar_t>
inline void row_dots(const scalar_t* a, const scalar_t* b, int64_t pixels, int64_t C, scalar_t* sums) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  for (int64_t c = 0; c < C; ++c) sums[c] = scalar_t(0);
  for (int64_t j = 0; j < pixels; ++j) {
    const scalar_t* aj = a + j * C;
    const scalar_t* bj = b + j * C;
    int64_t c = 0;
    if (b == nullptr) {
      for (; c + L <= C; c += L) store(sums + c, load<V>(sums + c) + load<V>(aj + c));
      for (; c < C; ++c) sums[c] += aj[c];
    } else {
      for (; c + L <= C; c += L) store(sums + c, load<V>(sums + c) + load<V>(aj + c) * load<V>(bj + c));
      for (; c < C; ++c) sums[c] += aj[c] * bj[c];
    }
  }
}

// The dot product of two contiguous spans (NCHW planes), in kAccumulators independent vector sums; b = null: the
// plain sum of a.
template <typename scalar_t>
inline scalar_t plane_dot(const scalar_t* a, const scalar_t* b, int64_t n) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[kAccumulators] = {};
  int64_t k = 0;
  for (; k + kAccumulators * L <= n; k += kAccumulators * L) {
    for (int v = 0; v < kAccumulators; ++v)
      acc[v] += b == nullptr ? load<V>(a + k + v * L) : load<V>(a + k + v * L) * load<V>(b + k + v * L);
  }
  for (int v = 1; v < kAccumulators; ++v) acc[0] += acc[v];
  scalar_t sum = hsum<scalar_t>(acc[0]);
  for (; k < n; ++k) sum += b == nullptr ? a[k] : a[k] * b[k];
  return sum;
}

// Channels-last maps [rows][W][C]: row_sums[row] (C each) for rows [begin, end).
template <typename scalar_t>
void dots_nhwc(const scalar_t* a, const scalar_t* b, int64_t W, int64_t C, scalar_t* row_sums, int64_t begin,
               int64_t end) {
  for (int64_t row = begin; row < end; ++row) row_dots(a + row * W * C, b + row * W * C, W, C, row_sums + row * C);
}

// NCHW maps [planes][HW]: sums[plane] for planes [begin, end).
template <typename scalar_t>
void dots_nchw(const scalar_t* a, const scalar_t* b, int64_t HW, scalar_t* sums, int64_t begin, int64_t end) {
  for (int64_t plane = begin; plane < end; ++plane) sums[plane] = plane_dot(a + plane * HW, b + plane * HW, HW);
}

// Calls f(std::integral_constant<int, B>, start) for consecutive blocks that cover [start, count): blocks of the
// template's B while they fit, then of B/2, ..., 1 (so every block size is a compile-time constant).
template <int B, typename F>
inline void for_blocks(int64_t count, int64_t& start, F&& f) {
  for (; start + B <= count; start += B) f(std::integral_constant<int, B>{}, start);
  if constexpr (B > 1) for_blocks<B / 2>(count, start, f);
}

// ---- channels-last forward -----------------------------------------------------------------------------------
//
// The input is first repacked (pack_nhwc) into slices of one vector of channels (the last slice zero-filled past C):
// packed[n][slice][y][q] holds the channels of input row y at zero-padded column c = w + p, stored at position
// q = (c mod r) * R + c / r with R = ceil((W + 2p) / r), r the dilation. The padded columns of one residue modulo r
// are then contiguous, and output column j with tap e reads padded column j + r*e: the output columns of one
// residue form a dense, border-free problem whose loads all sit at compile-time offsets of two pointers.

// Register tile: up to kColumns output columns (one accumulator vector each) times the taps of a kernel row in
// chunks of up to kTapChunk weight vectors, all in registers (32 vector registers with AVX-512, 16 below). AVX2
// takes chunks of 6 (15 of its 16 registers): on an AVX2-only AMD EPYC (Zen 1) the K >= 13 forwards ran 3-8%
// faster than with chunks of 4, K = 5 about 10%, the others alike (in-process A/B; the SSE build keeps 4, unmeasured).
constexpr int kColumns = DEPTHWISE_VEC_BYTES == 64 ? 16 : 8;
constexpr int kTapChunk = DEPTHWISE_VEC_BYTES == 64 ? 8 : DEPTHWISE_VEC_BYTES == 32 ? 6 : 4;
// Kernel sizes up to this read the channels-last input directly (see nhwc_direct).
constexpr int kDirectMaxK = 5;

// Keeps v in a register from here on: GCC would otherwise fold the load that made it into each FMA that uses it
// (one load per FMA, the very traffic register blocking avoids).
template <typename V>
inline void in_register(V& v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+v"(v));
#endif
}

// Forced inlining: GCC's size limits would otherwise leave some unrolled register tiles as calls that pass the
// accumulators through memory.
#define DEPTHWISE_ALWAYS __attribute__((always_inline))
#define DEPTHWISE_INLINE inline DEPTHWISE_ALWAYS

// Calls f(std::integral_constant<int, I>{}) for I = 0, ..., N - 1, unrolled at compile time (f must be
// DEPTHWISE_INLINE too).
template <typename F, int... I>
DEPTHWISE_INLINE void unrolled(F&& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
DEPTHWISE_INLINE void unroll(F&& f) {
  unrolled(f, std::make_integer_sequence<int, N>{});
}

// Calls f(std::integral_constant<int, v>{}) for a runtime value v in [1, N] (e.g. a chunk of taps as a
// compile-time constant).
template <int N, typename F>
inline void with_constant(int64_t v, F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) {
    ((v == I + 1 ? f(std::integral_constant<int, I + 1>{}) : void()), ...);
  }(std::make_integer_sequence<int, N>{});
}

template <typename scalar_t>
inline int64_t channel_slices(const Shape& s) {
  return (s.C + Simd<scalar_t>::lanes - 1) / Simd<scalar_t>::lanes;
}

// R: the positions of one residue in a packed row (of r * R positions).
inline int64_t residue_length(const Shape& s) { return (s.W + 2 * s.pad + s.dil - 1) / s.dil; }

template <typename scalar_t>
bool nhwc_direct(const Shape& s);

// The elements pack_nhwc writes for the whole input.
template <typename scalar_t>
int64_t packed_input_size(const Shape& s) {
  return s.N * channel_slices<scalar_t>(s) * s.H * s.dil * residue_length(s) * Simd<scalar_t>::lanes;
}

template <typename scalar_t>
int64_t nhwc_packed_size(const Shape& s) {
  return nhwc_direct<scalar_t>(s) ? 0 : packed_input_size<scalar_t>(s);
}

// Channels [k*L, k*L + L) of a channels-last pixel, zero past C (the slices' packed layout).
template <typename V, typename scalar_t>
inline V channel_slice(const scalar_t* pixel, int64_t k, int64_t C) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  if ((k + 1) * L <= C) return load<V>(pixel + k * L);
  scalar_t tail[L] = {};
  for (int64_t l = 0; k * L + l < C; ++l) tail[l] = pixel[k * L + l];
  return load<V>(tail);
}

// Packs input rows [begin, end) of the N*H rows (see above), or their GELU (`gelu_input`); padding positions are
// zero (gelu(0) = 0, so padding the GELU's output and taking the GELU of the padded input agree).
template <typename scalar_t>
void pack_nhwc(const Shape& s, const scalar_t* x, scalar_t* packed, int64_t begin, int64_t end, bool gelu_input) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t S = channel_slices<scalar_t>(s), R = residue_length(s), row_len = s.dil * R * L;
  const int64_t Wp = s.W + 2 * s.pad;
  auto position = [&](int64_t c) { return (c % s.dil) * R + c / s.dil; };
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.H, y = row % s.H;
    scalar_t* dst = packed + (n * S * s.H + y) * row_len;  // slice k's row at dst + k * H * row_len
    const int64_t slice_step = s.H * row_len;
    for (int64_t k = 0; k < S; ++k) {
      for (int64_t c = 0; c < s.pad; ++c) store(dst + k * slice_step + position(c) * L, V{});
      for (int64_t c = s.pad + s.W; c < Wp; ++c) store(dst + k * slice_step + position(c) * L, V{});
    }
    const scalar_t* src = x + row * s.W * s.C;
    for (int64_t w = 0; w < s.W; ++w) {
      scalar_t* d = dst + position(w + s.pad) * L;
      for (int64_t k = 0; k < S; ++k) {
        const V v = channel_slice<V>(src + w * s.C, k, s.C);
        store(d + k * slice_step, gelu_input ? gelu(v) : v);
      }
    }
  }
}

// Where a block reads its input: the packed input (compile-time offsets), or the channels-last input itself
// (consecutive input columns r*C elements apart; Checked: some of them lie outside the map and read as zero).
enum class Source { kPacked, kDirect, kDirectChecked };

// Output columns j0 + r*m (m < B) of one output row and one vector of channels, over the taps [e0, e0 + E) of one
// kernel row: `xr` points at the input vector that tap e0 of output column j0 reads, `wr` at the weight of tap e0
// (the weights of consecutive taps L apart). Each input vector is loaded once and feeds every output column that
// reads it (up to E FMAs); the E weight vectors stay in registers. Tail: only `tail` < E taps are left (the missing
// weights are zero, the input vectors only they would read are not loaded). `col0`: input column of xr (kDirect*).
template <typename V, int B, int E, bool Tail, Source src, typename scalar_t>
DEPTHWISE_INLINE void nhwc_chunk(const Shape& s, const scalar_t* xr, const scalar_t* wr, int64_t tail, int64_t col0,
                       V (&acc)[B]) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  const int64_t step = s.dil * s.C;
  V w[E];
  unroll<E>([&](auto e) DEPTHWISE_ALWAYS { w[e] = !Tail || e < tail ? load<V>(wr + e * L) : V{}; });
  unroll<B + E - 1>([&](auto t) DEPTHWISE_ALWAYS {
    bool read = !Tail || t < B - 1 + tail;
    if constexpr (src == Source::kDirectChecked) read = read && col0 + s.dil * t >= 0 && col0 + s.dil * t < s.W;
    V x{};
    if (read) x = load<V>(src == Source::kPacked ? xr + t * L : xr);
    if constexpr (src != Source::kPacked) {
      xr += step;
      asm("" : "+r"(xr));  // one pointer stepped along, not one address register per input column
    }
    in_register(x);
    unroll<B>([&](auto m) DEPTHWISE_ALWAYS {
      constexpr int e = decltype(t)::value - decltype(m)::value;
      if constexpr (e >= 0 && e < E) acc[m] += w[e] * x;
    });
  });
}

// Kernel rows whose input row pointers a block looks up once for all its channel slices (larger kernels look them
// up per slice).
constexpr int64_t kCachedRows = 32;

// Output columns j0 + r*m (m < B) of output row i, every channel slice in turn, kernel rows [a0, a1) (those that
// read inside the map). `row(y)` is where input row y of slice 0 starts (slice k's `slice_step` elements later):
// for kPacked, in the image's packed slices (`q0` is the packed position of padded column j0); for kDirect*, in a
// channels-last row (of the input itself, or of its GELU). `wp` [slices][K*K][L] and `bp` [slices][L] (or null):
// the packed weights and bias. One call per block rather than per slice: its set-up (row pointers, offsets) is
// shared by the slices, which made the small kernels' blocks 10-30% faster.
template <typename V, int B, int E, Source src, typename scalar_t, typename RowOf>
inline void nhwc_block(const Shape& s, const RowOf& row, const scalar_t* wp, const scalar_t* bp, scalar_t* orow,
                       int64_t i, int64_t j0, int64_t q0, int64_t a0, int64_t a1, int64_t slice_step) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  const int64_t full = s.K / E, tail = s.K % E;
  // Elements between the input vectors of consecutive taps.
  const int64_t tap_step = src == Source::kPacked ? L : s.dil * s.C;
  const int64_t first = src == Source::kPacked ? q0 * L : (j0 - s.pad) * s.C;
  const scalar_t* rows[kCachedRows];
  const bool cached = a1 - a0 <= kCachedRows;
  if (cached) {
    for (int64_t a = a0; a < a1; ++a) rows[a - a0] = row(i - s.pad + s.dil * a) + first;
  }
  for (int64_t c0 = 0; c0 < s.C; c0 += L) {
    const int64_t slice = c0 / L;
    const scalar_t* ws = wp + slice * s.K * s.K * L;
    const V b = bp != nullptr ? load<V>(bp + c0) : V{};
    V acc[B];
    unroll<B>([&](auto m) DEPTHWISE_ALWAYS { acc[m] = b; });
    for (int64_t a = a0; a < a1; ++a) {
      const scalar_t* xr = (cached ? rows[a - a0] : row(i - s.pad + s.dil * a) + first) + slice * slice_step;
      const scalar_t* wr = ws + a * s.K * L;
      for (int64_t k = 0; k < full; ++k) {
        nhwc_chunk<V, B, E, false, src>(s, xr + k * E * tap_step, wr + k * E * L, E, j0 - s.pad + k * E * s.dil,
                                        acc);
      }
      if (tail > 0) {
        nhwc_chunk<V, B, E, true, src>(s, xr + full * E * tap_step, wr + full * E * L, tail,
                                       j0 - s.pad + full * E * s.dil, acc);
      }
    }
    unroll<B>([&](auto m) DEPTHWISE_ALWAYS {
      scalar_t* o = orow + (j0 + s.dil * m) * s.C + c0;
      if (c0 + L <= s.C) {
        store(o, acc[m]);
      } else {
        scalar_t part[L];
        store(part, acc[m]);
        __builtin_memcpy(o, part, (s.C - c0) * sizeof(scalar_t));
      }
    });
  }
}

// The chunk size for a kernel row of K taps: the fewest chunks of at most kTapChunk, as even as possible (9 taps:
// 5 + 4, not 8 + 1, whose 1-tap chunk would reload every input vector for one FMA).
inline int tap_chunk(int64_t K, int64_t most = kTapChunk) {
  const int64_t chunks = (K + most - 1) / most;
  return int((K + chunks - 1) / chunks);
}

// Whether the channels-last forward reads the input directly rather than packing it first: for short kernel rows,
// whose few FMAs per input vector do not pay for a copy of the input, and whole vectors of channels.
template <typename scalar_t>
bool nhwc_direct(const Shape& s) {
  return s.C % Simd<scalar_t>::lanes == 0 && s.K <= kDirectMaxK;
}

// Input rows a direct channels-last forward with a GELU prologue keeps transformed (nhwc_ring_rows(s) rows of W*C
// in a ring, per task): each input row's GELU is taken once, just before the first output row that reads it.
inline int64_t nhwc_ring_rows(const Shape& s) { return s.dil * (s.K - 1) + 1; }
inline int64_t nhwc_ring_size(const Shape& s) { return nhwc_ring_rows(s) * s.W * s.C; }

// One task's ring of GELU'd channels-last input rows (`rows`: nhwc_ring_size(s) elements): advance(n, i) takes the
// GELU of the rows output row i of image n reads that the ring does not hold yet (bounds that never decrease along
// an image's rows, so the ring's rows are always the latest ones); row(y) is input row y's GELU.
template <typename scalar_t>
struct GeluRing {
  GeluRing(const Shape& s, scalar_t* rows) : rows(rows), ring_rows(nhwc_ring_rows(s)), row_len(s.W * s.C) {}

  void advance(const Shape& s, const scalar_t* x, int64_t n, int64_t i) {
    const int64_t first = imax(0, i - s.pad), last = imin(s.H - 1, i - s.pad + ring_rows - 1);
    if (n != image || next < first) image = n, next = first;
    for (; next <= last; ++next) gelu_span(x + (n * s.H + next) * row_len, row(next), row_len);
  }
  scalar_t* row(int64_t y) const { return rows + y % ring_rows * row_len; }

  scalar_t* rows;
  int64_t ring_rows, row_len;
  int64_t image = -1, next = 0;  // the ring holds rows of this image, up to (not including) row `next`
};

// Output rows [begin, end) of the N*Ho rows, from the packed input (or x itself, see nhwc_direct); `wp`
// [slices][K*K][L] and `bp` [slices][L] are the weights and bias packed likewise (zero past C; bp may be null).
// `ring` (direct only, else null): scratch of nhwc_ring_rows(s) * W * C elements; given, the rows read are
// gelu(x)'s (a packed input takes its GELU in pack_nhwc). `ep`: what each output row goes through (Epilogue).
template <typename scalar_t>
void forward_nhwc(const Shape& s, const scalar_t* x, const scalar_t* wp, const scalar_t* bp, scalar_t* out,
                  int64_t begin, int64_t end, scalar_t* ring, const Epilogue<scalar_t>& ep) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t S = channel_slices<scalar_t>(s), R = residue_length(s);
  const bool direct = nhwc_direct<scalar_t>(s);
  const int64_t image_len = direct ? s.H * s.W * s.C : S * s.H * s.dil * R * L;
  const int64_t slice_len = direct ? L : s.H * s.dil * R * L;
  const int64_t row_step = direct ? s.W * s.C : s.dil * R * L;  // elements between input rows
  const int64_t lo = imin(s.pad, s.Wo), hi = imax(lo, s.Wo - s.pad);  // columns whose taps all read inside
  const int chunk = tap_chunk(s.K);
  GeluRing<scalar_t> gelu_rows(s, ring);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.Ho, i = row % s.Ho;
    int64_t a0, a1;
    valid_taps(i, s.H, s, &a0, &a1);
    scalar_t* orow = ep.reuse_output ? out : out + row * s.Wo * s.C;
    if (ring != nullptr) gelu_rows.advance(s, x, n, i);  // the GELU of the input rows this output row may read
    // The output columns of each residue modulo the dilation, in blocks of kColumns, kColumns / 2, ..., 1; each
    // block over every channel slice.
    for (int64_t res = 0; res < imin(s.dil, s.Wo); ++res) {
      int64_t m = 0;
      for_blocks<kColumns>((s.Wo - res + s.dil - 1) / s.dil, m, [&](auto nb, int64_t m0) {
        constexpr int B = decltype(nb)::value;
        const int64_t j0 = res + s.dil * m0, q0 = res * R + m0;
        const bool inside = j0 >= lo && j0 + s.dil * (B - 1) < hi;
        const scalar_t* xs = x + n * image_len;
        if (direct && ring == nullptr && res == 0) {
          // The input row the next output row reads first (the one no earlier output row read), this block's
          // columns of it (the blocks of residue 0 cover a row's columns once).
          const int64_t y = i + 1 - s.pad + s.dil * (s.K - 1), c = imax(0, j0 - s.pad);
          if (i + 1 < s.Ho && y < s.H && c < s.W) {
            prefetch_span(xs + y * row_step + c * s.C, imin(s.dil * B, s.W - c) * s.C);
          }
        }
        auto input_row = [&](int64_t y) { return xs + y * row_step; };
        auto ring_row = [&](int64_t y) { return gelu_rows.row(y); };
        const int64_t slice_step = ring != nullptr ? L : slice_len;  // (the ring is a channels-last row)
        with_constant<kTapChunk>(chunk, [&](auto e) {  // the chunk size as a compile-time constant
          constexpr int Ec = decltype(e)::value;
          auto block = [&]<Source src>(const auto& rows) {
            nhwc_block<V, B, Ec, src>(s, rows, wp, bp, orow, i, j0, q0, a0, a1, slice_step);
          };
          if (!direct) {
            block.template operator()<Source::kPacked>(input_row);
          } else if (ring != nullptr) {
            if (inside) block.template operator()<Source::kDirect>(ring_row);
            else block.template operator()<Source::kDirectChecked>(ring_row);
          } else {
            if (inside) block.template operator()<Source::kDirect>(input_row);
            else block.template operator()<Source::kDirectChecked>(input_row);
          }
        });
      });
    }
    if (ep.gelu_grad_at != nullptr) scale_by_gelu_grad(orow, ep.gelu_grad_at + row * s.Wo * s.C, s.Wo * s.C);
    if (ep.sums != nullptr) row_dots<scalar_t>(orow, nullptr, s.Wo, s.C, ep.sums + row * s.C);
    if (ep.square_sums != nullptr) {
      const scalar_t* other = ep.product_with != nullptr ? ep.product_with + row * s.Wo * s.C : orow;
      row_dots(orow, other, s.Wo, s.C, ep.square_sums + row * s.C);
    }
  }
}

// ---- NCHW: zero-padded plane copies -----------------------------------------------------------------------------

// Row stride of a padded input plane: every vector load of a (rounded-up) output row at any tap stays inside.
template <typename scalar_t>
inline int64_t padded_stride(const Shape& s) {
  return round_up(s.Wo, Simd<scalar_t>::lanes) + s.dil * (s.K - 1);
}

template <typename scalar_t>
int64_t nchw_scratch(const Shape& s) {
  return (s.H + 2 * s.pad) * padded_stride<scalar_t>(s) + s.Ho * round_up(s.Wo, Simd<scalar_t>::lanes);
}

// The plane `src` [H, W] (or its GELU) with `pad` zeros around it, rows `stride` apart (the tail of each row zero
// too).
template <typename scalar_t>
inline void pad_plane(const Shape& s, const scalar_t* src, scalar_t* dst, int64_t stride, bool gelu_input = false) {
  const int64_t rows = s.H + 2 * s.pad;
  for (int64_t k = 0; k < rows * stride; ++k) dst[k] = scalar_t(0);
  for (int64_t y = 0; y < s.H; ++y) {
    scalar_t* d = dst + (y + s.pad) * stride + s.pad;
    if (gelu_input) gelu_span(src + y * s.W, d, s.W);
    else __builtin_memcpy(d, src + y * s.W, s.W * sizeof(scalar_t));
  }
}

// NB vectors of output row i from column j.
template <int NB, typename scalar_t>
inline void nchw_block(const Shape& s, const scalar_t* xp, int64_t stride, const scalar_t* w, scalar_t b,
                       scalar_t* orow, int64_t i, int64_t j) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[NB];
  for (int v = 0; v < NB; ++v) acc[v] = splat<V>(b);
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* xr = xp + (i + s.dil * a) * stride + j;
    for (int64_t e = 0; e < s.K; ++e) {
      const V wv = splat<V>(w[a * s.K + e]);
      for (int v = 0; v < NB; ++v) acc[v] += wv * load<V>(xr + s.dil * e + v * L);
    }
  }
  for (int v = 0; v < NB; ++v) {
    const int64_t col = j + v * L;
    if (col + L <= s.Wo) {
      store(orow + col, acc[v]);
    } else {
      scalar_t tmp[L];
      store(tmp, acc[v]);
      for (int64_t l = 0; col + l < s.Wo; ++l) orow[col + l] = tmp[l];
    }
  }
}

template <typename scalar_t>
void forward_nchw(const Shape& s, const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out,
                  int64_t begin, int64_t end, scalar_t* scratch, bool gelu_input, const Epilogue<scalar_t>& ep) {
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t stride = padded_stride<scalar_t>(s), vectors = round_up(s.Wo, L) / L;
  for (int64_t plane = begin; plane < end; ++plane) {
    const int64_t c = plane % s.C;
    pad_plane(s, x + plane * s.H * s.W, scratch, stride, gelu_input);
    const scalar_t* wc = w + c * s.K * s.K;
    const scalar_t b = bias != nullptr ? bias[c] : scalar_t(0);
    const int64_t size = s.Ho * s.Wo;
    scalar_t* o = ep.reuse_output ? out : out + plane * size;
    for (int64_t i = 0; i < s.Ho; ++i) {
      int64_t v = 0;
      for_blocks<kAccumulators>(vectors, v, [&](auto nb, int64_t v0) {
        nchw_block<decltype(nb)::value>(s, scratch, stride, wc, b, o + i * s.Wo, i, v0 * L);
      });
    }
    if (ep.gelu_grad_at != nullptr) scale_by_gelu_grad(o, ep.gelu_grad_at + plane * size, size);
    if (ep.sums != nullptr) ep.sums[plane] = plane_dot<scalar_t>(o, nullptr, size);
    if (ep.square_sums != nullptr) {
      ep.square_sums[plane] = plane_dot(o, ep.product_with != nullptr ? ep.product_with + plane * size : o, size);
    }
  }
}

// ---- weight gradient ------------------------------------------------------------------------------------------

// Channels-last: taps [e0, e0 + EB) of kernel row a, channels [c0, c0 + NV * lanes), summed over output row
// `go_row` against input row `xr`, added to partial[(a*K + e) * C + c].
template <typename V, int NV, int EB, typename scalar_t>
inline void nhwc_tap_block(const Shape& s, const scalar_t* go_row, const scalar_t* xr, scalar_t* partial, int64_t a,
                           int64_t e0, int64_t c0) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V acc[EB][NV];
  for (int t = 0; t < EB; ++t)
    for (int v = 0; v < NV; ++v) acc[t][v] = V{};
  // Columns where every tap of the block reads inside the row, then each tap's own remaining columns.
  int64_t lo, hi, lo_t, hi_t;
  valid_outputs(e0, s.W, s.Wo, s, &lo, &lo_t);
  valid_outputs(e0 + EB - 1, s.W, s.Wo, s, &hi_t, &hi);
  lo = imin(lo, s.Wo);
  hi = imax(hi, lo);
  const scalar_t* x0 = xr + (s.dil * e0 - s.pad) * s.C + c0;
  for (int64_t j = lo; j < hi; ++j) {
    V g[NV];
    for (int v = 0; v < NV; ++v) g[v] = load<V>(go_row + j * s.C + c0 + v * L);
    const scalar_t* xj = x0 + j * s.C;
    for (int t = 0; t < EB; ++t)
      for (int v = 0; v < NV; ++v) acc[t][v] += g[v] * load<V>(xj + t * s.dil * s.C + v * L);
  }
  for (int t = 0; t < EB; ++t) {
    valid_outputs(e0 + t, s.W, s.Wo, s, &lo_t, &hi_t);
    const scalar_t* xt = xr + (s.dil * (e0 + t) - s.pad) * s.C + c0;
    auto add_columns = [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j)
        for (int v = 0; v < NV; ++v)
          acc[t][v] += load<V>(go_row + j * s.C + c0 + v * L) * load<V>(xt + j * s.C + v * L);
    };
    add_columns(lo_t, imin(lo, hi_t));
    add_columns(imax(hi, lo_t), hi_t);
    scalar_t* dst = partial + (a * s.K + e0 + t) * s.C + c0;
    for (int v = 0; v < NV; ++v) store(dst + v * L, load<V>(dst + v * L) + acc[t][v]);
  }
}

template <typename V, int NV, typename scalar_t>
inline void nhwc_grad_row(const Shape& s, const scalar_t* go_row, const scalar_t* xr, scalar_t* partial, int64_t a,
                          int64_t c0) {
  if constexpr (3 * NV <= kAccumulators) {
    if (s.K == 3) {  // the 3 taps of a row in one pass over grad_out (instead of blocks of 2 and 1)
      nhwc_tap_block<V, NV, 3>(s, go_row, xr, partial, a, 0, c0);
      return;
    }
  }
  int64_t e = 0;
  for_blocks<kAccumulators / NV>(s.K, e, [&](auto eb, int64_t e0) {
    nhwc_tap_block<V, NV, decltype(eb)::value>(s, go_row, xr, partial, a, e0, c0);
  });
}

// The direct form (K <= kDirectMaxK): output rows [begin, end) read the channels-last input itself (or, given
// `ring`, its GELU through a ring of rows, as the forward's), one cache line of channels and a block of taps at a
// time (a kernel row's few taps do not pay for packing the input).
template <typename scalar_t>
void grad_weight_nhwc_direct(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* partial,
                             int64_t begin, int64_t end, scalar_t* ring) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  constexpr int NL = Simd<scalar_t>::per_line;
  GeluRing<scalar_t> gelu_rows(s, ring);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.Ho, i = row % s.Ho;
    int64_t a0, a1;
    valid_taps(i, s.H, s, &a0, &a1);
    const scalar_t* go_row = grad_out + row * s.Wo * s.C;
    if (ring != nullptr) gelu_rows.advance(s, x, n, i);
    for (int64_t a = a0; a < a1; ++a) {
      const int64_t y = i - s.pad + s.dil * a;
      const scalar_t* xr = ring != nullptr ? gelu_rows.row(y) : x + (n * s.H + y) * s.W * s.C;
      int64_t c0 = 0;
      for (; c0 + NL * L <= s.C; c0 += NL * L) nhwc_grad_row<V, NL>(s, go_row, xr, partial, a, c0);
      for (; c0 + L <= s.C; c0 += L) nhwc_grad_row<V, 1>(s, go_row, xr, partial, a, c0);
      for (; c0 < s.C; ++c0) nhwc_grad_row<scalar_t, 1>(s, go_row, xr, partial, a, c0);
    }
  }
}

// Channels-last, K > kDirectMaxK. The input is packed as for the forward (pack_nhwc: slices of one vector of
// channels, each row's padded columns grouped by residue modulo the dilation) and each output row of grad_out
// likewise (pack_grad_row: column j = res + r*m at position res * Rg + m), so that every load below is contiguous
// and free of border tests. Against the direct form, 1 thread: K = 7 to 17 take 0.69-0.95x the time with AVX-512
// and 0.78-1.02x with AVX2 (the 2-core Xeon of benchmarks/README.md).
//
// Output column j = res + r*m and tap e read padded column res + r*(m + e), at packed position res * R + m + e: a
// tile of B columns (m0 + [0, B)) x E taps (e0 + [0, E)) loads B grad_out vectors and only B + E - 1 input vectors
// for its B*E multiply-adds, each input vector feeding up to E of them (the forward's register tile, with the roles
// of weights and outputs swapped). A tap's sum is split over P accumulators (column m goes to m mod P) so that at
// least 8 independent chains of multiply-adds hide their latency where the registers allow.
constexpr int kGradColumns = DEPTHWISE_VEC_BYTES == 64 ? 16 : 4;
constexpr int kGradTapChunk = DEPTHWISE_VEC_BYTES == 64 ? 8 : 5;
constexpr int kVectorRegisters = DEPTHWISE_VEC_BYTES == 64 ? 32 : 16;

// P for a chunk of E taps: the accumulators (P*E), the grad_out block (kGradColumns) and one input vector stay
// within the registers but one.
template <int E>
constexpr int grad_copies() {
  int p = (8 + E - 1) / E;
  while (p > 1 && p * E + kGradColumns + 1 > kVectorRegisters - 1) --p;
  return p;
}

// Rg: the positions of one residue in a packed grad_out row (of r * Rg positions).
inline int64_t grad_residue_length(const Shape& s) { return (s.Wo + s.dil - 1) / s.dil; }

// The weight gradient packs the input for kernels larger than kDirectMaxK (grad_weight_nhwc_direct reads it as it
// is): the elements of the packed input, and each task's scratch for one packed grad_out row.
inline bool grad_weight_direct(const Shape& s) { return s.K <= kDirectMaxK; }

template <typename scalar_t>
int64_t grad_weight_packed_size(const Shape& s) {
  return grad_weight_direct(s) ? 0 : packed_input_size<scalar_t>(s);
}

template <typename scalar_t>
int64_t grad_weight_scratch(const Shape& s, bool gelu_input) {
  if (grad_weight_direct(s)) return gelu_input ? nhwc_ring_size(s) : 0;
  return channel_slices<scalar_t>(s) * s.dil * grad_residue_length(s) * Simd<scalar_t>::lanes;
}

// A channels-last row of grad_out [Wo][C] into gq [slices][r * Rg][L] (zero past C).
template <typename scalar_t>
void pack_grad_row(const Shape& s, const scalar_t* go_row, scalar_t* gq) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t S = channel_slices<scalar_t>(s), Rg = grad_residue_length(s), slice_len = s.dil * Rg * L;
  for (int64_t j = 0; j < s.Wo; ++j) {
    scalar_t* d = gq + ((j % s.dil) * Rg + j / s.dil) * L;
    for (int64_t k = 0; k < S; ++k) store(d + k * slice_len, channel_slice<V>(go_row + j * s.C, k, s.C));
  }
}

// acc[m mod P][e] += g[m] * x[m + e] for m < B, e < E, with g and x consecutive vectors from `gq` and `xq`.
template <typename V, int B, int E, int P, typename scalar_t>
DEPTHWISE_INLINE void grad_tile(const scalar_t* gq, const scalar_t* xq, V (&acc)[P][E]) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  V g[B];
  unroll<B>([&](auto m) DEPTHWISE_ALWAYS {
    g[m] = load<V>(gq + m * L);
    in_register(g[m]);
  });
  unroll<B + E - 1>([&](auto t) DEPTHWISE_ALWAYS {
    constexpr int T = decltype(t)::value;
    V x = load<V>(xq + T * L);
    in_register(x);
    unroll<B>([&](auto m) DEPTHWISE_ALWAYS {
      constexpr int M = decltype(m)::value, e = T - M;
      if constexpr (e >= 0 && e < E) acc[M % P][e] += g[M] * x;
    });
  });
}

// Taps [e0, e0 + E) of a kernel row for one slice: `gq` is the slice's packed grad_out row, `xq` the packed input row
// the kernel row reads; the sums are added to dst[e * C + l] for the slice's `valid` channels l.
// Not inlined: each chunk size's tile gets the whole register file to itself (inlined into the row loops, GCC's
// allocation of the K = 17 tiles cost 10-50%).
template <typename V, int E, typename scalar_t>
__attribute__((noinline)) void grad_taps(const Shape& s, const scalar_t* gq, const scalar_t* xq, scalar_t* dst,
                                         int64_t e0, int64_t valid) {
  constexpr int64_t L = sizeof(V) / sizeof(scalar_t);
  constexpr int P = grad_copies<E>();
  const int64_t R = residue_length(s), Rg = grad_residue_length(s);
  V acc[P][E];
  unroll<P>([&](auto p) DEPTHWISE_ALWAYS { unroll<E>([&](auto e) DEPTHWISE_ALWAYS { acc[p][e] = V{}; }); });
  for (int64_t res = 0; res < imin(s.dil, s.Wo); ++res) {
    int64_t m = 0;
    for_blocks<kGradColumns>((s.Wo - res + s.dil - 1) / s.dil, m, [&](auto nb, int64_t m0) {
      grad_tile<V, decltype(nb)::value, E, P>(gq + (res * Rg + m0) * L, xq + (res * R + m0 + e0) * L, acc);
    });
  }
  unroll<E>([&](auto e) DEPTHWISE_ALWAYS {
    V sum = acc[0][e];
    unroll<P - 1>([&](auto p) DEPTHWISE_ALWAYS { sum += acc[p + 1][e]; });
    scalar_t* d = dst + e * s.C;
    if (valid == L) {
      store(d, load<V>(d) + sum);
    } else {
      scalar_t part[L];
      store(part, sum);
      for (int64_t l = 0; l < valid; ++l) d[l] += part[l];
    }
  });
}

// Output rows [begin, end) of the N*Ho rows, summed into partial [K*K][C], from the input packed by pack_nhwc
// (grad_weight_packed_size(s) elements; the input itself for the direct form, whose GELU `gelu_input` takes) and
// grad_out itself; `scratch`: grad_weight_scratch(s, gelu_input) elements. Slices outermost, so that a row's packed
// grad_out slice stays in the L1 cache while every kernel row reads it; each kernel row's taps in even chunks
// (tap_chunk's rule).
template <typename scalar_t>
void grad_weight_nhwc(const Shape& s, const scalar_t* grad_out, const scalar_t* packed, scalar_t* partial,
                      int64_t begin, int64_t end, scalar_t* scratch, bool gelu_input) {
  if (grad_weight_direct(s)) {
    return grad_weight_nhwc_direct(s, grad_out, packed, partial, begin, end, gelu_input ? scratch : nullptr);
  }
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t S = channel_slices<scalar_t>(s), row_len = s.dil * residue_length(s) * L;
  const int64_t grad_slice = s.dil * grad_residue_length(s) * L;
  const int chunk = tap_chunk(s.K, kGradTapChunk);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / s.Ho, i = row % s.Ho;
    int64_t a0, a1;
    valid_taps(i, s.H, s, &a0, &a1);
    pack_grad_row(s, grad_out + row * s.Wo * s.C, scratch);
    for (int64_t k = 0; k < S; ++k) {
      const int64_t valid = imin(L, s.C - k * L);
      for (int64_t a = a0; a < a1; ++a) {
        const scalar_t* xq = packed + ((n * S + k) * s.H + i - s.pad + s.dil * a) * row_len;
        for (int64_t e0 = 0; e0 < s.K; e0 += chunk) {
          with_constant<kGradTapChunk>(imin(chunk, s.K - e0), [&](auto e) {
            grad_taps<V, decltype(e)::value>(s, scratch + k * grad_slice, xq,
                                             partial + (a * s.K + e0) * s.C + k * L, e0, valid);
          });
        }
      }
    }
  }
}

// NCHW: taps [e0, e0 + EB) of kernel row a over one (padded) plane; grad_out rows zero past Wo.
template <int EB, typename scalar_t>
inline void nchw_tap_block(const Shape& s, const scalar_t* gp, int64_t gstride, const scalar_t* xp, int64_t stride,
                           scalar_t* gw, int64_t a, int64_t e0) {
  using V = typename Simd<scalar_t>::vec;
  constexpr int64_t L = Simd<scalar_t>::lanes;
  V acc[EB];
  for (int t = 0; t < EB; ++t) acc[t] = V{};
  for (int64_t i = 0; i < s.Ho; ++i) {
    const scalar_t* g = gp + i * gstride;
    const scalar_t* xr = xp + (i + s.dil * a) * stride + s.dil * e0;
    for (int64_t j = 0; j < gstride; j += L) {
      const V gv = load<V>(g + j);
      for (int t = 0; t < EB; ++t) acc[t] += gv * load<V>(xr + t * s.dil + j);
    }
  }
  for (int t = 0; t < EB; ++t) gw[a * s.K + e0 + t] += hsum<scalar_t>(acc[t]);
}

template <typename scalar_t>
void grad_weight_nchw(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_w, int64_t begin,
                      int64_t end, scalar_t* scratch, bool gelu_input) {
  constexpr int64_t L = Simd<scalar_t>::lanes;
  const int64_t stride = padded_stride<scalar_t>(s), gstride = round_up(s.Wo, L);
  scalar_t* xp = scratch;
  scalar_t* gp = scratch + (s.H + 2 * s.pad) * stride;
  for (int64_t c = begin; c < end; ++c) {
    scalar_t* gw = grad_w + c * s.K * s.K;
    for (int64_t t = 0; t < s.K * s.K; ++t) gw[t] = scalar_t(0);
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t plane = n * s.C + c;
      pad_plane(s, x + plane * s.H * s.W, xp, stride, gelu_input);
      for (int64_t i = 0; i < s.Ho; ++i) {
        scalar_t* dst = gp + i * gstride;
        __builtin_memcpy(dst, grad_out + (plane * s.Ho + i) * s.Wo, s.Wo * sizeof(scalar_t));
        for (int64_t j = s.Wo; j < gstride; ++j) dst[j] = scalar_t(0);
      }
      for (int64_t a = 0; a < s.K; ++a) {
        int64_t e = 0;
        for_blocks<kAccumulators>(s.K, e, [&](auto eb, int64_t e0) {
          nchw_tap_block<decltype(eb)::value>(s, gp, gstride, xp, stride, gw, a, e0);
        });
      }
    }
  }
}

}  // namespace

#undef DEPTHWISE_INLINE
#undef DEPTHWISE_ALWAYS

extern const Kernels kernels;
constexpr Kernels kernels = {
    DEPTHWISE_CPU_CAPABILITY_NAME,
    {Simd<float>::lanes, &nhwc_packed_size<float>, &pack_nhwc<float>, &nhwc_ring_size, &forward_nhwc<float>,
     &forward_nchw<float>, &grad_weight_packed_size<float>, &grad_weight_scratch<float>, &grad_weight_nhwc<float>,
     &grad_weight_nchw<float>, &nchw_scratch<float>,
     &dots_nhwc<float>, &dots_nchw<float>},
    {Simd<double>::lanes, &nhwc_packed_size<double>, &pack_nhwc<double>, &nhwc_ring_size, &forward_nhwc<double>,
     &forward_nchw<double>, &grad_weight_packed_size<double>, &grad_weight_scratch<double>,
     &grad_weight_nhwc<double>, &grad_weight_nchw<double>, &nchw_scratch<double>,
     &dots_nhwc<double>, &dots_nchw<double>},
};
