// The depthwise CPU kernels for the avx512 instruction set (64-byte vectors): depthwise_cpu_body.h compiled in
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
namespace avx512 {

CONTMIX_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define DEPTHWISE_VEC_BYTES 64
#define DEPTHWISE_CPU_CAPABILITY_NAME "avx512"
#include "depthwise_cpu_body.h"
CONTMIX_TARGET_END

}  // namespace avx512
}  // namespace cpu
}  // namespace depthwise
}  // namespace mmoverlock
#endif
