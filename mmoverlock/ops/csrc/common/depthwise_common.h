// Device-independent geometry of the stride-1 depthwise convolution, shared by the CPU kernels (per ISA), the CUDA
// kernels and the test driver of the CUDA bodies.
//
//   out[n, c, i, j] = bias[c] + sum_{a, e < K} w[c, a, e] * x[n, c, i - p + r*a, j - p + r*e]   (zero outside x)
//
// with K odd, dilation r >= 1, padding 0 <= p <= r*(K-1), Ho = H + 2p - r*(K-1). The input gradient is the same
// correlation of grad_out with the flipped kernel and padding r*(K-1) - p (also within the range), so one forward
// kernel serves both; the weight gradient is its own reduction over (n, i, j).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DEPTHWISE_HD __host__ __device__ __forceinline__
#else
#define DEPTHWISE_HD inline
#endif

namespace mmoverlock {
namespace depthwise {

// One call's sizes: plain data, passed by value to every kernel.
struct Shape {
  int64_t N, C, H, W;  // input
  int64_t Ho, Wo;      // output
  int64_t K;           // odd kernel size
  int64_t pad;         // zero padding on every side
  int64_t dil;         // dilation
};

// The taps a in [*lo, *hi) of output position i that read inside an axis of length L (input index i - p + r*a).
// T: int64_t, or int where the caller knows the axis fits (the CUDA bodies: no 64-bit division on the GPU).
template <typename T>
DEPTHWISE_HD void valid_taps(T i, T L, const Shape& s, T* lo, T* hi) {
  const T pad = static_cast<T>(s.pad), dil = static_cast<T>(s.dil), K = static_cast<T>(s.K);
  const T first = i - pad;  // input index of tap 0
  // a >= ceil(-first / r) and first + r*a <= L - 1.
  const T a0 = first >= 0 ? 0 : (-first + dil - 1) / dil;
  const T a1 = first > L - 1 ? 0 : (L - 1 - first) / dil + 1;
  *lo = a0 < K ? a0 : K;
  *hi = a1 < K ? a1 : K;
  if (*hi < *lo) *hi = *lo;
}

// Output positions j in [*lo, *hi) whose tap e reads inside an axis of input length L and output length Lo.
DEPTHWISE_HD void valid_outputs(int64_t e, int64_t L, int64_t Lo, const Shape& s, int64_t* lo, int64_t* hi) {
  const int64_t shift = s.dil * e - s.pad;  // input index = j + shift
  const int64_t j0 = -shift > 0 ? -shift : 0;
  const int64_t j1 = L - shift < Lo ? L - shift : Lo;
  *lo = j0;
  *hi = j1 > j0 ? j1 : j0;
}

}  // namespace depthwise
}  // namespace mmoverlock
