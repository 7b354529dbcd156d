// Transcendental functions of the per-ISA CPU kernel bodies (contmix_cpu_body.h: the softmax's exp;
// depthwise_cpu_body.h: GELU), on a body's float/double vectors or scalars. Included *inside* a body's anonymous
// namespace after it defined `Simd` (SimdTraits of its vector width) and included cpu_vector_ops.h; like that file
// it has no include guard and includes nothing (the wrappers include <cmath> before the target switch).
//
// float is the speed path: branch-free polynomials, about 1 ulp for exp and 1.5e-7 absolute for erf (the accuracy
// of ATen's own vectorised float erf). double is the reference precision: the C library, lane by lane.

inline int32_t to_int(float x) { return static_cast<int32_t>(x); }
inline float from_bits(int32_t b) {
  float f;
  __builtin_memcpy(&f, &b, sizeof(f));
  return f;
}
inline Simd<float>::ivec to_int(Simd<float>::vec x) { return __builtin_convertvector(x, Simd<float>::ivec); }
inline Simd<float>::vec from_bits(Simd<float>::ivec b) { return (Simd<float>::vec)b; }

// exp(x) for x <= 0 (Cephes' expf polynomial). Inputs below -87 flush to about 2^-126, harmless for softmax
// weights and for erf's tail; NaN stays NaN (the clamp keeps it).
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

// GELU in its exact (erf) form, gelu(x) = x/2 * (1 + erf(x / sqrt 2)), as F.gelu(approximate='none'), and its
// derivative. float: erf(|u|) = 1 - q with q = t P(t) exp(-u^2), t = 1 / (1 + 0.3275911 |u|) (Abramowitz & Stegun
// 7.1.26), so 1 + erf(u) is 2 - q for u >= 0 and q itself below: no cancellation on the negative side.
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }
inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x * 0.70710678118654752)); }
// 2 Phi(x) = 1 + erf(x / sqrt 2) and, through `density`, exp(-x^2 / 2) = sqrt(2 pi) phi(x), which GELU's derivative
// needs too (the same exp serves both).
inline Simd<float>::vec twice_normal_cdf(Simd<float>::vec x, Simd<float>::vec* density) {
  using V = Simd<float>::vec;
  const V u = x * 0.70710678118654752f;
  const V a = u < 0.0f ? -u : u;
  const V t = 1.0f / (a * 0.3275911f + 1.0f);
  V p = splat<V>(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  *density = exp_nonpositive(-a * a);
  const V q = p * t * *density;
  return u < 0.0f ? q : 2.0f - q;  // a NaN x compares false and gives NaN either way
}
inline Simd<float>::vec gelu(Simd<float>::vec x) {
  Simd<float>::vec density;
  return 0.5f * x * twice_normal_cdf(x, &density);
}
inline Simd<double>::vec gelu(Simd<double>::vec x) {
  for (int64_t l = 0; l < Simd<double>::lanes; ++l) x[l] = gelu(x[l]);
  return x;
}

// GELU's derivative, gelu'(x) = Phi(x) + x phi(x), as ATen's gelu_backward (approximate='none').
inline float gelu_grad(float x) {
  return 0.5f * (1.0f + std::erf(x * 0.70710678118654752f)) + x * std::exp(-0.5f * x * x) * 0.39894228040143268f;
}
inline double gelu_grad(double x) {
  return 0.5 * (1.0 + std::erf(x * 0.70710678118654752)) + x * std::exp(-0.5 * x * x) * 0.39894228040143268;
}
inline Simd<float>::vec gelu_grad(Simd<float>::vec x) {
  Simd<float>::vec density;
  const Simd<float>::vec cdf2 = twice_normal_cdf(x, &density);
  return 0.5f * cdf2 + x * density * 0.39894228040143268f;
}
inline Simd<double>::vec gelu_grad(Simd<double>::vec x) {
  for (int64_t l = 0; l < Simd<double>::lanes; ++l) x[l] = gelu_grad(x[l]);
  return x;
}
