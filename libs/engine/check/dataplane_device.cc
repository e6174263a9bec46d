// longshot-dataplane-check: the data plane's device paths on real GPUs (deploy/gpu-check.sh step 3).
//
//   longshot-dataplane-check --bytes N --reps R      -> one JSON line on stdout
//
// Two processes, as two stages are: the parent listens, a forked child sends (forked before
// either touches CUDA). Each path moves R tensors of N bytes from a device buffer of the child
// into a device buffer of the parent, through the real Sender / Listener (header, key checks,
// device descriptor, reply), and the parent compares every byte with the pattern:
//   cuda_ipc  both on device 0 (a CUDA IPC handle + offset; a device-to-device copy)
//   nccl      child on device 0, parent on device 1 (ncclSend / ncclRecv; the NCCL id goes from
//             child to parent through a pipe, standing in for the gRPC control stream)
// and one case needs only one GPU:
//   nccl_join a rank that waits for a peer who never joins gives up after its stall time (the
//             communicator is joined without blocking), with the reason, instead of hanging
// A path that cannot run here (no device, one device for NCCL, no libnccl.so.2) is reported as
// skipped with the reason; a path that ran and failed makes the exit status 1.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <stdexcept>
#include <string>
#include <vector>

#include "../native/src/dataplane.h"
#include "../native/src/device_link.h"
#include "../native/src/nccl_loader.h"

#if LONGSHOT_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

using namespace ls;

namespace {

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

std::string skipped(const std::string& why) { return "{\"skipped\":true,\"skip_reason\":\"" + json_escape(why) + "\"}"; }

#if LONGSHOT_HAVE_CUDA

constexpr int kStallMs = 20000;
const char* kSession = "dataplane-check-session-key!";  // first 16 bytes are the key

dp::Key key_of(const char* s) {
  dp::Key k{};
  std::memcpy(k.data(), s, k.size());
  return k;
}

uint8_t pattern(size_t i, int rep) { return static_cast<uint8_t>((i * 2654435761u) >> 13) ^ static_cast<uint8_t>(rep * 37); }

// Sends R tensors from device `device` through `path`; the port (and for NCCL the id) travel by
// pipes. Returns the process exit status.
int child(dp::Path path, int device, size_t bytes, int reps, int port_fd, int id_fd) {
  int port = 0;
  if (read(port_fd, &port, sizeof port) != sizeof port || port <= 0) return 3;
  try {
    dp::Sender s("127.0.0.1", port, kStallMs, 0, 0, path, device);
    if (path == dp::kPathNccl && write(id_fd, s.nccl_id().internal, nccl::kUniqueIdBytes) != nccl::kUniqueIdBytes) return 4;
    cudaSetDevice(device);
    // One arena holding every tensor, each at its own offset, all written before the first send,
    // so the receiver's clock measures the transfer, not this side drawing the next tensor.
    uint8_t* src = nullptr;
    const size_t first = 4096;
    if (cudaMalloc(reinterpret_cast<void**>(&src), first + bytes * reps) != cudaSuccess) return 5;
    std::vector<uint8_t> host(bytes);
    for (int r = 0; r < reps; ++r) {
      for (size_t i = 0; i < bytes; ++i) host[i] = pattern(i, r);
      cudaMemcpy(src + first + bytes * r, host.data(), bytes, cudaMemcpyHostToDevice);
    }
    for (int r = 0; r < reps; ++r) {
      const size_t offset = first + bytes * r;
      dp::Header h;
      h.seq = static_cast<uint64_t>(r + 1);
      h.byte_length = bytes;
      h.session = key_of(kSession);
      h.grant = key_of(kSession + 8);
      std::promise<dp::Result> done;
      s.send(h, src + offset, [&](const dp::Result& res) { done.set_value(res); }, src);
      dp::Result res = done.get_future().get();
      if (res.code != dp::kOk) {
        std::fprintf(stderr, "dataplane-check sender: %s\n", res.message.c_str());
        return 6;
      }
    }
    s.close();
    cudaFree(src);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dataplane-check sender: %s\n", e.what());
    return 7;
  }
  return 0;
}

// One path: fork the sender, listen, receive and compare. "" and the figures, or why it failed.
std::string run_path(dp::Path path, int send_device, int recv_device, size_t bytes, int reps, std::string* figures) {
  int port_pipe[2], id_pipe[2];
  if (pipe(port_pipe) != 0 || pipe(id_pipe) != 0) return "pipe failed";
  pid_t pid = fork();
  if (pid == 0) {
    close(port_pipe[1]), close(id_pipe[0]);
    _exit(child(path, send_device, bytes, reps, port_pipe[0], id_pipe[1]));
  }
  close(port_pipe[0]), close(id_pipe[1]);
  std::string why;
  std::vector<double> seconds;
  try {
    dp::Listener l("127.0.0.1", 0, kStallMs, (1u << dp::kPathTcp) | (1u << path), recv_device);
    l.add_session(key_of(kSession), key_of(kSession + 8));
    int port = l.port();
    if (write(port_pipe[1], &port, sizeof port) != sizeof port) throw std::runtime_error("pipe write failed");
    nccl::UniqueId id{};
    if (path == dp::kPathNccl && read(id_pipe[0], id.internal, nccl::kUniqueIdBytes) != nccl::kUniqueIdBytes) throw std::runtime_error("the sender sent no NCCL id");
    cudaSetDevice(recv_device);
    uint8_t* dst = nullptr;
    if (cudaMalloc(reinterpret_cast<void**>(&dst), bytes) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
    std::vector<uint8_t> host(bytes);
    for (int r = 0; r < reps && why.empty(); ++r) {
      cudaMemset(dst, 0, bytes);
      cudaDeviceSynchronize();
      std::promise<dp::Result> done;
      auto t0 = std::chrono::steady_clock::now();
      l.expect(key_of(kSession), static_cast<uint64_t>(r + 1), dst, bytes, [&](const dp::Result& res) { done.set_value(res); }, path == dp::kPathNccl ? &id : nullptr);
      dp::Result res = done.get_future().get();
      seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (res.code != dp::kOk) {
        why = res.message;
        break;
      }
      cudaMemcpy(host.data(), dst, bytes, cudaMemcpyDeviceToHost);
      for (size_t i = 0; i < bytes; ++i)
        if (host[i] != pattern(i, r)) {
          why = "tensor " + std::to_string(r + 1) + ": byte " + std::to_string(i) + " differs";
          break;
        }
    }
    cudaFree(dst);
    l.close();
  } catch (const std::exception& e) {
    why = e.what();
  }
  close(port_pipe[1]), close(id_pipe[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (why.empty() && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) why = "the sender exited with status " + std::to_string(WEXITSTATUS(status));
  if (!why.empty()) return why;
  // The first transfer includes the communicator's set-up (NCCL) or the handle's first open.
  std::vector<double> warm(seconds.begin() + (seconds.size() > 1 ? 1 : 0), seconds.end());
  std::sort(warm.begin(), warm.end());
  double median = warm[warm.size() / 2];
  char buf[256];
  std::snprintf(buf, sizeof buf, "\"first_s\":%.4f,\"median_s\":%.4f,\"gb_per_s\":%.2f", seconds[0], median, bytes / median / 1e9);
  *figures = buf;
  return "";
}

// Runs `fn` in a forked process (so each path starts with CUDA uninitialised, as a fork needs)
// and returns what it produced.
template <class Fn>
std::string in_fresh_process(Fn fn) {
  int p[2];
  if (pipe(p) != 0) return "{\"ok\":false,\"error\":\"pipe failed\"}";
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    std::string out = fn();
    size_t off = 0;
    while (off < out.size()) {
      ssize_t w = write(p[1], out.data() + off, out.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    _exit(0);
  }
  close(p[1]);
  std::string out;
  char buf[4096];
  for (ssize_t r; (r = read(p[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(r));
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return out.empty() ? "{\"ok\":false,\"error\":\"the check process died (status " + std::to_string(status) + ")\"}" : out;
}

#endif

}  // namespace

int main(int argc, char** argv) {
  size_t bytes = 100 * 1000 * 1000;
  int reps = 4;
  int devices = 0;  // from nvidia-smi: counting them here would start CUDA before the fork
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--bytes") bytes = std::stoull(argv[i + 1]);
    else if (a == "--reps") reps = std::max(1, std::stoi(argv[i + 1]));
    else if (a == "--devices") devices = std::stoi(argv[i + 1]);
  }
  std::string ipc, nccl_report, join_report;
  bool failed = false;
#if LONGSHOT_HAVE_CUDA
  auto report = [&](dp::Path path, int send_device, int recv_device) {
    std::string out = in_fresh_process([&] {
      std::string figures, why = run_path(path, send_device, recv_device, bytes, reps, &figures);
      return why.empty() ? "{\"ok\":true,\"bytes\":" + std::to_string(bytes) + ",\"reps\":" + std::to_string(reps) + "," + figures + "}"
                         : "{\"ok\":false,\"error\":\"" + json_escape(why) + "\"}";
    });
    if (out.rfind("{\"ok\":true", 0) != 0) failed = true;
    return out;
  };
  std::string nccl_why;
  if (devices < 1) {
    ipc = skipped("no CUDA device (nvidia-smi lists none)");
  } else {
    ipc = report(dp::kPathCudaIpc, 0, 0);
  }
  if (devices < 2) nccl_report = skipped("NCCL between two GPUs needs two; " + std::to_string(devices) + " visible");
  else if (!nccl::load(&nccl_why)) nccl_report = skipped(nccl_why);
  else nccl_report = report(dp::kPathNccl, 0, 1);
  if (devices < 1) join_report = skipped("no CUDA device (nvidia-smi lists none)");
  else if (!nccl::load(&nccl_why)) join_report = skipped(nccl_why);
  else {
    join_report = in_fresh_process([] {
      constexpr int kStallMs = 2000;
      std::string why;
      const nccl::Api* api = nccl::load(&why);
      nccl::UniqueId id{};
      if (api->GetUniqueId(&id) != nccl::kSuccess) return std::string("{\"ok\":false,\"error\":\"ncclGetUniqueId failed\"}");
      const auto t0 = std::chrono::steady_clock::now();
      auto peer = cuda::link::nccl_join(api, id, 0, 0, kStallMs, &why);  // rank 1 never joins
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const bool ok = !peer && why.find("did not join within") != std::string::npos && s >= kStallMs / 1000.0 && s < 4 * kStallMs / 1000.0;
      return "{\"ok\":" + std::string(ok ? "true" : "false") + ",\"stall_ms\":" + std::to_string(kStallMs) + ",\"seconds\":" + std::to_string(s) + ",\"why\":\"" + json_escape(why) + "\"}";
    });
    if (join_report.rfind("{\"ok\":true", 0) != 0) failed = true;
  }
#else
  ipc = nccl_report = join_report = skipped("the driver was built without CUDA");
  (void)devices, (void)bytes, (void)reps;
#endif
  std::string why;
  const nccl::Api* api = nccl::load(&why);
  std::printf("{\"check\":\"dataplane\",\"devices\":%d,\"nccl_library\":\"%s\",\"cuda_ipc\":%s,\"nccl\":%s,\"nccl_join\":%s,\"ok\":%s}\n", devices,
              json_escape(api ? "NCCL " + nccl::version_string(api->version) : why).c_str(), ipc.c_str(), nccl_report.c_str(), join_report.c_str(), failed ? "false" : "true");
  return failed ? 1 : 0;
}
