// CPU-only build (nvcc absent at build time, or LONGSHOT_CUDA=0): the CUDA backend reports
// itself as not built and never registers.
#include "cuda_backend.h"

namespace ls {
namespace cuda {

const Status& status() {
  static const Status s = [] {
    Status st;
    st.reason = "the engine was built without CUDA (no nvcc at build time, or LONGSHOT_CUDA=0)";
    return st;
  }();
  return s;
}

bool configure(const Options&) { return true; }

void register_backends() {}

void release_device_cache(std::vector<HostPin>*) {}

void forget_device_copies(const std::vector<HostRange>&, std::vector<HostPin>*) {}

bool cublas_loaded() { return false; }

RunStats last_run_stats() { return {}; }

void set_profiling(bool) {}

}  // namespace cuda
}  // namespace ls

// ---- the data plane's device paths (device_link.h) -----------------------------------------------

#include "device_link.h"

namespace ls::cuda::link {

namespace {
const char* kNoCuda = "no CUDA device: the engine was built without CUDA";
}

std::string usable(int) { return kNoCuda; }
std::string ipc_export(int, const void*, IpcHandle*) { return kNoCuda; }
std::string ipc_copy(int, const IpcHandle&, uint64_t, void*, size_t) { return kNoCuda; }
std::unique_ptr<NcclPeer> nccl_join(const nccl::Api*, const nccl::UniqueId&, int, int, int, std::string* why) {
  *why = kNoCuda;
  return nullptr;
}

}  // namespace ls::cuda::link
