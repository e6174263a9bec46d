// The scalar level of the CPU kernels; binding.gyp gives this file its own target flags.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>

#include "cpu_kernels.h"

namespace ls {
namespace k_scalar {

constexpr SimdLevel kLevel = SimdLevel::scalar;
#include "vec_scalar.inc"
// The scalar level reuses the one-lane vector with small register tiles.
struct Vec : Vec1 {
  static constexpr int GEMM_MR = 4, GEMM_NV = 4;
  static constexpr int ATT_MR = 4, ATT_NV = 4;
};
#include "kernels_impl.inc"

}  // namespace k_scalar

const CpuKernels& cpu_kernels_scalar() { return k_scalar::kKernels; }

}  // namespace ls
