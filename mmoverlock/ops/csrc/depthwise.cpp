// The stride-1 depthwise convolution as torch.library operators: schema and the CPU implementation (the CUDA one is
// registered by cuda/depthwise_cuda.cu; the input checks both share are in depthwise_op.cpp).
//
//   mmoverlock::depthwise_forward(input, weight, bias, padding, dilation) -> out
//   mmoverlock::depthwise_backward(grad_out, input, weight, padding, dilation, output_mask)
//       -> (grad_input, grad_weight)
//
// input [N, C, H, W] in either memory format (the outputs follow it), weight [C, 1, K, K] with K odd, bias [C] or
// None. A gradient not asked for in output_mask comes back as an empty tensor. The bias gradient is grad_out's sum,
// taken in Python. Autograd and the fake implementations are registered in mmoverlock/ops/depthwise.py.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "depthwise_op.h"

namespace mmoverlock {
namespace depthwise {

// CPU launchers (cpu/depthwise_cpu.cpp).
void forward_cpu(const Shape& s, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                 bool channels_last, at::Tensor& out);
void grad_weight_cpu(const Shape& s, const at::Tensor& grad_out, const at::Tensor& input, bool channels_last,
                     at::Tensor& grad_weight);

namespace {

at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t padding, int64_t dilation) {
  ForwardCall call = prepare_forward(input, weight, bias, padding, dilation, /*bounded_indices=*/false);
  forward_cpu(call.s, call.x, call.w, call.b, call.channels_last, call.out);
  return call.out;
}

std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& input,
                                                 const at::Tensor& weight, int64_t padding, int64_t dilation,
                                                 std::array<bool, 2> output_mask) {
  const BackwardCall call = prepare_backward(grad_out, input, weight, padding, dilation, /*bounded_indices=*/false);
  at::Tensor grad_input = at::empty({0}, call.x.options()), grad_weight = at::empty({0}, call.x.options());
  if (output_mask[0]) {
    grad_input = forward_impl(call.grad_out, flipped_weight(weight), std::nullopt, grad_input_padding(call.s),
                              dilation);
  }
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
    grad_weight_cpu(call.s, call.grad_out, call.x, call.channels_last, grad_weight);
  }
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmoverlock, m) {
  m.def("depthwise_forward(Tensor input, Tensor weight, Tensor? bias, int padding, int dilation) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "depthwise_backward(Tensor grad_out, Tensor input, Tensor weight, int padding, int dilation, "
      "bool[2] output_mask) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(mmoverlock, CPU, m) {
  m.impl("depthwise_forward", &forward_impl);
  m.impl("depthwise_backward", &backward_impl);
}

}  // namespace depthwise
}  // namespace mmoverlock
