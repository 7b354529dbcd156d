// The per-pixel bodies of the CUDA kernels, written once for a "team" of lanes that share one pixel.
//
// A team policy supplies the lane's index and size and the collective operations the bodies need:
//   lane(), size()        this lane and the number of lanes sharing the pixel (a power of two, at most 32)
//   sum(v), max(v)        the reduction over the team, returned to every lane
//   broadcast(v, k)       lane k's v, returned to every lane
//   uniform_max(n)        the maximum of n over every lane that must loop in step with this one
// The CUDA kernels run the bodies with a team of warp lanes (warp shuffles, contmix_cuda.cu); the test-only CPU driver
// (csrc/contmix_testing.cpp) runs them with `SoloTeam`, a team of one lane for which every collective is the
// identity. That is what lets the CPU test suite check the arithmetic, the index math and the dtype conversions that
// the GPU executes; only the parallel glue (lane/shuffle/shared memory/atomics) stays GPU-only.
//
// Every lane of a team must call a body, also for a pixel past the end (the caller clamps it and passes
// store = false), because the collectives need the whole team.
//
// Accumulation is in at::opmath_type<scalar_t>: float for float16/bfloat16/float32, double for float64.
#pragma once

#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "contmix_common.h"
#include "contmix_shape.h"

// Unroll the loops over a lane's CPT channels (a compile-time count).
#if defined(__CUDACC__) || defined(__HIPCC__)
#define CONTMIX_UNROLL _Pragma("unroll")
#else
#define CONTMIX_UNROLL _Pragma("GCC unroll 4")
#endif

namespace mmoverlock {
namespace contmix {

// A team of one lane: every collective is the identity.
struct SoloTeam {
  CONTMIX_HD int lane() const { return 0; }
  CONTMIX_HD int size() const { return 1; }
  template <typename T>
  CONTMIX_HD T sum(T v) const {
    return v;
  }
  template <typename T>
  CONTMIX_HD T max(T v) const {
    return v;
  }
  template <typename T>
  CONTMIX_HD T broadcast(T v, int /*src*/) const {
    return v;
  }
  CONTMIX_HD int uniform_max(int v) const { return v; }
};

template <typename T>
CONTMIX_HD T max_acc(T a, T b) {
  return a > b ? a : b;
}

// Channels per lane: 4 when C allows, so a team covers more channels per broadcast (a compile-time constant that
// sizes the lane's accumulators). Both the CUDA launchers and the CPU driver choose it here.
template <typename F>
void with_channels_per_lane(int64_t C, const F& f) {
  if (C >= 4) {
    f(std::integral_constant<int, 4>{});
  } else if (C >= 2) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// Where a pixel is: its plane (b * G + g; 64-bit, for the plane's base offsets) and its row and column (32-bit: every
// index inside a plane fits in int32, which the launchers check with check_plane_indices). One 64-bit division per
// pixel; the per-tap index arithmetic below is 32-bit (a 64-bit division is a ~70-instruction call on the GPU).
struct PixelPos {
  int64_t plane;
  int i, j;
};

CONTMIX_HD PixelPos pixel_pos(int64_t pix, const Shape& s) {
  const int64_t plane = pix / (s.H * s.W);
  const int local = static_cast<int>(pix - plane * s.H * s.W), W = static_cast<int>(s.W);
  const int i = local / W;
  return {plane, i, local - i * W};
}

// The group's bias table of a plane (plane = b * G + g), or null without rpb.
template <typename acc_t>
CONTMIX_HD const acc_t* group_bias(const acc_t* rpb, int64_t plane, const Shape& s) {
  return rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
}

// Biased logit of tap t of an output pixel (wp: the pixel's T logits; rp: the group's bias table, in the
// accumulation type, or null).
template <typename acc_t, typename scalar_t>
CONTMIX_HD acc_t tap_logit(const scalar_t* wp, const acc_t* rp, const Window& win, const Shape& s, int t) {
  acc_t l = static_cast<acc_t>(wp[t]);
  if (rp != nullptr) {
    const int K = static_cast<int>(s.K), a = t / K;
    l += rp[static_cast<int>(win.bias0) + a * static_cast<int>(s.R) + (t - a * K)];
  }
  return l;
}

// log sum_t exp(biased logit t) of one pixel, max-shifted; the lanes split the taps.
template <typename acc_t, typename scalar_t, typename Team>
CONTMIX_HD acc_t pixel_log_sum_exp(const Team& team, const scalar_t* wp, const acc_t* rp, const Window& win,
                                   const Shape& s) {
  acc_t m = -INFINITY;
  const int T = static_cast<int>(s.T);
  for (int t = team.lane(); t < T; t += team.size()) m = max_acc(m, tap_logit<acc_t>(wp, rp, win, s, t));
  m = team.max(m);
  acc_t sum = 0;
  for (int t = team.lane(); t < T; t += team.size()) sum += exp_acc(tap_logit<acc_t>(wp, rp, win, s, t) - m);
  return m + log_acc(team.sum(sum));
}

// Forward (kStats = false): out[pix] = sum_t P_t value[neighbour t], lanes over channels (CPT consecutive channels
// per lane). The lanes compute the weights of a chunk of taps, one tap each, and broadcast them, so every exp is
// evaluated once per pixel. First backward pass (kStats = true): the same sum, reduced to
// stats[pix] = (log-sum-exp of the biased logits, sum_c grad_out * out) instead of being stored.
template <typename scalar_t, int CPT, bool kStats, typename Team>
CONTMIX_HD void forward_pixel(const Team& team, const Shape& s, int64_t pix, bool store, const scalar_t* w,
                              const scalar_t* v, const at::opmath_type<scalar_t>* rpb, const scalar_t* grad_out, scalar_t* out,
                              at::opmath_type<scalar_t>* stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = team.lane(), size = team.size();
  const PixelPos at = pixel_pos(pix, s);
  const Window win = pixel_window(at.i, at.j, s.H, s.W, s.K);
  const scalar_t* wp = w + pix * s.T;
  const scalar_t* vp = v + at.plane * s.H * s.W * s.C;
  const acc_t* rp = group_bias(rpb, at.plane, s);
  const int T = static_cast<int>(s.T), K = static_cast<int>(s.K), W = static_cast<int>(s.W),
            C = static_cast<int>(s.C);
  const acc_t lse = s.softmax ? pixel_log_sum_exp<acc_t>(team, wp, rp, win, s) : acc_t(0);

  acc_t dot = 0;
  for (int c0 = 0; c0 < C; c0 += size * CPT) {
    const int cl = c0 + lane * CPT;  // this lane's first channel
    acc_t acc[CPT];
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) acc[q] = 0;
    for (int t0 = 0; t0 < T; t0 += size) {
      const int t = t0 + lane;
      const acc_t mine = t < T ? tap_weight(tap_logit<acc_t>(wp, rp, win, s, t), lse, s.softmax) : acc_t(0);
      const int n = T - t0 < size ? T - t0 : size;
      int a = t0 / K, e = t0 - a * K;
      for (int k = 0; k < n; ++k) {
        const acc_t p = team.broadcast(mine, k);
        const scalar_t* src = vp + ((static_cast<int>(win.row0) + a) * W + static_cast<int>(win.col0) + e) * C + cl;
CONTMIX_UNROLL
        for (int q = 0; q < CPT; ++q) {
          if (cl + q < C) acc[q] += p * static_cast<acc_t>(src[q]);
        }
        if (++e == K) {
          e = 0;
          ++a;
        }
      }
    }
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) {
      if (cl + q < C) {
        if constexpr (kStats) {
          dot += static_cast<acc_t>(grad_out[pix * s.C + cl + q]) * acc[q];
        } else if (store) {
          out[pix * s.C + cl + q] = static_cast<scalar_t>(acc[q]);
        }
      }
    }
  }
  if constexpr (kStats) {
    dot = team.sum(dot);
    if (store && lane == 0) {
      stats[2 * pix] = lse;
      stats[2 * pix + 1] = dot;
    }
  }
}

// grad_value[pix] = sum over the pixels (i, j) whose window holds pix = (y, x) of P[i, j, tap] * grad_out[i, j]:
// a gather over the inverse neighbourhood (no atomics). The weights are recomputed from the inputs and, with
// softmax, the per-pixel log-sum-exp in stats.
template <typename scalar_t, int CPT, typename Team>
CONTMIX_HD void grad_value_pixel(const Team& team, const Shape& s, int64_t pix, bool store, const scalar_t* grad_out,
                                 const scalar_t* w, const at::opmath_type<scalar_t>* rpb,
                                 const at::opmath_type<scalar_t>* stats,
                                 scalar_t* grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = team.lane(), size = team.size();
  const PixelPos at = pixel_pos(pix, s);
  const int64_t x = at.j, y = at.i, plane_pix = at.plane * s.H * s.W;
  const acc_t* rp = group_bias(rpb, at.plane, s);
  const int C = static_cast<int>(s.C), W = static_cast<int>(s.W);
  const scalar_t* go_plane = grad_out + plane_pix * s.C;
  int64_t ilo, ihi, jlo, jhi;
  inverse_window(y, s.H, s.K, &ilo, &ihi);
  inverse_window(x, s.W, s.K, &jlo, &jhi);
  const int nj = static_cast<int>(jhi - jlo + 1);
  const int nn = static_cast<int>(ihi - ilo + 1) * nj;  // neighbours of this value pixel
  // Border pixels have more neighbours than interior ones: loop to the maximum so the collectives stay uniform.
  const int nn_all = team.uniform_max(nn);

  for (int c0 = 0; c0 < C; c0 += size * CPT) {
    const int cl = c0 + lane * CPT;
    acc_t acc[CPT];
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) acc[q] = 0;
    for (int n0 = 0; n0 < nn_all; n0 += size) {
      // Each lane computes the weight that one neighbour gives to (y, x); the team then shares them.
      acc_t mine = 0;
      const int n = n0 + lane;
      if (n < nn) {
        const int64_t i = ilo + n / nj, jj = jlo + n % nj;  // 32-bit division (n, nj are int)
        const int64_t a = y - window_start(i, s.H, s.K), e = x - window_start(jj, s.W, s.K);
        const int64_t q = plane_pix + i * s.W + jj;
        acc_t l = static_cast<acc_t>(w[q * s.T + a * s.K + e]);
        if (rp != nullptr) l += static_cast<acc_t>(rp[bias_offset(y, i, x, jj, s.K)]);
        mine = tap_weight(l, s.softmax ? stats[2 * q] : acc_t(0), s.softmax);
      }
      const int cnt = size < nn_all - n0 ? size : nn_all - n0;
      int i = static_cast<int>(ilo) + n0 / nj, jj = static_cast<int>(jlo) + n0 % nj;
      for (int k = 0; k < cnt; ++k) {
        const acc_t p = team.broadcast(mine, k);
        if (n0 + k < nn) {
          const scalar_t* src = go_plane + (i * W + jj) * C + cl;
CONTMIX_UNROLL
          for (int q = 0; q < CPT; ++q) {
            if (cl + q < C) acc[q] += p * static_cast<acc_t>(src[q]);
          }
        }
        if (++jj > jhi) {
          jj = jlo;
          ++i;
        }
      }
    }
    if (store) {
CONTMIX_UNROLL
      for (int q = 0; q < CPT; ++q) {
        if (cl + q < C) grad_value[pix * s.C + cl + q] = static_cast<scalar_t>(acc[q]);
      }
    }
  }
}

// grad_logits[pix, t] = dL/d(biased logit t), with dL/dP_t = <grad_out[pix], value[neighbour t]>. Lanes over
// channels (CPT consecutive channels per lane, as in the forward, so a team's loads of one neighbour are contiguous):
// the team reduces each tap's dot product, and the lanes take turns owning a tap (lane k owns taps t0 + k), so the
// exps, the stores and the bias sink run in parallel. Each tap's gradient also goes to `bias_sink(offset, grad)`
// when rpb is given and `store` is set (offset into the group's [R, R] table); the sink decides how grad_rpb is
// summed (atomics into shared memory on CUDA, a plain add on one lane, or nothing when grad_rpb is gathered
// afterwards by bias_grad_entry). grad_t is scalar_t, or the accumulation type when the logit gradients are kept for
// that gather.
template <typename scalar_t, int CPT, typename grad_t, typename Team, typename BiasSink>
CONTMIX_HD void grad_weights_pixel(const Team& team, const Shape& s, int64_t pix, bool store,
                                   const scalar_t* grad_out, const scalar_t* w, const scalar_t* v,
                                   const at::opmath_type<scalar_t>* rpb, const at::opmath_type<scalar_t>* stats,
                                   grad_t* grad_logits, const BiasSink& bias_sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const PixelPos at = pixel_pos(pix, s);
  const Window win = pixel_window(at.i, at.j, s.H, s.W, s.K);
  const scalar_t* go = grad_out + pix * s.C;
  const scalar_t* vp = v + at.plane * s.H * s.W * s.C;
  const acc_t* rp = group_bias(rpb, at.plane, s);
  const int T = static_cast<int>(s.T), K = static_cast<int>(s.K), W = static_cast<int>(s.W),
            C = static_cast<int>(s.C), R = static_cast<int>(s.R);
  const int lane = team.lane(), size = team.size();
  const acc_t lse = s.softmax ? stats[2 * pix] : acc_t(0);
  const acc_t dot = s.softmax ? stats[2 * pix + 1] : acc_t(0);
  for (int t0 = 0; t0 < T; t0 += size) {
    const int n = T - t0 < size ? T - t0 : size;
    acc_t mine = 0;  // dL/dP of the tap this lane owns, t0 + lane
    int a = t0 / K, e = t0 - a * K;
    for (int k = 0; k < n; ++k) {
      const scalar_t* src = vp + ((static_cast<int>(win.row0) + a) * W + static_cast<int>(win.col0) + e) * C;
      acc_t part = 0;
      for (int c0 = 0; c0 < C; c0 += size * CPT) {
        const int cl = c0 + lane * CPT;
CONTMIX_UNROLL
        for (int q = 0; q < CPT; ++q) {
          if (cl + q < C) part += static_cast<acc_t>(go[cl + q]) * static_cast<acc_t>(src[cl + q]);
        }
      }
      const acc_t dp = team.sum(part);
      if (k == lane) mine = dp;
      if (++e == K) {
        e = 0;
        ++a;
      }
    }
    const int t = t0 + lane;
    if (store && t < T) {
      const acc_t p = s.softmax ? tap_weight(tap_logit<acc_t>(w + pix * s.T, rp, win, s, t), lse, true) : acc_t(0);
      const acc_t grad = logit_grad(p, mine, dot, s.softmax);
      grad_logits[pix * s.T + t] = static_cast<grad_t>(grad);
      const int ta = t / K;
      if (rp != nullptr) bias_sink(static_cast<int>(win.bias0) + ta * R + (t - ta * K), grad);
    }
  }
}

// The bias sink of grad_weights_pixel when grad_rpb is gathered afterwards (bias_grad_entry).
struct NoBiasSink {
  template <typename acc_t>
  CONTMIX_HD void operator()(int64_t, acc_t) const {}
};

// Tap (along one axis) of the pixel at position i whose bias is table row (or column) u, i.e. the a with
// u = window_start(i) + a - i + K - 1; outside [0, K) when no tap of that pixel uses the row.
CONTMIX_HD int64_t bias_tap(int64_t u, int64_t i, int64_t L, int64_t K) {
  return i + u - (K - 1) - window_start(i, L, K);
}

// One entry of grad_rpb: the sum of the logit gradients of every (b, i, j, tap) whose bias is entry `entry` of
// group g's table, gathered in a fixed order (per batch, lanes over the plane's pixels, then the team's fixed
// reduction tree), so the result does not depend on scheduling. Used when torch.use_deterministic_algorithms(True) is on.
template <typename acc_t, typename grad_t, typename Team>
CONTMIX_HD acc_t bias_grad_entry(const Team& team, const Shape& s, int64_t g, int64_t entry,
                                 const grad_t* grad_logits) {
  const int64_t u = entry / s.R, x = entry - u * s.R;  // table row and column
  const int plane_size = static_cast<int>(s.H * s.W), W = static_cast<int>(s.W), K = static_cast<int>(s.K);
  acc_t acc = 0;
  for (int64_t b = 0; b < s.B; ++b) {  // 64-bit plane base, 32-bit index arithmetic inside the plane
    const grad_t* plane = grad_logits + (b * s.G + g) * plane_size * s.T;
    for (int local = team.lane(); local < plane_size; local += team.size()) {
      const int i = local / W, j = local - i * W;
      const int a = static_cast<int>(bias_tap(u, i, s.H, s.K)), e = static_cast<int>(bias_tap(x, j, s.W, s.K));
      if (a >= 0 && a < K && e >= 0 && e < K) acc += static_cast<acc_t>(plane[local * K * K + a * K + e]);
    }
  }
  return team.sum(acc);
}

}  // namespace contmix
}  // namespace mmoverlock
