// The interface between the CPU dispatcher (contmix_cpu.cpp) and the kernel bodies compiled once per instruction
// set (contmix_cpu_{default,avx2,avx512}.cpp, each including contmix_cpu_body.h).
//
// Only plain data and function pointers cross it: the dispatcher, compiled for the baseline ISA, owns threading and
// allocation; a kernel table computes a range of tasks with raw pointers. The wrappers include this (and
// cpu_dispatch.h's few inline helpers) before they switch the target, so no code compiled for a wider ISA can be
// shared with (and picked by the linker for) baseline callers.
#pragma once

#include <cstdint>

#include "contmix_common.h"
#include "cpu_dispatch.h"

namespace mmoverlock {
namespace contmix {
namespace cpu {

using contmix::Shape;  // plain data (contmix_common.h)

// Every pointer of one call; the ones a kernel does not use are null. `rpb_rows` is the backward's workspace of
// per-output-row grad_rpb partial sums, [B*G*H, K, rpb_row_stride] (see backward below).
template <typename scalar_t>
struct Tensors {
  const scalar_t* grad_out;
  const scalar_t* weights;
  const scalar_t* value;
  const scalar_t* rpb;
  scalar_t* out;
  scalar_t* grad_weights;
  scalar_t* grad_value;
  scalar_t* rpb_rows;
};

template <typename scalar_t>
struct KernelTable {
  // Scratch elements one thread needs for a chunk of forward rows / backward tasks.
  int64_t (*forward_scratch)(const Shape& s);
  int64_t (*backward_scratch)(const Shape& s, int64_t band);
  // Row stride of the grad_rpb partial sums (2K - 1 plus padding for whole-vector adds).
  int64_t (*rpb_row_stride)(const Shape& s);
  // out for output rows [begin, end) of the B*G*H rows.
  void (*forward)(const Shape& s, const Tensors<scalar_t>& t, int64_t begin, int64_t end, scalar_t* scratch);
  // grad_value, grad_weights and the grad_rpb partial sums for tasks [begin, end) of the (plane, band of `band`
  // value rows) tasks. Each task writes only its own band of grad_value and the grad_weights / partial sums of the
  // output rows inside its band; every sum is taken in an order that does not depend on the split.
  void (*backward)(const Shape& s, const Tensors<scalar_t>& t, int64_t band, int64_t begin, int64_t end,
                   scalar_t* scratch);
};

using Kernels = cpu_dispatch::IsaKernels<KernelTable>;
MMOVERLOCK_DECLARE_ISA_KERNELS(Kernels)

// Name of the instruction set the CPU kernels use now: the best one this CPU supports, or the one named by the
// environment variable MMOVERLOCK_CPU_CAPABILITY (default, avx2, avx512). Returns nullptr and fills `error` when the
// variable names an unknown or unsupported one.
const char* selected_capability(const char** error) noexcept;

// The instruction sets this CPU can run, in increasing order (always starting with "default"), and their count.
int supported_capabilities(const char** names, int max_names) noexcept;

}  // namespace cpu
}  // namespace contmix
}  // namespace mmoverlock
