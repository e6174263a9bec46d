#include "blas.h"

#include "cpu_kernels.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

namespace ls {

namespace {

// CBLAS enum values, fixed by the CBLAS standard.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

using SgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                         int, float, float*, int);
using SetThreadsFn = void (*)(int);
using CoreNameFn = char* (*)();

struct OpenBlas {
  SgemmFn sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  CoreNameFn core_name = nullptr;
  std::string error;
};

// OPENBLAS_CORETYPE for this CPU's widest vector unit, or null to leave OpenBLAS's own choice.
const char* core_type_for_this_cpu() {
  const std::vector<SimdLevel> levels = simd_available();
  const auto has = [&](SimdLevel l) { return std::find(levels.begin(), levels.end(), l) != levels.end(); };
  if (has(SimdLevel::avx512)) return "SkylakeX";
  if (has(SimdLevel::avx2)) return "Haswell";
  return nullptr;
}

// The loaded library; throws std::runtime_error (every time) when it could not be loaded.
const OpenBlas& openblas() {
  static OpenBlas lib;
  static std::once_flag once;
  std::call_once(once, [] {
    // Read by OpenBLAS's constructor; once, on the thread that first asks for the baseline. A
    // value already set wins (setenv does not overwrite).
    if (const char* core = core_type_for_this_cpu()) setenv("OPENBLAS_CORETYPE", core, 0);
    void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      lib.error = std::string("OpenBLAS not available (install libopenblas0 / libopenblas-dev): ") +
                  (e ? e : "dlopen failed");
      return;
    }
    lib.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    lib.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads"));
    lib.core_name = reinterpret_cast<CoreNameFn>(dlsym(h, "openblas_get_corename"));
    if (!lib.sgemm || !lib.set_threads || !lib.core_name)
      lib.error = "libopenblas.so.0 lacks cblas_sgemm, openblas_set_num_threads or openblas_get_corename";
  });
  if (!lib.error.empty()) throw std::runtime_error(lib.error);
  return lib;
}

}  // namespace

void blas_sgemm(size_t m, size_t n, size_t k, const float* a, const float* w, float* c,
                int threads) {
  const OpenBlas& lib = openblas();
  lib.set_threads(threads);
  lib.sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(n),
            static_cast<int>(k), 1.0f, a, static_cast<int>(k), w, static_cast<int>(k), 0.0f, c,
            static_cast<int>(n));
}

std::string blas_core() { return openblas().core_name(); }

}  // namespace ls
