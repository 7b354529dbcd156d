// What the CPU dispatchers of every op (contmix_cpu.cpp, depthwise_cpu.cpp) share: the float32 / float64 half of a
// per-ISA kernel table, and the grain that keeps small problems off the thread pool.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace mmoverlock {
namespace cpu_dispatch {

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
