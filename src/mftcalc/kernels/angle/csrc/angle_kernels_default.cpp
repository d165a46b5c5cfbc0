// Portable (baseline x86-64 / any arch) build of the fused angle-block loops.
#define MFTCALC_ANGLE_VECTOR_BYTES 16
#define MFTCALC_ANGLE_ISA isa_default
#include "angle_kernels_impl.h"
