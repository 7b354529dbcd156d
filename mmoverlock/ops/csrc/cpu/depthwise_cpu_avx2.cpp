// The depthwise CPU kernels for the avx2 instruction set (32-byte vectors): depthwise_cpu_body.h compiled in
// this ISA's namespace; the dispatcher picks it only where the CPU supports it (see depthwise_cpu.cpp).
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "depthwise_common.h"
#include "depthwise_cpu_isa.h"

#if defined(MMOVERLOCK_CPU_X86)
#include "contmix_cpu_target.h"

namespace mmoverlock {
namespace depthwise {
namespace cpu {
namespace avx2 {

CONTMIX_TARGET_BEGIN("avx2,fma")
#define DEPTHWISE_VEC_BYTES 32
#define DEPTHWISE_CPU_CAPABILITY_NAME "avx2"
#include "depthwise_cpu_body.h"
CONTMIX_TARGET_END

}  // namespace avx2
}  // namespace cpu
}  // namespace depthwise
}  // namespace mmoverlock
#endif
