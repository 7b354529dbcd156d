// The CPU kernels compiled for AVX2 + FMA (32-byte vectors). The target is switched for this file's kernel body
// only, after every header is included, so the build machine's CPU does not matter and CPUs without AVX2 never run
// this code: the dispatcher picks it only where the CPU reports avx2 and fma.
#include <cmath>
#include <cstdint>

#include "contmix_common.h"
#include "contmix_cpu_isa.h"

#if defined(MMOVERLOCK_CPU_X86)
#include "contmix_cpu_target.h"

namespace mmoverlock {
namespace contmix {
namespace cpu {
namespace avx2 {

CONTMIX_TARGET_BEGIN("avx2,fma")
#define CONTMIX_VEC_BYTES 32
#define CONTMIX_CPU_CAPABILITY_NAME "avx2"
#include "contmix_cpu_body.h"
CONTMIX_TARGET_END

}  // namespace avx2
}  // namespace cpu
}  // namespace contmix
}  // namespace mmoverlock
#endif
