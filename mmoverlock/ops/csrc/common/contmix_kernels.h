// What the ContMix operators of every dispatch key share (contmix_op.cpp): input checks, the contiguous inputs and the
// backward's buffers. Each device's operator (contmix.cpp for CPU, cuda/contmix_cuda.cu for CUDA) and the test-only
// driver of the CUDA bodies (contmix_testing.cpp) allocate with these, so the launchers only compute.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace mmoverlock {
namespace contmix {

// The operators' own input checks (shapes, dtypes, devices); TORCH_CHECK errors naming the argument.
void check_inputs(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                  int64_t kernel_size);
void check_grad_out(const at::Tensor& grad_out, const at::Tensor& value);
// The CUDA launchers' limits: kernel_size <= kCudaMaxKernelSize, and a one-dimensional grid of at most 2^31 - 1
// blocks. They throw here, in the C++ compiler's object like every other check, not from the nvcc-compiled
// launcher: the first GPU run (H200, torch 2.11, nvcc 13) crashed with a segmentation fault when the kernel-size
// check threw c10::ValueError from the .cu file, while the checks thrown from this file reached Python.
void check_cuda_kernel_size(int64_t kernel_size);
void check_cuda_grid(int64_t blocks, int64_t block_threads, const char* kernel);

// The inputs as every launcher reads them, after check_inputs: weights and value contiguous, the bias table
// contiguous in the accumulation dtype (undefined without rpb).
struct Inputs {
  at::Tensor weights, value, rpb;
};
Inputs prepare_inputs(const at::Tensor& weights, const at::Tensor& value, const std::optional<at::Tensor>& rpb,
                      int64_t kernel_size);

// What a forward that saves for its backward returns with the output: the log-sum-exp of every pixel's biased logits,
// [B, G, H, W] in the accumulation dtype (with softmax), else an empty tensor.
at::Tensor allocate_lse(const at::Tensor& value, bool softmax);
// The saved forward results a backward reads (with softmax): checked against value, made contiguous.
std::tuple<at::Tensor, at::Tensor> saved_forward(const std::optional<at::Tensor>& out,
                                                 const std::optional<at::Tensor>& lse, const at::Tensor& value);

// The backward's outputs, allocated by the op for every launcher. grad_rpb is in the accumulation dtype (zeroed).
// With `keep_logit_grads` (the deterministic CUDA backward with rpb) the logit gradients go to `grad_logits` in the
// accumulation dtype (grad_weights itself when that has it) for the fixed-order gather of grad_rpb, whose first step
// writes `bias_rows` [B * G * H, K, 2K - 1] (bias_row_entry).
struct BackwardBuffers {
  at::Tensor grad_weights, grad_value, grad_rpb, grad_logits, bias_rows;
};
BackwardBuffers allocate_backward(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb,
                                  bool keep_logit_grads);
// The op's results: grad_logits copied into grad_weights where they differ, grad_rpb in the dtype of the rpb the
// caller passed (an empty tensor without rpb).
std::tuple<at::Tensor, at::Tensor, at::Tensor> finish_backward(BackwardBuffers& buffers,
                                                               const std::optional<at::Tensor>& rpb,
                                                               const at::Tensor& value);

// The CPU kernels (csrc/cpu/): out[B,G,H,W,C] = sum_t P[..., t] * value[neighbour t], P = softmax?(weights +
// gathered rpb), and its gradients. `rpb` may be undefined (no bias); grad_rpb is written when it is defined.
void forward_cpu(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                 bool softmax, at::Tensor& out);
void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& grad_weights,
                  at::Tensor& grad_value, at::Tensor& grad_rpb);

}  // namespace contmix
}  // namespace mmoverlock
