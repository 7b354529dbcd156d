// The stride-1 depthwise convolution as torch.library operators: schema and the CPU implementation (the CUDA one is
// registered by cuda/depthwise_cuda.cu; the input checks both share are in depthwise_op.cpp).
//
//   mmoverlock::depthwise_forward(input, weight, bias, padding, dilation) -> out
//   mmoverlock::depthwise_backward(grad_out, input, weight, padding, dilation, output_mask)
//       -> (grad_input, grad_weight)
//   mmoverlock::depthwise_forward_fused(input, weight, bias, padding, dilation, gelu_input, square_sums, gelu_grad_at,
//                                       product_with) -> (out, sums)
//
// depthwise_forward_fused is the forward with a prologue and epilogues (CPU only, no autograd of its own):
// `gelu_input` convolves gelu(input) (exact erf form) without a gelu(input) map; `gelu_grad_at` (a map of the
// output's shape) multiplies each output by gelu' there, so that the input gradient of a conv after a GELU,
// gelu'(z) * conv^T(grad), is one pass; `square_sums` also returns the output's per-sample, per-channel sum of
// squares [N, C] (GRN's statistic) taken while each row is in cache (else `sums` is empty), or, given
// `product_with` (a map of the output's shape), the sums of out * product_with: a BatchNorm backward's
// <grad, y - mean> for a conv output y it recomputes. One read of the input and one write of the output, where the
// composition makes up to five passes over maps of that size.
//
//   mmoverlock::depthwise_statistics(input, weight, bias, padding, dilation) -> (sums, square_sums)
//
// The per-sample, per-channel sums and sums of squares [N, C] of the forward's output, without writing it: a
// BatchNorm's batch statistics of a depthwise conv (a DilatedReparamBlock's branches in training) at the cost of
// the conv alone. The bias may shift the output (e.g. by minus an estimate of its mean, for exact variances).
//
//   mmoverlock::depthwise_grad_weight_fused(grad_out, input, weight, padding, dilation, gelu_input) -> grad_weight
//
// The weight gradient of depthwise_forward_fused's conv of gelu(input) (`gelu_input`; else of input, as
// depthwise_backward's), from `input` itself: each input row's GELU is taken once, as the weight gradient reads it
// (in its packing, or through a ring of rows), where a separate GELU map would be written and read back (CPU only).
//
//   mmoverlock::spatial_dot(a, b) -> sums
//
// sums[n, c] = sum over (h, w) of a[n, c, h, w] * b[n, c, h, w] for two maps of one shape and dtype (float32 or
// float64, CPU), without the product map: GRN's statistics (its norms, a = b; its backward's <grad_out, x>).
// Computed in the memory format of `a` (vectorised over channels for channels-last maps).
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
                 bool channels_last, at::Tensor& out, const ForwardExtras& extras = {});
at::Tensor spatial_dot_cpu(const at::Tensor& a, const at::Tensor& b, bool channels_last);
void grad_weight_cpu(const Shape& s, const at::Tensor& grad_out, const at::Tensor& input, bool channels_last,
                     at::Tensor& grad_weight, bool gelu_input);

namespace {

at::Tensor forward_impl(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t padding, int64_t dilation) {
  ForwardCall call = prepare_forward(input, weight, bias, padding, dilation, /*bounded_indices=*/false);
  forward_cpu(call.s, call.x, call.w, call.b, call.channels_last, call.out);
  return call.out;
}

// A map argument of the fused forward: the output's shape, dtype and device, made contiguous in its layout.
at::Tensor output_shaped(const std::optional<at::Tensor>& map, const char* name, const ForwardCall& call) {
  if (!map.has_value()) return at::Tensor();
  TORCH_CHECK(map->sizes() == call.out.sizes() && map->scalar_type() == call.x.scalar_type() &&
                  map->device() == call.x.device(),
              "depthwise: ", name, " must be the output's shape ", call.out.sizes(), ", dtype and device (",
              call.x.scalar_type(), " on ", call.x.device(), "), got ", map->sizes(), " ", map->scalar_type(),
              " on ", map->device());
  return map->contiguous(format_of(call.channels_last));
}

std::tuple<at::Tensor, at::Tensor> forward_fused_impl(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias, int64_t padding,
                                                      int64_t dilation, bool gelu_input, bool square_sums,
                                                      const std::optional<at::Tensor>& gelu_grad_at,
                                                      const std::optional<at::Tensor>& product_with) {
  ForwardCall call = prepare_forward(input, weight, bias, padding, dilation, /*bounded_indices=*/false);
  TORCH_CHECK(square_sums || !product_with.has_value(),
              "depthwise: product_with is what square_sums multiplies the output by; pass square_sums=True with it");
  at::Tensor sums = at::empty({0}, call.x.options());
  ForwardExtras extras;
  extras.gelu_input = gelu_input;
  extras.gelu_grad_at = output_shaped(gelu_grad_at, "gelu_grad_at", call);
  extras.product_with = output_shaped(product_with, "product_with", call);
  extras.square_sums = square_sums ? &sums : nullptr;
  forward_cpu(call.s, call.x, call.w, call.b, call.channels_last, call.out, extras);
  return {call.out, sums};
}

std::tuple<at::Tensor, at::Tensor> statistics_impl(const at::Tensor& input, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, int64_t padding,
                                                   int64_t dilation) {
  check_forward(input, weight, bias, padding, dilation);
  const bool cl = use_channels_last(input);
  at::Tensor sums, square_sums, no_output;
  ForwardExtras extras;
  extras.sums = &sums;
  extras.square_sums = &square_sums;
  extras.statistics_only = true;
  forward_cpu(make_shape(input, weight, padding, dilation), input.contiguous(format_of(cl)), weight.contiguous(),
              bias.has_value() ? bias->contiguous() : at::Tensor(), cl, no_output, extras);
  return {sums, square_sums};
}

at::Tensor spatial_dot_impl(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 4, "spatial_dot: a must be 4-D [N, C, H, W], got shape ", a.sizes());
  TORCH_CHECK(b.sizes() == a.sizes(), "spatial_dot: b must have the shape of a, ", a.sizes(), ", got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == a.scalar_type() && b.device() == a.device(),
              "spatial_dot: b must have the dtype and device of a (", a.scalar_type(), " on ", a.device(), ")");
  const bool cl = use_channels_last(a);
  return spatial_dot_cpu(a.contiguous(format_of(cl)), b.contiguous(format_of(cl)), cl);
}

// The weight gradient [C, 1, K, K] of a prepared backward (of the conv of gelu(input) with `gelu_input`).
at::Tensor weight_gradient(const BackwardCall& call, const at::Tensor& weight, bool gelu_input) {
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  grad_weight_cpu(call.s, call.grad_out, call.x, call.channels_last, grad_weight, gelu_input);
  return grad_weight;
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
  if (output_mask[1]) grad_weight = weight_gradient(call, weight, /*gelu_input=*/false);
  return {grad_input, grad_weight};
}

at::Tensor grad_weight_fused_impl(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                                  int64_t padding, int64_t dilation, bool gelu_input) {
  return weight_gradient(prepare_backward(grad_out, input, weight, padding, dilation, /*bounded_indices=*/false),
                         weight, gelu_input);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmoverlock, m) {
  m.def("depthwise_forward(Tensor input, Tensor weight, Tensor? bias, int padding, int dilation) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def(
      "depthwise_backward(Tensor grad_out, Tensor input, Tensor weight, int padding, int dilation, "
      "bool[2] output_mask) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "depthwise_forward_fused(Tensor input, Tensor weight, Tensor? bias, int padding, int dilation, "
      "bool gelu_input, bool square_sums, Tensor? gelu_grad_at=None, Tensor? product_with=None) -> (Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "depthwise_statistics(Tensor input, Tensor weight, Tensor? bias, int padding, int dilation) -> "
      "(Tensor, Tensor)",
      {at::Tag::pt2_compliant_tag});
  m.def("spatial_dot(Tensor a, Tensor b) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def(
      "depthwise_grad_weight_fused(Tensor grad_out, Tensor input, Tensor weight, int padding, int dilation, "
      "bool gelu_input) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(mmoverlock, CPU, m) {
  m.impl("depthwise_forward", &forward_impl);
  m.impl("depthwise_backward", &backward_impl);
  m.impl("depthwise_forward_fused", &forward_fused_impl);
  m.impl("depthwise_statistics", &statistics_impl);
  m.impl("spatial_dot", &spatial_dot_impl);
  m.impl("depthwise_grad_weight_fused", &grad_weight_fused_impl);
}

}  // namespace depthwise
}  // namespace mmoverlock
