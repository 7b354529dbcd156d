// The ContMix core as torch.library operators: schema, input checks and the device-agnostic part of the kernels
// (contiguity, allocation of outputs and workspaces), dispatched to the CPU and CUDA launchers.
//
//   mmoverlock::contmix_forward(weights, value, rpb, kernel_size, softmax) -> out
//   mmoverlock::contmix_backward(grad_out, weights, value, rpb, kernel_size, softmax)
//       -> (grad_weights, grad_value, grad_rpb)   (grad_rpb is an empty tensor when rpb is None)
//
// Autograd and the fake (meta) implementations are registered from Python (mmoverlock/ops/contmix.py). Backward
// takes the forward *inputs* only: the biased logits and the softmax are recomputed, never stored.
#include <ATen/Context.h>
#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <tuple>

#include "contmix_kernels.h"
#include "contmix_shape.h"

namespace mmoverlock {
namespace contmix {

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
    const auto acc = at::toOpMathType(value.scalar_type());
    TORCH_CHECK(rpb->scalar_type() == value.scalar_type() || rpb->scalar_type() == acc, "contmix: rpb (",
                rpb->scalar_type(), ") must have the dtype of value (", value.scalar_type(),
                ") or its accumulation dtype (", acc, ")");
    TORCH_CHECK(rpb->device() == value.device(), "contmix: rpb must be on the device of value");
  }
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& value) {
  TORCH_CHECK(grad_out.sizes() == value.sizes() && grad_out.scalar_type() == value.scalar_type(),
              "contmix: grad_out must match value in shape and dtype, got ", grad_out.sizes(), " ",
              grad_out.scalar_type(), " for value ", value.sizes(), " ", value.scalar_type());
  TORCH_CHECK(grad_out.device() == value.device(), "contmix: grad_out is on ", grad_out.device(),
              " but value is on ", value.device(), "; they must be on the same device");
}

BackwardBuffers allocate_backward(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb,
                                  bool softmax, bool two_pass, bool deterministic) {
  const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
  BackwardBuffers out;
  out.grad_weights = at::empty(weights.sizes(), weights.options());
  out.grad_value = at::empty(value.sizes(), value.options());
  // Accumulated in the accumulation dtype (the CUDA kernel adds block partial sums atomically).
  out.grad_rpb = rpb.defined() ? at::zeros(rpb.sizes(), acc_options) : at::Tensor();
  if (two_pass && softmax) {
    // Two numbers per pixel (log-sum-exp, <grad_out, out>) instead of the K*K softmax probabilities.
    out.stats = at::empty({value.size(0), value.size(1), value.size(2), value.size(3), 2}, acc_options);
  }
  if (two_pass && deterministic && rpb.defined()) {
    out.grad_logits = weights.scalar_type() == acc_options.dtype() ? out.grad_weights
                                                                   : at::empty(weights.sizes(), acc_options);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(BackwardBuffers& buffers,
                                                               const std::optional<at::Tensor>& rpb,
                                                               const at::Tensor& value) {
  if (buffers.grad_logits.defined() && !buffers.grad_logits.is_same(buffers.grad_weights)) {
    buffers.grad_weights.copy_(buffers.grad_logits);
  }
  // Straight from the accumulator into rpb's dtype: no copy when rpb has the accumulation dtype.
  at::Tensor grad_rpb = rpb.has_value() ? buffers.grad_rpb.to(rpb->scalar_type()) : at::empty({0}, value.options());
  return {buffers.grad_weights, buffers.grad_value, grad_rpb};
}

namespace {

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
  const at::Tensor w = weights.contiguous(), v = value.contiguous(), b = kernel_bias(rpb, v);
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
  check_grad_out(grad_out, value);
  const at::OptionalDeviceGuard guard(at::device_of(value));
  const at::Tensor go = grad_out.contiguous(), w = weights.contiguous(), v = value.contiguous(),
                   b = kernel_bias(rpb, v);
  const bool two_pass = v.is_cuda();
  // Under torch.use_deterministic_algorithms(True) the CUDA backward gathers grad_rpb in a fixed order.
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  BackwardBuffers r = allocate_backward(w, v, b, softmax, two_pass, deterministic);
  if (two_pass) {
#ifdef MMOVERLOCK_WITH_CUDA
    backward_cuda(go, w, v, b, kernel_size, softmax, deterministic, r);
#else
    no_cuda();
#endif
  } else {
    backward_cpu(go, w, v, b, kernel_size, softmax, r.grad_weights, r.grad_value, r.grad_rpb);
  }
  return finish_backward(r, rpb, v);
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
