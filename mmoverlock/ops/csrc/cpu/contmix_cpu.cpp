// CPU kernels of the ContMix core (float32 and float64), parallel with at::parallel_for.
//
// Every task owns the memory it writes, so there are no races and no atomics, and the results do not depend on the
// number of threads:
//   forward:   one task per output row; per pixel: biased logits -> softmax -> aggregate over the K*K neighbours.
//   backward:  one task per (plane, band of value rows). Each pixel's softmax is recomputed once from the inputs (it
//              is never stored); the task scatters P * grad_out into its own band of grad_value and writes
//              grad_weights for the pixels of its band. Pixels whose windows straddle a band edge are recomputed by
//              both bands, so bands are kept at least 2K rows high.
//   grad_rpb:  one task per (group, bias-table row), summed from grad_weights.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "contmix_common.h"
#include "contmix_kernels.h"

namespace mmoverlock {
namespace contmix {
namespace {

// Channels accumulated in registers at a time (four SSE registers of float).
constexpr int64_t kChannelBlock = 16;

struct Shape {
  int64_t B, G, H, W, C, K, T, R;
  bool softmax;
};

Shape make_shape(const at::Tensor& value, int64_t K, bool softmax) {
  return Shape{value.size(0), value.size(1), value.size(2), value.size(3), value.size(4), K, K * K, 2 * K - 1,
               softmax};
}

// Tasks per thread chunk such that a chunk does at least ~2^16 multiply-adds: small problems then run inline instead
// of waking the thread pool, whose start-up costs milliseconds when the cores are busy.
int64_t grain(int64_t work_per_task) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work_per_task));
}

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// exp(x) for x <= 0 in plain, branch-free arithmetic (Cephes' expf polynomial, ~1 ulp) so that loops over taps
// vectorise; glibc's expf is a scalar call. Inputs below -87 flush to 2^-126, harmless for softmax weights.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;               // x - n ln2, ln2 split in two
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// Biased logits of one pixel: logits[t] = w[t] + rpb_g[bias of tap t] (rpb_g may be null).
template <typename scalar_t>
inline void pixel_logits(const scalar_t* w, const scalar_t* rpb_g, const Window& win, const Shape& s,
                         scalar_t* logits) {
  if (rpb_g == nullptr) {
    std::copy(w, w + s.T, logits);
    return;
  }
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* bias = rpb_g + win.bias0 + a * s.R;
    for (int64_t e = 0; e < s.K; ++e) logits[a * s.K + e] = w[a * s.K + e] + bias[e];
  }
}

// Softmax of p[0:T] in place, max-subtracted. Separate loops so that the exp and the sum vectorise.
template <typename scalar_t>
inline void softmax_inplace(scalar_t* __restrict__ p, int64_t T) {
  scalar_t m = -std::numeric_limits<scalar_t>::infinity();
  for (int64_t t = 0; t < T; ++t) m = p[t] > m ? p[t] : m;
#pragma omp simd
  for (int64_t t = 0; t < T; ++t) p[t] = exp_nonpositive(p[t] - m);
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < T; ++t) sum += p[t];
  const scalar_t inv = scalar_t(1) / sum;
#pragma omp simd
  for (int64_t t = 0; t < T; ++t) p[t] *= inv;
}

// The aggregation weights of one pixel: softmax?(weights + bias).
template <typename scalar_t>
inline void pixel_weights(const scalar_t* w, const scalar_t* rpb_g, const Window& win, const Shape& s,
                          scalar_t* p) {
  pixel_logits(w, rpb_g, win, s, p);
  if (s.softmax) softmax_inplace(p, s.T);
}

// out[c0:c0+NC] = sum over taps of p[t] * value[neighbour t, c0:c0+NC]. With a compile-time NC the accumulators
// stay in vector registers across the K*K taps.
template <int64_t NC, typename scalar_t>
inline void aggregate_block(const scalar_t* p, const scalar_t* v_plane, const Window& win, const Shape& s,
                            int64_t c0, scalar_t* __restrict__ out) {
  scalar_t acc[NC] = {};
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* vrow = v_plane + ((win.row0 + a) * s.W + win.col0) * s.C + c0;
    for (int64_t e = 0; e < s.K; ++e) {
      const scalar_t pt = p[a * s.K + e];
      const scalar_t* __restrict__ vp = vrow + e * s.C;
      for (int64_t c = 0; c < NC; ++c) acc[c] += pt * vp[c];
    }
  }
  for (int64_t c = 0; c < NC; ++c) out[c0 + c] = acc[c];
}

// The channel tail (< kChannelBlock channels) with a run-time count.
template <typename scalar_t>
inline void aggregate_tail(const scalar_t* p, const scalar_t* v_plane, const Window& win, const Shape& s,
                           int64_t c0, scalar_t* __restrict__ out) {
  const int64_t nc = s.C - c0;
  scalar_t acc[kChannelBlock] = {};
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* vrow = v_plane + ((win.row0 + a) * s.W + win.col0) * s.C + c0;
    for (int64_t e = 0; e < s.K; ++e) {
      const scalar_t pt = p[a * s.K + e];
      const scalar_t* __restrict__ vp = vrow + e * s.C;
      for (int64_t c = 0; c < nc; ++c) acc[c] += pt * vp[c];
    }
  }
  for (int64_t c = 0; c < nc; ++c) out[c0 + c] = acc[c];
}

// out[0:C] = sum over taps of p[t] * value[neighbour t, 0:C], kChannelBlock channels at a time.
template <typename scalar_t>
inline void aggregate(const scalar_t* p, const scalar_t* v_plane, const Window& win, const Shape& s,
                      scalar_t* out) {
  int64_t c0 = 0;
  for (; c0 + kChannelBlock <= s.C; c0 += kChannelBlock) aggregate_block<kChannelBlock>(p, v_plane, win, s, c0, out);
  if (c0 < s.C) aggregate_tail(p, v_plane, win, s, c0, out);
}

template <typename scalar_t>
void forward_kernel(const Shape& s, const scalar_t* w, const scalar_t* v, const scalar_t* rpb, scalar_t* out) {
  at::parallel_for(0, s.B * s.G * s.H, grain(s.W * s.T * (s.C + 1)), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> p(s.T);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / s.H, i = row % s.H;
      const scalar_t* v_plane = v + plane * s.H * s.W * s.C;
      const scalar_t* rpb_g = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
      for (int64_t j = 0; j < s.W; ++j) {
        const int64_t pix = row * s.W + j;
        const Window win = pixel_window(i, j, s.H, s.W, s.K);
        pixel_weights(w + pix * s.T, rpb_g, win, s, p.data());
        aggregate(p.data(), v_plane, win, s, out + pix * s.C);
      }
    }
  });
}

// Rows per backward band: enough tasks for the threads, but at least 2K rows so that recomputing the pixels whose
// windows straddle a band edge stays cheap. Depends on the shape and thread count only through the split; every
// grad_value element is still summed in the same order, so the result does not.
int64_t band_rows(const Shape& s) {
  const int64_t planes = s.B * s.G;
  const int64_t wanted = std::max<int64_t>(1, (4 * at::get_num_threads() + planes - 1) / planes);
  return std::max((s.H + wanted - 1) / wanted, std::min(s.H, 2 * s.K));
}

// grad_value and grad_weights (= dL/d biased logits) in one pass over (plane, band) tasks.
template <typename scalar_t>
void backward_kernel(const Shape& s, const scalar_t* grad_out, const scalar_t* w, const scalar_t* v,
                     const scalar_t* rpb, scalar_t* grad_weights, scalar_t* grad_value) {
  const int64_t band = band_rows(s);
  const int64_t bands = (s.H + band - 1) / band;
  at::parallel_for(0, s.B * s.G * bands, grain(2 * band * s.W * s.T * (s.C + 1)), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> p(s.T), dp(s.T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands;
      const int64_t y0 = (task % bands) * band, y1 = std::min(s.H, y0 + band);  // value rows [y0, y1) of this task
      const int64_t plane_pix = plane * s.H * s.W;
      const scalar_t* v_plane = v + plane_pix * s.C;
      scalar_t* gv_plane = grad_value + plane_pix * s.C;
      const scalar_t* rpb_g = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
      std::fill(gv_plane + y0 * s.W * s.C, gv_plane + y1 * s.W * s.C, scalar_t(0));
      // The output rows whose windows reach into [y0, y1).
      int64_t i_first, i_last, unused;
      inverse_window(y0, s.H, s.K, &i_first, &unused);
      inverse_window(y1 - 1, s.H, s.K, &unused, &i_last);
      for (int64_t i = i_first; i <= i_last; ++i) {
        const int64_t row0 = window_start(i, s.H, s.K);
        const int64_t a0 = std::max<int64_t>(0, y0 - row0), a1 = std::min(s.K, y1 - row0);  // tap rows in band
        const bool owns_row = y0 <= i && i < y1;
        for (int64_t j = 0; j < s.W; ++j) {
          const int64_t pix = plane_pix + i * s.W + j;
          const Window win = pixel_window(i, j, s.H, s.W, s.K);
          const scalar_t* __restrict__ go = grad_out + pix * s.C;
          pixel_weights(w + pix * s.T, rpb_g, win, s, p.data());
          // grad_value[neighbour t] += P_t * grad_out, for the taps whose row lies in this band.
          for (int64_t a = a0; a < a1; ++a) {
            scalar_t* gv_row = gv_plane + ((row0 + a) * s.W + win.col0) * s.C;
            for (int64_t e = 0; e < s.K; ++e) {
              const scalar_t pt = p[a * s.K + e];
              scalar_t* __restrict__ gv = gv_row + e * s.C;
#pragma omp simd
              for (int64_t c = 0; c < s.C; ++c) gv[c] += pt * go[c];
            }
          }
          if (!owns_row) continue;
          // dL/dP_t = <grad_out, value[neighbour t]>, then through the softmax.
          scalar_t dot = 0;
          for (int64_t a = 0; a < s.K; ++a) {
            const scalar_t* vrow = v_plane + ((win.row0 + a) * s.W + win.col0) * s.C;
            for (int64_t e = 0; e < s.K; ++e) {
              const scalar_t* __restrict__ vp = vrow + e * s.C;
              scalar_t d = 0;
#pragma omp simd reduction(+ : d)
              for (int64_t c = 0; c < s.C; ++c) d += go[c] * vp[c];
              dp[a * s.K + e] = d;
              dot += p[a * s.K + e] * d;
            }
          }
          scalar_t* gw = grad_weights + pix * s.T;
          for (int64_t t = 0; t < s.T; ++t) gw[t] = logit_grad(p[t], dp[t], dot, s.softmax);
        }
      }
    }
  });
}

// grad_rpb[g, r, q] = sum over batch, pixels and taps whose bias index is (r, q) of grad_weights. One task per
// (group, table row): for pixel row i the table row r fixes the tap row a, so each grad_weights entry is read once.
template <typename scalar_t>
void grad_rpb_kernel(const Shape& s, const scalar_t* grad_weights, scalar_t* grad_rpb) {
  at::parallel_for(0, s.G * s.R, grain(s.B * s.H * s.W * s.K), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> acc(s.R);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / s.R, r = task % s.R;
      std::fill(acc.begin(), acc.end(), scalar_t(0));
      for (int64_t b = 0; b < s.B; ++b) {
        const int64_t plane_pix = (b * s.G + g) * s.H * s.W;
        for (int64_t i = 0; i < s.H; ++i) {
          const int64_t a = i + r - (s.K - 1) - window_start(i, s.H, s.K);  // tap row of neighbour row i + r - K + 1
          if (a < 0 || a >= s.K) continue;
          for (int64_t j = 0; j < s.W; ++j) {
            const scalar_t* gw = grad_weights + (plane_pix + i * s.W + j) * s.T + a * s.K;
            scalar_t* aq = acc.data() + (window_start(j, s.W, s.K) - j + s.K - 1);
            for (int64_t e = 0; e < s.K; ++e) aq[e] += gw[e];
          }
        }
      }
      std::copy(acc.begin(), acc.end(), grad_rpb + task * s.R);
    }
  });
}

}  // namespace

void forward_cpu(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                 bool softmax, at::Tensor& out) {
  const Shape s = make_shape(value, kernel_size, softmax);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "contmix_forward_cpu", [&] {
    forward_kernel<scalar_t>(s, weights.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(),
                             optional_ptr<scalar_t>(rpb), out.mutable_data_ptr<scalar_t>());
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& grad_weights,
                  at::Tensor& grad_value, at::Tensor& grad_rpb) {
  const Shape s = make_shape(value, kernel_size, softmax);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "contmix_backward_cpu", [&] {
    scalar_t* gw = grad_weights.mutable_data_ptr<scalar_t>();
    backward_kernel<scalar_t>(s, grad_out.const_data_ptr<scalar_t>(), weights.const_data_ptr<scalar_t>(),
                              value.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(rpb), gw,
                              grad_value.mutable_data_ptr<scalar_t>());
    // Float and double accumulate in their own type on the CPU, so grad_rpb is written directly.
    if (rpb.defined()) grad_rpb_kernel<scalar_t>(s, gw, grad_rpb.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace contmix
}  // namespace mmoverlock
