// Test-only operators: the CUDA kernels' per-pixel bodies (common/contmix_bodies.h) run on the CPU by one lane.
//
//   mmoverlock_testing::contmix_bodies_forward(weights, value, rpb, kernel_size, softmax) -> out
//   mmoverlock_testing::contmix_bodies_backward(grad_out, weights, value, rpb, kernel_size, softmax, deterministic)
//       -> (grad_weights, grad_value, grad_rpb)
//
// They follow the CUDA launchers step by step (same checks, buffers, channel layout with its vector loads where
// aligned, passes and accumulation types; float64, float32, float16 and bfloat16), with a team of one lane (SoloTeam)
// in place of the warp lanes and a plain sum in place of the shared-memory atomics for grad_rpb. The backward driver
// runs the forward's bodies first for the out and log-sum-exp that the CUDA forward saves. So the CPU test suite
// checks the arithmetic that the GPU runs (tests/test_ops/test_contmix_cuda_bodies.py). Built only into the test-only
// module mmoverlock._ext_testing (MMOVERLOCK_BUILD_TESTING=1), never into the released mmoverlock._ext.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "contmix_bodies.h"
#include "contmix_kernels.h"
#include "contmix_shape.h"

namespace mmoverlock {
namespace contmix {
namespace {

// grad_rpb summed as the CUDA blocks do, without the atomics (one lane adds everything in order).
template <typename acc_t>
struct PlainBiasSink {
  acc_t* table;  // one group's [R, R] table
  void operator()(const SoloTeam&, int entry, acc_t grad) const {
    if (entry >= 0) table[entry] += grad;
  }
};

void check_cpu(const at::Tensor& value) {
  TORCH_CHECK(value.device().is_cpu(), "contmix_bodies: the CPU driver of the CUDA bodies takes CPU tensors, got ",
              value.device());
}

// The CUDA forward's bodies over every pixel: out and, with softmax, the saved log-sum-exp (`lse`).
void run_forward(const Inputs& in, const Shape& s, at::Tensor& out, at::Tensor& lse) {
  dispatch_channel_layout(in.value, s.C, {in.value, out}, [&]<typename scalar_t, int CPT, bool kVec>() {
    using acc_t = at::opmath_type<scalar_t>;
    for (int64_t pix = 0; pix < s.npix; ++pix) {
      forward_pixel<scalar_t, CPT, kVec>(
          SoloTeam{}, s, pixel_pos(pix, s), true, in.weights.const_data_ptr<scalar_t>(),
          in.value.const_data_ptr<scalar_t>(), optional_ptr<acc_t>(in.rpb), out.mutable_data_ptr<scalar_t>(),
          s.softmax ? lse.mutable_data_ptr<acc_t>() : nullptr);
    }
  });
}

at::Tensor bodies_forward(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                          int64_t kernel_size, bool softmax) {
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  check_cpu(value);
  at::Tensor out = at::empty(in.value.sizes(), in.value.options()), lse = allocate_lse(in.value, softmax);
  const Shape s = make_shape(in.value, kernel_size, softmax);
  if (s.npix == 0) return out;
  check_plane_indices(s);
  run_forward(in, s, out, lse);
  return out;
}

// The CUDA forward (for the out and lse it saves), then the CUDA backward, pixel by pixel with one lane.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bodies_backward(const at::Tensor& grad_out, const at::Tensor& weights,
                                                               const at::Tensor& value,
                                                               const std::optional<at::Tensor>& rpb,
                                                               int64_t kernel_size, bool softmax,
                                                               bool deterministic) {
  const Inputs in = prepare_inputs(weights, value, rpb, kernel_size);
  check_grad_out(grad_out, value);
  check_cpu(value);
  const at::Tensor go = grad_out.contiguous();
  const bool gather_rpb = in.rpb.defined() && deterministic;
  BackwardBuffers r = allocate_backward(in.weights, in.value, in.rpb, gather_rpb);
  const Shape s = make_shape(in.value, kernel_size, softmax);
  if (s.npix == 0) return finish_backward(r, rpb, in.value);
  check_plane_indices(s);
  at::Tensor out = at::empty(in.value.sizes(), in.value.options()), lse = allocate_lse(in.value, softmax);
  run_forward(in, s, out, lse);
  const int64_t C = std::max<int64_t>(s.C, 1);
  dispatch_channel_layout(in.value, C, {go, in.value, out, r.grad_value},
                          [&]<typename scalar_t, int CPT, bool kVec>() {
    using acc_t = at::opmath_type<scalar_t>;
    // What the CUDA backward reads: the forward's out and lse with softmax only.
    const BackwardData<scalar_t> d(go, in, softmax ? out : at::Tensor(), lse, r.grad_value);
    if (!gather_rpb) {
      scalar_t* gw = r.grad_weights.mutable_data_ptr<scalar_t>();
      acc_t* grpb = d.rpb != nullptr ? r.grad_rpb.mutable_data_ptr<acc_t>() : nullptr;
      for (int64_t pix = 0; pix < s.npix; ++pix) {
        const PixelPos at = pixel_pos(pix, s);
        acc_t* table = grpb != nullptr ? grpb + at.group * s.R * s.R : nullptr;
        backward_pixel<scalar_t, CPT, kVec>(SoloTeam{}, s, at, true, d.grad_out, d.w, d.v, d.rpb, d.out, d.lse, gw,
                                            d.grad_value, PlainBiasSink<acc_t>{table});
      }
      return;
    }
    acc_t* kept = r.grad_logits.mutable_data_ptr<acc_t>();
    for (int64_t pix = 0; pix < s.npix; ++pix) {
      backward_pixel<scalar_t, CPT, kVec>(SoloTeam{}, s, pixel_pos(pix, s), true, d.grad_out, d.w, d.v, d.rpb, d.out,
                                          d.lse, kept, d.grad_value, NoBiasSink{});
    }
    acc_t* rows = r.bias_rows.mutable_data_ptr<acc_t>();
    const int K = static_cast<int>(s.K), R = static_cast<int>(s.R);
    for (int64_t row = 0; row < s.B * s.G * s.H; ++row) {
      for (int a = 0; a < K; ++a) {
        for (int x = 0; x < R; ++x) rows[(row * K + a) * R + x] = bias_row_entry<acc_t>(s, row, a, x, kept);
      }
    }
    acc_t* grpb = r.grad_rpb.mutable_data_ptr<acc_t>();
    for (int64_t g = 0; g < s.G; ++g) {
      for (int u = 0; u < R; ++u) {
        for (int x = 0; x < R; ++x) grpb[(g * R + u) * R + x] = bias_grad_entry<acc_t>(s, g, u, x, rows);
      }
    }
  });
  return finish_backward(r, rpb, in.value);
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
