// The ContMix core as torch.library operators: the schema and the CPU implementation (the CUDA one is registered for
// the CUDA dispatch key by cuda/contmix_cuda.cu; the checks and buffers both share are in contmix_op.cpp).
//
//   mmoverlock::contmix_forward(weights, value, rpb, kernel_size, softmax) -> (out, lse)
//   mmoverlock::contmix_backward(grad_out, weights, value, rpb, out, lse, kernel_size, softmax)
//       -> (grad_weights, grad_value, grad_rpb)   (grad_rpb is an empty tensor when rpb is None)
//
// `lse` is what a device's forward saves for its backward besides its output: on CUDA with softmax, the log-sum-exp
// of each pixel's biased logits ([B, G, H, W], accumulation dtype; its backward then also reads `out`); on the CPU an
// empty tensor (its backward recomputes the softmax from the inputs and takes `out` and `lse` as None). Autograd
// (which saves out and lse only when lse is not empty) and the fake (meta) implementations are registered from Python
// (mmoverlock/ops/contmix.py). The K*K probabilities are never stored.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "contmix_kernels.h"
#include "contmix_shape.h"

namespace mmoverlock {
namespace contmix {

namespace {

// The CPU kernels save nothing but their inputs: the backward recomputes the softmax (lse comes back empty).
std::tuple<at::Tensor, at::Tensor> forward_impl(const at::Tensor& weights, const at::Tensor& value,
                                                const std::optional<at::Tensor>& rpb, int64_t kernel_size,
                                                bool softmax) {
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  at::Tensor out = at::empty(in.value.sizes(), in.value.options());
  forward_cpu(in.weights, in.value, in.rpb, kernel_size, softmax, out);
  return {out, allocate_lse(in.value, false)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& weights,
                                                             const at::Tensor& value,
                                                             const std::optional<at::Tensor>& rpb,
                                                             const std::optional<at::Tensor>& /*out*/,
                                                             const std::optional<at::Tensor>& /*lse*/,
                                                             int64_t kernel_size, bool softmax) {
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  check_grad_out(grad_out, value);
  BackwardBuffers r = allocate_backward(in.weights, in.value, in.rpb, /*keep_logit_grads=*/false);
  backward_cpu(grad_out.contiguous(), in.weights, in.value, in.rpb, kernel_size, softmax, r.grad_weights,
               r.grad_value, r.grad_rpb);
  return finish_backward(r, rpb, in.value);
}

}  // namespace

TORCH_LIBRARY(mmoverlock, m) {
  m.def("contmix_forward(Tensor weights, Tensor value, Tensor? rpb, int kernel_size, bool softmax) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "contmix_backward(Tensor grad_out, Tensor weights, Tensor value, Tensor? rpb, Tensor? out, Tensor? lse, "
      "int kernel_size, bool softmax) -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(mmoverlock, CPU, m) {
  m.impl("contmix_forward", &forward_impl);
  m.impl("contmix_backward", &backward_impl);
}

}  // namespace contmix
}  // namespace mmoverlock
