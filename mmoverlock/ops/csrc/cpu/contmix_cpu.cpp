// CPU kernels of the ContMix core (float32 and float64), parallel over output rows with at::parallel_for.
//
// Every kernel owns the rows it writes, so there are no races and the results do not depend on the thread count:
//   forward / stats: one output pixel at a time (logits -> softmax -> aggregate over the K*K neighbours);
//   grad_value:      gathered over the inverse neighbourhood of each value pixel (no scatter, no atomics);
//   grad_weights:    one output pixel at a time, probabilities recomputed from the saved log-sum-exp;
//   grad_rpb:        one bias-table row per task, summed from grad_weights.
// The softmax probabilities are never stored: backward keeps two numbers per pixel (`stats`) instead of K*K.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "contmix_common.h"
#include "contmix_kernels.h"

namespace mmoverlock {
namespace contmix {
namespace {

struct Shape {
  int64_t B, G, H, W, C, K, T, R;
  bool softmax;
};

Shape make_shape(const at::Tensor& value, int64_t K, bool softmax) {
  return Shape{value.size(0), value.size(1), value.size(2), value.size(3), value.size(4), K, K * K, 2 * K - 1,
               softmax};
}

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// Biased logits of one pixel: logits[t] = w[t] + rpb_g[bias of tap t] (rpb_g may be null).
template <typename scalar_t, typename acc_t>
inline void pixel_logits(const scalar_t* w, const scalar_t* rpb_g, const Window& win, const Shape& s,
                         acc_t* logits) {
  for (int64_t a = 0; a < s.K; ++a) {
    for (int64_t e = 0; e < s.K; ++e) {
      const int64_t t = a * s.K + e;
      acc_t l = static_cast<acc_t>(w[t]);
      if (rpb_g != nullptr) l += static_cast<acc_t>(rpb_g[win.bias0 + a * s.R + e]);
      logits[t] = l;
    }
  }
}

// Softmax of p[0:T] in place (max-subtracted); returns the log-sum-exp that backward uses to recompute it.
template <typename acc_t>
inline acc_t softmax_inplace(acc_t* p, int64_t T) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  for (int64_t t = 0; t < T; ++t) m = std::max(m, p[t]);
  acc_t sum = 0;
  for (int64_t t = 0; t < T; ++t) {
    p[t] = exp_acc(p[t] - m);
    sum += p[t];
  }
  const acc_t inv = acc_t(1) / sum;
  for (int64_t t = 0; t < T; ++t) p[t] *= inv;
  return m + log_acc(sum);
}

// acc[0:C] = sum over taps of p[t] * value[neighbour t, 0:C]; the channel loop is contiguous and vectorised.
template <typename scalar_t, typename acc_t>
inline void aggregate(const acc_t* p, const scalar_t* v_plane, const Window& win, const Shape& s,
                      acc_t* __restrict__ acc) {
  std::fill(acc, acc + s.C, acc_t(0));
  for (int64_t a = 0; a < s.K; ++a) {
    const scalar_t* vrow = v_plane + ((win.row0 + a) * s.W + win.col0) * s.C;
    for (int64_t e = 0; e < s.K; ++e) {
      const acc_t pt = p[a * s.K + e];
      const scalar_t* __restrict__ vp = vrow + e * s.C;
#pragma omp simd
      for (int64_t c = 0; c < s.C; ++c) acc[c] += pt * static_cast<acc_t>(vp[c]);
    }
  }
}

// Forward pass. With `stats` non-null it is the first backward pass instead: it recomputes the output only to store,
// per pixel, the log-sum-exp of the biased logits and sum_c grad_out * out, and writes no output.
template <typename scalar_t>
void forward_kernel(const Shape& s, const scalar_t* w, const scalar_t* v, const scalar_t* rpb, scalar_t* out,
                    const scalar_t* grad_out, at::opmath_type<scalar_t>* stats) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.B * s.G * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> p(s.T), acc(s.C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / s.H, i = row % s.H;
      const scalar_t* v_plane = v + plane * s.H * s.W * s.C;
      const scalar_t* rpb_g = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
      for (int64_t j = 0; j < s.W; ++j) {
        const int64_t pix = row * s.W + j;
        const Window win = pixel_window(i, j, s.H, s.W, s.K);
        pixel_logits(w + pix * s.T, rpb_g, win, s, p.data());
        const acc_t lse = s.softmax ? softmax_inplace(p.data(), s.T) : acc_t(0);
        aggregate(p.data(), v_plane, win, s, acc.data());
        if (stats != nullptr) {
          const scalar_t* go = grad_out + pix * s.C;
          acc_t dot = 0;
          for (int64_t c = 0; c < s.C; ++c) dot += static_cast<acc_t>(go[c]) * acc[c];
          stats[2 * pix] = lse;
          stats[2 * pix + 1] = dot;
        } else {
          scalar_t* o = out + pix * s.C;
          for (int64_t c = 0; c < s.C; ++c) o[c] = static_cast<scalar_t>(acc[c]);
        }
      }
    }
  });
}

// grad_value[y, x] = sum over the pixels (i, j) whose window holds (y, x) of P[i, j, tap] * grad_out[i, j]:
// a gather over the inverse neighbourhood, so each task writes only its own rows.
template <typename scalar_t>
void grad_value_kernel(const Shape& s, const scalar_t* grad_out, const scalar_t* w, const scalar_t* rpb,
                       const at::opmath_type<scalar_t>* stats, scalar_t* grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.B * s.G * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(s.C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / s.H, y = row % s.H;
      const int64_t plane_pix = plane * s.H * s.W;
      const scalar_t* rpb_g = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
      int64_t ilo, ihi;
      inverse_window(y, s.H, s.K, &ilo, &ihi);
      for (int64_t x = 0; x < s.W; ++x) {
        int64_t jlo, jhi;
        inverse_window(x, s.W, s.K, &jlo, &jhi);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t i = ilo; i <= ihi; ++i) {
          const int64_t a = y - window_start(i, s.H, s.K);
          for (int64_t j = jlo; j <= jhi; ++j) {
            const int64_t e = x - window_start(j, s.W, s.K);
            const int64_t pix = plane_pix + i * s.W + j;
            acc_t l = static_cast<acc_t>(w[pix * s.T + a * s.K + e]);
            if (rpb_g != nullptr) l += static_cast<acc_t>(rpb_g[bias_offset(y, i, x, j, s.K)]);
            const acc_t p = tap_weight(l, s.softmax ? stats[2 * pix] : acc_t(0), s.softmax);
            const scalar_t* __restrict__ go = grad_out + pix * s.C;
            acc_t* __restrict__ ap = acc.data();
#pragma omp simd
            for (int64_t c = 0; c < s.C; ++c) ap[c] += p * static_cast<acc_t>(go[c]);
          }
        }
        scalar_t* gv = grad_value + (row * s.W + x) * s.C;
        for (int64_t c = 0; c < s.C; ++c) gv[c] = static_cast<scalar_t>(acc[c]);
      }
    }
  });
}

// grad_weights[i, j, t] = dL/d(biased logit): dL/dP_t = <grad_out[i, j], value[neighbour t]>, through the softmax
// with P_t recomputed from the stored log-sum-exp.
template <typename scalar_t>
void grad_weights_kernel(const Shape& s, const scalar_t* grad_out, const scalar_t* w, const scalar_t* v,
                         const scalar_t* rpb, const at::opmath_type<scalar_t>* stats, scalar_t* grad_weights) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.B * s.G * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> go(s.C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / s.H, i = row % s.H;
      const scalar_t* v_plane = v + plane * s.H * s.W * s.C;
      const scalar_t* rpb_g = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
      for (int64_t j = 0; j < s.W; ++j) {
        const int64_t pix = row * s.W + j;
        const Window win = pixel_window(i, j, s.H, s.W, s.K);
        for (int64_t c = 0; c < s.C; ++c) go[c] = static_cast<acc_t>(grad_out[pix * s.C + c]);
        const acc_t lse = s.softmax ? stats[2 * pix] : acc_t(0);
        const acc_t dot = s.softmax ? stats[2 * pix + 1] : acc_t(0);
        const acc_t* __restrict__ gp = go.data();
        for (int64_t a = 0; a < s.K; ++a) {
          for (int64_t e = 0; e < s.K; ++e) {
            const int64_t t = a * s.K + e;
            const scalar_t* __restrict__ vp = v_plane + ((win.row0 + a) * s.W + win.col0 + e) * s.C;
            acc_t dp = 0;
#pragma omp simd reduction(+ : dp)
            for (int64_t c = 0; c < s.C; ++c) dp += gp[c] * static_cast<acc_t>(vp[c]);
            acc_t p = 0;
            if (s.softmax) {
              acc_t l = static_cast<acc_t>(w[pix * s.T + t]);
              if (rpb_g != nullptr) l += static_cast<acc_t>(rpb_g[win.bias0 + a * s.R + e]);
              p = tap_weight(l, lse, true);
            }
            grad_weights[pix * s.T + t] = static_cast<scalar_t>(logit_grad(p, dp, dot, s.softmax));
          }
        }
      }
    }
  });
}

// grad_rpb[g, r, q] = sum over batch, pixels and taps whose bias index is (r, q) of grad_weights. One task per
// (group, table row): for pixel row i the row index r fixes the tap row a, so each grad_weights entry is read once.
template <typename scalar_t>
void grad_rpb_kernel(const Shape& s, const scalar_t* grad_weights, at::opmath_type<scalar_t>* grad_rpb) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, s.G * s.R, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(s.R);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / s.R, r = task % s.R;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t b = 0; b < s.B; ++b) {
        const int64_t plane_pix = (b * s.G + g) * s.H * s.W;
        for (int64_t i = 0; i < s.H; ++i) {
          const int64_t a = i + r - (s.K - 1) - window_start(i, s.H, s.K);  // tap row of neighbour row i + r - K + 1
          if (a < 0 || a >= s.K) continue;
          for (int64_t j = 0; j < s.W; ++j) {
            const scalar_t* gw = grad_weights + (plane_pix + i * s.W + j) * s.T + a * s.K;
            acc_t* aq = acc.data() + (window_start(j, s.W, s.K) - j + s.K - 1);
            for (int64_t e = 0; e < s.K; ++e) aq[e] += static_cast<acc_t>(gw[e]);
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
                             optional_ptr<scalar_t>(rpb), out.mutable_data_ptr<scalar_t>(), nullptr, nullptr);
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& stats,
                  at::Tensor& grad_weights, at::Tensor& grad_value, at::Tensor& grad_rpb) {
  const Shape s = make_shape(value, kernel_size, softmax);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "contmix_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* b = optional_ptr<scalar_t>(rpb);
    acc_t* st = softmax ? stats.mutable_data_ptr<acc_t>() : nullptr;
    if (softmax) forward_kernel<scalar_t>(s, w, v, b, nullptr, go, st);
    grad_value_kernel<scalar_t>(s, go, w, b, st, grad_value.mutable_data_ptr<scalar_t>());
    scalar_t* gw = grad_weights.mutable_data_ptr<scalar_t>();
    grad_weights_kernel<scalar_t>(s, go, w, v, b, st, gw);
    if (rpb.defined()) grad_rpb_kernel<scalar_t>(s, gw, grad_rpb.mutable_data_ptr<acc_t>());
  });
}

}  // namespace contmix
}  // namespace mmoverlock
