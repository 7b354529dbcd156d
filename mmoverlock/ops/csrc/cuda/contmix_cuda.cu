// CUDA kernels of the ContMix core: float32, float16 and bfloat16 (accumulating in float32) and float64; any odd K
// (the launchers need no per-K instantiation; K <= 31 keeps the bias table within shared memory) and any C.
//
// Parallelisation ("team" = a power-of-two group of lanes inside one warp, sharing one pixel):
//   forward / stats: a team per output pixel, lanes over channels (coalesced on the channel axis, CPT channels per
//                    lane). The lanes compute the softmax weights of a chunk of taps, one tap each, and broadcast
//                    them with warp shuffles, so every exp is evaluated once per pixel.
//   grad_value:      a team per value pixel, gathered over its inverse neighbourhood (no atomics); the weights are
//                    recomputed from the inputs and the per-pixel log-sum-exp in `stats`.
//   grad_weights:    a team per output pixel, lanes over taps; grad_rpb is reduced per block in shared memory and
//                    added to global memory once per block.
// The backward keeps two numbers per pixel (stats) instead of the K*K softmax probabilities.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <type_traits>

#include "contmix_common.h"
#include "contmix_kernels.h"

namespace mmoverlock {
namespace contmix {
namespace {

constexpr int kBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

struct Shape {
  int64_t B, G, H, W, C, K, T, R;
  int64_t npix;  // B * G * H * W
  bool softmax;
};

Shape make_shape(const at::Tensor& value, int64_t K, bool softmax) {
  Shape s{value.size(0), value.size(1), value.size(2), value.size(3), value.size(4), K, K * K, 2 * K - 1, 0,
          softmax};
  s.npix = s.B * s.G * s.H * s.W;
  return s;
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n && p < 32) p <<= 1;
  return p;
}

template <typename T>
__device__ __forceinline__ T max_acc(T a, T b) {
  return a > b ? a : b;
}

// Reductions over the `team` lanes that share a pixel (team is a power of two dividing 32). Every lane of the warp
// must call them: teams never exit early, out-of-range pixels are clamped and only skip their stores.
template <typename T>
__device__ __forceinline__ T team_sum(T v, int team) {
  for (int o = team / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o, team);
  return v;
}

template <typename T>
__device__ __forceinline__ T team_max(T v, int team) {
  for (int o = team / 2; o > 0; o >>= 1) v = max_acc(v, __shfl_xor_sync(kFullMask, v, o, team));
  return v;
}

// Biased logit of tap t of an output pixel (rp: the group's bias table or null).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ acc_t tap_logit(const scalar_t* wp, const scalar_t* rp, const Window& win,
                                           const Shape& s, int64_t t) {
  acc_t l = static_cast<acc_t>(wp[t]);
  if (rp != nullptr) {
    const int64_t a = t / s.K;
    l += static_cast<acc_t>(rp[win.bias0 + a * s.R + (t - a * s.K)]);
  }
  return l;
}

// Forward (kStats = false): out = sum_t P_t value[neighbour t]. First backward pass (kStats = true): the same sum,
// reduced to stats[pix] = (log-sum-exp of the biased logits, sum_c grad_out * out) instead of being stored.
template <typename scalar_t, int CPT, bool kStats>
__global__ void __launch_bounds__(kBlock)
    forward_kernel(const Shape s, const int team, const scalar_t* __restrict__ w, const scalar_t* __restrict__ v,
                   const scalar_t* __restrict__ rpb, const scalar_t* __restrict__ grad_out,
                   scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ stats) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & (team - 1);
  int64_t pix = static_cast<int64_t>(blockIdx.x) * (kBlock / team) + threadIdx.x / team;
  const bool valid = pix < s.npix;
  if (!valid) pix = s.npix - 1;  // keep the whole warp in the shuffles; nothing is stored
  const int64_t j = pix % s.W, i = (pix / s.W) % s.H, plane = pix / (s.H * s.W);
  const Window win = pixel_window(i, j, s.H, s.W, s.K);
  const scalar_t* wp = w + pix * s.T;
  const scalar_t* vp = v + plane * s.H * s.W * s.C;
  const scalar_t* rp = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;

  acc_t lse = 0;
  if (s.softmax) {
    acc_t m = -INFINITY;
    for (int64_t t = lane; t < s.T; t += team) m = max_acc(m, tap_logit(wp, rp, win, s, t));
    m = team_max(m, team);
    acc_t sum = 0;
    for (int64_t t = lane; t < s.T; t += team) sum += exp_acc(tap_logit(wp, rp, win, s, t) - m);
    lse = m + log_acc(team_sum(sum, team));
  }

  acc_t dot = 0;
  for (int64_t c0 = 0; c0 < s.C; c0 += team * CPT) {
    const int64_t cl = c0 + lane * CPT;  // this lane's first channel
    acc_t acc[CPT];
#pragma unroll
    for (int q = 0; q < CPT; ++q) acc[q] = 0;
    for (int64_t t0 = 0; t0 < s.T; t0 += team) {
      const int64_t t = t0 + lane;
      const acc_t mine = t < s.T ? tap_weight(tap_logit(wp, rp, win, s, t), lse, s.softmax) : acc_t(0);
      const int n = static_cast<int>(s.T - t0 < team ? s.T - t0 : team);
      int64_t a = t0 / s.K, e = t0 - a * s.K;
      for (int k = 0; k < n; ++k) {
        const acc_t p = __shfl_sync(kFullMask, mine, k, team);
        const scalar_t* src = vp + ((win.row0 + a) * s.W + win.col0 + e) * s.C + cl;
#pragma unroll
        for (int q = 0; q < CPT; ++q) {
          if (cl + q < s.C) acc[q] += p * static_cast<acc_t>(src[q]);
        }
        if (++e == s.K) {
          e = 0;
          ++a;
        }
      }
    }
#pragma unroll
    for (int q = 0; q < CPT; ++q) {
      if (cl + q < s.C) {
        if (kStats) {
          dot += static_cast<acc_t>(grad_out[pix * s.C + cl + q]) * acc[q];
        } else if (valid) {
          out[pix * s.C + cl + q] = static_cast<scalar_t>(acc[q]);
        }
      }
    }
  }
  if (kStats) {
    dot = team_sum(dot, team);
    if (valid && lane == 0) {
      stats[2 * pix] = lse;
      stats[2 * pix + 1] = dot;
    }
  }
}

// grad_value[y, x] = sum over the pixels (i, j) whose window holds (y, x) of P[i, j, tap] * grad_out[i, j].
template <typename scalar_t, int CPT>
__global__ void __launch_bounds__(kBlock)
    grad_value_kernel(const Shape s, const int team, const scalar_t* __restrict__ grad_out,
                      const scalar_t* __restrict__ w, const scalar_t* __restrict__ rpb,
                      const at::opmath_type<scalar_t>* __restrict__ stats, scalar_t* __restrict__ grad_value) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x & (team - 1);
  int64_t pix = static_cast<int64_t>(blockIdx.x) * (kBlock / team) + threadIdx.x / team;
  const bool valid = pix < s.npix;
  if (!valid) pix = s.npix - 1;
  const int64_t x = pix % s.W, y = (pix / s.W) % s.H, plane = pix / (s.H * s.W);
  const int64_t plane_pix = plane * s.H * s.W;
  const scalar_t* rp = rpb != nullptr ? rpb + (plane % s.G) * s.R * s.R : nullptr;
  int64_t ilo, ihi, jlo, jhi;
  inverse_window(y, s.H, s.K, &ilo, &ihi);
  inverse_window(x, s.W, s.K, &jlo, &jhi);
  const int nj = static_cast<int>(jhi - jlo + 1);
  const int nn = static_cast<int>(ihi - ilo + 1) * nj;  // neighbours of this value pixel
  // Border pixels have more neighbours than interior ones: loop to the warp's maximum so the shuffles stay uniform.
  int nn_warp = nn;
  for (int o = 16; o > 0; o >>= 1) nn_warp = max(nn_warp, __shfl_xor_sync(kFullMask, nn_warp, o));

  for (int64_t c0 = 0; c0 < s.C; c0 += team * CPT) {
    const int64_t cl = c0 + lane * CPT;
    acc_t acc[CPT];
#pragma unroll
    for (int q = 0; q < CPT; ++q) acc[q] = 0;
    for (int n0 = 0; n0 < nn_warp; n0 += team) {
      // Each lane computes the weight that one neighbour gives to (y, x); the team then shares them.
      acc_t mine = 0;
      const int n = n0 + lane;
      if (n < nn) {
        const int64_t i = ilo + n / nj, jj = jlo + n % nj;
        const int64_t a = y - window_start(i, s.H, s.K), e = x - window_start(jj, s.W, s.K);
        const int64_t q = plane_pix + i * s.W + jj;
        acc_t l = static_cast<acc_t>(w[q * s.T + a * s.K + e]);
        if (rp != nullptr) l += static_cast<acc_t>(rp[bias_offset(y, i, x, jj, s.K)]);
        mine = tap_weight(l, s.softmax ? stats[2 * q] : acc_t(0), s.softmax);
      }
      const int cnt = min(team, nn_warp - n0);
      int64_t i = ilo + n0 / nj, jj = jlo + n0 % nj;
      for (int k = 0; k < cnt; ++k) {
        const acc_t p = __shfl_sync(kFullMask, mine, k, team);
        if (n0 + k < nn) {
          const scalar_t* src = grad_out + (plane_pix + i * s.W + jj) * s.C + cl;
#pragma unroll
          for (int q = 0; q < CPT; ++q) {
            if (cl + q < s.C) acc[q] += p * static_cast<acc_t>(src[q]);
          }
        }
        if (++jj > jhi) {
          jj = jlo;
          ++i;
        }
      }
    }
    if (valid) {
#pragma unroll
      for (int q = 0; q < CPT; ++q) {
        if (cl + q < s.C) grad_value[pix * s.C + cl + q] = static_cast<scalar_t>(acc[q]);
      }
    }
  }
}

// grad_weights[i, j, t] = dL/d(biased logit) with dL/dP_t = <grad_out[i, j], value[neighbour t]>; the block's
// contributions to grad_rpb are summed in shared memory first (blockIdx.y is the plane, so one bias table).
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    grad_weights_kernel(const Shape s, const int team, const scalar_t* __restrict__ grad_out,
                        const scalar_t* __restrict__ w, const scalar_t* __restrict__ v,
                        const scalar_t* __restrict__ rpb, const at::opmath_type<scalar_t>* __restrict__ stats,
                        scalar_t* __restrict__ grad_weights, at::opmath_type<scalar_t>* __restrict__ grad_rpb) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char shared_raw[];
  acc_t* rpb_acc = reinterpret_cast<acc_t*>(shared_raw);  // [R * R] when rpb is given
  const int64_t plane = blockIdx.y, RR = s.R * s.R;
  const scalar_t* rp = rpb != nullptr ? rpb + (plane % s.G) * RR : nullptr;
  if (rp != nullptr) {
    for (int64_t k = threadIdx.x; k < RR; k += blockDim.x) rpb_acc[k] = 0;
    __syncthreads();
  }
  const int lane = threadIdx.x & (team - 1);
  const int64_t local = static_cast<int64_t>(blockIdx.x) * (kBlock / team) + threadIdx.x / team;
  if (local < s.H * s.W) {
    const int64_t i = local / s.W, j = local % s.W, pix = plane * s.H * s.W + local;
    const Window win = pixel_window(i, j, s.H, s.W, s.K);
    const scalar_t* go = grad_out + pix * s.C;
    const scalar_t* vp = v + plane * s.H * s.W * s.C;
    const acc_t lse = s.softmax ? stats[2 * pix] : acc_t(0);
    const acc_t dot = s.softmax ? stats[2 * pix + 1] : acc_t(0);
    for (int64_t t = lane; t < s.T; t += team) {
      const int64_t a = t / s.K, e = t - a * s.K;
      const scalar_t* src = vp + ((win.row0 + a) * s.W + win.col0 + e) * s.C;
      acc_t dp = 0;
      for (int64_t c = 0; c < s.C; ++c) dp += static_cast<acc_t>(go[c]) * static_cast<acc_t>(src[c]);
      const acc_t p = s.softmax ? tap_weight(tap_logit(w + pix * s.T, rp, win, s, t), lse, true) : acc_t(0);
      const acc_t grad = logit_grad(p, dp, dot, s.softmax);
      grad_weights[pix * s.T + t] = static_cast<scalar_t>(grad);
      if (rp != nullptr) atomicAdd(rpb_acc + win.bias0 + a * s.R + e, grad);
    }
  }
  if (rp != nullptr) {
    __syncthreads();
    acc_t* dst = grad_rpb + (plane % s.G) * RR;
    for (int64_t k = threadIdx.x; k < RR; k += blockDim.x) {
      if (rpb_acc[k] != acc_t(0)) atomicAdd(dst + k, rpb_acc[k]);
    }
  }
}

// Channels per lane: 4 when C allows, so a team of lanes covers more channels per shuffle.
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

int channel_team(int64_t C, int cpt) { return next_pow2((C + cpt - 1) / cpt); }

template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// The documented range; it also bounds the shared-memory bias table of grad_weights_kernel (61^2 doubles < 48 KB).
void check_kernel_size(int64_t K) {
  TORCH_CHECK(K <= 31, "contmix: the CUDA kernels support kernel_size <= 31, got ", K);
}

}  // namespace

void forward_cuda(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                  bool softmax, at::Tensor& out) {
  check_kernel_size(kernel_size);
  const Shape s = make_shape(value, kernel_size, softmax);
  if (s.npix == 0 || s.C == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "contmix_forward_cuda", [&] {
    with_channels_per_lane(s.C, [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      const int team = channel_team(s.C, CPT);
      const int64_t blocks = (s.npix + kBlock / team - 1) / (kBlock / team);
      forward_kernel<scalar_t, CPT, false><<<blocks, kBlock, 0, stream>>>(
          s, team, weights.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), optional_ptr<scalar_t>(rpb),
          nullptr, out.mutable_data_ptr<scalar_t>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                   const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& stats,
                   at::Tensor& grad_weights, at::Tensor& grad_value, at::Tensor& grad_rpb) {
  check_kernel_size(kernel_size);
  const Shape s = make_shape(value, kernel_size, softmax);
  if (s.npix == 0) return;
  TORCH_CHECK(s.B * s.G <= 65535, "contmix: the CUDA backward supports B * G <= 65535, got ", s.B * s.G);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "contmix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const scalar_t* b = optional_ptr<scalar_t>(rpb);
    acc_t* st = softmax ? stats.mutable_data_ptr<acc_t>() : nullptr;
    with_channels_per_lane(std::max<int64_t>(s.C, 1), [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      const int team = channel_team(std::max<int64_t>(s.C, 1), CPT);
      const int64_t blocks = (s.npix + kBlock / team - 1) / (kBlock / team);
      if (softmax) {
        forward_kernel<scalar_t, CPT, true><<<blocks, kBlock, 0, stream>>>(s, team, w, v, b, go, nullptr, st);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (s.C > 0) {
        grad_value_kernel<scalar_t, CPT><<<blocks, kBlock, 0, stream>>>(s, team, go, w, b, st,
                                                                        grad_value.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
    const int team = next_pow2(s.T);
    const dim3 grid(static_cast<unsigned>((s.H * s.W + kBlock / team - 1) / (kBlock / team)),
                    static_cast<unsigned>(s.B * s.G));
    const size_t shared = b != nullptr ? static_cast<size_t>(s.R * s.R) * sizeof(acc_t) : 0;
    grad_weights_kernel<scalar_t><<<grid, kBlock, shared, stream>>>(
        s, team, go, w, v, b, st, grad_weights.mutable_data_ptr<scalar_t>(),
        b != nullptr ? grad_rpb.mutable_data_ptr<acc_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace contmix
}  // namespace mmoverlock
