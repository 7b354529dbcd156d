// Host side of the depthwise operators, shared by every dispatch key (defined in depthwise_op.cpp; used by
// depthwise.cpp: schema and CPU; the CUDA file; the test driver of the CUDA bodies): input checks, the call's Shape,
// the layout choice and the tensors each implementation starts from.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "depthwise_common.h"

namespace mmoverlock {
namespace depthwise {

// TORCH_CHECKs naming the argument: 4-D input, [C, 1, K, K] odd square weight, bias [C], dtypes, devices, padding in
// [0, dilation * (K - 1)], dilation >= 1, a non-empty output.
void check_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   int64_t padding, int64_t dilation);
void check_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight, int64_t padding,
                    int64_t dilation);

Shape make_shape(const at::Tensor& input, const at::Tensor& weight, int64_t padding, int64_t dilation);
// The CUDA bodies index inside one image in int32: C * H * W of the input and of the output must fit.
void check_image_indices(const Shape& s);

// Whether the op computes in channels-last (the input's suggested memory format) rather than NCHW.
bool use_channels_last(const at::Tensor& input);
inline at::MemoryFormat format_of(bool channels_last) {
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// A call as every implementation runs it, after the checks: its shape, the memory format it computes in (the
// input's), the tensors made contiguous in that format, and (forward) the output allocated in it. `bounded_indices`
// adds check_image_indices, for the kernels that index an image in int32 (CUDA and its test driver).
struct ForwardCall {
  Shape s;
  bool channels_last;
  at::Tensor x, w, b, out;
};
ForwardCall prepare_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            int64_t padding, int64_t dilation, bool bounded_indices);
struct BackwardCall {
  Shape s;
  bool channels_last;
  at::Tensor grad_out, x;
};
BackwardCall prepare_backward(const at::Tensor& grad_out, const at::Tensor& input, const at::Tensor& weight,
                              int64_t padding, int64_t dilation, bool bounded_indices);

// What the CPU forward computes besides (or instead of) its output map, in the same pass (the fused operators):
// the conv of gelu(input); each output multiplied by gelu' at a map of the output's shape; the output's
// per-sample, per-channel sums and sums of squares [N, C] (with `product_with`, a map of the output's shape in its
// layout, the sums of out * product_with in place of the squares); with `statistics_only`, the sums alone (the
// output map is not written).
struct ForwardExtras {
  bool gelu_input = false;
  at::Tensor gelu_grad_at;
  at::Tensor product_with;
  at::Tensor* sums = nullptr;
  at::Tensor* square_sums = nullptr;
  bool statistics_only = false;
};

// The input gradient's problem: the correlation of grad_out with the flipped kernel, padding r * (K - 1) - p.
at::Tensor flipped_weight(const at::Tensor& weight);
inline int64_t grad_input_padding(const Shape& s) { return s.dil * (s.K - 1) - s.pad; }

}  // namespace depthwise
}  // namespace mmoverlock
