// The CPU kernels for the baseline instruction set of the build (SSE2 on x86-64), 16-byte vectors. This is the
// variant every CPU can run; contmix_cpu_avx2.cpp and contmix_cpu_avx512.cpp add wider ones, chosen at run time.
#include <cmath>
#include <cstdint>

#include "contmix_common.h"
#include "contmix_cpu_isa.h"

namespace mmoverlock {
namespace contmix {
namespace cpu {
namespace default_isa {

#define CONTMIX_VEC_BYTES 16
#define CONTMIX_CPU_CAPABILITY_NAME "default"
#include "contmix_cpu_body.h"

}  // namespace default_isa
}  // namespace cpu
}  // namespace contmix
}  // namespace mmoverlock
