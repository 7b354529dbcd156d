// Transcendental functions of the per-ISA CPU kernel bodies (contmix_cpu_body.h: the softmax's exp;
// depthwise_cpu_body.h: GELU), on a body's float/double vectors or scalars. Included *inside* a body's anonymous
// namespace after it defined `Simd` (SimdTraits of its vector width) and included cpu_vector_ops.h; like that file
// it has no include guard and includes nothing (the wrappers include <cmath> before the target switch).
//
// float vectors are the speed path: branch-free polynomials (about 1 ulp for exp; GELU's accuracy is stated at it).
// double, and float scalars, are the reference precision: the C library, lane by lane.

inline int32_t to_int(float x) { return static_cast<int32_t>(x); }
inline float from_bits(int32_t b) {
  float f;
  __builtin_memcpy(&f, &b, sizeof(f));
  return f;
}
inline Simd<float>::ivec to_int(Simd<float>::vec x) { return __builtin_convertvector(x, Simd<float>::ivec); }
inline Simd<float>::vec from_bits(Simd<float>::ivec b) { return (Simd<float>::vec)b; }

// exp(x) for x <= 0 (Cephes' expf polynomial). Inputs below -87 flush to about 2^-126, harmless for softmax
// weights; NaN stays NaN (the clamp keeps it).
template <typename V>
inline V exp_nonpositive(V x) {
  x = x < splat<V>(-87.0f) ? splat<V>(-87.0f) : x;  // not a max: a NaN logit must give a NaN weight
  const V n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const V r = x - n * 0.693359375f + n * 2.12194440e-4f;                 // x - n ln2, ln2 split in two
  V p = splat<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * from_bits((to_int(n) + 127) << 23);
}

inline double exp_nonpositive(double x) { return std::exp(x); }
inline Simd<double>::vec exp_nonpositive(Simd<double>::vec x) {
  for (int64_t l = 0; l < Simd<double>::lanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

// GELU in its exact (erf) form, gelu(x) = x Phi(x) = x/2 * (1 + erf(x / sqrt 2)), as F.gelu(approximate='none'),
// and its derivative gelu'(x) = Phi(x) + x phi(x), as ATen's gelu_backward. float: each is 1/2 + x P(x^2) / Q(x^2)
// for |x| <= C (x clamped there, 0 below -C), a rational minimax fit made for this project (numpy, Lawson-weighted
// linearised least squares against the C library's double erf). Past C, Phi and gelu' are 0 or 1 to float
// precision. About half the vector operations of an exp-based erf, no integer work; measured against double:
// gelu within 1.3e-6 absolute on |x| <= 6.5 (3 ulp of its value for x > 0; ATen's float gelu also loses
// relative accuracy on the negative side), gelu' within 5e-7.
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752)); }

// 1/2 + x P(x^2) / Q(x^2) with x clamped to [-C, C], and 0 below -C (a NaN compares false and stays NaN).
template <int M, int N>
inline Simd<float>::vec half_plus_odd_rational(Simd<float>::vec x, float C, const float (&P)[M], const float (&Q)[N]) {
  using V = Simd<float>::vec;
  V c = x > C ? splat<V>(C) : x;
  c = c < -C ? splat<V>(-C) : c;
  const V s = c * c;
  V p = splat<V>(P[M - 1]);
  for (int k = M - 2; k >= 0; --k) p = p * s + P[k];
  V q = splat<V>(Q[N - 1]);
  for (int k = N - 2; k >= 0; --k) q = q * s + Q[k];
  const V r = c * p / q + 0.5f;
  return x < -C ? V{} : r;
}
// Phi(x) on |x| <= 5.55, erf(x / sqrt 2) = +-1 in float beyond.
constexpr float kNormalCdfP[] = {3.989422321e-01f, 3.410739824e-02f, 4.691702779e-03f,
                                 1.712553931e-04f, 6.352544460e-06f, 2.244377129e-08f};
constexpr float kNormalCdfQ[] = {1.000000000e+00f, 2.521604002e-01f, 2.878865972e-02f,
                                 1.898228540e-03f, 7.434251165e-05f, 1.188632496e-06f};
// gelu'(x) on |x| <= 6.2, where x phi(x) falls below 2.6e-8.
constexpr float kGeluGradP[] = {7.978856564e-01f, -3.009342030e-02f, 1.428041793e-02f, 2.924885302e-05f,
                                3.751484110e-05f, 2.338568237e-07f,  -1.458379389e-10f};
constexpr float kGeluGradQ[] = {1.000000000e+00f, 2.956280708e-01f, 4.141440988e-02f,
                                3.601974342e-03f, 1.974296028e-04f, 9.791686352e-06f};

inline Simd<float>::vec gelu(Simd<float>::vec x) {
  return x * half_plus_odd_rational(x, 5.55f, kNormalCdfP, kNormalCdfQ);
}
inline Simd<double>::vec gelu(Simd<double>::vec x) {
  for (int64_t l = 0; l < Simd<double>::lanes; ++l) x[l] = gelu(x[l]);
  return x;
}

// At +-inf gelu' is its limit, 1 or 0, in every lane (ATen's formula gives inf * 0 = NaN there).
inline float gelu_grad(float x) {
  if (std::isinf(x)) return x > 0 ? 1.0f : 0.0f;
  return 0.5f * (1.0f + std::erf(x * 0.70710678118654752f)) + x * std::exp(-0.5f * x * x) * 0.39894228040143268f;
}
inline double gelu_grad(double x) {
  if (std::isinf(x)) return x > 0 ? 1.0 : 0.0;
  return 0.5 * (1.0 + std::erf(x * 0.70710678118654752)) + x * std::exp(-0.5 * x * x) * 0.39894228040143268;
}
inline Simd<float>::vec gelu_grad(Simd<float>::vec x) {
  return half_plus_odd_rational(x, 6.2f, kGeluGradP, kGeluGradQ);
}
inline Simd<double>::vec gelu_grad(Simd<double>::vec x) {
  for (int64_t l = 0; l < Simd<double>::lanes; ++l) x[l] = gelu_grad(x[l]);
  return x;
}
