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

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "contmix_common.h"
#include "contmix_kernels.h"
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

// Channels per lane (CPT, a compile-time count that sizes a lane's registers) and whether a lane moves them with one
// vector load (kVec). Vector: 16 bytes per lane (4 float, 8 half, 2 double; one 128-bit load or store) when C is a
// multiple of that and every channel tensor starts 16-byte aligned (`aligned`, checked by the caller at launch), so
// every pixel's channels start aligned too. Otherwise scalar loads of 4, 2 or 1 channels per lane. The CUDA launchers
// and the CPU driver both choose it here.
template <typename scalar_t, typename F>
void with_channel_layout(int64_t C, bool aligned, const F& f) {
  constexpr int kVector = static_cast<int>(16 / sizeof(scalar_t));
  if (aligned && C % kVector == 0) {
    f(std::integral_constant<int, kVector>{}, std::true_type{});
  } else if (C >= 4) {
    f(std::integral_constant<int, 4>{}, std::false_type{});
  } else if (C >= 2) {
    f(std::integral_constant<int, 2>{}, std::false_type{});
  } else {
    f(std::integral_constant<int, 1>{}, std::false_type{});
  }
}

// Dispatch on value's dtype (float64, float32, float16, bfloat16) and then on the channel layout, as every launcher
// and the CPU driver do: f.template operator()<scalar_t, CPT, kVec>() (a template lambda) with CPT and kVec as in
// with_channel_layout. Vector loads only where every tensor in `channel_rows` (undefined: absent) starts 16-byte
// aligned.
template <typename F>
void dispatch_channel_layout(const at::Tensor& value, int64_t C, std::initializer_list<at::Tensor> channel_rows,
                             const F& f) {
  bool aligned = true;
  for (const at::Tensor& t : channel_rows) {
    if (t.defined() && reinterpret_cast<std::uintptr_t>(t.const_data_ptr()) % 16 != 0) aligned = false;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "contmix", [&] {
    with_channel_layout<scalar_t>(C, aligned, [&](auto cpt, auto vec) {
      f.template operator()<scalar_t, decltype(cpt)::value, decltype(vec)::value>();
    });
  });
}

// The typed data of a backward call (the inputs, the saved forward results where given, grad_value) as the launchers
// and the CPU driver hand it to the bodies.
template <typename scalar_t>
struct BackwardData {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *grad_out, *w, *v, *out;
  const acc_t *rpb, *lse;
  scalar_t* grad_value;

  BackwardData(const at::Tensor& grad_out_, const Inputs& in, const at::Tensor& out_, const at::Tensor& lse_,
               at::Tensor& grad_value_)
      : grad_out(grad_out_.const_data_ptr<scalar_t>()),
        w(in.weights.const_data_ptr<scalar_t>()),
        v(in.value.const_data_ptr<scalar_t>()),
        out(optional_ptr<scalar_t>(out_)),
        rpb(optional_ptr<acc_t>(in.rpb)),
        lse(optional_ptr<acc_t>(lse_)),
        grad_value(grad_value_.mutable_data_ptr<scalar_t>()) {}
};

// The CPT channels of one lane, [cl, cl + CPT) of a pixel's channel row `src`, in the accumulation type; channels past
// C read as 0. kVec: one aligned vector load (C is a multiple of CPT, so a lane has all or none of its channels).
template <int CPT, bool kVec, typename scalar_t, typename acc_t>
CONTMIX_HD void load_channels(const scalar_t* src, int cl, int C, acc_t (&x)[CPT]) {
  if constexpr (kVec) {
    struct alignas(sizeof(scalar_t) * CPT) Pack {
      scalar_t v[CPT];
    };
    if (cl < C) {
      const Pack p = *reinterpret_cast<const Pack*>(src + cl);
CONTMIX_UNROLL
      for (int q = 0; q < CPT; ++q) x[q] = static_cast<acc_t>(p.v[q]);
    } else {
CONTMIX_UNROLL
      for (int q = 0; q < CPT; ++q) x[q] = 0;
    }
  } else {
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) x[q] = cl + q < C ? static_cast<acc_t>(src[cl + q]) : acc_t(0);
  }
}

// Store a lane's CPT channels (those below C) into a pixel's channel row `dst`, as load_channels reads them.
template <int CPT, bool kVec, typename scalar_t, typename acc_t>
CONTMIX_HD void store_channels(scalar_t* dst, int cl, int C, const acc_t (&x)[CPT]) {
  if constexpr (kVec) {
    struct alignas(sizeof(scalar_t) * CPT) Pack {
      scalar_t v[CPT];
    };
    if (cl < C) {
      Pack p;
CONTMIX_UNROLL
      for (int q = 0; q < CPT; ++q) p.v[q] = static_cast<scalar_t>(x[q]);
      *reinterpret_cast<Pack*>(dst + cl) = p;
    }
  } else {
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) {
      if (cl + q < C) dst[cl + q] = static_cast<scalar_t>(x[q]);
    }
  }
}

// sum_c a[c] * b[c] over one pixel's channel rows, reduced over the team (every lane gets it).
template <int CPT, bool kVec, typename acc_t, typename scalar_t, typename Team>
CONTMIX_HD acc_t channel_dot(const Team& team, const scalar_t* a, const scalar_t* b, int C) {
  acc_t part = 0;
  for (int c0 = 0; c0 < C; c0 += team.size() * CPT) {
    const int cl = c0 + team.lane() * CPT;
    acc_t x[CPT], y[CPT];
    load_channels<CPT, kVec>(a, cl, C, x);
    load_channels<CPT, kVec>(b, cl, C, y);
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) part += x[q] * y[q];
  }
  return team.sum(part);
}

// Where a pixel is: its index, its plane (b * G + g; 64-bit, for the plane's base offsets), its group and its row and
// column (32-bit: every index inside a plane fits in int32, which the launchers check with check_plane_indices). At
// most two 64-bit divisions per pixel (plane and group), none per tap (a 64-bit division is a ~70-instruction call on
// the GPU); a kernel that knows the plane already (one plane per block) skips the first.
struct PixelPos {
  int64_t pix, plane;
  int group, i, j;
};

CONTMIX_HD PixelPos pixel_in_plane(int64_t plane, int local, const Shape& s) {
  const int W = static_cast<int>(s.W), i = local / W;
  return {plane * s.H * s.W + local, plane, static_cast<int>(plane % s.G), i, local - i * W};
}

CONTMIX_HD PixelPos pixel_pos(int64_t pix, const Shape& s) {
  const int64_t plane = pix / (s.H * s.W);
  return pixel_in_plane(plane, static_cast<int>(pix - plane * s.H * s.W), s);
}

// The group's bias table, or null without rpb.
template <typename acc_t>
CONTMIX_HD const acc_t* group_bias(const acc_t* rpb, const PixelPos& at, const Shape& s) {
  return rpb != nullptr ? rpb + static_cast<int64_t>(at.group) * s.R * s.R : nullptr;
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

// Forward: out[pix] = sum_t P_t value[neighbour t], lanes over channels (CPT consecutive channels per lane). The
// lanes compute the weights of a chunk of taps, one tap each, and broadcast them, so every exp is evaluated once per
// pixel. With softmax and `lse` given, the pixel's log-sum-exp of the biased logits is saved there for the backward
// (one accumulation-type number per pixel), so that no backward pass repeats the forward's sums.
template <typename scalar_t, int CPT, bool kVec, typename Team>
CONTMIX_HD void forward_pixel(const Team& team, const Shape& s, const PixelPos& at, bool store, const scalar_t* w,
                              const scalar_t* v, const at::opmath_type<scalar_t>* rpb, scalar_t* out,
                              at::opmath_type<scalar_t>* lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = team.lane(), size = team.size();
  const int64_t pix = at.pix;
  const Window win = pixel_window(at.i, at.j, s.H, s.W, s.K);
  const scalar_t* wp = w + pix * s.T;
  const scalar_t* vp = v + at.plane * s.H * s.W * s.C;
  const acc_t* rp = group_bias(rpb, at, s);
  const int T = static_cast<int>(s.T), K = static_cast<int>(s.K), W = static_cast<int>(s.W),
            C = static_cast<int>(s.C);
  const acc_t pixel_lse = s.softmax ? pixel_log_sum_exp<acc_t>(team, wp, rp, win, s) : acc_t(0);
  if (s.softmax && lse != nullptr && store && lane == 0) lse[pix] = pixel_lse;

  for (int c0 = 0; c0 < C; c0 += size * CPT) {
    const int cl = c0 + lane * CPT;  // this lane's first channel
    acc_t acc[CPT];
CONTMIX_UNROLL
    for (int q = 0; q < CPT; ++q) acc[q] = 0;
    for (int t0 = 0; t0 < T; t0 += size) {
      const int t = t0 + lane;
      const acc_t mine = t < T ? tap_weight(tap_logit<acc_t>(wp, rp, win, s, t), pixel_lse, s.softmax) : acc_t(0);
      const int n = T - t0 < size ? T - t0 : size;
      int a = t0 / K, e = t0 - a * K;
      for (int k = 0; k < n; ++k) {
        const acc_t p = team.broadcast(mine, k);
        acc_t x[CPT];
        load_channels<CPT, kVec>(vp + ((static_cast<int>(win.row0) + a) * W + static_cast<int>(win.col0) + e) * C,
                                 cl, C, x);
CONTMIX_UNROLL
        for (int q = 0; q < CPT; ++q) acc[q] += p * x[q];
        if (++e == K) {
          e = 0;
          ++a;
        }
      }
    }
    if (store) store_channels<CPT, kVec>(out + pix * s.C, cl, C, acc);
  }
}

// grad_value[pix] = sum over the pixels (i, j) whose window holds pix = (y, x) of P[i, j, tap] * grad_out[i, j]:
// a gather over the inverse neighbourhood (no atomics). The weights are recomputed from the logits and, with softmax,
// the log-sum-exp the forward saved (`lse`, one number per pixel).
template <typename scalar_t, int CPT, bool kVec, typename Team>
CONTMIX_HD void grad_value_pixel(const Team& team, const Shape& s, const PixelPos& at, bool store,
                                 const scalar_t* grad_out, const scalar_t* w, const at::opmath_type<scalar_t>* rpb,
                                 const at::opmath_type<scalar_t>* lse, scalar_t* grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = team.lane(), size = team.size();
  const int64_t pix = at.pix;
  const int x = at.j, y = at.i, H = static_cast<int>(s.H), W = static_cast<int>(s.W), K = static_cast<int>(s.K),
            T = static_cast<int>(s.T), C = static_cast<int>(s.C);
  const int64_t plane_pix = at.plane * s.H * s.W;  // 64-bit plane bases; 32-bit indices inside the plane
  const acc_t* rp = group_bias(rpb, at, s);
  const scalar_t* go_plane = grad_out + plane_pix * s.C;
  const scalar_t* w_plane = w + plane_pix * s.T;
  const acc_t* lse_plane = lse != nullptr ? lse + plane_pix : nullptr;
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
        const int i = static_cast<int>(ilo) + n / nj, jj = static_cast<int>(jlo) + n % nj;
        const int a = y - static_cast<int>(window_start(i, H, K)), e = x - static_cast<int>(window_start(jj, W, K));
        const int q = i * W + jj;
        acc_t l = static_cast<acc_t>(w_plane[q * T + a * K + e]);
        if (rp != nullptr) l += rp[bias_offset(y, i, x, jj, K)];
        mine = tap_weight(l, s.softmax ? lse_plane[q] : acc_t(0), s.softmax);
      }
      const int cnt = size < nn_all - n0 ? size : nn_all - n0;
      int i = static_cast<int>(ilo) + n0 / nj, jj = static_cast<int>(jlo) + n0 % nj;
      for (int k = 0; k < cnt; ++k) {
        const acc_t p = team.broadcast(mine, k);
        if (n0 + k < nn) {
          acc_t g[CPT];
          load_channels<CPT, kVec>(go_plane + (i * W + jj) * C, cl, C, g);
CONTMIX_UNROLL
          for (int q = 0; q < CPT; ++q) acc[q] += p * g[q];
        }
        if (++jj > jhi) {
          jj = static_cast<int>(jlo);
          ++i;
        }
      }
    }
    if (store) store_channels<CPT, kVec>(grad_value + pix * s.C, cl, C, acc);
  }
}

// grad_logits[pix, t] = dL/d(biased logit t), with dL/dP_t = <grad_out[pix], value[neighbour t]>. Lanes over
// channels (CPT consecutive channels per lane, as in the forward, so a team's loads of one neighbour are contiguous):
// the team reduces each tap's dot product, and the lanes take turns owning a tap (lane k owns taps t0 + k), so the
// exps and the stores run in parallel. With softmax the weights come from the saved log-sum-exp (`lse`) and
// sum_s P_s dL/dP_s from <grad_out[pix], out[pix]> (the forward's saved output `out`): nothing of the forward is
// recomputed. With rpb, every lane then hands its tap's gradient to `bias_sink(team, entry, grad)`, entry being the
// offset into the group's [R, R] table, or -1 for no entry (a tap past T, or a pixel that does not store); every lane
// of the team calls it, so a GPU sink can reduce over lanes before any atomic. The sink decides how grad_rpb is summed
// (shared-memory atomics on CUDA, a plain add on one lane, or nothing when grad_rpb is gathered afterwards by
// bias_grad_entry). grad_t is scalar_t, or the accumulation type when the logit gradients are kept for that gather.
template <typename scalar_t, int CPT, bool kVec, typename grad_t, typename Team, typename BiasSink>
CONTMIX_HD void grad_weights_pixel(const Team& team, const Shape& s, const PixelPos& at, bool store,
                                   const scalar_t* grad_out, const scalar_t* w, const scalar_t* v,
                                   const at::opmath_type<scalar_t>* rpb, const scalar_t* out,
                                   const at::opmath_type<scalar_t>* lse, grad_t* grad_logits,
                                   const BiasSink& bias_sink) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t pix = at.pix;
  const Window win = pixel_window(at.i, at.j, s.H, s.W, s.K);
  const scalar_t* go = grad_out + pix * s.C;
  const scalar_t* vp = v + at.plane * s.H * s.W * s.C;
  const acc_t* rp = group_bias(rpb, at, s);
  const int T = static_cast<int>(s.T), K = static_cast<int>(s.K), W = static_cast<int>(s.W),
            C = static_cast<int>(s.C), R = static_cast<int>(s.R);
  const int lane = team.lane(), size = team.size();
  const acc_t pixel_lse = s.softmax ? lse[pix] : acc_t(0);
  const acc_t dot = s.softmax ? channel_dot<CPT, kVec, acc_t>(team, go, out + pix * s.C, C) : acc_t(0);
  for (int t0 = 0; t0 < T; t0 += size) {
    const int n = T - t0 < size ? T - t0 : size;
    acc_t mine = 0;  // dL/dP of the tap this lane owns, t0 + lane
    int a = t0 / K, e = t0 - a * K;
    for (int k = 0; k < n; ++k) {
      const acc_t dp = channel_dot<CPT, kVec, acc_t>(
          team, go, vp + ((static_cast<int>(win.row0) + a) * W + static_cast<int>(win.col0) + e) * C, C);
      if (k == lane) mine = dp;
      if (++e == K) {
        e = 0;
        ++a;
      }
    }
    const int t = t0 + lane;
    acc_t grad = 0;
    if (store && t < T) {
      const acc_t p = s.softmax ? tap_weight(tap_logit<acc_t>(w + pix * s.T, rp, win, s, t), pixel_lse, true)
                                : acc_t(0);
      grad = logit_grad(p, mine, dot, s.softmax);
      grad_logits[pix * s.T + t] = static_cast<grad_t>(grad);
    }
    if (rp != nullptr) {
      const int ta = t / K;
      bias_sink(team, store && t < T ? static_cast<int>(win.bias0) + ta * R + (t - ta * K) : -1, grad);
    }
  }
}

// The backward of one pixel, in one pass over it: its logit gradients (as the output pixel pix) and its value
// gradient (as the value pixel pix), reading the logits, values, grad_out, the saved output and log-sum-exp once
// per pass; the re-reads of neighbours' rows are served by the caches.
template <typename scalar_t, int CPT, bool kVec, typename grad_t, typename Team, typename BiasSink>
CONTMIX_HD void backward_pixel(const Team& team, const Shape& s, const PixelPos& at, bool store,
                               const scalar_t* grad_out, const scalar_t* w, const scalar_t* v,
                               const at::opmath_type<scalar_t>* rpb, const scalar_t* out,
                               const at::opmath_type<scalar_t>* lse, grad_t* grad_logits, scalar_t* grad_value,
                               const BiasSink& bias_sink) {
  grad_weights_pixel<scalar_t, CPT, kVec>(team, s, at, store, grad_out, w, v, rpb, out, lse, grad_logits,
                                          bias_sink);
  grad_value_pixel<scalar_t, CPT, kVec>(team, s, at, store, grad_out, w, rpb, lse, grad_value);
}

// The bias sink of grad_weights_pixel when grad_rpb is gathered afterwards (bias_grad_entry), or without rpb.
struct NoBiasSink {
  template <typename Team, typename acc_t>
  CONTMIX_HD void operator()(const Team&, int, acc_t) const {}
};

// Tap (along one axis) of the pixel at position i whose bias is table row (or column) u, i.e. the a with
// u = window_start(i) + a - i + K - 1; outside [0, K) when no tap of that pixel uses the row.
CONTMIX_HD int64_t bias_tap(int64_t u, int64_t i, int64_t L, int64_t K) {
  return i + u - (K - 1) - window_start(i, L, K);
}

// Deterministic grad_rpb (torch.use_deterministic_algorithms(True)), from the logit gradients kept in the
// accumulation type, in two fixed-order steps instead of atomics, so the result does not depend on scheduling.
// The bias of tap (a, e) of pixel (i, j) is entry (bias_tap row, bias_tap column): the row depends on i and a only,
// the column on j and e only.
//
// Step 1, one number per (row i of plane b * G + g, tap row a, table column x): the sum over the row's pixels j (in
// order) of the gradient of tap (a, e) whose bias column is x. `rows` is [B * G * H, K, R]. A pass over the logit
// gradients with consecutive x reading consecutive taps (coalesced), not a scan of every pixel per table entry.
template <typename acc_t>
CONTMIX_HD acc_t bias_row_entry(const Shape& s, int64_t row, int a, int x, const acc_t* grad_logits) {
  const int W = static_cast<int>(s.W), K = static_cast<int>(s.K), T = static_cast<int>(s.T);
  const acc_t* g = grad_logits + row * s.W * s.T + a * K;  // 64-bit row base; 32-bit inside the row
  acc_t acc = 0;
  for (int j = 0; j < W; ++j) {
    const int e = static_cast<int>(bias_tap(x, j, W, K));
    if (e >= 0 && e < K) acc += g[j * T + e];
  }
  return acc;
}

// Step 2, one entry (u, x) of group g's table: the sum over the batch and the rows i (in order) of step 1's numbers
// of the tap row a whose bias row is u.
template <typename acc_t>
CONTMIX_HD acc_t bias_grad_entry(const Shape& s, int64_t g, int u, int x, const acc_t* rows) {
  const int H = static_cast<int>(s.H), K = static_cast<int>(s.K), R = static_cast<int>(s.R);
  acc_t acc = 0;
  for (int64_t b = 0; b < s.B; ++b) {
    const acc_t* plane_rows = rows + (b * s.G + g) * s.H * K * R;
    for (int i = 0; i < H; ++i) {
      const int a = static_cast<int>(bias_tap(u, i, H, K));
      if (a >= 0 && a < K) acc += plane_rows[(i * K + a) * R + x];
    }
  }
  return acc;
}

}  // namespace contmix
}  // namespace mmoverlock
