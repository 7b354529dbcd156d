// CPU launchers of the ContMix core (float32 and float64): pick the kernels compiled for the widest instruction set
// this CPU supports (contmix_cpu_body.h, compiled once per ISA; 256-bit ones for kernels below 8 x 8), run them on
// threads with at::parallel_for, and reduce grad_rpb.
//
// Every task owns the memory it writes, so there are no races and no atomics, and every sum is taken in an order
// that depends neither on the number of threads nor on how the work is split:
//   forward:   one task per output row.
//   backward:  one task per (plane, band of value rows); grad_value is gathered band by band, grad_weights and each
//              output row's grad_rpb partial sum are written by the band that holds the row. The partial sums are
//              then added in (batch, row) order, one task per group.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "contmix_common.h"
#include "contmix_cpu_isa.h"
#include "cpu_dispatch.h"
#include "contmix_kernels.h"
#include "contmix_shape.h"

namespace mmoverlock {
namespace contmix {
namespace cpu {
namespace {

constexpr const char* kCapabilityEnv = "MMOVERLOCK_CPU_CAPABILITY";

struct Capability {
  const char* name;
  const Kernels* kernels;
  bool (*supported)();
};

bool always() { return true; }
#if defined(MMOVERLOCK_CPU_X86)
// __builtin_cpu_supports also checks that the OS saves the vector registers (XCR0).
bool has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}
#endif

// In increasing order of width.
const Capability kCapabilities[] = {
    {"default", &default_isa::kernels, &always},
#if defined(MMOVERLOCK_CPU_X86)
    {"avx2", &avx2::kernels, &has_avx2},
    {"avx512", &avx512::kernels, &has_avx512},
#endif
};
constexpr int kNumCapabilities = sizeof(kCapabilities) / sizeof(kCapabilities[0]);

// The environment variable is read on every call (a few hundred nanoseconds), so it can be changed at run time.
const Capability* select(const char** error) noexcept {
  const char* wanted = std::getenv(kCapabilityEnv);
  const Capability* best = nullptr;
  for (const Capability& cap : kCapabilities) {
    if (wanted != nullptr && *wanted != '\0' && std::strcmp(wanted, cap.name) == 0) {
      if (cap.supported()) return &cap;
      *error = "names an instruction set that this CPU does not support";
      return nullptr;
    }
    if (cap.supported()) best = &cap;
  }
  if (wanted != nullptr && *wanted != '\0') {
    *error = "must be one of default, avx2, avx512 (or unset for the best this CPU supports)";
    return nullptr;
  }
  return best;
}

// Kernels narrower than this take the 256-bit kernels even where AVX-512 is available (unless the environment
// variable names one): the backward vectorises its dot products over the taps of a window row, so a row of K < 8
// taps fills under half of a 512-bit vector, and the wider vectors only cost time there (measured at K = 5 and 7).
constexpr int64_t kMinKernelFor512 = 8;

const Kernels& kernels(int64_t kernel_size) {
  const char* error = nullptr;
  const Capability* cap = select(&error);
  TORCH_CHECK(cap != nullptr, "contmix: environment variable ", kCapabilityEnv, "='", std::getenv(kCapabilityEnv),
              "' ", error);
#if defined(MMOVERLOCK_CPU_X86)
  const char* wanted = std::getenv(kCapabilityEnv);
  const bool named = wanted != nullptr && *wanted != '\0';
  if (!named && cap->kernels == &avx512::kernels && kernel_size < kMinKernelFor512) return avx2::kernels;
#endif
  return *cap->kernels;
}

using cpu_dispatch::grain;
using cpu_dispatch::table;

// Rows per backward band: enough tasks for the threads, but at least 2K rows so that recomputing the softmax of the
// output rows whose windows straddle a band edge stays cheap. Only the split depends on the thread count.
int64_t band_rows(const Shape& s) {
  const int64_t planes = s.B * s.G;
  const int64_t wanted = std::max<int64_t>(1, (4 * at::get_num_threads() + planes - 1) / planes);
  return std::max((s.H + wanted - 1) / wanted, std::min(s.H, 2 * s.K));
}

// grad_rpb[g, dr0(i) + a, q] = sum over b, then i, of the row partial sums (slot row a, column q).
template <typename scalar_t>
void reduce_rpb_rows(const Shape& s, const scalar_t* rows, int64_t stride, scalar_t* grad_rpb) {
  at::parallel_for(0, s.G, grain(s.B * s.H * s.K * s.R), [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      scalar_t* out = grad_rpb + g * s.R * s.R;
      std::fill(out, out + s.R * s.R, scalar_t(0));
      for (int64_t b = 0; b < s.B; ++b) {
        for (int64_t i = 0; i < s.H; ++i) {
          const scalar_t* slot = rows + ((b * s.G + g) * s.H + i) * s.K * stride;
          const int64_t dr0 = window_start(i, s.H, s.K) - i + s.K - 1;
          for (int64_t a = 0; a < s.K; ++a) {
            scalar_t* dst = out + (dr0 + a) * s.R;
            for (int64_t q = 0; q < s.R; ++q) dst[q] += slot[a * stride + q];
          }
        }
      }
    }
  });
}

}  // namespace

const char* selected_capability(const char** error) noexcept {
  const Capability* cap = select(error);
  return cap != nullptr ? cap->name : nullptr;
}

int supported_capabilities(const char** names, int max_names) noexcept {
  int n = 0;
  for (const Capability& cap : kCapabilities)
    if (cap.supported() && n < max_names) names[n++] = cap.name;
  return n;
}

}  // namespace cpu

void forward_cpu(const at::Tensor& weights, const at::Tensor& value, const at::Tensor& rpb, int64_t kernel_size,
                 bool softmax, at::Tensor& out) {
  const Shape s = make_shape(value, kernel_size, softmax);
  const cpu::Kernels& isa = cpu::kernels(kernel_size);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "contmix_forward_cpu", [&] {
    const cpu::KernelTable<scalar_t>& k = cpu::table<scalar_t>(isa);
    const cpu::Tensors<scalar_t> x{nullptr,
                                   weights.const_data_ptr<scalar_t>(),
                                   value.const_data_ptr<scalar_t>(),
                                   optional_ptr<scalar_t>(rpb),
                                   out.mutable_data_ptr<scalar_t>(),
                                   nullptr,
                                   nullptr,
                                   nullptr};
    at::parallel_for(0, s.B * s.G * s.H, cpu::grain(s.W * s.T * (s.C + 1)), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(k.forward_scratch(s));
      k.forward(s, x, begin, end, scratch.data());
    });
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& weights, const at::Tensor& value,
                  const at::Tensor& rpb, int64_t kernel_size, bool softmax, at::Tensor& grad_weights,
                  at::Tensor& grad_value, at::Tensor& grad_rpb) {
  const Shape s = make_shape(value, kernel_size, softmax);
  const cpu::Kernels& isa = cpu::kernels(kernel_size);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "contmix_backward_cpu", [&] {
    const cpu::KernelTable<scalar_t>& k = cpu::table<scalar_t>(isa);
    // Per output row: the grad_rpb partial sums of its K bias-table rows (O(B*G*H*K^2), below the logits' size).
    const int64_t stride = k.rpb_row_stride(s);
    at::Tensor rpb_rows = rpb.defined() ? at::empty({s.B * s.G * s.H * s.K * stride}, value.options()) : at::Tensor();
    const cpu::Tensors<scalar_t> x{grad_out.const_data_ptr<scalar_t>(),
                                   weights.const_data_ptr<scalar_t>(),
                                   value.const_data_ptr<scalar_t>(),
                                   optional_ptr<scalar_t>(rpb),
                                   nullptr,
                                   grad_weights.mutable_data_ptr<scalar_t>(),
                                   grad_value.mutable_data_ptr<scalar_t>(),
                                   rpb.defined() ? rpb_rows.mutable_data_ptr<scalar_t>() : nullptr};
    const int64_t band = cpu::band_rows(s);
    const int64_t tasks = s.B * s.G * ((s.H + band - 1) / band);
    at::parallel_for(0, tasks, cpu::grain(2 * band * s.W * s.T * (s.C + 1)), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> scratch(k.backward_scratch(s, band));
      k.backward(s, x, band, begin, end, scratch.data());
    });
    // Float and double accumulate in their own type on the CPU, so grad_rpb is written directly.
    if (rpb.defined())
      cpu::reduce_rpb_rows(s, rpb_rows.const_data_ptr<scalar_t>(), stride, grad_rpb.mutable_data_ptr<scalar_t>());
  });
}

}  // namespace contmix
}  // namespace mmoverlock
