// CUDA implementation of the depthwise operators (registered for the CUDA dispatch key here): one thread per output
// element for the forward and the input gradient (the same correlation with the flipped kernel), one block per weight
// for the weight gradient, summed by a fixed tree (deterministic). The arithmetic is common/depthwise_bodies.h,
// which the CPU test driver (depthwise_testing.cpp) runs too. Half types accumulate in float.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "depthwise_bodies.h"
#include "depthwise_op.h"

namespace mmoverlock {
namespace depthwise {
namespace {

constexpr int kForwardThreads = 256;

template <typename scalar_t>
__global__ void forward_kernel(Shape s, bool channels_last, const scalar_t* __restrict__ x,
                               const scalar_t* __restrict__ w, const scalar_t* __restrict__ bias,
                               scalar_t* __restrict__ out, int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(gridDim.x) * blockDim.x) {
    out[index] = static_cast<scalar_t>(forward_element<scalar_t, acc_t>(s, index, channels_last, x, w, bias));
  }
}

template <typename scalar_t>
__global__ void grad_weight_kernel(Shape s, bool channels_last, const scalar_t* __restrict__ grad_out,
                                   const scalar_t* __restrict__ x, scalar_t* __restrict__ grad_w) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t buf[kGradWeightThreads];
  const int block = blockIdx.x, K = static_cast<int>(s.K), c = block / (K * K), a = (block / K) % K, e = block % K;
  const int t = threadIdx.x;
  buf[t] = grad_weight_partial<scalar_t, acc_t>(s, c, a, e, t, kGradWeightThreads, channels_last, grad_out, x);
  __syncthreads();
  for (int half = kGradWeightThreads / 2; half > 0; half /= 2) {
    tree_step(buf, t, half);
    __syncthreads();
  }
  if (t == 0) grad_w[block] = static_cast<scalar_t>(buf[0]);
}

at::Tensor forward_cuda(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t padding, int64_t dilation) {
  const c10::cuda::CUDAGuard guard(input.device());
  ForwardCall call = prepare_forward(input, weight, bias, padding, dilation, /*bounded_indices=*/true);
  const Shape& s = call.s;
  const bool cl = call.channels_last;
  const at::Tensor &x = call.x, &w = call.w, &b = call.b;
  at::Tensor& out = call.out;
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int64_t blocks = std::min<int64_t>((total + kForwardThreads - 1) / kForwardThreads, int64_t(1) << 20);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_forward_cuda", [&] {
    forward_kernel<scalar_t><<<blocks, kForwardThreads, 0, stream>>>(
        s, cl, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
        b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out, const at::Tensor& input,
                                                 const at::Tensor& weight, int64_t padding, int64_t dilation,
                                                 std::array<bool, 2> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  const BackwardCall call = prepare_backward(grad_out, input, weight, padding, dilation, /*bounded_indices=*/true);
  const Shape& s = call.s;
  const bool cl = call.channels_last;
  const at::Tensor &go = call.grad_out, &x = call.x;
  at::Tensor grad_input = at::empty({0}, x.options()), grad_weight = at::empty({0}, x.options());
  if (output_mask[0]) {
    grad_input = forward_cuda(go, flipped_weight(weight), std::nullopt, grad_input_padding(s), dilation);
  }
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options().memory_format(at::MemoryFormat::Contiguous));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(input.device().index());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "depthwise_grad_weight_cuda", [&] {
      grad_weight_kernel<scalar_t><<<s.C * s.K * s.K, kGradWeightThreads, 0, stream>>>(
          s, cl, go.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), grad_weight.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_input, grad_weight};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmoverlock, CUDA, m) {
  m.impl("depthwise_forward", &forward_cuda);
  m.impl("depthwise_backward", &backward_cuda);
}

}  // namespace depthwise
}  // namespace mmoverlock
