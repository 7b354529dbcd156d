// CONTMIX_TARGET_BEGIN("isa,list") ... CONTMIX_TARGET_END: compile the functions between them for the named
// instruction sets (GCC: #pragma GCC target, Clang: a pushed target attribute), whatever the build's -march.
#pragma once

#define CONTMIX_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define CONTMIX_TARGET_BEGIN(isa) CONTMIX_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define CONTMIX_TARGET_END CONTMIX_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define CONTMIX_TARGET_BEGIN(isa) CONTMIX_PRAGMA(GCC push_options) CONTMIX_PRAGMA(GCC target(isa))
#define CONTMIX_TARGET_END CONTMIX_PRAGMA(GCC pop_options)
#else
#error "the per-ISA CPU kernels need GCC or Clang (vector extensions and target pragmas)"
#endif
