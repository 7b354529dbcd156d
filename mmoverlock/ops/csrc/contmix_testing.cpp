// Test-only operators: the CUDA kernels' per-pixel bodies (common/contmix_bodies.h) run on the CPU by one lane.
//
//   mmoverlock_testing::contmix_bodies_forward(weights, value, rpb, kernel_size, softmax) -> out
//   mmoverlock_testing::contmix_bodies_backward(grad_out, weights, value, rpb, kernel_size, softmax, deterministic)
//       -> (grad_weights, grad_value, grad_rpb)
//
// They follow the CUDA launchers step by step (same checks, buffers, channels per lane, passes and accumulation
// types; float64, float32, float16 and bfloat16), with a team of one lane (SoloTeam) in place of the warp lanes and a
// plain sum in place of the shared-memory atomics for grad_rpb. So the CPU test suite checks the arithmetic that the
// GPU runs (tests/test_ops/test_contmix_cuda_bodies.py). Not part of the public API: contmix_aggregate never calls
// them, and they are not in mmoverlock._ext.backends.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "contmix_bodies.h"
#include "contmix_kernels.h"

namespace mmoverlock {
namespace contmix {
namespace {

// grad_rpb summed as the CUDA blocks do, without the atomics (one lane adds everything in order).
template <typename acc_t>
struct PlainBiasSink {
  acc_t* table;  // one group's [R, R] table
  void operator()(int64_t offset, acc_t grad) const { table[offset] += grad; }
};

void check_cpu(const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cpu(), "contmix_bodies: the CPU driver of the CUDA bodies takes CPU tensors, got ",
              value.device());
}

at::Tensor bodies_forward(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                          int64_t kernel_size, bool softmax) {
  check_inputs(weights, value, rpb, kernel_size);
  check_cpu(value);
  const at::Tensor w = weights.contiguous(), v = value.contiguous(), b = kernel_bias(rpb, v);
  at::Tensor out = at::empty(v.sizes(), v.options());
  const Shape s = make_shape(v, kernel_size, softmax);
  if (s.npix == 0 || s.C == 0) return out;
  check_plane_indices(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "contmix_bodies_forward", [&] {
    with_channels_per_lane(s.C, [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      for (int64_t pix = 0; pix < s.npix; ++pix) {
        forward_pixel<scalar_t, CPT, false>(SoloTeam{}, s, pix, true, w.const_data_ptr<scalar_t>(),
                                            v.const_data_ptr<scalar_t>(), optional_ptr<at::opmath_type<scalar_t>>(b), nullptr,
                                            out.mutable_data_ptr<scalar_t>(), nullptr);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bodies_backward(const at::Tensor& grad_out, const at::Tensor& weights,
                                                               const at::Tensor& value,
                                                               const std::optional<at::Tensor>& rpb,
                                                               int64_t kernel_size, bool softmax,
                                                               bool deterministic) {
  check_inputs(weights, value, rpb, kernel_size);
  check_grad_out(grad_out, value);
  check_cpu(value);
  const at::Tensor go = grad_out.contiguous(), w = weights.contiguous(), v = value.contiguous(),
                   b = kernel_bias(rpb, v);
  BackwardBuffers r = allocate_backward(w, v, b, softmax, /*two_pass=*/true, deterministic);
  const Shape s = make_shape(v, kernel_size, softmax);
  if (s.npix == 0) return finish_backward(r, rpb, v);
  check_plane_indices(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "contmix_bodies_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const acc_t* bp = optional_ptr<acc_t>(b);
    acc_t* st = softmax ? r.stats.mutable_data_ptr<acc_t>() : nullptr;
    with_channels_per_lane(std::max<int64_t>(s.C, 1), [&](auto cpt) {
      constexpr int CPT = decltype(cpt)::value;
      if (softmax) {
        for (int64_t pix = 0; pix < s.npix; ++pix) {
          forward_pixel<scalar_t, CPT, true>(SoloTeam{}, s, pix, true, wp, vp, bp, gop, nullptr, st);
        }
      }
      if (s.C > 0) {
        scalar_t* gv = r.grad_value.mutable_data_ptr<scalar_t>();
        for (int64_t pix = 0; pix < s.npix; ++pix) {
          grad_value_pixel<scalar_t, CPT>(SoloTeam{}, s, pix, true, gop, wp, bp, st, gv);
        }
      }
      if (bp == nullptr || !deterministic) {
        scalar_t* gw = r.grad_weights.mutable_data_ptr<scalar_t>();
        acc_t* grpb = bp != nullptr ? r.grad_rpb.mutable_data_ptr<acc_t>() : nullptr;
        for (int64_t pix = 0; pix < s.npix; ++pix) {
          const int64_t g = (pix / (s.H * s.W)) % s.G;
          grad_weights_pixel<scalar_t, CPT>(SoloTeam{}, s, pix, true, gop, wp, vp, bp, st, gw,
                                            PlainBiasSink<acc_t>{grpb != nullptr ? grpb + g * s.R * s.R : nullptr});
        }
      } else {
        acc_t* logits = r.grad_logits.mutable_data_ptr<acc_t>();
        for (int64_t pix = 0; pix < s.npix; ++pix) {
          grad_weights_pixel<scalar_t, CPT>(SoloTeam{}, s, pix, true, gop, wp, vp, bp, st, logits, NoBiasSink{});
        }
      }
    });
    if (bp == nullptr || !deterministic) return;
    acc_t* logits = r.grad_logits.mutable_data_ptr<acc_t>();
    acc_t* grpb = r.grad_rpb.mutable_data_ptr<acc_t>();
    for (int64_t index = 0; index < s.G * s.R * s.R; ++index) {
      grpb[index] = bias_grad_entry<acc_t>(SoloTeam{}, s, index / (s.R * s.R), index % (s.R * s.R), logits);
    }
  });
  return finish_backward(r, rpb, v);
}

}  // namespace

TORCH_LIBRARY(mmoverlock_testing, m) {
  m.def("contmix_bodies_forward(Tensor weights, Tensor value, Tensor? rpb, int kernel_size, bool softmax) -> Tensor");
  m.def(
      "contmix_bodies_backward(Tensor grad_out, Tensor weights, Tensor value, Tensor? rpb, int kernel_size, "
      "bool softmax, bool deterministic) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmoverlock_testing, CPU, m) {
  m.impl("contmix_bodies_forward", &bodies_forward);
  m.impl("contmix_bodies_backward", &bodies_backward);
}

}  // namespace contmix
}  // namespace mmoverlock
