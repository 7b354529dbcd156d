// The CPU kernels compiled for AVX-512 (F, BW, DQ, VL, as ATen's AVX512 capability) with FMA, 64-byte vectors. The
// target is switched for this file's kernel body only, after every header is included; the dispatcher picks it only
// where the CPU (and the OS) supports all of these.
#include <cmath>
#include <cstdint>

#include "contmix_common.h"
#include "contmix_cpu_isa.h"

#if defined(MMOVERLOCK_CPU_X86)
#include "contmix_cpu_target.h"

namespace mmoverlock {
namespace contmix {
namespace cpu {
namespace avx512 {

CONTMIX_TARGET_BEGIN("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")
#define CONTMIX_VEC_BYTES 64
#define CONTMIX_CPU_CAPABILITY_NAME "avx512"
#include "contmix_cpu_body.h"
CONTMIX_TARGET_END

}  // namespace avx512
}  // namespace cpu
}  // namespace contmix
}  // namespace mmoverlock
#endif
