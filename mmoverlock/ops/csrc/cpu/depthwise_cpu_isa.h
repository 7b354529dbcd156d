// The interface between the depthwise CPU dispatcher (depthwise_cpu.cpp) and the kernel bodies compiled once per
// instruction set (depthwise_cpu_{default,avx2,avx512}.cpp, each including depthwise_cpu_body.h). As for ContMix,
// only plain data and function pointers cross it; the dispatcher owns threads and allocation.
#pragma once

#include <cstdint>

#include "cpu_dispatch.h"
#include "depthwise_common.h"

namespace mmoverlock {
namespace depthwise {
namespace cpu {

template <typename scalar_t>
struct KernelTable {
  // Channels of one vector: the channels-last forward works on slices of this many channels.
  int64_t lanes;
  // Channels-last forward: the input is first packed (pack_nhwc, input rows [begin, end) of the N*H rows) into
  // nhwc_packed_size(s) elements; forward_nhwc then computes output rows [begin, end) of the N*Ho rows from it,
  // with the weight packed [slices][K*K][lanes] and the bias [slices][lanes] (zero past C; bias may be null).
  // A packed size of 0 means no packing: forward_nhwc then takes the channels-last input itself.
  int64_t (*nhwc_packed_size)(const Shape& s);
  void (*pack_nhwc)(const Shape& s, const scalar_t* x, scalar_t* packed, int64_t begin, int64_t end);
  void (*forward_nhwc)(const Shape& s, const scalar_t* packed, const scalar_t* wp, const scalar_t* bp,
                       scalar_t* out, int64_t begin, int64_t end);
  // NCHW: out planes [begin, end) of the N*C planes; `w` is [C, K*K]. Scratch: nchw_scratch(s) elements.
  void (*forward_nchw)(const Shape& s, const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out,
                       int64_t begin, int64_t end, scalar_t* scratch);
  // Channels-last: adds sum over output rows [begin, end) of grad_out * x into `partial` [K*K, C].
  void (*grad_weight_nhwc)(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* partial,
                           int64_t begin, int64_t end);
  // NCHW: grad_w [C, K*K] of channels [begin, end), each summed over the batch in order.
  void (*grad_weight_nchw)(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_w,
                           int64_t begin, int64_t end, scalar_t* scratch);
  int64_t (*nchw_scratch)(const Shape& s);
};

using Kernels = cpu_dispatch::IsaKernels<KernelTable>;
MMOVERLOCK_DECLARE_ISA_KERNELS(Kernels)

}  // namespace cpu
}  // namespace depthwise
}  // namespace mmoverlock
