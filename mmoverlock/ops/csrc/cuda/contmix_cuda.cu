// CUDA kernels of the ContMix core: float32, float16 and bfloat16 (accumulating in float32) and float64; any odd
// K <= 31 (the launchers need no per-K instantiation; the bound keeps a bias table within shared memory) and any C.
//
// The per-pixel arithmetic lives in common/contmix_bodies.h and is shared with a CPU driver that the tests run; this
// file holds the parallel glue only: a "team" (a power-of-two group of lanes inside one warp) shares one pixel and
// cooperates through warp shuffles (WarpTeam).
//   forward / stats: a team per output pixel, lanes over channels.
//   grad_value:      a team per value pixel, gathered over its inverse neighbourhood (no atomics).
//   grad_weights:    a team per output pixel, lanes over channels, reducing each tap's dot product and taking
//                    turns at the taps' exps and stores; grad_rpb is reduced per block in shared memory and
//                    added to global memory once per block. Under torch.use_deterministic_algorithms(True) the
//                    logit gradients are kept in the accumulation type instead and grad_rpb is gathered per table
//                    entry in a fixed order (bias_grad_kernel): bitwise reproducible.
// The backward keeps two numbers per pixel (stats) instead of the K*K softmax probabilities.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "contmix_bodies.h"
#include "contmix_kernels.h"

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

template <typename scalar_t, int CPT, bool kStats>
__global__ void __launch_bounds__(kBlock)
    forward_kernel(const Shape s, const int team_size, const scalar_t* __restrict__ w,
                   const scalar_t* __restrict__ v, const at::opmath_type<scalar_t>* __restrict__ rpb,
                   const scalar_t* __restrict__ grad_out, scalar_t* __restrict__ out,
                   at::opmath_type<scalar_t>* __restrict__ stats) {
  const int64_t pix = team_index(team_size);
  const bool valid = pix < s.npix;  // the last pixel stands in for the others, which store nothing
  forward_pixel<scalar_t, CPT, kStats>(this_team(team_size), s, valid ? pix : s.npix - 1, valid, w, v, rpb, grad_out,
                                       out, stats);
}

template <typename scalar_t, int CPT>
__global__ void __launch_bounds__(kBlock)
    grad_value_kernel(const Shape s, const int team_size, const scalar_t* __restrict__ grad_out,
                      const scalar_t* __restrict__ w, const at::opmath_type<scalar_t>* __restrict__ rpb,
                      const at::opmath_type<scalar_t>* __restrict__ stats, scalar_t* __restrict__ grad_value) {
  const int64_t pix = team_index(team_size);
  const bool valid = pix < s.npix;
  grad_value_pixel<scalar_t, CPT>(this_team(team_size), s, valid ? pix : s.npix - 1, valid, grad_out, w, rpb, stats,
                                  grad_value);
}

template <typename acc_t>
struct SharedBiasSink {
  acc_t* table;  // the block's [R, R] partial sums in shared memory
  __device__ void operator()(int64_t offset, acc_t grad) const { atomicAdd(table + offset, grad); }
};

// grad_weights (or, deterministic, the logit gradients in the accumulation type), a team per pixel with lanes over
// channels. Every block covers pixels of one plane (blocks_per_plane blocks per plane), so with rpb (kSharedRpb) its
// contributions to grad_rpb go to one bias table, summed in shared memory first. The body's team reductions need
// every lane: pixels past the plane's end stand in as its last pixel and store nothing.
template <typename scalar_t, int CPT, typename grad_t, bool kSharedRpb>
__global__ void __launch_bounds__(kBlock)
    grad_weights_kernel(const Shape s, const int team_size, const int64_t blocks_per_plane,
                        const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ w,
                        const scalar_t* __restrict__ v, const at::opmath_type<scalar_t>* __restrict__ rpb,
                        const at::opmath_type<scalar_t>* __restrict__ stats, grad_t* __restrict__ grad_logits,
                        at::opmath_type<scalar_t>* __restrict__ grad_rpb) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(sizeof(double)) unsigned char shared_raw[];
  acc_t* rpb_acc = reinterpret_cast<acc_t*>(shared_raw);  // [R * R] when kSharedRpb
  const int64_t plane = blockIdx.x / blocks_per_plane, RR = s.R * s.R;
  if constexpr (kSharedRpb) {
    for (int64_t k = threadIdx.x; k < RR; k += blockDim.x) rpb_acc[k] = 0;
    __syncthreads();
  }
  const int64_t local = (blockIdx.x - plane * blocks_per_plane) * (kBlock / team_size) + threadIdx.x / team_size;
  const bool valid = local < s.H * s.W;
  const int64_t pix = plane * s.H * s.W + (valid ? local : s.H * s.W - 1);
  if constexpr (kSharedRpb) {
    grad_weights_pixel<scalar_t, CPT>(this_team(team_size), s, pix, valid, grad_out, w, v, rpb, stats, grad_logits,
                                      SharedBiasSink<acc_t>{rpb_acc});
  } else {
    grad_weights_pixel<scalar_t, CPT>(this_team(team_size), s, pix, valid, grad_out, w, v, rpb, stats, grad_logits,
                                      NoBiasSink{});
  }
  if constexpr (kSharedRpb) {
    __syncthreads();
    acc_t* dst = grad_rpb + (plane % s.G) * RR;
    for (int64_t k = threadIdx.x; k < RR; k += blockDim.x) {
      if (rpb_acc[k] != acc_t(0)) atomicAdd(dst + k, rpb_acc[k]);
    }
  }
}

// Deterministic grad_rpb: a warp per table entry (G * R * R of them), gathering from the logit gradients.
template <typename acc_t>
__global__ void __launch_bounds__(kBlock)
    bias_grad_kernel(const Shape s, const acc_t* __restrict__ grad_logits, acc_t* __restrict__ grad_rpb) {
  constexpr int kTeam = 32;
  const int64_t entries = s.G * s.R * s.R;
  const int64_t n = team_index(kTeam);
  const int64_t index = n < entries ? n : entries - 1;
  const acc_t sum = bias_grad_entry<acc_t>(this_team(kTeam), s, index / (s.R * s.R), index % (s.R * s.R),
                                           grad_logits);
  if (n < entries && threadIdx.x % kTeam == 0) grad_rpb[index] = sum;
}

int next_pow2(int64_t n) {
  int p = 1;
  while (p < n && p < 32) p <<= 1;
  return p;
}

int channel_team(int64_t C, int cpt) { return next_pow2((C + cpt - 1) / cpt); }

int64_t blocks_for(int64_t teams, int team_size) { return (teams + kBlock / team_size - 1) / (kBlock / team_size); }

// A one-dimensional grid of `blocks` blocks, within CUDA's x limit (2^31 - 1).
unsigned checked_grid(int64_t blocks, const char* kernel) {
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "contmix: the input is too large for the CUDA ",
              kernel, " kernel (", blocks, " blocks of ", kBlock, " threads; at most 2^31 - 1)");
  return static_cast<unsigned>(blocks);
}

// kCudaMaxKernelSize (contmix_common.h). contmix_aggregate raises a ValueError for it first; this guards direct calls
// of the operators.
void check_kernel_size(int64_t K) {
  TORCH_CHECK_VALUE(K <= kCudaMaxKernelSize, "contmix: kernel_size must be at most ", kCudaMaxKernelSize,
                    " for the CUDA kernels, got ", K,
                    " (use backend='torch' for larger windows)");
}

}  // namespace

void forward_cuda(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                  bool softmax, at::Tensor& out) {
  check_kernel_size(kernel_size);
  const Shape s = make_shape(value, kernel_size, softmax);
  if (s.npix == 0 || s.C == 0) return;
  check_plane_indices(s);
  const c10::cuda::CUDAGuard guard(value.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "contmix_forward_cuda", [&] {
    with_channels_per_lane(s.C, [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      const int team = channel_team(s.C, CPT);
      forward_kernel<scalar_t, CPT, false><<<checked_grid(blocks_for(s.npix, team), "forward"), kBlock, 0, stream>>>(
          s, team, weights.const_data_ptr<scalar_t>(), value.const_data_ptr<scalar_t>(), optional_ptr<at::opmath_type<scalar_t>>(rpb),
          nullptr, out.mutable_data_ptr<scalar_t>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void backward_cuda(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                   const at::Tensor& rpb, int64_t kernel_size, bool softmax, bool deterministic,
                   BackwardBuffers& buffers) {
  check_kernel_size(kernel_size);
  const Shape s = make_shape(value, kernel_size, softmax);
  if (s.npix == 0) return;
  check_plane_indices(s);
  const c10::cuda::CUDAGuard guard(value.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(value.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "contmix_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* w = weights.const_data_ptr<scalar_t>();
    const scalar_t* v = value.const_data_ptr<scalar_t>();
    const acc_t* b = optional_ptr<acc_t>(rpb);
    acc_t* st = softmax ? buffers.stats.mutable_data_ptr<acc_t>() : nullptr;
    const bool gather_rpb = b != nullptr && deterministic;
    with_channels_per_lane(std::max<int64_t>(s.C, 1), [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      const int team = channel_team(std::max<int64_t>(s.C, 1), CPT);
      if (softmax) {
        forward_kernel<scalar_t, CPT, true><<<checked_grid(blocks_for(s.npix, team), "stats"), kBlock, 0, stream>>>(
            s, team, w, v, b, go, nullptr, st);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (s.C > 0) {
        grad_value_kernel<scalar_t, CPT><<<checked_grid(blocks_for(s.npix, team), "grad_value"), kBlock, 0, stream>>>(
            s, team, go, w, b, st, buffers.grad_value.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      // One plane per block (blocks_per_plane consecutive blocks), so B * G has no grid limit of its own.
      const int64_t blocks_per_plane = blocks_for(s.H * s.W, team);
      const unsigned blocks = checked_grid(blocks_per_plane * s.B * s.G, "grad_weights");
      if (!gather_rpb) {
        const size_t shared = b != nullptr ? static_cast<size_t>(s.R * s.R) * sizeof(acc_t) : 0;
        const auto kernel = b != nullptr ? grad_weights_kernel<scalar_t, CPT, scalar_t, true>
                                         : grad_weights_kernel<scalar_t, CPT, scalar_t, false>;
        kernel<<<blocks, kBlock, shared, stream>>>(s, team, blocks_per_plane, go, w, v, b, st,
                                                  buffers.grad_weights.mutable_data_ptr<scalar_t>(),
                                                  b != nullptr ? buffers.grad_rpb.mutable_data_ptr<acc_t>() : nullptr);
      } else {
        // Deterministic grad_rpb: the logit gradients in the accumulation type (grad_logits is grad_weights itself
        // when that has the accumulation type), gathered per table entry in a fixed order below.
        grad_weights_kernel<scalar_t, CPT, acc_t, false><<<blocks, kBlock, 0, stream>>>(
            s, team, blocks_per_plane, go, w, v, b, st, buffers.grad_logits.mutable_data_ptr<acc_t>(), nullptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (!gather_rpb) return;
    acc_t* logits = buffers.grad_logits.mutable_data_ptr<acc_t>();
    bias_grad_kernel<acc_t><<<checked_grid(blocks_for(s.G * s.R * s.R, 32), "grad_rpb"), kBlock, 0, stream>>>(
        s, logits, buffers.grad_rpb.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace contmix
}  // namespace mmoverlock
