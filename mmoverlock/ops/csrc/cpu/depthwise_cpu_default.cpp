// The depthwise CPU kernels for the default instruction set (16-byte vectors): depthwise_cpu_body.h compiled in
// this ISA's namespace; the dispatcher picks it only where the CPU supports it (see depthwise_cpu.cpp).
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "depthwise_common.h"
#include "depthwise_cpu_isa.h"

namespace mmoverlock {
namespace depthwise {
namespace cpu {
namespace default_isa {

#define DEPTHWISE_VEC_BYTES 16
#define DEPTHWISE_CPU_CAPABILITY_NAME "default"
#include "depthwise_cpu_body.h"

}  // namespace default_isa
}  // namespace cpu
}  // namespace depthwise
}  // namespace mmoverlock
