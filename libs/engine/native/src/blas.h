#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

namespace ls {

// C[M, N] = A[M, K] . W[N, K]^T through the system OpenBLAS, loaded with dlopen on first use so
// the addon neither links nor requires it; the benchmark's baseline. Throws std::runtime_error
// when libopenblas.so.0 or its symbols are missing.
//
// OpenBLAS picks its kernels by CPU model when it loads and falls back to old SSE3 ones
// ("Prescott") on a CPU it does not know (0.3.21 on Zen 5): a baseline four times too slow. So,
// unless OPENBLAS_CORETYPE is set already, it is set before loading to the kernels of this
// CPU's widest vector unit the engine can use (SkylakeX for AVX-512, Haswell for AVX2).
void blas_sgemm(size_t m, size_t n, size_t k, const float* a, const float* w, float* c,
                int threads);

// The kernels OpenBLAS runs (openblas_get_corename), loading it if needed; throws like blas_sgemm.
std::string blas_core();

}  // namespace ls
