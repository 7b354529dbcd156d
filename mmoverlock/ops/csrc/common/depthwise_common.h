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
DEPTHWISE_HD void valid_taps(int64_t i, int64_t L, const Shape& s, int64_t* lo, int64_t* hi) {
  const int64_t first = i - s.pad;  // input index of tap 0
  // a >= ceil(-first / r) and first + r*a <= L - 1.
  int64_t a0 = first >= 0 ? 0 : (-first + s.dil - 1) / s.dil;
  int64_t a1 = first > L - 1 ? 0 : (L - 1 - first) / s.dil + 1;
  *lo = a0 < s.K ? a0 : s.K;
  *hi = a1 < s.K ? a1 : s.K;
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
