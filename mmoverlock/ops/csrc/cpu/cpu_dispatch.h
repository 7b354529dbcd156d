// What the CPU kernels of every op (contmix_cpu*.cpp, depthwise_cpu*.cpp) share: the per-ISA kernel tables (their
// type, their declarations, the float32 / float64 half), and the grain that keeps small problems off the thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#define MMOVERLOCK_CPU_X86 1  // the avx2 and avx512 kernel variants are compiled
#endif

// Declares an op's kernel tables `kernels` of type `Type`, one per compiled instruction set, in the namespace where
// it is expanded (each <op>_cpu_<isa>.cpp defines one).
#if defined(MMOVERLOCK_CPU_X86)
#define MMOVERLOCK_DECLARE_ISA_KERNELS(Type)      \
  namespace default_isa { extern const Type kernels; } \
  namespace avx2 { extern const Type kernels; }        \
  namespace avx512 { extern const Type kernels; }
#else
#define MMOVERLOCK_DECLARE_ISA_KERNELS(Type) namespace default_isa { extern const Type kernels; }
#endif

namespace mmoverlock {
namespace cpu_dispatch {

// An op's kernels for one instruction set: its name and the float32 and float64 instances of the op's `Table`.
template <template <typename> class Table>
struct IsaKernels {
  const char* name;
  Table<float> f32;
  Table<double> f64;
};

// The scalar_t entry (f32 or f64) of a per-ISA kernel table.
template <typename scalar_t, typename Kernels>
const auto& table(const Kernels& k) {
  static_assert(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>, "float32/float64 kernels only");
  if constexpr (std::is_same_v<scalar_t, float>) {
    return k.f32;
  } else {
    return k.f64;
  }
}

// Tasks per thread chunk such that a chunk does at least ~2^16 multiply-adds: small problems then run inline instead
// of waking the thread pool, whose start-up costs milliseconds when the cores are busy.
inline int64_t grain(int64_t work_per_task) {
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work_per_task));
}

}  // namespace cpu_dispatch
}  // namespace mmoverlock
