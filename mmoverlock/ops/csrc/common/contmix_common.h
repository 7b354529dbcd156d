// Device-independent arithmetic of the ContMix core, shared by the CPU and the CUDA kernels.
//
// Everything that decides *which* numbers are combined lives here (window geometry, the inverse neighbourhood used
// by the value gradient, the relative-position-bias index, the softmax and its gradient), so the CPU tests exercise
// the same index arithmetic that the CUDA kernels run. The kernels only differ in how they parallelise.
//
// Layout (all contiguous): weights/logits [B, G, H, W, T] with T = K*K taps, t = a*K + e; value, out [B, G, H, W, C];
// rpb [G, R, R] with R = 2K - 1; the log-sum-exp of the biased logits that the CUDA forward saves for its backward,
// lse [B, G, H, W] (with softmax).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CONTMIX_HD __host__ __device__ __forceinline__
#else
#define CONTMIX_HD inline
#endif

namespace mmoverlock {
namespace contmix {

// The largest window the CUDA kernels take: it bounds the shared-memory bias table of grad_weights_kernel
// ((2K-1)^2 doubles < 48 KB). Python reads it once, as mmoverlock._ext.cuda_max_kernel_size.
constexpr int64_t kCudaMaxKernelSize = 31;

// The problem size of one ContMix call: plain data, passed by value to every kernel (CPU, per-ISA bodies, CUDA).
// Host code builds it with make_shape (contmix_shape.h).
struct Shape {
  int64_t B, G, H, W, C;
  int64_t K;     // odd window size
  int64_t T;     // taps per pixel, K * K
  int64_t R;     // side of a group's bias table, 2K - 1
  int64_t npix;  // output pixels, B * G * H * W
  bool softmax;
};

// First row (or column) of the K-wide window of position i on an axis of length L: clamp(i - K/2, 0, L - K).
// Windows are shifted inwards at the borders, never padded, so every position has exactly K neighbours per axis.
CONTMIX_HD int64_t window_start(int64_t i, int64_t L, int64_t K) {
  const int64_t s = i - K / 2;
  return s < 0 ? 0 : (s > L - K ? L - K : s);
}

// The positions whose windows contain y form one contiguous range [*lo, *hi] because window_start is monotone.
// Derived from window_start: lo is the first i with start(i) >= y - K + 1, hi the last i with start(i) <= y.
// Used to gather the value gradient instead of scattering it, which needs no atomics.
CONTMIX_HD void inverse_window(int64_t y, int64_t L, int64_t K, int64_t* lo, int64_t* hi) {
  const int64_t r = K / 2;
  *lo = y <= K - 1 ? 0 : y - r;
  *hi = y >= L - K ? L - 1 : y + r;
}

// Offset into one group's [R, R] bias table for neighbour (y, x) of pixel (i, j): B[y - i + K - 1, x - j + K - 1].
CONTMIX_HD int64_t bias_offset(int64_t y, int64_t i, int64_t x, int64_t j, int64_t K) {
  return (y - i + K - 1) * (2 * K - 1) + (x - j + K - 1);
}

// The neighbourhood of one output pixel: its first neighbour row/column and its position in the bias table.
struct Window {
  int64_t row0;   // neighbour of tap t = a*K + e is (row0 + a, col0 + e)
  int64_t col0;
  int64_t bias0;  // bias of tap (a, e) is at bias0 + a * (2K - 1) + e
};

CONTMIX_HD Window pixel_window(int64_t i, int64_t j, int64_t H, int64_t W, int64_t K) {
  Window win;
  win.row0 = window_start(i, H, K);
  win.col0 = window_start(j, W, K);
  win.bias0 = bias_offset(win.row0, i, win.col0, j, K);
  return win;
}

// exp in the accumulation type (float kernels must not silently promote to double).
CONTMIX_HD float exp_acc(float x) { return expf(x); }
CONTMIX_HD double exp_acc(double x) { return exp(x); }
CONTMIX_HD float log_acc(float x) { return logf(x); }
CONTMIX_HD double log_acc(double x) { return log(x); }

// Aggregation weight of a tap from its biased logit: the softmax probability exp(l - lse), or the logit itself.
template <typename acc_t>
CONTMIX_HD acc_t tap_weight(acc_t logit, acc_t lse, bool softmax) {
  return softmax ? exp_acc(logit - lse) : logit;
}

// Gradient of the (biased) logit from dL/dP of its tap. With softmax, dL/dl_t = P_t (dL/dP_t - sum_s P_s dL/dP_s),
// where `dot` = sum_s P_s dL/dP_s (= sum_c grad_out[c] * out[c], which is how the CUDA kernels get it without
// storing the probabilities).
template <typename acc_t>
CONTMIX_HD acc_t logit_grad(acc_t weight, acc_t grad_weight, acc_t dot, bool softmax) {
  return softmax ? weight * (grad_weight - dot) : grad_weight;
}

}  // namespace contmix
}  // namespace mmoverlock
