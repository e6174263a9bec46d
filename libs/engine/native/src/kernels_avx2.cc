// The avx2 level of the CPU kernels; binding.gyp gives this file its own target flags.
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "cpu_kernels.h"

namespace ls {
namespace k_avx2 {

constexpr SimdLevel kLevel = SimdLevel::avx2;
#include "vec_scalar.inc"
#include "vec_avx2.inc"
#include "kernels_impl.inc"

}  // namespace k_avx2

const CpuKernels& cpu_kernels_avx2() { return k_avx2::kKernels; }

}  // namespace ls
