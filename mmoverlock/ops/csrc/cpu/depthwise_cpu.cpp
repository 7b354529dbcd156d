// CPU launchers of the depthwise convolution (float32 and float64): the kernels of the instruction set ContMix's
// selection names (the best this CPU supports, or MMOVERLOCK_CPU_CAPABILITY), run on threads with at::parallel_for.
//
// Each task owns the memory it writes, and every sum is taken in an order that depends neither on the number of
// threads nor on the split: the forward (and so the input gradient) is one task per output row (channels-last) or
// plane (NCHW); the channels-last weight gradient sums a fixed number of row chunks into partial kernels that are
// then added in chunk order, the NCHW one is one task per channel summing the batch in order; the fused forward's
// and spatial_dot's sums are taken per output row (or plane) and the rows' sums added by one reduction over the
// rows.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "contmix_cpu_isa.h"
#include "cpu_dispatch.h"
#include "depthwise_cpu_isa.h"
#include "depthwise_op.h"

namespace mmoverlock {
namespace depthwise {
namespace cpu {
namespace {

// The kernels of the instruction set ContMix's CPU kernels use now (one selection, one environment variable).
const Kernels& kernels() {
  const char* error = nullptr;
  const char* name = contmix::cpu::selected_capability(&error);
  TORCH_CHECK(name != nullptr, "depthwise: environment variable MMOVERLOCK_CPU_CAPABILITY='",
              std::getenv("MMOVERLOCK_CPU_CAPABILITY"), "' ", error);
#if defined(MMOVERLOCK_CPU_X86)
  if (std::strcmp(name, "avx512") == 0) return avx512::kernels;
  if (std::strcmp(name, "avx2") == 0) return avx2::kernels;
#endif
  return default_isa::kernels;
}

using cpu_dispatch::grain;
using cpu_dispatch::table;

// Row chunks of the channels-last weight gradient: at most kWeightChunks, at least kPixelsPerChunk output pixels
// each, a function of the shape only, so the sum's order never depends on the threads.
constexpr int64_t kWeightChunks = 32;
constexpr int64_t kPixelsPerChunk = 128;

}  // namespace
}  // namespace cpu

void forward_cpu(const Shape& s, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                 bool channels_last, at::Tensor& out, const ForwardExtras& extras) {
  const cpu::Kernels& isa = cpu::kernels();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_forward_cpu", [&] {
    const cpu::KernelTable<scalar_t>& k = cpu::table<scalar_t>(isa);
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    // The sums of each output row (channels-last) or plane (NCHW), then added over an image's rows.
    const std::vector<int64_t> partial_shape =
        channels_last ? std::vector<int64_t>{s.N, s.Ho, s.C} : std::vector<int64_t>{s.N, s.C};
    at::Tensor partial_sums, partial_squares;
    cpu::Epilogue<scalar_t> ep;
    ep.gelu_grad_at = extras.gelu_grad_at.defined() ? extras.gelu_grad_at.const_data_ptr<scalar_t>() : nullptr;
    ep.product_with = extras.product_with.defined() ? extras.product_with.const_data_ptr<scalar_t>() : nullptr;
    if (extras.sums != nullptr) {
      partial_sums = at::empty(partial_shape, input.options());
      ep.sums = partial_sums.mutable_data_ptr<scalar_t>();
    }
    if (extras.square_sums != nullptr) {
      partial_squares = at::empty(partial_shape, input.options());
      ep.square_sums = partial_squares.mutable_data_ptr<scalar_t>();
    }
    ep.reuse_output = extras.statistics_only;
    // Per task: the output itself, or (statistics only) scratch for one output row or plane.
    const int64_t task_output = !ep.reuse_output ? 0 : channels_last ? s.Wo * s.C : s.Ho * s.Wo;
    auto output_of = [&](std::vector<scalar_t>& scratch) {
      return ep.reuse_output ? scratch.data() : out.mutable_data_ptr<scalar_t>();
    };
    if (channels_last) {
      // Weight [slices][K*K][lanes] and bias [slices][lanes], zero past C (see KernelTable::forward_nhwc).
      const int64_t L = k.lanes, padded = (s.C + L - 1) / L * L;
      auto pack = [&](const at::Tensor& t, int64_t taps) {
        return at::constant_pad_nd(t.reshape({s.C, taps}), {0, 0, 0, padded - s.C})
            .reshape({padded / L, L, taps}).transpose(1, 2).contiguous();
      };
      const at::Tensor wp = pack(weight, s.K * s.K);
      const at::Tensor bp = bias.defined() ? pack(bias, 1) : at::Tensor();
      at::Tensor packed = at::empty({k.nhwc_packed_size(s)}, input.options());
      scalar_t* xp = packed.mutable_data_ptr<scalar_t>();
      if (packed.numel() > 0) {  // else the kernels read the input itself
        at::parallel_for(0, s.N * s.H, cpu::grain(s.W * s.C), [&](int64_t begin, int64_t end) {
          k.pack_nhwc(s, x, xp, begin, end, extras.gelu_input);
        });
      }
      // The GELU of a directly read input: per-task rings.
      const bool ring = extras.gelu_input && packed.numel() == 0;
      const scalar_t* w = wp.const_data_ptr<scalar_t>();
      const scalar_t* bpp = bias.defined() ? bp.const_data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, s.N * s.Ho, cpu::grain(s.Wo * s.C * s.K * s.K), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> ring_rows(ring ? k.nhwc_ring_size(s) : 0), rows(task_output);
        k.forward_nhwc(s, packed.numel() > 0 ? xp : x, w, bpp, output_of(rows), begin, end,
                       ring ? ring_rows.data() : nullptr, ep);
      });
    } else {
      const scalar_t* w = weight.const_data_ptr<scalar_t>();
      at::parallel_for(0, s.N * s.C, cpu::grain(s.Ho * s.Wo * s.K * s.K), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(k.nchw_scratch(s)), plane(task_output);
        k.forward_nchw(s, x, w, b, output_of(plane), begin, end, scratch.data(), extras.gelu_input, ep);
      });
    }
    if (extras.sums != nullptr) *extras.sums = channels_last ? partial_sums.sum(1) : partial_sums;
    if (extras.square_sums != nullptr) *extras.square_sums = channels_last ? partial_squares.sum(1) : partial_squares;
  });
}

at::Tensor spatial_dot_cpu(const at::Tensor& a, const at::Tensor& b, bool channels_last) {
  const cpu::Kernels& isa = cpu::kernels();
  const int64_t N = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  at::Tensor sums;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "spatial_dot_cpu", [&] {
    const cpu::KernelTable<scalar_t>& k = cpu::table<scalar_t>(isa);
    const scalar_t* pa = a.const_data_ptr<scalar_t>();
    const scalar_t* pb = b.const_data_ptr<scalar_t>();
    if (channels_last) {  // each row's sums, then one reduction over an image's rows
      at::Tensor rows = at::empty({N, H, C}, a.options());
      scalar_t* r = rows.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N * H, cpu::grain(W * C), [&](int64_t begin, int64_t end) {
        k.dots_nhwc(pa, pb, W, C, r, begin, end);
      });
      sums = rows.sum(1);
    } else {
      sums = at::empty({N, C}, a.options());
      scalar_t* out = sums.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, N * C, cpu::grain(H * W), [&](int64_t begin, int64_t end) {
        k.dots_nchw(pa, pb, H * W, out, begin, end);
      });
    }
  });
  return sums;
}

void grad_weight_cpu(const Shape& s, const at::Tensor& grad_out, const at::Tensor& input, bool channels_last,
                     at::Tensor& grad_weight, bool gelu_input) {
  const cpu::Kernels& isa = cpu::kernels();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "depthwise_grad_weight_cpu", [&] {
    const cpu::KernelTable<scalar_t>& k = cpu::table<scalar_t>(isa);
    const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* gw = grad_weight.mutable_data_ptr<scalar_t>();
    const int64_t taps = s.K * s.K;
    if (!channels_last) {
      at::parallel_for(0, s.C, 1, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> scratch(k.nchw_scratch(s));
        k.grad_weight_nchw(s, go, x, gw, begin, end, scratch.data(), gelu_input);
      });
      return;
    }
    // A fixed number of row chunks (from the shape alone), fewer on small maps, where zeroing and adding the
    // partial kernels would cost more than the products.
    const int64_t rows = s.N * s.Ho;
    const int64_t most = std::min(rows, cpu::kWeightChunks);
    const int64_t chunks = std::clamp<int64_t>(rows * s.Wo / cpu::kPixelsPerChunk, 1, most);
    at::Tensor partial = at::zeros({chunks, taps, s.C}, input.options());
    scalar_t* p = partial.mutable_data_ptr<scalar_t>();
    at::Tensor packed = at::empty({k.grad_weight_packed_size(s)}, input.options());
    scalar_t* xp = packed.mutable_data_ptr<scalar_t>();
    if (packed.numel() > 0) {  // else the kernels read the input itself
      at::parallel_for(0, s.N * s.H, cpu::grain(s.W * s.C), [&](int64_t begin, int64_t end) {
        k.pack_nhwc(s, x, xp, begin, end, gelu_input);
      });
    }
    const scalar_t* source = packed.numel() > 0 ? xp : x;
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(k.grad_weight_scratch(s, gelu_input));
      for (int64_t chunk = begin; chunk < end; ++chunk) {
        k.grad_weight_nhwc(s, go, source, p + chunk * taps * s.C, chunk * rows / chunks, (chunk + 1) * rows / chunks,
                           scratch.data(), gelu_input);
      }
    });
    // grad_w[c, t] = sum over chunks, in chunk order: per tap, the chunks' rows of C channels added one after
    // another, then written to the [C, K*K] kernel. (Read channel by channel across the chunks instead, the partial
    // kernels, megabytes at large K, left the cache between channels: K = 15 at C = 128 took 2.5x as long.)
    at::parallel_for(0, taps, cpu::grain(chunks * s.C), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> sum(s.C);
      for (int64_t t = begin; t < end; ++t) {
        std::copy(p + t * s.C, p + (t + 1) * s.C, sum.begin());
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const scalar_t* row = p + (chunk * taps + t) * s.C;
          for (int64_t c = 0; c < s.C; ++c) sum[c] += row[c];
        }
        for (int64_t c = 0; c < s.C; ++c) gw[c * taps + t] = sum[c];
      }
    });
  });
}

}  // namespace depthwise
}  // namespace mmoverlock
