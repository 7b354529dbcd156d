// Host helpers every launcher needs to read a ContMix call off its tensors (the Shape struct itself is plain data in
// contmix_common.h, so that kernels compiled without ATen's headers can take it too).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "contmix_common.h"

namespace mmoverlock {
namespace contmix {

// The shape of value [B, G, H, W, C] with window size K (the op has checked the other inputs against it).
inline Shape make_shape(const at::Tensor& value, int64_t K, bool softmax) {
  Shape s{value.size(0), value.size(1), value.size(2), value.size(3), value.size(4), K, K * K, 2 * K - 1, 0,
          softmax};
  s.npix = s.B * s.G * s.H * s.W;
  return s;
}

// The shared bodies (contmix_bodies.h) index inside one plane in int32: H * W * max(C, K*K) must fit (contmix_op.cpp:
// thrown from the C++ compiler's object, as check_cuda_kernel_size in contmix_kernels.h explains).
void check_plane_indices(const Shape& s);

// Data of an optional (possibly undefined) input, or null: the kernels test the bias pointer for "no rpb".
template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// The bias table as the kernels read it: contiguous, in the accumulation dtype of value (a float32 table of a
// float16 model is used as it is, with no rounding to float16), or an undefined tensor without rpb.
inline at::Tensor kernel_bias(const std::optional<at::Tensor>& rpb, const at::Tensor& value) {
  return rpb.has_value() ? rpb->to(at::toOpMathType(value.scalar_type())).contiguous() : at::Tensor();
}

}  // namespace contmix
}  // namespace mmoverlock
