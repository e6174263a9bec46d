// The avx512 level of the CPU kernels; binding.gyp gives this file its own target flags.
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "cpu_kernels.h"

namespace ls {
namespace k_avx512 {

constexpr SimdLevel kLevel = SimdLevel::avx512;
#include "vec_scalar.inc"
#include "vec_avx512.inc"
#include "kernels_impl.inc"

}  // namespace k_avx512

const CpuKernels& cpu_kernels_avx512() { return k_avx512::kKernels; }

}  // namespace ls
