// device_link.h on the CUDA runtime (linked statically, as the backend's) and NCCL (opened at run
// time, nccl_loader.h). Compiled only in CUDA builds; cuda_none.cc stands in otherwise.
#include "device_link.h"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <thread>

namespace ls::cuda::link {

namespace {

std::string cuda_error(cudaError_t err, const char* what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  return std::string(what) + ": " + cudaGetErrorString(err);
}

bool on_device(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged;
}

// Peer allocations opened by handle, most recently used first. Opening a handle costs
// milliseconds, and a sender sends from the same arena tensor after tensor; a handle names one
// allocation for its lifetime (a new allocation gets a new handle), and a mapping keeps the memory
// alive until it is closed. The 16 most recent stay open.
class OpenHandles {
 public:
  // The mapping of `h` on `device`, opening it when needed; nullptr and `why` on failure.
  void* open(int device, const cudaIpcMemHandle_t& h, std::string* why) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = open_.begin(); it != open_.end(); ++it)
      if (it->device == device && std::memcmp(&it->handle, &h, sizeof h) == 0) {
        open_.splice(open_.begin(), open_, it);
        return open_.front().peer;
      }
    void* peer = nullptr;
    const cudaError_t err = cudaIpcOpenMemHandle(&peer, h, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
      *why = cuda_error(err, "cudaIpcOpenMemHandle");
      return nullptr;
    }
    open_.push_front({device, h, peer});
    if (open_.size() > kKept) {
      cudaSetDevice(open_.back().device);
      cudaIpcCloseMemHandle(open_.back().peer);
      open_.pop_back();
      cudaSetDevice(device);
    }
    return peer;
  }

 private:
  static constexpr size_t kKept = 16;
  struct Entry {
    int device;
    cudaIpcMemHandle_t handle;
    void* peer;
  };
  std::mutex mu_;
  std::list<Entry> open_;
};

OpenHandles& open_handles() {
  static OpenHandles* handles = new OpenHandles();  // never destroyed: mappings close at exit
  return *handles;
}

}  // namespace

std::string usable(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) return "no CUDA device: " + cuda_error(err, "cudaGetDeviceCount");
  if (device < 0 || device >= count) return "no CUDA device " + std::to_string(device) + " (" + std::to_string(count) + " visible)";
  return "";
}

std::string ipc_export(int device, const void* base, IpcHandle* out) {
  std::string why = usable(device);
  if (!why.empty()) return why;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cuda_error(err, "cudaSetDevice");
  if (!on_device(base)) return "CUDA IPC needs a device buffer (this one is host memory)";
  cudaIpcMemHandle_t h;
  err = cudaIpcGetMemHandle(&h, const_cast<void*>(base));
  if (err != cudaSuccess) return cuda_error(err, "cudaIpcGetMemHandle");
  static_assert(sizeof h == kIpcHandleBytes, "cudaIpcMemHandle_t is 64 bytes");
  std::memcpy(out->data(), &h, kIpcHandleBytes);
  return "";
}

std::string ipc_copy(int device, const IpcHandle& handle, uint64_t offset, void* dst, size_t n) {
  std::string why = usable(device);
  if (!why.empty()) return why;
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) return cuda_error(err, "cudaSetDevice");
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.data(), kIpcHandleBytes);
  void* peer = open_handles().open(device, h, &why);
  if (!peer) return why;
  err = cudaMemcpy(dst, static_cast<const uint8_t*>(peer) + offset, n, cudaMemcpyDefault);
  return err == cudaSuccess ? "" : cuda_error(err, "cudaMemcpy (CUDA IPC)");
}

namespace {

class Peer final : public NcclPeer {
 public:
  Peer(const nccl::Api* api, int rank, int device, int stall_ms) : api_(api), rank_(rank), device_(device), stall_ms_(stall_ms) {}
  ~Peer() override {
    // Every transfer has completed (move() waits for each), so aborting frees the communicator
    // without the finalize round a non-blocking one would need for ncclCommDestroy.
    if (comm_) api_->CommAbort(comm_);
    if (stage_) cudaFree(stage_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  // Joins without blocking (ncclConfig_t.blocking = 0) and polls until the communicator is up, so
  // a peer that never joins costs `stall_ms_`, not this thread for good: then it aborts.
  std::string init(const nccl::UniqueId& id) {
    cudaError_t err = cudaSetDevice(device_);
    if (err != cudaSuccess) return cuda_error(err, "cudaSetDevice");
    err = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    if (err != cudaSuccess) return cuda_error(err, "cudaStreamCreate");
    nccl::ConfigV21400 config;
    nccl::Result r = api_->CommInitRankConfig(&comm_, 2, id, rank_, &config);
    const auto t0 = std::chrono::steady_clock::now();
    while (r == nccl::kInProgress) {
      // nccl_join then drops this peer, whose destructor aborts the half-made communicator.
      if (std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(stall_ms_)) return "the NCCL peer did not join within " + std::to_string(stall_ms_) + " ms";
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      if (api_->CommGetAsyncError(comm_, &r) != nccl::kSuccess) r = nccl::kInternalError;
    }
    return r == nccl::kSuccess ? "" : nccl_error(r, "ncclCommInitRankConfig");
  }

  std::string send(const void* src, size_t n) override { return move(const_cast<void*>(src), n, true); }
  std::string recv(void* dst, size_t n) override { return move(dst, n, false); }

 private:
  std::string nccl_error(nccl::Result r, const char* what) { return std::string(what) + ": " + api_->GetErrorString(r); }

  // Waits until the communicator has issued every operation (it no longer answers ncclInProgress:
  // on a non-blocking communicator an operation may not be on the stream before) and, with
  // `stream_done`, until the stream has run them, watching the asynchronous errors and the stall
  // time.
  std::string wait(bool stream_done) {
    auto t0 = std::chrono::steady_clock::now();
    for (;;) {
      nccl::Result async = nccl::kSuccess;
      if (api_->CommGetAsyncError(comm_, &async) != nccl::kSuccess) async = nccl::kInternalError;
      if (async != nccl::kSuccess && async != nccl::kInProgress) return failed_ = true, nccl_error(async, "NCCL transfer");
      if (async == nccl::kSuccess) {
        if (!stream_done) return "";
        cudaError_t q = cudaStreamQuery(stream_);
        if (q == cudaSuccess) return "";
        if (q != cudaErrorNotReady) return failed_ = true, cuda_error(q, "NCCL transfer");
      }
      if (std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(stall_ms_))
        return failed_ = true, "NCCL transfer made no progress for " + std::to_string(stall_ms_) + " ms";
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  std::string move(void* p, size_t n, bool sending) {
    if (failed_) return "the NCCL communicator failed earlier";
    cudaError_t err = cudaSetDevice(device_);
    if (err != cudaSuccess) return cuda_error(err, "cudaSetDevice");
    const bool device = on_device(p);
    if (!device && !stage_) {
      err = cudaMalloc(&stage_, kNcclMessageBytes);
      if (err != cudaSuccess) return stage_ = nullptr, cuda_error(err, "cudaMalloc (NCCL staging)");
    }
    const int peer = 1 - rank_;
    for (size_t off = 0; off < n; off += kNcclMessageBytes) {
      const size_t len = std::min(kNcclMessageBytes, n - off);
      uint8_t* at = static_cast<uint8_t*>(p) + off;
      void* buf = device ? at : stage_;
      if (sending && !device) {
        err = cudaMemcpyAsync(buf, at, len, cudaMemcpyHostToDevice, stream_);
        if (err != cudaSuccess) return cuda_error(err, "cudaMemcpyAsync (NCCL staging)");
      }
      nccl::Result r = sending ? api_->Send(buf, len, nccl::kUint8, peer, comm_, reinterpret_cast<nccl::Stream>(stream_))
                               : api_->Recv(buf, len, nccl::kUint8, peer, comm_, reinterpret_cast<nccl::Stream>(stream_));
      if (r != nccl::kSuccess && r != nccl::kInProgress) return failed_ = true, nccl_error(r, sending ? "ncclSend" : "ncclRecv");
      // A non-blocking communicator may answer ncclInProgress before its kernel is on the stream:
      // the staging copy below must come after it.
      if (r == nccl::kInProgress) {
        std::string why = wait(false);
        if (!why.empty()) return why;
      }
      if (!sending && !device) {
        err = cudaMemcpyAsync(at, buf, len, cudaMemcpyDeviceToHost, stream_);
        if (err != cudaSuccess) return cuda_error(err, "cudaMemcpyAsync (NCCL staging)");
      }
      std::string why = wait(true);
      if (!why.empty()) return why;
    }
    return "";
  }

  const nccl::Api* api_;
  int rank_, device_, stall_ms_;
  nccl::Comm comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* stage_ = nullptr;
  bool failed_ = false;
};

}  // namespace

std::unique_ptr<NcclPeer> nccl_join(const nccl::Api* api, const nccl::UniqueId& id, int rank, int device, int stall_ms, std::string* why) {
  *why = usable(device);
  if (!why->empty()) return nullptr;
  auto p = std::make_unique<Peer>(api, rank, device, stall_ms);
  *why = p->init(id);
  if (!why->empty()) return nullptr;
  return p;
}

}  // namespace ls::cuda::link
