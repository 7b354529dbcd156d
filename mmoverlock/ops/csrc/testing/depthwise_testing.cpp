// Test-only operators: the CUDA kernels' bodies (common/depthwise_bodies.h) run on the CPU, element by element and,
// for the weight gradient, thread by thread of a simulated block with the same tree reduction.
//
//   mmoverlock_testing::depthwise_bodies_forward(input, weight, bias, padding, dilation) -> out
//   mmoverlock_testing::depthwise_bodies_backward(grad_out, input, weight, padding, dilation)
//       -> (grad_input, grad_weight)
//
// They follow cuda/depthwise_cuda.cu step by step (same checks, layouts, accumulation types; float64, float32,
// float16 and bfloat16), so the CPU test suite checks the arithmetic the GPU runs
// (tests/test_ops/test_depthwise.py). Not part of the public API.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "depthwise_bodies.h"
#include "depthwise_op.h"

namespace mmoverlock {
namespace depthwise {
namespace {

at::Tensor bodies_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          int64_t padding, int64_t dilation) {
  TORCH_CHECK(input.device().is_cpu(), "depthwise_bodies: the CPU driver takes CPU tensors, got ", input.device());
  ForwardCall call = prepare_forward(input, weight, bias, padding, dilation, /*bounded_indices=*/true);
  const Shape& s = call.s;
  const bool cl = call.channels_last;
  const at::Tensor &x = call.x, &w = call.w, &b = call.b;
  at::Tensor& out = call.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_bodies_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for (int64_t index = 0; index < out.numel(); ++index) {
      o[index] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(s, index, cl, x.const_data_ptr<scalar_t>(),
                                                                        w.const_data_ptr<scalar_t>(), bp));
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bodies_backward(const at::Tensor& grad_out, const at::Tensor& input,
                                                   const at::Tensor& weight, int64_t padding, int64_t dilation) {
  const BackwardCall call = prepare_backward(grad_out, input, weight, padding, dilation, /*bounded_indices=*/true);
  const Shape& s = call.s;
  const bool cl = call.channels_last;
  const at::Tensor &go = call.grad_out, &x = call.x;
  at::Tensor grad_input = bodies_forward(go, flipped_weight(weight), std::nullopt, grad_input_padding(s), dilation);
  at::Tensor grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_bodies_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> buf(kGradWeightThreads);
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    const int K = static_cast<int>(s.K);
    for (int block = 0; block < s.C * K * K; ++block) {  // one CUDA block per weight
      const int c = block / (K * K), a = (block / K) % K, e = block % K;
      for (int t = 0; t < kGradWeightThreads; ++t) {
        buf[t] = grad_weight_partial<scalar_t, acc_t>(s, c, a, e, t, kGradWeightThreads, cl,
                                                      go.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>());
      }
      for (int half = kGradWeightThreads / 2; half > 0; half /= 2)
        for (int t = 0; t < half; ++t) tree_step(buf.data(), t, half);
      gw[block] = static_cast<scalar_t>(buf[0]);
    }
  });
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmoverlock_testing, m) {
  m.def("depthwise_bodies_forward(Tensor input, Tensor weight, Tensor? bias, int padding, int dilation) -> Tensor");
  m.def(
      "depthwise_bodies_backward(Tensor grad_out, Tensor input, Tensor weight, int padding, int dilation) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmoverlock_testing, CPU, m) {
  m.impl("depthwise_bodies_forward", &bodies_forward);
  m.impl("depthwise_bodies_backward", &bodies_backward);
}

}  // namespace depthwise
}  // namespace mmoverlock
