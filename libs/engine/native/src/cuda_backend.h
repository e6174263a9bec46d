// The CUDA backend as the addon sees it: a status probe, registration of the `cuda:<storage>`
// backends when a device is usable, and the device weight cache's release. Implemented by
// cuda_backend.cc in CUDA builds and by cuda_none.cc in CPU-only builds, so the addon compiles
// the same way in both.
#pragma once

#include <string>
#include <vector>

#include "engine.h"

namespace ls {
namespace cuda {

struct Status {
  bool built = false;     // compiled with nvcc
  int devices = 0;        // CUDA devices the driver reports (0 without a driver)
  bool usable = false;    // a device the kernels can run on was found
  std::string device;     // its name, when usable
  int index = -1;         // its index among the devices, when usable
  std::string uuid;       // its UUID as nvidia-smi prints it ("GPU-xxxxxxxx-xxxx-..."), when usable
  int sms = 0;            // its multiprocessors (a MIG slice has fewer), when usable
  // What runs `linear`, when usable: "cublaslt-<version>" (the library whose heuristic picks the
  // pinned GEMM algorithms) or "tiled" (the fallback kernel). Part of the numerics fingerprint.
  std::string gemm;
  std::string reason;     // why not usable, when not
};

// Which device to use and how much of it the weight cache may hold: the app's settings, given
// before the first status() (which probes with them); later calls change nothing and return false.
struct Options {
  int device = 0;
  long long cache_mb = -1;  // < 0: 40% of the device's memory; 0 disables the cache
};
bool configure(const Options& options);

// Probed once (the first call initialises the CUDA driver when there is one); never throws.
const Status& status();

// Registers `cuda:f32`, `cuda:bf16` and `cuda:f16` when status().usable; otherwise nothing.
void register_backends();

// Frees every cached device copy of host buffers, appending the unpin events to `pins`.
void release_device_cache(std::vector<HostPin>* pins);
// Frees the device copies overlapping these host ranges without copying anything back (resident
// outputs included): their owner will not read them again.
void forget_device_copies(const std::vector<HostRange>& ranges, std::vector<HostPin>* pins);

// Where the time of the last CUDA graph run went (device-side, from CUDA events), for benchmarks.
struct RunStats {
  double upload_ms = 0, compute_ms = 0, download_ms = 0;
  double upload_bytes = 0, download_bytes = 0;  // host float32 bytes moved
  double cached_bytes = 0;                      // device bytes of the weight cache after the run
  size_t tensor_core_attention = 0;             // attention nodes that ran on the tensor-core kernel
  // Device time of each node of the last run, in order; filled only while profiling is on.
  std::vector<double> node_ms;
};
RunStats last_run_stats();

// Per-node timing (an event after every node, for benchmarks): off by default, since the events
// cost a little on graphs of many small nodes. A no-op without a usable device.
void set_profiling(bool on);

// Whether cuBLAS was loaded for `linear` (false until the first CUDA graph runs, or when
// libcublas could not be opened and the fallback GEMM is in use).
bool cublas_loaded();

}  // namespace cuda
}  // namespace ls
