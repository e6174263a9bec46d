// The subset of NCCL's C ABI the data plane uses, declared here (not included from nccl.h) so the
// addon builds without NCCL and opens libnccl.so.2 at run time (nccl_loader.h), as the CUDA
// backend does with cuBLAS. Declared after NCCL 2.21 (nccl.h, NCCL_MAJOR 2): every function and
// type below has had this signature and these values since NCCL 2.14 (ncclCommInitRankConfig and
// its config since 2.14, ncclCommGetAsyncError and ncclRemoteError since 2.11/2.12), and NCCL
// keeps them stable within major version 2; the loader refuses a library whose ncclGetVersion
// reports another major version or an older one.
#pragma once

#include <cstddef>

namespace ls::nccl {

constexpr int kUniqueIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
constexpr int kMinVersion = 21400;   // 2.14.0, as NCCL_VERSION(2, 14, 0) = 2 * 10000 + 14 * 100
constexpr const char* kLibrary = "libnccl.so.2";

struct UniqueId {
  char internal[kUniqueIdBytes];
};
using Comm = struct ncclComm*;
using Stream = struct CUstream_st*;  // cudaStream_t

enum Result : int {  // ncclResult_t
  kSuccess = 0,
  kUnhandledCudaError = 1,
  kSystemError = 2,
  kInternalError = 3,
  kInvalidArgument = 4,
  kInvalidUsage = 5,
  kRemoteError = 6,
  kInProgress = 7,
};

enum DataType : int { kUint8 = 1 };  // ncclDataType_t: ncclUint8

// ncclConfig_t as NCCL 2.14 declared it: a header (size, magic, version) and `blocking`. NCCL
// copies min(size, its own sizeof) bytes, checks the magic, and gives every field added after
// `version` (cgaClusterSize and the rest, from 2.17) its default, so this stays valid for newer
// libraries; `tail` is the struct's padding, named so that every byte is set.
struct ConfigV21400 {
  size_t size = sizeof(ConfigV21400);
  unsigned int magic = 0xcafebeef;  // NCCL_CONFIG_INITIALIZER's
  unsigned int version = 21400;     // the layout's: NCCL_VERSION(2, 14, 0)
  int blocking = 0;                 // 0: calls return ncclInProgress instead of waiting
  int tail = -2147483647 - 1;       // NCCL_CONFIG_UNDEF_INT
};
static_assert(sizeof(ConfigV21400) == 24, "ncclConfig_t of NCCL 2.14 on LP64");

// Function pointers, resolved by name from the library ("nccl" + the member name, capitalised).
struct Api {
  Result (*GetVersion)(int* version);
  Result (*GetUniqueId)(UniqueId* id);
  Result (*CommInitRankConfig)(Comm* comm, int nranks, UniqueId id, int rank, ConfigV21400* config);
  Result (*CommDestroy)(Comm comm);
  Result (*CommAbort)(Comm comm);
  const char* (*GetErrorString)(Result result);
  Result (*CommGetAsyncError)(Comm comm, Result* async_error);
  Result (*Send)(const void* sendbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream);
  Result (*Recv)(void* recvbuff, size_t count, DataType datatype, int peer, Comm comm, Stream stream);
  Result (*GroupStart)();
  Result (*GroupEnd)();
  int version = 0;  // what GetVersion reported, e.g. 22105 for 2.21.5
};

}  // namespace ls::nccl
