// The stride-1 depthwise convolution as torch.library operators: schema, input checks and the CPU implementation
// (the CUDA one is registered by cuda/depthwise_cuda.cu).
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
#include <ATen/ops/flip.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "depthwise_op.h"

namespace mmoverlock {
namespace depthwise {

void check_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   int64_t padding, int64_t dilation) {
  TORCH_CHECK(input.dim() == 4, "depthwise: input must be 4-D [N, C, H, W], got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == input.size(1) && weight.size(1) == 1 &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              "depthwise: weight must be [C, 1, K, K] with C = ", input.size(1), " and K odd, got shape ",
              weight.sizes());
  TORCH_CHECK(dilation >= 1, "depthwise: dilation must be at least 1, got ", dilation);
  const int64_t span = dilation * (weight.size(2) - 1);
  TORCH_CHECK(padding >= 0 && padding <= span, "depthwise: padding must be in [0, dilation * (K - 1)] = [0, ", span,
              "], got ", padding);
  TORCH_CHECK(input.size(2) + 2 * padding - span >= 1 && input.size(3) + 2 * padding - span >= 1,
              "depthwise: the output would be empty: H, W = ", input.size(2), ", ", input.size(3),
              " with padding ", padding, " are smaller than the kernel's span ", span + 1);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "depthwise: weight (", weight.scalar_type(),
              ") must have the dtype of input (", input.scalar_type(), ")");
  TORCH_CHECK(weight.device() == input.device(), "depthwise: weight is on ", weight.device(), " but input is on ",
              input.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == input.size(1), "depthwise: bias must be [C] = [",
                input.size(1), "], got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                "depthwise: bias must have the dtype and device of input");
  }
}

void check_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t padding,
                    int64_t dilation) {
  check_forward(input, weight, std::nullopt, padding, dilation);
  const int64_t span = dilation * (weight.size(2) - 1);
  const std::array<int64_t, 4> expected{input.size(0), input.size(1), input.size(2) + 2 * padding - span,
                                        input.size(3) + 2 * padding - span};
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef(expected) && grad_out.scalar_type() == input.scalar_type() &&
                  grad_out.device() == input.device(),
              "depthwise: grad_out must be ", at::IntArrayRef(expected), " ", input.scalar_type(), " on ",
              input.device(), ", got ", grad_out.sizes(), " ", grad_out.scalar_type(), " on ", grad_out.device());
}

Shape make_shape(const at::Tensor& input, const at::Tensor& weight, int64_t padding, int64_t dilation) {
  const int64_t K = weight.size(2), span = dilation * (K - 1);
  return Shape{input.size(0), input.size(1), input.size(2), input.size(3), input.size(2) + 2 * padding - span,
               input.size(3) + 2 * padding - span, K, padding, dilation};
}

bool use_channels_last(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

at::Tensor flipped_weight(const at::Tensor& weight) { return weight.flip({2, 3}); }

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
