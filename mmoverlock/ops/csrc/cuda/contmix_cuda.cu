// CUDA implementation of the ContMix operators (registered for the CUDA dispatch key here): float32, float16 and
// bfloat16 (accumulating in float32) and float64; any odd K <= 31 (the launchers need no per-K instantiation; the
// bound keeps a bias table within shared memory) and any C.
//
// The per-pixel arithmetic lives in common/contmix_bodies.h and is shared with a CPU driver that the tests run; this
// file holds the parallel glue only: a "team" (a power-of-two group of lanes inside one warp) shares one pixel and
// cooperates through warp shuffles (WarpTeam). Lanes are over channels everywhere, 16 bytes per lane with one vector
// load when C and the pointers allow it (checked at launch), else scalar loads. Designed for the bandwidth limit:
//   forward:  a team per output pixel; writes out and, with softmax, the pixel's log-sum-exp (lse, 1 number per
//             pixel), which the backward reads instead of repeating the forward.
//   backward: one pass, a team per pixel: its logit gradients as an output pixel (sum_s P_s dL/dP_s is
//             <grad_out, out>, from the saved out) and its value gradient as a value pixel (a gather over its inverse
//             neighbourhood, no atomics). grad_rpb: each tap's gradient is summed over the teams of a warp in
//             registers when they share the bias entry (consecutive pixels away from the borders), then added to a
//             per-block table in shared memory, and that table to global memory once per block. Under
//             torch.use_deterministic_algorithms(True) the logit gradients are kept in the accumulation type instead
//             and grad_rpb is gathered in a fixed order, summed over each plane row first (bias_rows_kernel), then
//             over rows and batch per table entry (bias_grad_kernel): bitwise reproducible.
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "contmix_bodies.h"
#include "contmix_kernels.h"
#include "contmix_shape.h"

namespace mmoverlock {
namespace contmix {
namespace {

constexpr int kBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// The lanes of one warp that share a pixel (size: a power of two dividing 32). Every lane of the warp must take part
// in each collective: teams never exit early, out-of-range pixels are clamped and only skip their stores.
struct WarpTeam {
  int lane_, size_;

  __device__ int lane() const { return lane_; }
  __device__ int size() const { return size_; }
  template <typename T>
  __device__ T sum(T v) const {
    for (int o = size_ / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o, size_);
    return v;
  }
  template <typename T>
  __device__ T max(T v) const {
    for (int o = size_ / 2; o > 0; o >>= 1) v = max_acc(v, __shfl_xor_sync(kFullMask, v, o, size_));
    return v;
  }
  template <typename T>
  __device__ T broadcast(T v, int src) const {
    return __shfl_sync(kFullMask, v, src, size_);
  }
  // Over the whole warp: the teams of a warp loop in step because their shuffles use the full mask.
  __device__ int uniform_max(int v) const {
    for (int o = 16; o > 0; o >>= 1) v = ::max(v, __shfl_xor_sync(kFullMask, v, o));
    return v;
  }
};

// The team of this thread and the index of its team among the block's teams.
__device__ __forceinline__ WarpTeam this_team(int team_size) {
  return WarpTeam{static_cast<int>(threadIdx.x) & (team_size - 1), team_size};
}

__device__ __forceinline__ int64_t team_index(int team_size) {
  return static_cast<int64_t>(blockIdx.x) * (kBlock / team_size) + threadIdx.x / team_size;
}

template <typename scalar_t, int CPT, bool kVec>
__global__ void __launch_bounds__(kBlock)
    forward_kernel(const Shape s, const int team_size, const scalar_t* __restrict__ w,
                   const scalar_t* __restrict__ v, const at::opmath_type<scalar_t>* __restrict__ rpb,
                   scalar_t* __restrict__ out, at::opmath_type<scalar_t>* __restrict__ lse) {
  const int64_t pix = team_index(team_size);
  const bool valid = pix < s.npix;  // the last pixel stands in for the others, which store nothing
  forward_pixel<scalar_t, CPT, kVec>(this_team(team_size), s, pixel_pos(valid ? pix : s.npix - 1, s), valid, w, v, rpb,
                                     out, lse);
}

// grad_rpb of a block: each lane's tap gradient (entry -1: none) is first summed over the warp's teams in registers
// when lane k of every team has the same entry (consecutive pixels of a row away from the borders), and added once;
// otherwise each lane adds its own. Every lane of the warp calls it (full-mask shuffles).
template <typename acc_t>
struct SharedBiasSink {
  acc_t* table;  // the block's [R, R] partial sums in shared memory
  __device__ void operator()(const WarpTeam& team, int entry, acc_t grad) const {
    const int lane = static_cast<int>(threadIdx.x) & 31;
    const int first = __shfl_sync(kFullMask, entry, lane & (team.size_ - 1));  // lane k of the warp's first team
    if (__all_sync(kFullMask, entry == first)) {
      for (int o = team.size_; o < 32; o <<= 1) grad += __shfl_xor_sync(kFullMask, grad, o);
      if (lane < team.size_ && entry >= 0) atomicAdd(table + entry, grad);
    } else if (entry >= 0) {
      atomicAdd(table + entry, grad);
    }
  }
};

// The whole backward, a team per pixel (backward_pixel): grad_weights (or, deterministic, the logit gradients in the
// accumulation type) and grad_value. Every block covers pixels of one plane (blocks_per_plane blocks per plane), so
// with rpb (kSharedRpb) its contributions to grad_rpb go to one bias table, summed in shared memory first. The body's
// team reductions need every lane: pixels past the plane's end stand in as its last pixel and store nothing.
template <typename scalar_t, int CPT, bool kVec, typename grad_t, bool kSharedRpb>
__global__ void __launch_bounds__(kBlock)
    backward_kernel(const Shape s, const int team_size, const int64_t blocks_per_plane,
                    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ w,
                    const scalar_t* __restrict__ v, const at::opmath_type<scalar_t>* __restrict__ rpb,
                    const scalar_t* __restrict__ out, const at::opmath_type<scalar_t>* __restrict__ lse,
                    grad_t* __restrict__ grad_logits, scalar_t* __restrict__ grad_value,
                    at::opmath_type<scalar_t>* __restrict__ grad_rpb) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char shared_raw[];
  acc_t* rpb_acc = reinterpret_cast<acc_t*>(shared_raw);  // [R * R] when kSharedRpb
  const int64_t plane = blockIdx.x / blocks_per_plane;
  const int RR = static_cast<int>(s.R * s.R), plane_size = static_cast<int>(s.H * s.W);
  if constexpr (kSharedRpb) {
    for (int k = threadIdx.x; k < RR; k += blockDim.x) rpb_acc[k] = 0;
    __syncthreads();
  }
  const int local = static_cast<int>(blockIdx.x - plane * blocks_per_plane) * (kBlock / team_size) +
                    static_cast<int>(threadIdx.x) / team_size;
  const bool valid = local < plane_size;
  const PixelPos at = pixel_in_plane(plane, valid ? local : plane_size - 1, s);
  if constexpr (kSharedRpb) {
    backward_pixel<scalar_t, CPT, kVec>(this_team(team_size), s, at, valid, grad_out, w, v, rpb, out, lse,
                                        grad_logits, grad_value, SharedBiasSink<acc_t>{rpb_acc});
    __syncthreads();
    acc_t* dst = grad_rpb + static_cast<int64_t>(at.group) * RR;
    for (int k = threadIdx.x; k < RR; k += blockDim.x) {
      if (rpb_acc[k] != acc_t(0)) atomicAdd(dst + k, rpb_acc[k]);
    }
  } else {
    backward_pixel<scalar_t, CPT, kVec>(this_team(team_size), s, at, valid, grad_out, w, v, rpb, out, lse,
                                        grad_logits, grad_value, NoBiasSink{});
  }
}

// Deterministic grad_rpb, step 1 (bias_row_entry): a thread per (plane row, tap row a, table column x); consecutive
// threads read consecutive taps of a pixel.
template <typename acc_t>
__global__ void __launch_bounds__(kBlock)
    bias_rows_kernel(const Shape s, const acc_t* __restrict__ grad_logits, acc_t* __restrict__ rows) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x;
  const int KR = static_cast<int>(s.K * s.R), R = static_cast<int>(s.R);
  if (n >= s.B * s.G * s.H * KR) return;
  const int64_t row = n / KR;
  const int rest = static_cast<int>(n - row * KR), a = rest / R;
  rows[n] = bias_row_entry<acc_t>(s, row, a, rest - a * R, grad_logits);
}

// Step 2 (bias_grad_entry): a thread per table entry.
template <typename acc_t>
__global__ void __launch_bounds__(kBlock)
    bias_grad_kernel(const Shape s, const acc_t* __restrict__ rows, acc_t* __restrict__ grad_rpb) {
  const int n = static_cast<int>(blockIdx.x) * kBlock + static_cast<int>(threadIdx.x);
  const int R = static_cast<int>(s.R), RR = R * R;
  if (n >= s.G * RR) return;
  const int g = n / RR, u = (n - g * RR) / R;
  grad_rpb[n] = bias_grad_entry<acc_t>(s, g, u, n - g * RR - u * R, rows);
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n && p < 32) p <<= 1;
  return p;
}

int channel_team(int64_t C, int cpt) { return next_pow2((C + cpt - 1) / cpt); }

int64_t blocks_for(int64_t teams, int team_size) { return (teams + kBlock / team_size - 1) / (kBlock / team_size); }

// A one-dimensional grid of `blocks` blocks, within CUDA's x limit (2^31 - 1; checked in contmix_op.cpp).
unsigned checked_grid(int64_t blocks, const char* kernel) {
  check_cuda_grid(blocks, kBlock, kernel);
  return static_cast<unsigned>(blocks);
}

std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& weights, const at::Tensor& value,
                                                const std::optional<at::Tensor>& rpb, int64_t kernel_size,
                                                bool softmax) {
  check_cuda_kernel_size(kernel_size);  // contmix_aggregate raises a ValueError first
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  const c10::cuda::CUDAGuard guard(in.value.device());
  at::Tensor out = at::empty(in.value.sizes(), in.value.options()), lse = allocate_lse(in.value, softmax);
  const Shape s = make_shape(in.value, kernel_size, softmax);
  if (s.npix == 0) return {out, lse};  // with C = 0 the kernel still saves lse
  check_plane_indices(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.value.device().index());
  dispatch_channel_layout(in.value, s.C, {in.value, out}, [&]<typename scalar_t, int CPT, bool kVec>() {
    using acc_t = at::opmath_type<scalar_t>;
    const int team = channel_team(s.C, CPT);
    forward_kernel<scalar_t, CPT, kVec>
        <<<checked_grid(blocks_for(s.npix, team), "forward"), kBlock, 0, stream>>>(
            s, team, in.weights.const_data_ptr<scalar_t>(), in.value.const_data_ptr<scalar_t>(),
            optional_ptr<acc_t>(in.rpb), out.mutable_data_ptr<scalar_t>(),
            softmax ? lse.mutable_data_ptr<acc_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& weights,
                                                             const at::Tensor& value,
                                                             const std::optional<at::Tensor>& rpb,
                                                             const std::optional<at::Tensor>& saved_out,
                                                             const std::optional<at::Tensor>& saved_lse,
                                                             int64_t kernel_size, bool softmax) {
  check_cuda_kernel_size(kernel_size);  // contmix_aggregate raises a ValueError first
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  check_grad_out(grad_out, value);
  const c10::cuda::CUDAGuard guard(in.value.device());
  const at::Tensor go = grad_out.contiguous();
  at::Tensor out, lse;
  if (softmax) std::tie(out, lse) = saved_forward(saved_out, saved_lse, in.value);
  // Under torch.use_deterministic_algorithms(True) grad_rpb is gathered in a fixed order from the logit gradients.
  const bool gather_rpb = in.rpb.defined() && at::globalContext().deterministicAlgorithms();
  BackwardBuffers r = allocate_backward(in.weights, in.value, in.rpb, gather_rpb);
  const Shape s = make_shape(in.value, kernel_size, softmax);
  if (s.npix == 0) return finish_backward(r, rpb, in.value);
  check_plane_indices(s);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(in.value.device().index());
  const int64_t C = std::max<int64_t>(s.C, 1);
  dispatch_channel_layout(in.value, C, {go, in.value, out, r.grad_value},
                          [&]<typename scalar_t, int CPT, bool kVec>() {
    using acc_t = at::opmath_type<scalar_t>;
    const BackwardData<scalar_t> d(go, in, out, lse, r.grad_value);
    const int team = channel_team(C, CPT);
    // One plane per block (blocks_per_plane consecutive blocks), so B * G has no grid limit of its own.
    const int64_t blocks_per_plane = blocks_for(s.H * s.W, team);
    const unsigned blocks = checked_grid(blocks_per_plane * s.B * s.G, "backward");
    if (!gather_rpb) {
      const bool with_rpb = d.rpb != nullptr;
      const size_t shared = with_rpb ? static_cast<size_t>(s.R * s.R) * sizeof(acc_t) : 0;
      const auto kernel = with_rpb ? backward_kernel<scalar_t, CPT, kVec, scalar_t, true>
                                   : backward_kernel<scalar_t, CPT, kVec, scalar_t, false>;
      kernel<<<blocks, kBlock, shared, stream>>>(s, team, blocks_per_plane, d.grad_out, d.w, d.v, d.rpb, d.out, d.lse,
                                                r.grad_weights.mutable_data_ptr<scalar_t>(), d.grad_value,
                                                with_rpb ? r.grad_rpb.mutable_data_ptr<acc_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    // The logit gradients in the accumulation type (grad_logits is grad_weights itself when that has the
    // accumulation type), then grad_rpb gathered from them in a fixed order.
    backward_kernel<scalar_t, CPT, kVec, acc_t, false><<<blocks, kBlock, 0, stream>>>(
        s, team, blocks_per_plane, d.grad_out, d.w, d.v, d.rpb, d.out, d.lse, r.grad_logits.mutable_data_ptr<acc_t>(),
        d.grad_value, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    acc_t* rows = r.bias_rows.mutable_data_ptr<acc_t>();
    bias_rows_kernel<acc_t><<<checked_grid((r.bias_rows.numel() + kBlock - 1) / kBlock, "grad_rpb rows"), kBlock, 0,
                              stream>>>(s, r.grad_logits.const_data_ptr<acc_t>(), rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    bias_grad_kernel<acc_t><<<checked_grid((s.G * s.R * s.R + kBlock - 1) / kBlock, "grad_rpb"), kBlock, 0, stream>>>(
        s, rows, r.grad_rpb.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finish_backward(r, rpb, in.value);
}

}  // namespace

TORCH_LIBRARY_IMPL(mmoverlock, CUDA, m) {
  m.impl("contmix_forward", &forward_impl);
  m.impl("contmix_backward", &backward_impl);
}

}  // namespace contmix
}  // namespace mmoverlock
