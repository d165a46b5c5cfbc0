// AVX2+FMA build of the fused angle-block loops, chosen at run time only on CPUs that have both.
//
// Every header is included before the target pragma, so only this file's own (internal or ISA-namespaced)
// functions are compiled for AVX2 and no shared inline function can be replaced by an AVX2 copy.
// On other architectures (or compilers without the pragma) this is a second copy of the portable loops.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "angle_kernels.h"
#include "silut.h"

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("avx2,fma")
#endif
#define MFTCALC_ANGLE_VECTOR_BYTES 32
#define MFTCALC_ANGLE_ISA isa_avx2
#include "angle_kernels_impl.h"
