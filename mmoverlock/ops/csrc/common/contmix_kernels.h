// Per-device launchers of the ContMix kernels. The device-agnostic op in contmix.cpp checks the inputs, makes them
// contiguous and allocates every output and workspace, so the launchers only compute.
#pragma once

#include <ATen/core/Tensor.h>

namespace mmoverlock {
namespace contmix {

// out[B,G,H,W,C] = sum_t P[..., t] * value[neighbour t], P = softmax?(weights + gathered rpb).
// `rpb` may be an undefined tensor (no bias).
void forward_cpu(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                 bool softmax, at::Tensor& out);

// Gradients of forward_cpu. `grad_rpb` [G,2K-1,2K-1] (accumulation dtype) is written when `rpb` is defined.
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& grad_weights,
                  at::Tensor& grad_value, at::Tensor& grad_rpb);

#ifdef MMOVERLOCK_WITH_CUDA
void forward_cuda(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                  bool softmax, at::Tensor& out);

// Gradients of forward_cuda. `stats` [B,G,H,W,2] (accumulation dtype) is workspace, used when softmax is true;
// `grad_rpb` [G,2K-1,2K-1] (accumulation dtype, zero-initialised) is accumulated when `rpb` is defined.
void backward_cuda(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                   const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& stats,
                   at::Tensor& grad_weights, at::Tensor& grad_value, at::Tensor& grad_rpb);
#endif

}  // namespace contmix
}  // namespace mmoverlock
