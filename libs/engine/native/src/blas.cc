#include "blas.h"

#include <dlfcn.h>

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

struct OpenBlas {
  SgemmFn sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;
  std::string error;
};

const OpenBlas& openblas() {
  static OpenBlas lib;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* e = dlerror();
      lib.error = std::string("OpenBLAS not available (install libopenblas0 / libopenblas-dev): ") +
                  (e ? e : "dlopen failed");
      return;
    }
    lib.sgemm = reinterpret_cast<SgemmFn>(dlsym(h, "cblas_sgemm"));
    lib.set_threads = reinterpret_cast<SetThreadsFn>(dlsym(h, "openblas_set_num_threads"));
    if (!lib.sgemm || !lib.set_threads)
      lib.error = "libopenblas.so.0 lacks cblas_sgemm or openblas_set_num_threads";
  });
  return lib;
}

}  // namespace

void blas_sgemm(size_t m, size_t n, size_t k, const float* a, const float* w, float* c,
                int threads) {
  const OpenBlas& lib = openblas();
  if (!lib.error.empty()) throw std::runtime_error(lib.error);
  lib.set_threads(threads);
  lib.sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(m), static_cast<int>(n),
            static_cast<int>(k), 1.0f, a, static_cast<int>(k), w, static_cast<int>(k), 0.0f, c,
            static_cast<int>(n));
}

}  // namespace ls
