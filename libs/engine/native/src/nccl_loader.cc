#include "nccl_loader.h"

#include <dlfcn.h>

#include <map>
#include <memory>
#include <mutex>

namespace ls::nccl {

namespace {

struct Loaded {
  std::unique_ptr<Api> api;
  std::string why;
};

Loaded open_library(const std::string& library) {
  Loaded out;
  void* handle = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* err = ::dlerror();
    out.why = "NCCL is not available: cannot load " + library + " (" + (err ? err : "unknown error") + ")";
    return out;
  }
  auto api = std::make_unique<Api>();
  std::string missing;
  auto resolve = [&](auto*& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(handle, name));
    if (!fn && missing.empty()) missing = name;
  };
  resolve(api->GetVersion, "ncclGetVersion");
  resolve(api->GetUniqueId, "ncclGetUniqueId");
  resolve(api->CommInitRankConfig, "ncclCommInitRankConfig");
  resolve(api->CommDestroy, "ncclCommDestroy");
  resolve(api->CommAbort, "ncclCommAbort");
  resolve(api->GetErrorString, "ncclGetErrorString");
  resolve(api->CommGetAsyncError, "ncclCommGetAsyncError");
  resolve(api->Send, "ncclSend");
  resolve(api->Recv, "ncclRecv");
  resolve(api->GroupStart, "ncclGroupStart");
  resolve(api->GroupEnd, "ncclGroupEnd");
  if (!missing.empty()) {
    out.why = "NCCL is not available: " + library + " has no " + missing + " (not an NCCL library, or one older than 2.14)";
    ::dlclose(handle);
    return out;
  }
  int version = 0;
  if (api->GetVersion(&version) != kSuccess || version / 10000 != 2 || version < kMinVersion) {
    out.why = "NCCL is not available: " + library + " reports version " + version_string(version) + "; this build speaks NCCL 2 from " + version_string(kMinVersion);
    ::dlclose(handle);
    return out;
  }
  api->version = version;
  out.api = std::move(api);  // the library stays open for the life of the process
  return out;
}

}  // namespace

std::string version_string(int v) {
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

const Api* load(std::string* why, const std::string& library) {
  static std::mutex mu;
  static std::map<std::string, Loaded> loaded;
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded.find(library);
  if (it == loaded.end()) it = loaded.emplace(library, open_library(library)).first;
  if (!it->second.api && why) *why = it->second.why;
  return it->second.api.get();
}

}  // namespace ls::nccl
