// Host helpers every launcher needs to read a ContMix call off its tensors (the Shape struct itself is plain data in
// contmix_common.h, so that kernels compiled without ATen's headers can take it too).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
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

// Data of an optional (possibly undefined) input, or null: the kernels test the bias pointer for "no rpb".
template <typename scalar_t>
const scalar_t* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

// A contiguous copy (or view) of an optional input, or an undefined tensor.
inline at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

}  // namespace contmix
}  // namespace mmoverlock
