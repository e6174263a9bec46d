// The device side of the data plane's CUDA paths (dataplane.h: path 2, NCCL send/recv; path 3,
// CUDA IPC handles), implemented by cuda_link.cc in CUDA builds and by cuda_none.cc in CPU-only
// ones, so the data plane compiles the same way in both. Every call returns "" on success or why
// it failed; none throws. Buffers may be device memory or host memory (CUDA's unified addressing
// tells them apart): host buffers are staged through device memory.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "nccl_abi.h"

namespace ls::cuda::link {

constexpr size_t kIpcHandleBytes = 64;  // sizeof(cudaIpcMemHandle_t)
using IpcHandle = std::array<uint8_t, kIpcHandleBytes>;

// NCCL moves a tensor in messages of at most this many bytes (both ends must agree: a send and
// its receive match by size), each staged through device memory when the buffer is on the host.
constexpr size_t kNcclMessageBytes = 64u << 20;

// "" when `device` exists and this build can use it, else why not ("no CUDA device: ...").
std::string usable(int device);

// The IPC handle of the device allocation that starts at `base` (cudaMalloc'd on `device`).
std::string ipc_export(int device, const void* base, IpcHandle* out);
// Copies `n` bytes at `offset` of the allocation `handle` names (another process's, on the same
// GPU) into `dst`, device to device (or device to host when `dst` is host memory). The handle
// stays open for later copies from the same allocation (the 16 most recent allocations).
std::string ipc_copy(int device, const IpcHandle& handle, uint64_t offset, void* dst, size_t n);

// Rank 0 (sender) or 1 (receiver) of a two-rank NCCL communicator on one device.
class NcclPeer {
 public:
  virtual ~NcclPeer() = default;
  // Each waits for its transfer; a transfer that makes no progress for `stall_ms` aborts the
  // communicator (the peer must join a new one).
  virtual std::string send(const void* src, size_t n) = 0;
  virtual std::string recv(void* dst, size_t n) = 0;
};
// Joins the communicator `id` names as `rank`, waiting until both ranks joined or `stall_ms`
// passed (then it gives up: "the NCCL peer did not join within ... ms"); nullptr and `*why`
// when it cannot.
std::unique_ptr<NcclPeer> nccl_join(const nccl::Api* api, const nccl::UniqueId& id, int rank, int device, int stall_ms, std::string* why);

}  // namespace ls::cuda::link
