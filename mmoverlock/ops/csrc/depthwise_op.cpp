// The host side of the depthwise operators that every dispatch key shares (depthwise_op.h): input checks, the
// call's Shape and the layout choice. Compiled into mmoverlock._ext and into the test-only mmoverlock._ext_testing,
// so it registers nothing.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/flip.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>

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

void check_image_indices(const Shape& s) {
  const int64_t extent = s.C * std::max(s.H * s.W, s.Ho * s.Wo);
  TORCH_CHECK(extent <= std::numeric_limits<int32_t>::max(), "depthwise: one image is too large for the CUDA ",
              "kernels' 32-bit in-image indexing (C * H * W = ", extent, ", at most 2^31 - 1)");
}

bool use_channels_last(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

ForwardCall prepare_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            int64_t padding, int64_t dilation, bool bounded_indices) {
  check_forward(input, weight, bias, padding, dilation);
  const Shape s = make_shape(input, weight, padding, dilation);
  if (bounded_indices) check_image_indices(s);
  const bool cl = use_channels_last(input);
  const at::Tensor x = input.contiguous(format_of(cl));
  at::Tensor out = at::empty({s.N, s.C, s.Ho, s.Wo}, x.options().memory_format(format_of(cl)));
  return {s, cl, x, weight.contiguous(), bias.has_value() ? bias->contiguous() : at::Tensor(), out};
}

BackwardCall prepare_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                              int64_t padding, int64_t dilation, bool bounded_indices) {
  check_backward(grad_out, input, weight, padding, dilation);
  const Shape s = make_shape(input, weight, padding, dilation);
  if (bounded_indices) check_image_indices(s);
  const bool cl = use_channels_last(input);
  return {s, cl, grad_out.contiguous(format_of(cl)), input.contiguous(format_of(cl))};
}

at::Tensor flipped_weight(const at::Tensor& weight) { return weight.flip({2, 3}); }

}  // namespace depthwise
}  // namespace mmoverlock
