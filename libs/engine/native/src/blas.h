#pragma once

#include <cstddef>
#include <stdexcept>

namespace ls {

// C[M, N] = A[M, K] . W[N, K]^T through the system OpenBLAS, loaded with dlopen on first use so
// the addon neither links nor requires it; the benchmark's baseline. Throws std::runtime_error
// when libopenblas.so.0 or its symbols are missing.
void blas_sgemm(size_t m, size_t n, size_t k, const float* a, const float* w, float* c,
                int threads);

}  // namespace ls
