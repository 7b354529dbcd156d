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

// What a forward does with each output row (channels-last) or plane (NCHW) once computed, while it is in cache:
// multiply it by gelu' at a map of the output's shape and layout (the input gradient of a conv after a GELU), then
// take its per-channel sum and sum of squares into [N*Ho][C] (rows) or [N*C] (planes). With `reuse_output`, `out`
// is scratch for one row or plane per task (the caller wants the statistics alone). With `product_with` (a map of
// the output's shape and layout), `square_sums` takes the sums of out * product_with instead of out * out.
template <typename scalar_t>
struct Epilogue {
  const scalar_t* gelu_grad_at = nullptr;
  scalar_t* sums = nullptr;
  scalar_t* square_sums = nullptr;
  const scalar_t* product_with = nullptr;
  bool reuse_output = false;
};

template <typename scalar_t>
struct KernelTable {
  // Channels of one vector: the channels-last forward works on slices of this many channels.
  int64_t lanes;
  // Channels-last forward: the input is first packed (pack_nhwc, input rows [begin, end) of the N*H rows, or their
  // GELU) into nhwc_packed_size(s) elements; forward_nhwc then computes output rows [begin, end) of the N*Ho rows
  // from it, with the weight packed [slices][K*K][lanes] and the bias [slices][lanes] (zero past C; bias may be
  // null). A packed size of 0 means no packing: forward_nhwc then takes the channels-last input itself, and its
  // GELU through `ring` (per-task scratch of nhwc_ring_size(s) elements; null: the input as it is).
  int64_t (*nhwc_packed_size)(const Shape& s);
  void (*pack_nhwc)(const Shape& s, const scalar_t* x, scalar_t* packed, int64_t begin, int64_t end,
                    bool gelu_input);
  int64_t (*nhwc_ring_size)(const Shape& s);
  void (*forward_nhwc)(const Shape& s, const scalar_t* packed, const scalar_t* wp, const scalar_t* bp,
                       scalar_t* out, int64_t begin, int64_t end, scalar_t* ring, const Epilogue<scalar_t>& ep);
  // NCHW: out planes [begin, end) of the N*C planes, from the input or its GELU; `w` is [C, K*K]. Scratch:
  // nchw_scratch(s) elements.
  void (*forward_nchw)(const Shape& s, const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out,
                       int64_t begin, int64_t end, scalar_t* scratch, bool gelu_input, const Epilogue<scalar_t>& ep);
  // Channels-last: adds sum over output rows [begin, end) of grad_out * x (or gelu(x): `gelu_input`) into `partial`
  // [K*K, C], from the input packed by pack_nhwc (all N*H rows, with the GELU for gelu_input) into
  // grad_weight_packed_size(s) elements (0: no packing, the input itself, its GELU then taken through a row ring in
  // the scratch); `scratch`: per-task, grad_weight_scratch(s, gelu_input) elements.
  int64_t (*grad_weight_packed_size)(const Shape& s);
  int64_t (*grad_weight_scratch)(const Shape& s, bool gelu_input);
  void (*grad_weight_nhwc)(const Shape& s, const scalar_t* grad_out, const scalar_t* packed, scalar_t* partial,
                           int64_t begin, int64_t end, scalar_t* scratch, bool gelu_input);
  // NCHW: grad_w [C, K*K] of channels [begin, end), each summed over the batch in order (of gelu(x)'s products
  // with `gelu_input`).
  void (*grad_weight_nchw)(const Shape& s, const scalar_t* grad_out, const scalar_t* x, scalar_t* grad_w,
                           int64_t begin, int64_t end, scalar_t* scratch, bool gelu_input);
  int64_t (*nchw_scratch)(const Shape& s);
  // Per-channel dot products of two maps of one layout (GRN's statistics): channels-last [rows][W][C], row_sums
  // [rows][C] of rows [begin, end); NCHW [planes][HW], sums[plane] of planes [begin, end).
  void (*dots_nhwc)(const scalar_t* a, const scalar_t* b, int64_t W, int64_t C, scalar_t* row_sums, int64_t begin,
                    int64_t end);
  void (*dots_nchw)(const scalar_t* a, const scalar_t* b, int64_t HW, scalar_t* sums, int64_t begin, int64_t end);
};

using Kernels = cpu_dispatch::IsaKernels<KernelTable>;
MMOVERLOCK_DECLARE_ISA_KERNELS(Kernels)

}  // namespace cpu
}  // namespace depthwise
}  // namespace mmoverlock
