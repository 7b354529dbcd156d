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
  check_forward(input, weight, bias, padding, dilation);
  const Shape s = make_shape(input, weight, padding, dilation);
  const bool cl = use_channels_last(input);
  const at::Tensor x = input.contiguous(format_of(cl)), w = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(format_of(cl)));
  forward_cpu(s, x, w, b, cl, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_impl(const at::Tensor& grad_out, const at::Tensor& input,
                                                 const at::Tensor& weight, int64_t padding, int64_t dilation,
                                                 std::array<bool, 2> output_mask) {
  check_backward(grad_out, input, weight, padding, dilation);
  const Shape s = make_shape(input, weight, padding, dilation);
  const bool cl = use_channels_last(input);
  const at::Tensor go = grad_out.contiguous(format_of(cl)), x = input.contiguous(format_of(cl));
  at::Tensor grad_input = at::empty({0}, x.options()), grad_weight = at::empty({0}, x.options());
  if (output_mask[0]) {
    grad_input = forward_impl(go, flipped_weight(weight), std::nullopt, grad_input_padding(s), dilation);
  }
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
    grad_weight_cpu(s, go, x, cl, grad_weight);
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
