// CUDA backend: runs a whole graph of nodes on one device and one stream.
//
// Data movement. Nodes name host Float32Arrays, many of them views of one buffer (subarrays of a
// weight table, the two CFG halves of a hidden state). Within one run the host ranges of all
// tensors are merged into disjoint REGIONS (overlapping ranges share one); each region gets one
// device buffer in the backend's storage type, and a tensor maps to the same element offset in
// its region's buffer, so aliasing on the host is aliasing on the device. A region is uploaded
// unless the first node touching it writes all of it; every region some node writes is copied
// back at the end; intermediates never leave the device in between.
//
// Resident outputs. A written region wholly inside RunHints::resident goes to a cache entry marked
// resident instead of the workspace, and is not copied back: the entry is then the only valid
// copy. Later runs that read the range whole are served from it; a run that writes it resident
// again writes into it in place. Whatever drops one (LRU eviction, so the outputs of stages no
// longer running cannot hold the cache; a write or read of part of it; a release) copies it back
// to the host first, except a host rewrite (RunHints::rewritten), after which the host's copy is
// the valid one.
//
// Weight cache. A region that no node of the graph writes is weight-like. The second time such a
// range is seen, its device copy is kept across runs (keyed by its host address and length, in
// one map per storage type) and the addon pins the JS ArrayBuffer behind it, so the memory can
// neither be freed nor reused for another array while the copy lives. Contract: a buffer a graph
// only reads must not be modified from JS while it may be cached; releaseDeviceCache() drops
// everything. Any graph that writes into a cached range evicts it first. The cache is bounded
// (LONGSHOT_CUDA_CACHE_MB, default 40% of device memory) and evicts least recently used entries.
//
// The CUDA runtime is linked statically and libcuda (the driver) is opened by it at run time, so
// this file loads on a machine without a GPU; cuBLAS is opened with dlopen on the first GEMM,
// with a tiled kernel as the fallback when it is missing.
#include "cuda_backend.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <library_types.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda_kernels.h"
#include "cuda_limits.h"

namespace ls {
namespace cuda {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("CUDA: ") + what + ": " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

const char* storage_name(Storage s) {
  switch (s) {
    case Storage::bf16: return "bf16";
    case Storage::f16: return "f16";
    case Storage::f32: break;
  }
  return "f32";
}

// ---- cuBLASLt, opened at run time --------------------------------------------------------------
// The headers are not needed: the handful of prototypes and enum values below are cuBLASLt's
// stable C ABI (cublasLt.h, unchanged across 12 and 13).
//
// Pinned GEMMs. cublasGemmEx picks its algorithm per call from (M, N, K), and for some shapes a
// split-K or stream-K variant that sums a row's products in another order, so a row's bits would
// depend on how many rows share the call (a stage group's member holds a shard of the rows the
// single stage has). Instead every linear with the same (N, K, storage) runs ONE algorithm, chosen
// once per process by cublasLtMatmulAlgoGetHeuristic for a fixed shape class: M = kGemmChunkRows,
// no workspace and CUBLASLT_REDUCTION_SCHEME_NONE (so no split-K and no partial-sum reduction),
// 16-byte aligned buffers, and a returned configuration whose SPLITK_NUM is 1. A call runs over
// chunks of exactly kGemmChunkRows rows with that algorithm: every launch has the same problem
// (M, N, K), the same tiling and one K loop per output, so a row's result depends only on that
// row and W, not on M, on the chunk's other rows or on the row's place in it. Full aligned chunks
// run in place; the last partial chunk (and any chunk whose buffers are not 16-byte aligned) is
// copied into a zero-padded scratch chunk and its rows copied back.

using cublasLtHandle_t = struct cublasLtContext*;
using cublasStatus_t = int;
using cublasLtMatmulDesc_t = struct cublasLtMatmulDescOpaque_t*;
using cublasLtMatrixLayout_t = struct cublasLtMatrixLayoutOpaque_t*;
using cublasLtMatmulPreference_t = struct cublasLtMatmulPreferenceOpaque_t*;
struct cublasLtMatmulAlgo_t {
  uint64_t data[8];
};
struct cublasLtMatmulHeuristicResult_t {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
};
constexpr int kCublasOpN = 0;                 // CUBLAS_OP_N
constexpr int kCublasOpT = 1;                 // CUBLAS_OP_T
constexpr int kCublasCompute32F = 68;         // CUBLAS_COMPUTE_32F: float32 accumulation, no TF32
constexpr int kLtDescTransA = 3;              // CUBLASLT_MATMUL_DESC_TRANSA (int32)
constexpr int kLtDescTransB = 4;              // CUBLASLT_MATMUL_DESC_TRANSB (int32)
constexpr int kLtPrefMaxWorkspace = 1;        // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES (uint64)
constexpr int kLtPrefReductionMask = 3;       // CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK (uint32)
constexpr int kLtPrefMinAlignA = 5;           // ..._MIN_ALIGNMENT_A_BYTES; B, C, D follow (uint32)
constexpr int kLtAlgoSplitK = 2;              // CUBLASLT_ALGO_CONFIG_SPLITK_NUM (uint32)
constexpr int kLtAlgoReduction = 3;           // CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME (uint32)
constexpr uint32_t kLtReductionNone = 0;      // CUBLASLT_REDUCTION_SCHEME_NONE
constexpr size_t kGemmAlign = 16;             // the alignment every pinned GEMM's buffers have
constexpr int kGemmCandidates = 8;            // heuristic results examined for a configuration
// Rows of every pinned GEMM launch: the shape class. 1024 rows keep a chunk large enough for the
// tensor-core tiles to fill an H100/H200 at N, K >= 1536 while padding at most 1023 rows per call.
constexpr size_t kGemmChunkRows = 1024;

struct CublasLt {
  void* lib = nullptr;
  cublasLtHandle_t handle = nullptr;
  cublasStatus_t (*create)(cublasLtHandle_t*) = nullptr;
  size_t (*get_version)() = nullptr;
  cublasStatus_t (*desc_create)(cublasLtMatmulDesc_t*, int, cudaDataType_t) = nullptr;
  cublasStatus_t (*desc_set)(cublasLtMatmulDesc_t, int, const void*, size_t) = nullptr;
  cublasStatus_t (*layout_create)(cublasLtMatrixLayout_t*, cudaDataType_t, uint64_t, uint64_t, int64_t) = nullptr;
  cublasStatus_t (*pref_create)(cublasLtMatmulPreference_t*) = nullptr;
  cublasStatus_t (*pref_set)(cublasLtMatmulPreference_t, int, const void*, size_t) = nullptr;
  cublasStatus_t (*pref_destroy)(cublasLtMatmulPreference_t) = nullptr;
  cublasStatus_t (*heuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                              cublasLtMatrixLayout_t, cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                              cublasLtMatmulHeuristicResult_t*, int*) = nullptr;
  cublasStatus_t (*algo_get)(const cublasLtMatmulAlgo_t*, int, void*, size_t, size_t*) = nullptr;
  cublasStatus_t (*matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void*, const void*, cublasLtMatrixLayout_t,
                           const void*, cublasLtMatrixLayout_t, const void*, const void*, cublasLtMatrixLayout_t,
                           void*, cublasLtMatrixLayout_t, const cublasLtMatmulAlgo_t*, void*, size_t,
                           cudaStream_t) = nullptr;
  std::string error;  // why it is not loaded

  // Opens the cuBLASLt matching the runtime's major version first. Never throws.
  void load() {
    const char* names[] = {
#if CUDART_VERSION >= 13000
        "libcublasLt.so.13", "libcublasLt.so.12",
#else
        "libcublasLt.so.12", "libcublasLt.so.13",
#endif
        "libcublasLt.so"};
    for (const char* n : names) {
      lib = dlopen(n, RTLD_NOW | RTLD_LOCAL);
      if (lib) break;
    }
    if (!lib) {
      error = "libcublasLt.so.12/.13 not found";
      return;
    }
    bool all = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) all = false;
    };
    sym(create, "cublasLtCreate");
    sym(desc_create, "cublasLtMatmulDescCreate");
    sym(desc_set, "cublasLtMatmulDescSetAttribute");
    sym(layout_create, "cublasLtMatrixLayoutCreate");
    sym(pref_create, "cublasLtMatmulPreferenceCreate");
    sym(pref_set, "cublasLtMatmulPreferenceSetAttribute");
    sym(pref_destroy, "cublasLtMatmulPreferenceDestroy");
    sym(heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(algo_get, "cublasLtMatmulAlgoConfigGetAttribute");
    sym(matmul, "cublasLtMatmul");
    sym(get_version, "cublasLtGetVersion");
    if (!all) {
      error = "libcublasLt lacks a cublasLt matmul, layout, preference or heuristic entry point";
    } else if (create(&handle) != 0) {
      error = "cublasLtCreate failed";
      handle = nullptr;
    } else {
      return;
    }
    // Unusable: fall back for good. The library stays open (closing it under a live handle, or
    // while it registered atexit handlers, is not worth the few megabytes).
    handle = nullptr;
  }
  bool ok() const { return handle != nullptr; }
};

cudaDataType_t cuda_type(Storage s) {
  switch (s) {
    case Storage::bf16: return CUDA_R_16BF;
    case Storage::f16: return CUDA_R_16F;
    case Storage::f32: break;
  }
  return CUDA_R_32F;
}

// ---- device state ------------------------------------------------------------------------------

constexpr size_t kAlign = 256;                    // device offsets of regions (cuBLAS likes 16+)
constexpr size_t kStagingFloats = 16u << 20;      // 64 MiB of float32 for dtype conversions
constexpr size_t kSeenLimit = 1u << 16;           // read-only ranges remembered for admission

size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

struct CacheEntry {
  size_t bytes = 0;        // host bytes (float32)
  void* dev = nullptr;     // device copy in the map's storage type
  uint64_t last_use = 0;   // run counter, for LRU and to protect entries in use
  bool resident = false;   // a resident output: the only valid copy (the host's is stale)
};

Options g_options;
bool g_probed = false;

class Device {
 public:
  Device() { probe(); }

  const Status& status() const { return status_; }
  bool cublas_loaded() const { return cublas_.ok(); }
  RunStats stats() const { return stats_; }
  void set_profiling(bool on) { profiling_ = on; }

  void run(Storage storage, const std::vector<Node>& nodes, std::vector<HostPin>* pins, const RunHints& hints);
  void release_cache(std::vector<HostPin>* pins);
  void forget(const std::vector<HostRange>& ranges, std::vector<HostPin>* pins);

 private:
  struct Region {
    uintptr_t begin = 0, end = 0;  // host bytes
    bool touched = false, upload = false, written = false;
    bool rewritten = false;  // overlaps RunHints::rewritten: never served from or admitted to the cache
    bool resident = false;   // written and wholly inside RunHints::resident: kept in a resident entry
    // Timesteps and token ids stay float32 in every storage (t = 620 is 624 in bfloat16; float16
    // holds integers exactly only up to 2048): a region only ever read as one of those inputs.
    bool f32_input_only = true;
    bool used_as_f32_input = false;
    bool cached = false;           // device copy lives in the weight cache
    bool fresh = false;            // ... admitted by this run, so its copy is still to be made
    Storage storage = Storage::f32;
    char* dev = nullptr;
    size_t floats() const { return (end - begin) / sizeof(float); }
  };

  void probe();
  void init_stream();
  void ensure_workspace(size_t bytes);
  void upload(const Region& r);
  void download(const Region& r);
  // Frees an entry. A resident one is copied back to the host first unless `host_is_valid`.
  void evict(Storage s, std::map<uintptr_t, CacheEntry>::iterator it, std::vector<HostPin>* pins,
             bool host_is_valid = false);
  void evict_overlapping(uintptr_t begin, uintptr_t end, std::vector<HostPin>* pins, bool host_is_valid = false);
  // A new cache entry of storage s for region r (weight-like, or a resident output), its device
  // memory the region's; false when there is no room.
  bool admit(Region& r, Storage s, size_t dev_bytes, bool resident, std::vector<HostPin>* pins);
  // The resident entry of exactly [begin, end) in storage s, or end().
  std::map<uintptr_t, CacheEntry>::iterator resident_entry(Storage s, uintptr_t begin, uintptr_t end);
  float* materialize_staging_ = nullptr;  // kStagingFloats, for copying resident entries back
  bool make_room(size_t bytes, std::vector<HostPin>* pins);
  bool overlaps_in_use(uintptr_t begin, uintptr_t end);
  void compute(Storage storage, const Node& n, const std::vector<Region>& regions,
               const std::vector<int>& slot_region, size_t node_index);

  std::map<uintptr_t, CacheEntry>& cache(Storage s) { return cache_[static_cast<int>(s)]; }

  Status status_;
  int device_ = 0;
  size_t total_mem_ = 0;
  cudaStream_t stream_ = nullptr;
  CublasLt cublas_;
  bool cublas_tried_ = false;

  // One pinned GEMM per (N, K, storage): descriptors for an M = kGemmChunkRows launch and the
  // algorithm every launch of that (N, K, storage) uses. usable = false: no configuration without
  // a K split was offered, and such linears run the tiled fallback kernel (also row-independent).
  struct PinnedGemm {
    bool usable = false;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  std::map<std::tuple<size_t, size_t, int>, PinnedGemm> pinned_gemms_;
  char* gemm_scratch_ = nullptr;  // a padded chunk of x and of y (and W when misaligned)
  size_t gemm_scratch_bytes_ = 0;
  const PinnedGemm& pinned_gemm(Storage storage, size_t n, size_t k);
  char* ensure_gemm_scratch(size_t bytes);
  void linear(Storage storage, const void* x, const void* w, const void* bias, void* y, size_t m, size_t k,
              size_t n, size_t node_index);

  char* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  float* staging_ = nullptr;  // inside the workspace, kStagingFloats
  void* scratch_ = nullptr;   // inside the workspace: rope tables

  std::map<uintptr_t, CacheEntry> cache_[3];
  size_t cache_bytes_ = 0;    // device bytes held by all entries
  size_t cache_limit_ = 0;
  uint64_t run_counter_ = 0;
  std::set<std::pair<uintptr_t, uintptr_t>> seen_read_only_;
  std::vector<HostPin> pending_unpins_;
  cudaEvent_t events_[4] = {};
  bool profiling_ = false;
  std::vector<cudaEvent_t> node_events_;  // one per node while profiling, grown on demand
  RunStats stats_;
  size_t tensor_core_attention_ = 0;  // of the run in progress
};

void Device::probe() {
  g_probed = true;
  status_.built = true;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // No driver (cudaErrorInsufficientDriver / cudaErrorNoDevice): the normal case on CPU hosts.
    status_.devices = 0;
    status_.reason = err == cudaErrorInsufficientDriver
                         ? "no CUDA device: no NVIDIA driver, or one older than this build's CUDA runtime " +
                               std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10)
                         : std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later probes start clean
    return;
  }
  status_.devices = count;
  device_ = g_options.device;
  if (count == 0 || device_ < 0 || device_ >= count) {
    status_.reason = count == 0 ? "no CUDA device"
                                : "LONGSHOT_CUDA_DEVICE=" + std::to_string(device_) + " but only " +
                                      std::to_string(count) + " device(s)";
    return;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device_) != cudaSuccess) {
    status_.reason = "cudaGetDeviceProperties failed";
    return;
  }
  // The fat binary holds sm_80 and sm_90 code and compute_90 PTX: anything older than Ampere
  // has nothing it can run.
  if (prop.major < 8) {
    status_.reason = std::string(prop.name) + " has compute capability " + std::to_string(prop.major) + "." +
                     std::to_string(prop.minor) + "; the CUDA kernels need 8.0 or newer";
    return;
  }
  status_.usable = true;
  status_.device = prop.name;
  status_.index = device_;
  // 16 bytes as 8-4-4-4-12 hex digits, the form nvidia-smi and NVML report.
  char uuid[48];
  const unsigned char* u = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  std::snprintf(uuid, sizeof uuid, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3],
                u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
  status_.uuid = uuid;
  status_.sms = prop.multiProcessorCount;
  // cuBLASLt is opened here rather than at the first GEMM: its version belongs to the status (the
  // numerics fingerprint), since its heuristic picks the pinned algorithms.
  if (cudaSetDevice(device_) == cudaSuccess) {
    cublas_tried_ = true;
    cublas_.load();
  }
  cudaGetLastError();
  status_.gemm = cublas_.ok() ? "cublaslt-" + std::to_string(cublas_.get_version()) : "tiled";
  total_mem_ = prop.totalGlobalMem;
  cache_limit_ = total_mem_ / 10 * 4;
  if (g_options.cache_mb >= 0) cache_limit_ = static_cast<size_t>(g_options.cache_mb) << 20;
}

void Device::init_stream() {
  if (stream_) return;
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  for (cudaEvent_t& e : events_) check(cudaEventCreate(&e), "cudaEventCreate");
}

void Device::ensure_workspace(size_t bytes) {
  if (bytes <= workspace_bytes_) return;
  if (workspace_) {
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check(cudaFree(workspace_), "cudaFree");
    workspace_ = nullptr;
    workspace_bytes_ = 0;
  }
  // Grow by an eighth more than asked so graphs of slowly growing size do not reallocate each run.
  const size_t want = round_up(bytes + bytes / 8, 1u << 20);
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, want);
  if (err != cudaSuccess) {
    cudaGetLastError();
    err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      throw std::runtime_error("CUDA: out of device memory: the graph needs " + std::to_string(bytes >> 20) +
                               " MiB of buffers (" + cudaGetErrorString(err) + ")");
    }
    workspace_bytes_ = bytes;
  } else {
    workspace_bytes_ = want;
  }
  workspace_ = static_cast<char*>(p);
}

// Host float32 -> device storage; conversions go through the float32 staging area in chunks, in
// stream order, so each chunk's kernel has read the staging area before the next copy lands.
void Device::upload(const Region& r) {
  const float* host = reinterpret_cast<const float*>(r.begin);
  const size_t n = r.floats();
  if (r.storage == Storage::f32) {
    check(cudaMemcpyAsync(r.dev, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "upload");
    return;
  }
  const size_t es = storage_bytes(r.storage);
  for (size_t i = 0; i < n; i += kStagingFloats) {
    const size_t c = std::min(kStagingFloats, n - i);
    check(cudaMemcpyAsync(staging_, host + i, c * sizeof(float), cudaMemcpyHostToDevice, stream_), "upload");
    to_storage(r.storage, staging_, r.dev + i * es, c, stream_);
  }
  check(cudaGetLastError(), "upload conversion");
}

void Device::download(const Region& r) {
  float* host = reinterpret_cast<float*>(r.begin);
  const size_t n = r.floats();
  if (r.storage == Storage::f32) {
    check(cudaMemcpyAsync(host, r.dev, n * sizeof(float), cudaMemcpyDeviceToHost, stream_), "download");
    return;
  }
  const size_t es = storage_bytes(r.storage);
  for (size_t i = 0; i < n; i += kStagingFloats) {
    const size_t c = std::min(kStagingFloats, n - i);
    from_storage(r.storage, r.dev + i * es, staging_, c, stream_);
    check(cudaMemcpyAsync(host + i, staging_, c * sizeof(float), cudaMemcpyDeviceToHost, stream_), "download");
  }
  check(cudaGetLastError(), "download conversion");
}

void Device::evict(Storage s, std::map<uintptr_t, CacheEntry>::iterator it, std::vector<HostPin>* pins,
                   bool host_is_valid) {
  // Entries are only evicted between runs or before this run enqueues work, and the previous run
  // ended with a stream synchronisation, so nothing on the device still reads the copy.
  if (it->second.resident && !host_is_valid) {
    if (s != Storage::f32 && !materialize_staging_)
      check(cudaMalloc(reinterpret_cast<void**>(&materialize_staging_), kStagingFloats * sizeof(float)), "cudaMalloc");
    Region r;
    r.begin = it->first;
    r.end = it->first + it->second.bytes;
    r.dev = static_cast<char*>(it->second.dev);
    r.storage = s;
    float* saved = staging_;
    staging_ = materialize_staging_;
    download(r);
    staging_ = saved;
    check(cudaStreamSynchronize(stream_), "copying a resident output back");
  }
  cudaFree(it->second.dev);
  cache_bytes_ -= round_up(it->second.bytes / sizeof(float) * storage_bytes(s), kAlign);
  pins->push_back({reinterpret_cast<const void*>(it->first), it->second.bytes, false});
  cache(s).erase(it);
}

bool Device::admit(Region& r, Storage s, size_t dev_bytes, bool resident, std::vector<HostPin>* pins) {
  const size_t charge = round_up(dev_bytes, kAlign);
  void* p = nullptr;
  if (!make_room(charge, pins) || cudaMalloc(&p, dev_bytes) != cudaSuccess) {
    cudaGetLastError();  // a failed cudaMalloc leaves an error to clear
    return false;
  }
  CacheEntry e;
  e.bytes = r.end - r.begin;
  e.dev = p;
  e.last_use = run_counter_;
  e.resident = resident;
  cache(s).emplace(r.begin, e);
  cache_bytes_ += charge;
  pins->push_back({reinterpret_cast<const void*>(r.begin), e.bytes, true});
  r.dev = static_cast<char*>(p);
  r.cached = true;
  r.fresh = true;  // its copy is still to be made (uploaded if the run needs it)
  return true;
}

std::map<uintptr_t, CacheEntry>::iterator Device::resident_entry(Storage s, uintptr_t begin, uintptr_t end) {
  auto& m = cache(s);
  auto it = m.find(begin);
  return it != m.end() && it->second.resident && begin + it->second.bytes == end ? it : m.end();
}

void Device::evict_overlapping(uintptr_t begin, uintptr_t end, std::vector<HostPin>* pins, bool host_is_valid) {
  for (int si = 0; si < 3; ++si) {
    auto& m = cache_[si];
    auto it = m.lower_bound(begin);
    if (it != m.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second.bytes > begin) it = prev;
    }
    while (it != m.end() && it->first < end) {
      auto next = std::next(it);
      evict(static_cast<Storage>(si), it, pins, host_is_valid);
      it = next;
    }
  }
}

// Whether a cache entry overlapping [begin, end) already serves a region of the current run.
bool Device::overlaps_in_use(uintptr_t begin, uintptr_t end) {
  for (auto& m : cache_) {
    auto it = m.lower_bound(begin);
    if (it != m.begin() && std::prev(it)->first + std::prev(it)->second.bytes > begin) it = std::prev(it);
    for (; it != m.end() && it->first < end; ++it)
      if (it->second.last_use == run_counter_) return true;
  }
  return false;
}

// Frees least recently used entries not used by the current run until `bytes` more fit.
bool Device::make_room(size_t bytes, std::vector<HostPin>* pins) {
  if (bytes > cache_limit_) return false;
  while (cache_bytes_ + bytes > cache_limit_) {
    int best_s = -1;
    std::map<uintptr_t, CacheEntry>::iterator best;
    for (int si = 0; si < 3; ++si)
      for (auto it = cache_[si].begin(); it != cache_[si].end(); ++it)
        if (it->second.last_use != run_counter_ && (best_s < 0 || it->second.last_use < best->second.last_use)) {
          best_s = si;
          best = it;
        }
    if (best_s < 0) return false;
    evict(static_cast<Storage>(best_s), best, pins);
  }
  return true;
}

void Device::release_cache(std::vector<HostPin>* pins) {
  pins->insert(pins->end(), pending_unpins_.begin(), pending_unpins_.end());
  pending_unpins_.clear();
  if (!stream_) return;  // no run yet: nothing cached
  check(cudaSetDevice(device_), "cudaSetDevice");  // resident outputs are copied back on this thread
  cudaStreamSynchronize(stream_);
  for (int si = 0; si < 3; ++si)
    while (!cache_[si].empty()) evict(static_cast<Storage>(si), cache_[si].begin(), pins);
  seen_read_only_.clear();
}

void Device::forget(const std::vector<HostRange>& ranges, std::vector<HostPin>* pins) {
  pins->insert(pins->end(), pending_unpins_.begin(), pending_unpins_.end());
  pending_unpins_.clear();
  if (!stream_) return;
  for (const HostRange& r : ranges) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(r.data);
    evict_overlapping(b, b + r.bytes, pins, /*host_is_valid=*/true);  // nobody reads them again
  }
}

// Whether host bytes [begin, end) overlap any of `ranges`.
bool overlaps_any(uintptr_t begin, uintptr_t end, const std::vector<HostRange>& ranges) {
  for (const HostRange& r : ranges) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(r.data);
    if (r.bytes > 0 && b < end && b + r.bytes > begin) return true;
  }
  return false;
}

// Whether host bytes [begin, end) lie inside the union of `ranges`.
bool covered_by(uintptr_t begin, uintptr_t end, const std::vector<HostRange>& ranges) {
  std::vector<std::pair<uintptr_t, uintptr_t>> merged;
  for (const HostRange& r : ranges) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(r.data);
    if (r.bytes > 0 && b < end && b + r.bytes > begin) merged.emplace_back(b, b + r.bytes);
  }
  std::sort(merged.begin(), merged.end());
  uintptr_t reached = begin;  // [begin, reached) is covered
  for (const auto& m : merged) {
    if (m.first > reached) return false;
    reached = std::max(reached, m.second);
    if (reached >= end) return true;
  }
  return reached >= end;
}

void Device::run(Storage storage, const std::vector<Node>& nodes, std::vector<HostPin>* sink, const RunHints& hints) {
  if (!status_.usable) throw std::runtime_error("CUDA backend unavailable: " + status_.reason);
  // Without a sink, cache changes cannot reach the addon: nothing is admitted, and unpins wait in
  // pending_unpins_ for the next run (or release) that has one.
  const bool can_admit = sink != nullptr;
  std::vector<HostPin>* pins = sink ? sink : &pending_unpins_;
  if (sink) {
    sink->insert(sink->end(), pending_unpins_.begin(), pending_unpins_.end());
    pending_unpins_.clear();
  }
  // The runtime's current device is per host thread, and runs come from libuv's pool.
  check(cudaSetDevice(device_), "cudaSetDevice");
  init_stream();
  if (!cublas_tried_) {
    cublas_tried_ = true;
    cublas_.load();
  }
  ++run_counter_;

  // 1. Host ranges of every tensor, merged into disjoint regions.
  struct Span {
    uintptr_t begin, end;
  };
  std::vector<Span> spans;
  for (const Node& n : nodes) {
    for (int s = 0; s < n.n_inputs; ++s)
      if (n.inputs[s].present && n.inputs[s].size > 0)
        spans.push_back({reinterpret_cast<uintptr_t>(n.inputs[s].data),
                         reinterpret_cast<uintptr_t>(n.inputs[s].data + n.inputs[s].size)});
    if (n.output.size > 0)
      spans.push_back({reinterpret_cast<uintptr_t>(n.output.data),
                       reinterpret_cast<uintptr_t>(n.output.data + n.output.size)});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  std::vector<Region> regions;
  for (const Span& s : spans) {
    if (!regions.empty() && s.begin < regions.back().end) {
      regions.back().end = std::max(regions.back().end, s.end);
    } else {
      Region r;
      r.begin = s.begin;
      r.end = s.end;
      regions.push_back(r);
    }
  }
  auto region_of = [&](const Tensor& t) -> int {
    if (!t.present || t.size == 0) return -1;
    const uintptr_t p = reinterpret_cast<uintptr_t>(t.data);
    auto it = std::upper_bound(regions.begin(), regions.end(), p,
                               [](uintptr_t v, const Region& r) { return v < r.begin; });
    return static_cast<int>(std::prev(it) - regions.begin());
  };

  // 2. Per node slot: its region; what must be uploaded, what is written, what stays float32.
  std::vector<int> slot_region(nodes.size() * (kMaxInputs + 1), -1);
  size_t rope_scratch = 0;
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    for (int s = 0; s < n.n_inputs; ++s) {
      const int ri = region_of(n.inputs[s]);
      slot_region[i * (kMaxInputs + 1) + s] = ri;
      if (ri < 0) continue;
      Region& r = regions[ri];
      if (!r.touched) r.upload = true;
      r.touched = true;
      if ((n.op == Op::timestep_embedding && s == 0) || (n.op == Op::embedding && s == 1))
        r.used_as_f32_input = true;
      else
        r.f32_input_only = false;
    }
    const int ro = region_of(n.output);
    slot_region[i * (kMaxInputs + 1) + kMaxInputs] = ro;
    if (ro >= 0) {
      Region& r = regions[ro];
      if (!r.touched) {
        // Nothing to upload only when this first write covers the whole region.
        const uintptr_t b = reinterpret_cast<uintptr_t>(n.output.data);
        r.upload = !(b == r.begin && b + output_elements(n) * sizeof(float) == r.end);
      }
      r.touched = true;
      r.written = true;
      r.f32_input_only = false;
    }
    if (n.op == Op::rope3d) {
      const RopeArgs a{n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5), n.p(6), n.params[7]};
      rope_scratch = std::max(rope_scratch, rope3d_scratch_bytes(a));
    }
  }

  // 3. Storage per region, cache hits and admissions, workspace layout.
  for (Region& r : regions) {
    // A range also used by another op keeps the common storage so every kernel sees one type per
    // region (see Region::f32_input_only).
    r.storage = (r.used_as_f32_input && r.f32_input_only) ? Storage::f32 : storage;
    r.rewritten = overlaps_any(r.begin, r.end, hints.rewritten);
    r.resident = r.written && !r.rewritten && r.storage == storage && cache_limit_ > 0 &&
                 !hints.resident.empty() && covered_by(r.begin, r.end, hints.resident);
    if (r.rewritten) {
      evict_overlapping(r.begin, r.end, pins, /*host_is_valid=*/true);
    } else if (r.resident && resident_entry(storage, r.begin, r.end) != cache(storage).end()) {
      // Written in place into its resident entry; anything else overlapping goes.
      auto keep = resident_entry(storage, r.begin, r.end);
      CacheEntry saved = keep->second;
      cache(storage).erase(keep);
      evict_overlapping(r.begin, r.end, pins);
      cache(storage).emplace(r.begin, saved);
    } else if (r.written) {
      evict_overlapping(r.begin, r.end, pins);
    } else {
      // A read of part of a resident output (or of more than it) needs the host copy.
      for (int si = 0; si < 3; ++si) {
        auto& m = cache_[si];
        auto it = m.lower_bound(r.begin);
        if (it != m.begin() && std::prev(it)->first + std::prev(it)->second.bytes > r.begin) it = std::prev(it);
        while (it != m.end() && it->first < r.end) {
          auto next = std::next(it);
          const bool covers = it->first <= r.begin && it->first + it->second.bytes >= r.end && si == static_cast<int>(r.storage);
          if (it->second.resident && !covers) evict(static_cast<Storage>(si), it, pins);
          it = next;
        }
      }
    }
  }
  size_t offset = 0;
  bool any_conversion = false;
  std::vector<size_t> offsets(regions.size(), SIZE_MAX);
  for (size_t ri = 0; ri < regions.size(); ++ri) {
    Region& r = regions[ri];
    const size_t dev_bytes = r.floats() * storage_bytes(r.storage);
    if (r.resident) {
      auto it = resident_entry(storage, r.begin, r.end);
      if (it != cache(storage).end()) {
        it->second.last_use = run_counter_;
        r.dev = static_cast<char*>(it->second.dev);
        r.cached = true;  // its contents are valid: nothing to upload, even if partly written
        continue;
      }
      if (admit(r, storage, dev_bytes, /*resident=*/true, pins)) {  // the host copy is still valid
        if (r.storage != Storage::f32) any_conversion = true;
        continue;
      }
      r.resident = false;  // no room: an ordinary written region, copied back
    }
    if (!r.written && !r.rewritten && r.storage == storage && cache_limit_ > 0) {
      auto& m = cache(storage);
      auto it = m.upper_bound(r.begin);
      if (it != m.begin()) {
        --it;
        if (it->first <= r.begin && it->first + it->second.bytes >= r.end) {
          it->second.last_use = run_counter_;
          r.dev = static_cast<char*>(it->second.dev) + (r.begin - it->first) / sizeof(float) * storage_bytes(storage);
          r.cached = true;
          continue;
        }
      }
      const auto key = std::make_pair(r.begin, r.end);
      if (can_admit && seen_read_only_.count(key) && !overlaps_in_use(r.begin, r.end)) {
        // Seen read-only before: likely a weight. A range only partly cached is re-cached whole.
        evict_overlapping(r.begin, r.end, pins);
        if (admit(r, storage, dev_bytes, /*resident=*/false, pins)) {
          seen_read_only_.erase(key);
          if (r.storage != Storage::f32) any_conversion = true;
          continue;  // uploaded below with the other regions that need it
        }
      } else if (can_admit) {
        if (seen_read_only_.size() >= kSeenLimit) seen_read_only_.clear();
        seen_read_only_.insert(key);
      }
    }
    offsets[ri] = offset;
    offset += round_up(dev_bytes, kAlign);
    if (r.storage != Storage::f32) any_conversion = true;
  }
  const size_t staging_at = offset;
  if (any_conversion) offset += kStagingFloats * sizeof(float);
  const size_t scratch_at = offset;
  offset += round_up(rope_scratch, kAlign);
  ensure_workspace(std::max<size_t>(offset, kAlign));
  staging_ = any_conversion ? reinterpret_cast<float*>(workspace_ + staging_at) : nullptr;
  scratch_ = workspace_ + scratch_at;
  for (size_t ri = 0; ri < regions.size(); ++ri)
    if (offsets[ri] != SIZE_MAX) regions[ri].dev = workspace_ + offsets[ri];

  // 4. Upload, run, download, wait. On failure, wait for the stream before returning so that no
  // queued copy writes into host memory the caller may release.
  try {
    RunStats st;
    check(cudaEventRecord(events_[0], stream_), "cudaEventRecord");
    for (const Region& r : regions)
      if (r.upload && (!r.cached || r.fresh)) {
        upload(r);
        st.upload_bytes += static_cast<double>(r.end - r.begin);
      }
    check(cudaEventRecord(events_[1], stream_), "cudaEventRecord");
    const bool profiling = profiling_;
    while (profiling && node_events_.size() < nodes.size()) {
      cudaEvent_t e;
      check(cudaEventCreate(&e), "cudaEventCreate");
      node_events_.push_back(e);
    }
    tensor_core_attention_ = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      compute(storage, nodes[i], regions, slot_region, i);
      if (profiling) check(cudaEventRecord(node_events_[i], stream_), "cudaEventRecord");
    }
    check(cudaEventRecord(events_[2], stream_), "cudaEventRecord");
    for (const Region& r : regions)
      if (r.written && !r.resident && !(hints.discard.size() > 0 && covered_by(r.begin, r.end, hints.discard))) {
        download(r);
        st.download_bytes += static_cast<double>(r.end - r.begin);
      }
    check(cudaEventRecord(events_[3], stream_), "cudaEventRecord");
    check(cudaStreamSynchronize(stream_), "graph run");
    float ms[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) check(cudaEventElapsedTime(&ms[i], events_[i], events_[i + 1]), "cudaEventElapsedTime");
    st.upload_ms = ms[0];
    st.compute_ms = ms[1];
    st.download_ms = ms[2];
    if (profiling) {
      st.node_ms.resize(nodes.size());
      cudaEvent_t prev = events_[1];
      for (size_t i = 0; i < nodes.size(); ++i) {
        float node = 0;
        check(cudaEventElapsedTime(&node, prev, node_events_[i]), "cudaEventElapsedTime");
        st.node_ms[i] = node;
        prev = node_events_[i];
      }
    }
    st.cached_bytes = static_cast<double>(cache_bytes_);
    st.tensor_core_attention = tensor_core_attention_;
    stats_ = st;
  } catch (...) {
    cudaStreamSynchronize(stream_);
    cudaGetLastError();
    // A fresh cache entry whose upload may not have completed must not serve later runs.
    for (const Region& r : regions)
      if (r.fresh) evict_overlapping(r.begin, r.end, pins);
    throw;
  }
}

const Device::PinnedGemm& Device::pinned_gemm(Storage storage, size_t n, size_t k) {
  const auto key = std::make_tuple(n, k, static_cast<int>(storage));
  auto found = pinned_gemms_.find(key);
  if (found != pinned_gemms_.end()) return found->second;
  PinnedGemm& g = pinned_gemms_[key];
  const cudaDataType_t t = cuda_type(storage);
  // Row-major y[m, n] = x[m, k] W[n, k]^T is column-major y^T[n, m] = W^T' x^T' with W read
  // transposed: A = W (op T, stored k x n, ld k), B = x (op N, stored k x m, ld k), C = D = y
  // (n x m, ld n). Descriptors and layouts live as long as the process, like the handle.
  const int op_t = kCublasOpT, op_n = kCublasOpN;
  if (cublas_.desc_create(&g.desc, kCublasCompute32F, CUDA_R_32F) != 0 ||
      cublas_.desc_set(g.desc, kLtDescTransA, &op_t, sizeof op_t) != 0 ||
      cublas_.desc_set(g.desc, kLtDescTransB, &op_n, sizeof op_n) != 0 ||
      cublas_.layout_create(&g.w, t, k, n, static_cast<int64_t>(k)) != 0 ||
      cublas_.layout_create(&g.x, t, k, kGemmChunkRows, static_cast<int64_t>(k)) != 0 ||
      cublas_.layout_create(&g.y, t, n, kGemmChunkRows, static_cast<int64_t>(n)) != 0) {
    pinned_gemms_.erase(key);  // not pinned: the next call tries again rather than falling back
    throw std::runtime_error("cuBLASLt: cannot describe a " + std::to_string(n) + " x " + std::to_string(k) + " GEMM");
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if (cublas_.pref_create(&pref) != 0) {
    pinned_gemms_.erase(key);
    throw std::runtime_error("cuBLASLt: cublasLtMatmulPreferenceCreate failed");
  }
  const uint64_t no_workspace = 0;
  const uint32_t no_reduction = kLtReductionNone;
  const uint32_t align = kGemmAlign;
  bool set = cublas_.pref_set(pref, kLtPrefMaxWorkspace, &no_workspace, sizeof no_workspace) == 0 &&
             cublas_.pref_set(pref, kLtPrefReductionMask, &no_reduction, sizeof no_reduction) == 0;
  for (int i = 0; i < 4; ++i) set = set && cublas_.pref_set(pref, kLtPrefMinAlignA + i, &align, sizeof align) == 0;
  cublasLtMatmulHeuristicResult_t results[kGemmCandidates] = {};
  int returned = 0;
  if (set)
    cublas_.heuristic(cublas_.handle, g.desc, g.w, g.x, g.y, g.y, pref, kGemmCandidates, results, &returned);
  cublas_.pref_destroy(pref);
  for (int i = 0; i < returned && !g.usable; ++i) {
    uint32_t split_k = 0, reduction = 1;
    size_t written = 0;
    if (results[i].state != 0 || results[i].workspaceSize != 0) continue;
    if (cublas_.algo_get(&results[i].algo, kLtAlgoSplitK, &split_k, sizeof split_k, &written) != 0) continue;
    if (cublas_.algo_get(&results[i].algo, kLtAlgoReduction, &reduction, sizeof reduction, &written) != 0) continue;
    if (split_k > 1 || reduction != kLtReductionNone) continue;
    g.algo = results[i].algo;
    g.usable = true;
  }
  return g;
}

char* Device::ensure_gemm_scratch(size_t bytes) {
  if (bytes <= gemm_scratch_bytes_) return gemm_scratch_;
  if (gemm_scratch_) {
    check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    check(cudaFree(gemm_scratch_), "cudaFree");
    gemm_scratch_ = nullptr;
    gemm_scratch_bytes_ = 0;
  }
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "GEMM scratch");
  gemm_scratch_ = static_cast<char*>(p);
  gemm_scratch_bytes_ = bytes;
  return gemm_scratch_;
}

// y = x W^T + bias through the pinned GEMM of (N, K, storage), in chunks of kGemmChunkRows rows
// (see "Pinned GEMMs" above). The bias is written into y first and accumulated with beta = 1, so
// the output is rounded once.
void Device::linear(Storage storage, const void* x, const void* w, const void* bias, void* y, size_t m, size_t k,
                    size_t n, size_t node_index) {
  if (m == 0 || n == 0) return;
  cudaStream_t st = stream_;
  if (k == 0) {
    fill_rows(storage, bias, y, m, n, st);
    return;
  }
  const PinnedGemm* g = (cublas_.ok() && k <= INT_MAX && n <= INT_MAX) ? &pinned_gemm(storage, n, k) : nullptr;
  if (!g || !g->usable) {
    linear_fallback(storage, x, w, bias, y, m, k, n, st);
    return;
  }
  const size_t es = storage_bytes(storage);
  const size_t chunk_x = round_up(kGemmChunkRows * k * es, kAlign), chunk_y = round_up(kGemmChunkRows * n * es, kAlign);
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % kGemmAlign == 0; };
  const bool w_aligned = aligned(w);
  char* scratch = ensure_gemm_scratch(chunk_x + chunk_y + (w_aligned ? 0 : n * k * es));
  char* xs = scratch;
  char* ys = scratch + chunk_x;
  const void* wp = w;
  if (!w_aligned) {
    check(cudaMemcpyAsync(ys + chunk_y, w, n * k * es, cudaMemcpyDeviceToDevice, st), "GEMM weight staging");
    wp = ys + chunk_y;
  }
  if (bias) fill_rows(storage, bias, y, m, n, st);
  const float one = 1.0f, zero = 0.0f;
  const float* beta = bias ? &one : &zero;
  for (size_t r0 = 0; r0 < m; r0 += kGemmChunkRows) {
    const size_t rows = std::min(kGemmChunkRows, m - r0);
    const char* xc = static_cast<const char*>(x) + r0 * k * es;
    char* yc = static_cast<char*>(y) + r0 * n * es;
    const bool direct = rows == kGemmChunkRows && aligned(xc) && aligned(yc);
    const void* xa = xc;
    void* ya = yc;
    if (!direct) {
      // A padded chunk: the real rows, then zeros (their outputs are computed and dropped).
      check(cudaMemcpyAsync(xs, xc, rows * k * es, cudaMemcpyDeviceToDevice, st), "GEMM chunk staging");
      if (rows < kGemmChunkRows)
        check(cudaMemsetAsync(xs + rows * k * es, 0, (kGemmChunkRows - rows) * k * es, st), "GEMM chunk padding");
      if (bias) check(cudaMemcpyAsync(ys, yc, rows * n * es, cudaMemcpyDeviceToDevice, st), "GEMM chunk staging");
      xa = xs;
      ya = ys;
    }
    const int rc = cublas_.matmul(cublas_.handle, g->desc, &one, wp, g->w, xa, g->x, beta, ya, g->y, ya, g->y,
                                  &g->algo, nullptr, 0, st);
    if (rc != 0)
      throw std::runtime_error("node " + std::to_string(node_index) + " (linear): cublasLtMatmul failed with status " +
                               std::to_string(rc));
    if (!direct) check(cudaMemcpyAsync(yc, ys, rows * n * es, cudaMemcpyDeviceToDevice, st), "GEMM chunk result");
  }
}

void Device::compute(Storage storage, const Node& n, const std::vector<Region>& regions,
                     const std::vector<int>& slot_region, size_t node_index) {
  const int* sr = &slot_region[node_index * (kMaxInputs + 1)];
  // Device address of a slot: the same element offset in its region's buffer.
  auto dev = [&](const Tensor& t, int ri) -> char* {
    if (ri < 0) return nullptr;
    const Region& r = regions[ri];
    return r.dev + (reinterpret_cast<uintptr_t>(t.data) - r.begin) / sizeof(float) * storage_bytes(r.storage);
  };
  const void* in[kMaxInputs];
  for (int s = 0; s < kMaxInputs; ++s) in[s] = s < n.n_inputs ? dev(n.inputs[s], sr[s]) : nullptr;
  void* out = dev(n.output, sr[kMaxInputs]);
  cudaStream_t st = stream_;
  switch (n.op) {
    case Op::linear: linear(storage, in[0], in[1], in[2], out, n.p(0), n.p(1), n.p(2), node_index); break;
    case Op::layer_norm: layer_norm(storage, in[0], in[1], in[2], out, n.p(0), n.p(1), n.pf(2), st); break;
    case Op::rms_norm: rms_norm(storage, in[0], in[1], out, n.p(0), n.p(1), n.pf(2), st); break;
    case Op::modulate: modulate(storage, in[0], in[1], in[2], out, n.p(0), n.p(1), st); break;
    case Op::gated_add: gated_add(storage, in[0], in[1], in[2], out, n.p(0), n.p(1), st); break;
    case Op::gelu_tanh: gelu_tanh(storage, in[0], out, n.p(0), st); break;
    case Op::silu: silu(storage, in[0], out, n.p(0), st); break;
    case Op::rope3d: {
      const RopeArgs a{n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5), n.p(6), n.params[7]};
      rope3d(storage, in[0], out, a, scratch_, st);
      break;
    }
    case Op::attention: {
      const AttentionShape a{n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5)};
      if (attention(storage, in[0], in[1], in[2], in[3], in[4], nullptr,
                    1.0f / std::sqrt(static_cast<float>(n.p(5))), out, a, st))
        ++tensor_core_attention_;
      break;
    }
    case Op::biased_attention: {
      const AttentionShape a{n.p(0), n.p(1), n.p(2), 0, n.p(3), n.p(4)};
      if (attention(storage, in[0], in[1], in[2], nullptr, nullptr, in[3], n.pf(5), out, a, st)) ++tensor_core_attention_;
      break;
    }
    case Op::mul: mul(storage, in[0], in[1], out, n.p(0), st); break;
    case Op::embedding: {
      const bool f32 = sr[1] >= 0 && regions[sr[1]].storage == Storage::f32;
      embedding(storage, in[0], in[1], f32, out, n.p(0), n.p(2), st);
      break;
    }
    case Op::relative_position_bias:
      relative_position_bias(storage, in[0], out, n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), st);
      break;
    case Op::patchify:
      patchify(storage, in[0], in[1], out, n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5), st);
      break;
    case Op::unpatchify: unpatchify(storage, in[0], out, n.p(0), n.p(1), n.p(2), n.p(3), st); break;
    case Op::timestep_embedding: {
      const bool f32 = sr[0] >= 0 && regions[sr[0]].storage == Storage::f32;
      timestep_embedding(storage, in[0], f32, out, n.p(0), n.p(1), st);
      break;
    }
    case Op::cfg_combine: cfg_combine(storage, in[0], out, n.p(0), n.pf(1), st); break;
    case Op::copy_rows: copy_rows(storage, in[0], out, n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), st); break;
    case Op::axpy: axpy(storage, in[0], in[1], out, n.p(0), n.pf(1), st); break;
    case Op::causal_conv3d: {
      const ConvShape a{n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5), n.p(6), n.p(7), n.p(8)};
      causal_conv3d(storage, in[0], in[1], in[2], in[3], out, a, st);
      break;
    }
    case Op::channel_rms_norm: channel_rms_norm(storage, in[0], in[1], out, n.p(0), n.p(1), n.pf(2), st); break;
    case Op::upsample_nearest2x: upsample_nearest2x(storage, in[0], out, n.p(0), n.p(1), n.p(2), n.p(3), st); break;
    case Op::transpose: transpose(storage, in[0], out, n.p(0), n.p(1), n.p(2), n.p(3), st); break;
    case Op::update_frame_cache: update_frame_cache(storage, in[0], in[1], out, n.p(0), n.p(1), n.p(2), st); break;
    case Op::clamp: clamp(storage, in[0], out, n.p(0), n.pf(1), n.pf(2), st); break;
    case Op::weighted_sum: {
      const void* terms[kMaxInputs];
      float coefs[kMaxInputs];
      const int count = weighted_sum_terms(n, in, terms, coefs);
      weighted_sum(storage, terms, coefs, count, out, n.p(0), st);
      break;
    }
    case Op::count: throw std::logic_error("unvalidated node");
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error("node " + std::to_string(node_index) + " (" + op_info(n.op).name +
                             "): CUDA launch failed: " + cudaGetErrorString(err));
}

Device& device() {
  static Device d;
  return d;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(Storage storage) : storage_(storage), name_(std::string("cuda:") + storage_name(storage)) {}
  const char* name() const override { return name_.c_str(); }
  bool supports_op(const Node& node, std::string* why) const override { return supports(node, why); }
  // The per-node interface runs a one-node graph. It has no pin sink, so it admits nothing to the
  // weight cache; evictions it causes are reported by the next run that has one.
  void compute(const Node& node) override { device().run(storage_, std::vector<Node>{node}, nullptr, RunHints{}); }
  void run_graph(const std::vector<Node>& nodes, std::vector<HostPin>* pins, const RunHints& hints) override {
    device().run(storage_, nodes, pins, hints);
  }

 private:
  Storage storage_;
  std::string name_;
};

}  // namespace

bool configure(const Options& options) {
  if (g_probed) return false;
  g_options = options;
  return true;
}

const Status& status() { return device().status(); }

void register_backends() {
  if (!status().usable) return;
  for (Storage s : {Storage::f32, Storage::bf16, Storage::f16}) register_backend(std::make_unique<CudaBackend>(s));
}

void release_device_cache(std::vector<HostPin>* pins) {
  if (status().usable) device().release_cache(pins);
}

void forget_device_copies(const std::vector<HostRange>& ranges, std::vector<HostPin>* pins) {
  if (status().usable) device().forget(ranges, pins);
}

bool cublas_loaded() { return status().usable && device().cublas_loaded(); }

RunStats last_run_stats() { return status().usable ? device().stats() : RunStats{}; }

void set_profiling(bool on) {
  if (status().usable) device().set_profiling(on);
}

}  // namespace cuda
}  // namespace ls
