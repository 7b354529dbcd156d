// The host side of the ContMix operators that every dispatch key shares (contmix_kernels.h): input checks, the
// contiguous inputs, the saved forward results and the backward's buffers. Compiled into mmoverlock._ext and into
// the test-only mmoverlock._ext_testing, so it registers nothing.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>
#include <optional>
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

void check_plane_indices(const Shape& s) {
  const int64_t extent = s.H * s.W * std::max(s.C, s.T);
  TORCH_CHECK(extent <= std::numeric_limits<int32_t>::max(), "contmix: one [H, W] plane is too large for the CUDA ",
              "kernels' 32-bit in-plane indexing (H * W * max(C, K*K) = ", extent,
              ", at most 2^31 - 1); use backend='torch' or split the input");
}

void check_cuda_kernel_size(int64_t kernel_size) {
  TORCH_CHECK(kernel_size <= kCudaMaxKernelSize, "contmix: kernel_size must be at most ", kCudaMaxKernelSize,
              " for the CUDA kernels, got ", kernel_size, " (use backend='torch' for larger windows)");
}

void check_cuda_grid(int64_t blocks, int64_t block_threads, const char* kernel) {
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "contmix: the input is too large for the CUDA ", kernel,
              " kernel (", blocks, " blocks of ", block_threads, " threads; at most 2^31 - 1)");
}

Inputs prepare_inputs(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                      int64_t kernel_size) {
  check_inputs(weights, value, rpb, kernel_size);
  const at::Tensor v = value.contiguous();
  return {weights.contiguous(), v, kernel_bias(rpb, v)};
}

at::Tensor allocate_lse(const at::Tensor& value, bool softmax) {
  const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
  return softmax ? at::empty({value.size(0), value.size(1), value.size(2), value.size(3)}, acc_options)
                 : at::empty({0}, acc_options);
}

std::tuple<at::Tensor, at::Tensor> saved_forward(const std::optional<at::Tensor>& out,
                                                 const std::optional<at::Tensor>& lse, const at::Tensor& value) {
  TORCH_CHECK(out.has_value() && lse.has_value(), "contmix: with softmax this backward reads the forward's out and ",
              "lse (the second result of contmix_forward on this device); got None");
  const auto acc = at::toOpMathType(value.scalar_type());
  TORCH_CHECK(out->sizes() == value.sizes() && out->scalar_type() == value.scalar_type() &&
                  out->device() == value.device(),
              "contmix: out must be the forward's output ", value.sizes(), " ", value.scalar_type(), ", got ",
              out->sizes(), " ", out->scalar_type());
  TORCH_CHECK(lse->dim() == 4 && lse->sizes() == value.sizes().slice(0, 4) && lse->scalar_type() == acc &&
                  lse->device() == value.device(),
              "contmix: lse must be the forward's log-sum-exp [B, G, H, W] = ", value.sizes().slice(0, 4), " ", acc,
              ", got ", lse->sizes(), " ", lse->scalar_type());
  return {out->contiguous(), lse->contiguous()};
}

BackwardBuffers allocate_backward(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb,
                                  bool keep_logit_grads) {
  const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
  BackwardBuffers out;
  out.grad_weights = at::empty(weights.sizes(), weights.options());
  out.grad_value = at::empty(value.sizes(), value.options());
  // Accumulated in the accumulation dtype (the CUDA kernel adds block partial sums atomically).
  out.grad_rpb = rpb.defined() ? at::zeros(rpb.sizes(), acc_options) : at::Tensor();
  if (keep_logit_grads && rpb.defined()) {
    out.grad_logits = weights.scalar_type() == acc_options.dtype() ? out.grad_weights
                                                                   : at::empty(weights.sizes(), acc_options);
    const int64_t R = rpb.size(1);
    out.bias_rows = at::empty({value.size(0) * value.size(1) * value.size(2), (R + 1) / 2, R}, acc_options);
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

}  // namespace contmix
}  // namespace mmoverlock
