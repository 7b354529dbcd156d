// Per-device launchers of the ContMix kernels. The device-agnostic op in contmix.cpp checks the inputs, makes them
// contiguous and allocates every output and workspace, so the launchers only compute.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace mmoverlock {
namespace contmix {

// The operators' own input checks (shapes, dtypes, devices); TORCH_CHECK errors naming the argument.
void check_inputs(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                  int64_t kernel_size);
void check_grad_out(const at::Tensor& grad_out, const at::Tensor& value);

// The backward's outputs and workspaces, allocated by the op for every launcher. grad_rpb is in the accumulation
// dtype. The two-pass (CUDA) backward also gets `stats` with softmax and, when deterministic with rpb, `grad_logits`
// (see backward_cuda).
struct BackwardBuffers {
  at::Tensor grad_weights, grad_value, grad_rpb, stats, grad_logits;
};
BackwardBuffers allocate_backward(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb,
                                  bool softmax, bool two_pass, bool deterministic);
// The op's results: grad_logits copied into grad_weights where they differ, grad_rpb in the dtype of the rpb the
// caller passed (an empty tensor without rpb).
std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(BackwardBuffers& buffers,
                                                               const std::optional<at::Tensor>& rpb,
                                                               const at::Tensor& value);

// out[B,G,H,W,C] = sum_t P[..., t] * value[neighbour t], P = softmax?(weights + gathered rpb).
// `rpb` may be an undefined tensor (no bias); every launcher takes it in the accumulation dtype (kernel_bias).
void forward_cpu(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                 bool softmax, at::Tensor& out);

// Gradients of forward_cpu. `grad_rpb` [G,2K-1,2K-1] (accumulation dtype) is written when `rpb` is defined.
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& grad_weights,
                  at::Tensor& grad_value, at::Tensor& grad_rpb);

#ifdef MMOVERLOCK_WITH_CUDA
void forward_cuda(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                  bool softmax, at::Tensor& out);

// Gradients of forward_cuda into `buffers` (allocate_backward with two_pass): `stats` [B,G,H,W,2] is workspace, used
// when softmax is true; `grad_rpb` [G,2K-1,2K-1] (zero-initialised) is accumulated when `rpb` is defined. With
// `deterministic` (and rpb defined) the logit gradients go to `grad_logits` [B,G,H,W,K*K] in the accumulation dtype
// (grad_weights itself when that has the accumulation dtype; finish_backward copies them otherwise) and grad_rpb is
// gathered from them in a fixed order instead of with atomics.
void backward_cuda(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                   const at::Tensor& rpb, int64_t kernel_size, bool softmax, bool deterministic,
                   BackwardBuffers& buffers);
#endif

}  // namespace contmix
}  // namespace mmoverlock
