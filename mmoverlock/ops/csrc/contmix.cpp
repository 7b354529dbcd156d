// The ContMix core as torch.library operators: schema, input checks and the device-agnostic part of the kernels
// (contiguity, allocation of outputs and workspaces), dispatched to the CPU and CUDA launchers.
//
//   mmoverlock::contmix_forward(weights, value, rpb, kernel_size, softmax) -> out
//   mmoverlock::contmix_backward(grad_out, weights, value, rpb, kernel_size, softmax)
//       -> (grad_weights, grad_value, grad_rpb)   (grad_rpb is an empty tensor when rpb is None)
//
// Autograd and the fake (meta) implementations are registered from Python (mmoverlock/ops/contmix.py). Backward
// takes the forward *inputs* only: the biased logits and the softmax are recomputed, never stored.
#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "contmix_kernels.h"

namespace mmoverlock {
namespace contmix {
namespace {

// The op's own safety net; the Python wrapper raises friendlier errors for the same cases before calling it.
void check_inputs(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                  int64_t K) {
  TORCH_CHECK(K >= 1 && K % 2 == 1, "contmix: kernel_size must be a positive odd integer, got ", K);
  TORCH_CHECK(value.dim() == 5, "contmix: value must be 5-D [B, G, H, W, C], got shape ", value.sizes());
  TORCH_CHECK(weights.dim() == 5, "contmix: weights must be 5-D [B, G, H, W, K*K], got shape ", weights.sizes());
  TORCH_CHECK(value.size(2) >= K && value.size(3) >= K, "contmix: H and W (", value.size(2), ", ", value.size(3),
              ") must be at least kernel_size ", K);
  for (int64_t d = 0; d < 4; ++d) {
    TORCH_CHECK(weights.size(d) == value.size(d), "contmix: weights ", weights.sizes(), " and value ",
                value.sizes(), " must agree in B, G, H, W");
  }
  TORCH_CHECK(weights.size(4) == K * K, "contmix: weights must have kernel_size**2 = ", K * K,
              " taps in the last dim, got ", weights.size(4));
  TORCH_CHECK(weights.scalar_type() == value.scalar_type(), "contmix: weights (", weights.scalar_type(),
              ") and value (", value.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(weights.device() == value.device(), "contmix: weights and value must be on the same device");
  if (rpb.has_value()) {
    TORCH_CHECK(rpb->dim() == 3 && rpb->size(0) == value.size(1) && rpb->size(1) == 2 * K - 1 &&
                    rpb->size(2) == 2 * K - 1,
                "contmix: rpb must have shape [G, 2K-1, 2K-1] = [", value.size(1), ", ", 2 * K - 1, ", ",
                2 * K - 1, "], got ", rpb->sizes());
    TORCH_CHECK(rpb->scalar_type() == value.scalar_type(), "contmix: rpb (", rpb->scalar_type(),
                ") must have the dtype of value (", value.scalar_type(), ")");
    TORCH_CHECK(rpb->device() == value.device(), "contmix: rpb must be on the device of value");
  }
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

#ifndef MMOVERLOCK_WITH_CUDA
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false, "contmix: mmoverlock._ext was built without CUDA; rebuild with FORCE_CUDA=1 "
                     "(pip install --no-build-isolation -e .) on a machine with nvcc");
}
#endif

at::Tensor contmix_forward(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                           int64_t kernel_size, bool softmax) {
  check_inputs(weights, value, rpb, kernel_size);
  const at::OptionalDeviceGuard guard(at::device_of(value));
  const at::Tensor w = weights.contiguous(), v = value.contiguous(), b = optional_contiguous(rpb);
  at::Tensor out = at::empty(v.sizes(), v.options());
  if (v.is_cuda()) {
#ifdef MMOVERLOCK_WITH_CUDA
    forward_cuda(w, v, b, kernel_size, softmax, out);
#else
    no_cuda();
#endif
  } else {
    forward_cpu(w, v, b, kernel_size, softmax, out);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contmix_backward(const at::Tensor& grad_out, const at::Tensor& weights,
                                                                const at::Tensor& value,
                                                                const std::optional<at::Tensor>& rpb,
                                                                int64_t kernel_size, bool softmax) {
  check_inputs(weights, value, rpb, kernel_size);
  TORCH_CHECK(grad_out.sizes() == value.sizes() && grad_out.scalar_type() == value.scalar_type(),
              "contmix: grad_out must match value in shape and dtype");
  const at::OptionalDeviceGuard guard(at::device_of(value));
  const at::Tensor go = grad_out.contiguous(), w = weights.contiguous(), v = value.contiguous(),
                   b = optional_contiguous(rpb);
  const auto acc_options = v.options().dtype(at::toOpMathType(v.scalar_type()));
  at::Tensor grad_weights = at::empty(w.sizes(), w.options());
  at::Tensor grad_value = at::empty(v.sizes(), v.options());
  // Accumulated in the accumulation dtype (the CUDA kernel adds block partial sums atomically).
  at::Tensor grad_rpb = b.defined() ? at::zeros(b.sizes(), acc_options) : at::Tensor();
  if (v.is_cuda()) {
#ifdef MMOVERLOCK_WITH_CUDA
    // Two numbers per pixel (log-sum-exp, <grad_out, out>) instead of the K*K softmax probabilities.
    at::Tensor stats = at::empty(softmax ? at::IntArrayRef({v.size(0), v.size(1), v.size(2), v.size(3), 2})
                                         : at::IntArrayRef({0}),
                                 acc_options);
    backward_cuda(go, w, v, b, kernel_size, softmax, stats, grad_weights, grad_value, grad_rpb);
#else
    no_cuda();
#endif
  } else {
    backward_cpu(go, w, v, b, kernel_size, softmax, grad_weights, grad_value, grad_rpb);
  }
  grad_rpb = b.defined() ? grad_rpb.to(b.scalar_type()) : at::empty({0}, v.options());
  return {grad_weights, grad_value, grad_rpb};
}

}  // namespace

TORCH_LIBRARY(mmoverlock, m) {
  m.def("contmix_forward(Tensor weights, Tensor value, Tensor? rpb, int kernel_size, bool softmax) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "contmix_backward(Tensor grad_out, Tensor weights, Tensor value, Tensor? rpb, int kernel_size, bool softmax)"
      " -> (Tensor, Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(mmoverlock, CPU, m) {
  m.impl("contmix_forward", &contmix_forward);
  m.impl("contmix_backward", &contmix_backward);
}

#ifdef MMOVERLOCK_WITH_CUDA
TORCH_LIBRARY_IMPL(mmoverlock, CUDA, m) {
  m.impl("contmix_forward", &contmix_forward);
  m.impl("contmix_backward", &contmix_backward);
}
#endif

}  // namespace contmix
}  // namespace mmoverlock
