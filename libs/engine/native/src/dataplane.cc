#include "dataplane.h"

#include "cpu_time.h"
#include "crc32c.h"
#include "nccl_loader.h"

#include <arpa/inet.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <immintrin.h>
#include <poll.h>
#include <random>
#include <set>
#include <stdexcept>
#include <sys/mman.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ls::dp {

// ---- framing -----------------------------------------------------------------------------------

namespace {

void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
uint16_t get16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
uint32_t get32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
uint64_t get64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

std::string hex(const Key& k) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 4; ++i) s += d[k[i] >> 4], s += d[k[i] & 15];
  return s + "...";
}

}  // namespace

void encode_header(const Header& h, uint8_t out[kHeaderBytes]) {
  std::memset(out, 0, kHeaderBytes);
  put32(out, kMagic);
  put16(out + 4, kVersion);
  put16(out + 6, static_cast<uint16_t>(kHeaderBytes));
  put64(out + 8, h.seq);
  put64(out + 16, h.byte_length);
  std::memcpy(out + 24, h.session.data(), kKeyBytes);
  std::memcpy(out + 40, h.grant.data(), kKeyBytes);
  out[56] = h.path;
}

std::string decode_header(const uint8_t in[kHeaderBytes], Header* h) {
  if (get32(in) != kMagic) return "not a data-plane frame (bad magic)";
  if (get16(in + 4) != kVersion)
    return "data-plane version " + std::to_string(get16(in + 4)) + " is not supported (this build speaks " + std::to_string(kVersion) + "; both ends of a hop must run the same build)";
  if (get16(in + 6) != kHeaderBytes) return "header length " + std::to_string(get16(in + 6)) + ", expected " + std::to_string(kHeaderBytes);
  if (in[56] > kPathCudaIpc) return "unknown path " + std::to_string(in[56]);
  if ((get64(in + 56) >> 8) != 0) return "reserved header bytes are not zero";
  h->path = static_cast<Path>(in[56]);
  h->seq = get64(in + 8);
  h->byte_length = get64(in + 16);
  std::memcpy(h->session.data(), in + 24, kKeyBytes);
  std::memcpy(h->grant.data(), in + 40, kKeyBytes);
  if (h->seq == 0) return "seq must be at least 1";
  return "";
}

const char* path_name(Path p) {
  switch (p) {
    case kPathTcp: return "TCP payloads";
    case kPathShm: return "shared memory";
    case kPathNccl: return "NCCL";
    case kPathCudaIpc: return "CUDA IPC handles";
  }
  return "an unknown path";
}

void encode_device_descriptor(const Header& h, const DeviceDescriptor& d, uint8_t out[kDeviceDescriptorBytes]) {
  std::memset(out, 0, kDeviceDescriptorBytes);
  put32(out, kDeviceMagic);
  out[4] = h.path;
  put64(out + 8, h.seq);
  put64(out + 16, h.byte_length);
  put64(out + 24, d.offset);
  std::memcpy(out + 64, d.ipc_handle.data(), d.ipc_handle.size());
}

std::string decode_device_descriptor(const Header& h, const uint8_t in[kDeviceDescriptorBytes], DeviceDescriptor* d) {
  if (get32(in) != kDeviceMagic) return "not a device descriptor (bad magic)";
  if (in[4] != h.path) return std::string("the device descriptor is for ") + path_name(static_cast<Path>(in[4] <= kPathCudaIpc ? in[4] : 255)) + ", the header for " + path_name(h.path);
  if (get64(in + 8) != h.seq) return "the device descriptor is for seq " + std::to_string(get64(in + 8)) + ", the header for " + std::to_string(h.seq);
  if (get64(in + 16) != h.byte_length) return "the device descriptor's byte_length " + std::to_string(get64(in + 16)) + " is not the header's " + std::to_string(h.byte_length);
  for (size_t i = 5; i < 8; ++i)
    if (in[i]) return "reserved device-descriptor bytes are not zero";
  for (size_t i = 32; i < 64; ++i)
    if (in[i]) return "reserved device-descriptor bytes are not zero";
  d->offset = get64(in + 24);
  std::memcpy(d->ipc_handle.data(), in + 64, d->ipc_handle.size());
  if (h.path == kPathNccl) {
    bool zero = d->offset == 0;
    for (uint8_t b : d->ipc_handle) zero = zero && b == 0;
    if (!zero) return "an NCCL descriptor carries no offset or handle";
  } else if (d->offset > UINT64_MAX - h.byte_length) {
    return "offset " + std::to_string(d->offset) + " + byte_length overflows";
  }
  return "";
}

// ---- checksum ----------------------------------------------------------------------------------

void Checksum::update(const uint8_t* p, size_t n) {
  static const crc::UpdateFn f = crc::best();
  state_ = f(state_, p, n);
}

// ---- sockets -----------------------------------------------------------------------------------

namespace {

constexpr size_t kIoBytes = 4u << 20;  // per send()/recv() call and per checksum step
constexpr int kPollSliceMs = 100;  // how often a blocked reader looks at cancellation

using Clock = std::chrono::steady_clock;

// Tensors at least this large reach their destination through non-temporal stores (below): out
// of the shared-memory ring, or from the sender straight into a shared destination.
constexpr uint64_t kStreamingCopyBytes = 16u << 20;

// A copy whose destination bypasses the caches: no read-for-ownership of destination lines that
// a tensor far larger than the last-level cache would evict again anyway, so the copy moves about
// the memory traffic of one memcpy (and the ring's slots stay cached for the next chunks). AVX2
// stores of 32 bytes; the unaligned head and the tail go through memcpy.
__attribute__((target("avx2"))) void copy_streaming_avx2(uint8_t* dst, const uint8_t* src, size_t n) {
  size_t head = (32 - (reinterpret_cast<uintptr_t>(dst) & 31)) & 31;
  if (head > n) head = n;
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 128 <= n; i += 128) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 64));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 96), d);
  }
  _mm_sfence();
  std::memcpy(dst + i, src + i, n - i);
}

// A piece of a tensor into its destination (the ring's copy out, and the direct copy): streaming
// for a large tensor on a CPU with AVX2, memcpy otherwise (a small tensor is read by its stage
// right away, from the cache the copy left it in, the last-level cache shared by both processes).
void copy_tensor_piece(uint8_t* dst, const uint8_t* src, size_t n, uint64_t tensor_bytes) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2 && tensor_bytes >= kStreamingCopyBytes) copy_streaming_avx2(dst, src, n);
  else std::memcpy(dst, src, n);
}

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void tune(int fd) {
  // Socket buffers are left to the kernel's autotuning: a fixed SO_SNDBUF/SO_RCVBUF turns it off.
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

enum class Io { kOk, kClosed, kStalled, kError, kCancelled };

// Waits for `events` on fd; stall_ms < 0 waits indefinitely (until `stop`).
Io wait_fd(int fd, short events, int stall_ms, const std::atomic<bool>* stop) {
  auto t0 = Clock::now();
  for (;;) {
    if (stop && stop->load()) return Io::kCancelled;
    int slice = kPollSliceMs;
    if (stall_ms >= 0) {
      int left = stall_ms - static_cast<int>(since(t0) * 1000);
      if (left <= 0) return Io::kStalled;
      slice = std::min(slice, left);
    }
    pollfd pfd{fd, events, 0};
    int r = ::poll(&pfd, 1, slice);
    if (r > 0) return Io::kOk;
    if (r < 0 && errno != EINTR) return Io::kError;
  }
}

// Reads exactly n bytes. `started`: bytes of the frame already read (a frame's first byte may
// wait indefinitely, later ones at most stall_ms each). `progress` gets every chunk read. It
// polls only when nothing is there to read: a tensor arrives in many reads, and a poll before
// each would double the system calls.
Io read_exact(int fd, uint8_t* p, size_t n, int stall_ms, bool started, const std::atomic<bool>* stop,
              const std::function<void(size_t)>& progress = nullptr) {
  size_t got = 0;
  while (got < n) {
    if (stop && stop->load()) return Io::kCancelled;
    ssize_t r = ::recv(fd, p + got, std::min(n - got, kIoBytes), MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<size_t>(r);
      if (progress) progress(got);
      continue;
    }
    if (r == 0) return Io::kClosed;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno == ECONNRESET ? Io::kClosed : Io::kError;
    Io w = wait_fd(fd, POLLIN, started || got > 0 ? stall_ms : -1, stop);
    if (w != Io::kOk) return w;
  }
  return Io::kOk;
}

Io write_all(int fd, const uint8_t* p, size_t n, int stall_ms) {
  size_t put = 0;
  while (put < n) {
    ssize_t r = ::send(fd, p + put, n - put, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        Io w = wait_fd(fd, POLLOUT, stall_ms, nullptr);
        if (w != Io::kOk) return w;
        continue;
      }
      return errno == EPIPE || errno == ECONNRESET ? Io::kClosed : Io::kError;
    }
    put += static_cast<size_t>(r);
  }
  return Io::kOk;
}

void encode_reply(std::vector<uint8_t>* out, Code code, uint64_t seq, const std::string& msg) {
  uint32_t len = static_cast<uint32_t>(std::min<size_t>(msg.size(), kMaxReplyMessage));
  out->assign(kReplyBytes + len, 0);
  put32(out->data(), kReplyMagic);
  put16(out->data() + 4, kVersion);
  put16(out->data() + 6, code);
  put64(out->data() + 8, seq);
  put32(out->data() + 16, len);
  std::memcpy(out->data() + kReplyBytes, msg.data(), len);
}

// A fresh name for a shared-memory segment of this process: `prefix`, the pid and 64 random bits,
// so that no other process can guess it (segments are created O_EXCL besides).
std::string fresh_segment_name(const char* prefix) {
  std::random_device rd;
  char name[kSegmentNameBytes];
  std::snprintf(name, sizeof name, "%s-%d-%08x%08x", prefix, static_cast<int>(::getpid()), rd(), rd());
  return name;
}

// The names of this process's shared-memory segments that are still linked: a process that ends
// by exit() (Node's process.exit) runs no finalizers and no destructors of ours, so without this
// a shared destination (often hundreds of MB) or a ring no receiver took yet would stay in
// /dev/shm. Unlinking at exit leaves mappings, others' included, intact. (A process killed by a
// signal still leaves them.) Allocated once and never freed: it must outlive every static.
struct LinkedSegments {
  std::mutex mu;
  std::set<std::string> names;
};
void unlink_at_exit();
LinkedSegments& linked_segments() {
  static LinkedSegments* l = [] {
    auto* p = new LinkedSegments;
    std::atexit(unlink_at_exit);
    return p;
  }();
  return *l;
}
void unlink_at_exit() {
  LinkedSegments& l = linked_segments();
  std::lock_guard<std::mutex> lock(l.mu);
  for (const std::string& n : l.names) ::shm_unlink(n.c_str());
  l.names.clear();
}
void segment_linked(const std::string& name) {
  LinkedSegments& l = linked_segments();
  std::lock_guard<std::mutex> lock(l.mu);
  l.names.insert(name);
}
// Unlinks `name` (ours) and forgets it.
void segment_unlink(const std::string& name) {
  LinkedSegments& l = linked_segments();
  std::lock_guard<std::mutex> lock(l.mu);
  ::shm_unlink(name.c_str());
  l.names.erase(name);
}

// A segment's creator holds a shared flock on it for as long as it owns it (the lock goes with its
// last descriptor, so also when the process is killed); `sweep_stale_segments` unlinks only
// segments nobody holds. Locks on tmpfs work across PID namespaces, unlike a pid in the name.
void hold_segment(int fd) { ::flock(fd, LOCK_SH | LOCK_NB); }

}  // namespace

int sweep_stale_segments(const char* dir, int min_age_seconds) {
  DIR* d = ::opendir(dir);
  if (!d) return 0;
  int swept = 0;
  const time_t now = ::time(nullptr);
  while (dirent* e = ::readdir(d)) {
    const std::string base(e->d_name);
    if (base.rfind("longshot-dd-", 0) != 0 && base.rfind("longshot-dp-", 0) != 0) continue;
    const std::string name = "/" + base;
    int fd = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) continue;
    struct stat st {};
    // Not ours (another user's), or so new that its creator may not have taken its lock yet.
    const bool candidate = ::fstat(fd, &st) == 0 && st.st_uid == ::geteuid() && now - st.st_mtime >= min_age_seconds;
    if (candidate && ::flock(fd, LOCK_EX | LOCK_NB) == 0 && ::shm_unlink(name.c_str()) == 0) ++swept;
    ::close(fd);
  }
  ::closedir(d);
  return swept;
}

namespace {

// A name field of `kSegmentNameBytes` holding a POSIX shared-memory name: '/' then at least one
// character, no other '/', NUL-terminated within the field. Empty, or why not.
std::string segment_name_of(const uint8_t* field, std::string* name) {
  const void* nul = std::memchr(field, 0, kSegmentNameBytes);
  if (!nul) return "segment name is not NUL-terminated within " + std::to_string(kSegmentNameBytes) + " bytes";
  name->assign(reinterpret_cast<const char*>(field), static_cast<const uint8_t*>(nul) - field);
  if (name->size() < 2 || (*name)[0] != '/' || name->find('/', 1) != std::string::npos) return "segment name is not a POSIX shared-memory name";
  return "";
}

const char* io_name(Io io) {
  switch (io) {
    case Io::kClosed: return "the peer closed the connection";
    case Io::kStalled: return "the peer stopped sending";
    case Io::kCancelled: return "cancelled";
    default: return std::strerror(errno);
  }
}

}  // namespace

// ---- Listener ----------------------------------------------------------------------------------

Listener::Listener(const std::string& host, int port, int stall_ms, unsigned paths, int device) : stall_ms_(stall_ms), paths_(paths), device_(device) {
  // What processes killed by a signal left in shared memory (their exit handlers never ran).
  if (paths & (1u << kPathShm)) swept_ = sweep_stale_segments("/dev/shm", kStaleSegmentSeconds);
  if (paths & ((1u << kPathNccl) | (1u << kPathCudaIpc))) {
    std::string why = cuda::link::usable(device);
    if (why.empty() && (paths & (1u << kPathNccl))) nccl_ = nccl::load(&why);
    if (!why.empty()) throw std::runtime_error("data plane: cannot take " + std::string(paths & (1u << kPathNccl) ? "NCCL" : "CUDA IPC") + " transfers: " + why);
  }
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  std::string service = std::to_string(port);
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) throw std::runtime_error("data plane: cannot resolve " + host + ": " + gai_strerror(rc));
  std::string err = "no address";
  for (addrinfo* a = res; a; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      listen_fd_ = fd;
      break;
    }
    err = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (listen_fd_ < 0) throw std::runtime_error("data plane: cannot listen on " + host + ":" + service + ": " + err);
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &sl);
  port_ = ntohs(ss.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  acceptor_ = std::thread([this] { accept_loop(); });
}

Listener::~Listener() { close(); }

void Listener::add_session(const Key& session, const Key& grant) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_[session] = grant;
}

void Listener::remove_session(const Key& session) {
  std::vector<std::pair<ExpKey, std::shared_ptr<Expectation>>> unclaimed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_.erase(session);
    for (auto it = expected_.begin(); it != expected_.end();) {
      if (it->first.first != session) { ++it; continue; }
      if (it->second->claimed) {
        it->second->cancel_why = "session closed";
        it->second->cancelled = true;
        ++it;
      } else {
        unclaimed.emplace_back(*it);
        it = expected_.erase(it);
      }
    }
  }
  for (auto& [k, e] : unclaimed) e->done({kCancelled, "tensor seq " + std::to_string(k.second) + ": session closed", 0, 0});
}

void Listener::expect(const Key& session, uint64_t seq, uint8_t* dst, size_t len, Done done, const nccl::UniqueId* nccl_id) {
  auto e = std::make_shared<Expectation>();
  e->dst = dst, e->len = len, e->done = std::move(done);
  if (nccl_id) e->has_nccl_id = true, e->nccl_id = *nccl_id;
  std::string refused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) refused = "the data-plane listener is closed";
    else if (!sessions_.count(session)) refused = "session " + hex(session) + " is not registered";
    else if (!expected_.emplace(ExpKey{session, seq}, e).second) refused = "tensor seq " + std::to_string(seq) + " is already expected";
  }
  if (!refused.empty()) return e->done({kFailedPrecondition, refused, 0, 0});
  cv_.notify_all();
}

void Listener::cancel(const Key& session, uint64_t seq, const std::string& why) {
  std::shared_ptr<Expectation> e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = expected_.find(ExpKey{session, seq});
    if (it == expected_.end()) return;
    if (it->second->claimed) {
      it->second->cancel_why = why;
      it->second->cancelled = true;
      return;
    }
    e = it->second;
    expected_.erase(it);
  }
  e->done({kCancelled, why, 0, 0});
}

// ---- shared destinations -----------------------------------------------------------------------

void SharedRegistry::add(const uint8_t* base, size_t bytes, const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  by_base_[base] = Entry{bytes, name};
}

void SharedRegistry::remove(const uint8_t* base) {
  std::lock_guard<std::mutex> lock(mu_);
  by_base_.erase(base);
}

bool SharedRegistry::find(const uint8_t* p, size_t n, std::string* name, uint64_t* offset) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_base_.upper_bound(p);  // the first segment that starts after p
  if (it == by_base_.begin()) return false;
  --it;
  const size_t off = static_cast<size_t>(p - it->first);
  if (off > it->second.bytes || n > it->second.bytes - off) return false;
  *name = it->second.name;
  *offset = off;
  return true;
}

SharedDestination::~SharedDestination() {
  // Unregistered first, under the registry's mutex: no data-plane thread finds it from now on.
  // None is writing it either: an expectation keeps its buffer (and so this) alive until it settles.
  if (registry_) registry_->remove(base_);
  if (base_) ::munmap(base_, mapped_);
  if (!name_.empty()) segment_unlink(name_);
  if (fd_ >= 0) ::close(fd_);
}

std::unique_ptr<SharedDestination> Listener::allocate_shared(size_t bytes) {
  const std::string what = "data plane: cannot allocate a shared destination of " + std::to_string(bytes) + " bytes: ";
  if (closing_) throw std::runtime_error(what + "the listener is closed");
  if (!(paths_ & (1u << kPathShm))) throw std::runtime_error(what + "this listener does not take shared memory");
  // Whole pages (at least one: an empty mapping does not exist); the buffer is `bytes` of them.
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  if (bytes > SIZE_MAX - page || bytes > static_cast<size_t>(INT64_MAX) - page) throw std::runtime_error(what + "too large");
  const size_t mapped = std::max<size_t>(page, (bytes + page - 1) / page * page);
  std::unique_ptr<SharedDestination> d(new SharedDestination());
  d->name_ = fresh_segment_name("/longshot-dd");
  int fd = ::shm_open(d->name_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    d->name_.clear();  // nothing of ours to unlink
    throw std::runtime_error(what + "shm_open: " + std::strerror(err));
  }
  segment_linked(d->name_);
  d->fd_ = fd;  // kept open, and locked, while the buffer lives: see sweep_stale_segments
  hold_segment(fd);
  // Its pages now, not at the sender's first write: a /dev/shm without room for them fails here,
  // with a reason, instead of killing the writing process with SIGBUS later.
  int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(mapped));
  if (rc != 0) {
    throw std::runtime_error(what + "cannot reserve " + std::to_string(mapped) + " bytes of shared memory (posix_fallocate: " + std::strerror(rc) +
                             (rc == ENOSPC ? "; /dev/shm is full" : "") + ")");
  }
  // MAP_POPULATE: the page tables now, not in a fault per page when the stage first reads it.
  void* m = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  const int err = errno;
  if (m == MAP_FAILED) throw std::runtime_error(what + "mmap: " + std::strerror(err));
  d->base_ = static_cast<uint8_t*>(m);
  d->bytes_ = bytes;
  d->mapped_ = mapped;
  d->registry_ = shared_;
  shared_->add(d->base_, bytes, d->name_);
  return d;
}

void Listener::close() {
  std::vector<std::shared_ptr<Expectation>> pending;
  std::vector<std::unique_ptr<Conn>> conns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_.exchange(true)) return;
    for (auto& c : conns_) ::shutdown(c->fd, SHUT_RDWR);
    for (auto& [k, e] : expected_) e->cancelled = true, e->cancel_why = "the data-plane listener closed";
  }
  cv_.notify_all();
  ::shutdown(listen_fd_, SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    conns.swap(conns_);
  }
  for (auto& c : conns) {
    if (c->thread.joinable()) c->thread.join();
    ::close(c->fd);
  }
  ::close(listen_fd_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [k, e] : expected_) pending.push_back(e);
    expected_.clear();
  }
  for (auto& e : pending) e->done({kCancelled, "the data-plane listener closed", 0, 0});
}

void Listener::reap_locked() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if ((*it)->finished) {
      (*it)->thread.join();
      ::close((*it)->fd);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

void Listener::accept_loop() {
  while (!closing_) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;
    }
    tune(fd);
    std::lock_guard<std::mutex> lock(mu_);
    reap_locked();
    if (closing_) {
      ::close(fd);
      return;
    }
    auto c = std::make_unique<Conn>();
    c->fd = fd;
    Conn* raw = c.get();
    conns_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] { serve(raw); });
  }
}

Listener::Segment::~Segment() {
  if (base) ::munmap(const_cast<uint8_t*>(base), size);
}

void Listener::serve(Conn* c) {
  // CPU time of this connection's thread (blocking reads cost none), one tensor at a time.
  for (;;) {
    CpuSpan span(dataplane_cpu_ns());
    if (closing_ || !serve_one(c)) break;
  }
  c->segment.reset();
  c->finished = true;
}

std::string Listener::receive_ring(Conn* c, Expectation* e, Code* code, const std::atomic<bool>* stop, bool* direct) {
  const int fd = c->fd;
  auto io_error = [&](Io io, const char* where) {
    if (io == Io::kCancelled) *code = kCancelled;
    else if (io == Io::kStalled) *code = kDeadlineExceeded;
    else *code = kUnavailable;
    if (io == Io::kCancelled) return e->cancel_why;
    if (io == Io::kStalled) return std::string("the sender stopped mid-tensor (no chunk for ") + std::to_string(stall_ms_) + " ms)";
    return std::string(io_name(io)) + " " + where;
  };
  uint8_t rd[kRingBytes];
  Io io = read_exact(fd, rd, kRingBytes, stall_ms_, true, stop);
  if (io != Io::kOk) return io_error(io, "before the ring descriptor");
  const uint32_t slots = get32(rd + 4);
  const uint64_t slot_bytes = get64(rd + 8);
  const uint32_t flags = get32(rd + 16 + kSegmentNameBytes);
  std::string name;
  *code = kInvalidArgument;
  if (get32(rd) != kRingMagic) return "not a ring descriptor (bad magic)";
  if (slots < 1 || slots > 1024 || slot_bytes < 4096 || slot_bytes > (1ull << 30) || slot_bytes % 64 != 0) return "ring of " + std::to_string(slots) + " slots of " + std::to_string(slot_bytes) + " bytes is out of range";
  if (std::string bad = segment_name_of(rd + 16, &name); !bad.empty()) return bad;
  if ((flags & ~kRingOfferDirect) != 0 || get32(rd + 20 + kSegmentNameBytes) != 0) return "unknown ring descriptor flags or reserved bytes not zero";
  if (!c->segment || c->segment->name != name) {
    c->segment.reset();
    const size_t need = kSegmentHeaderBytes + static_cast<size_t>(slots) * slot_bytes;
    int sfd = ::shm_open(name.c_str(), O_RDONLY | O_CLOEXEC, 0);
    *code = kFailedPrecondition;
    if (sfd < 0) return "cannot open the sender's shared memory " + name + ": " + std::strerror(errno) + " (not on this host?)";
    // Nothing else attaches from now on; the mapping outlives the name.
    ::shm_unlink(name.c_str());
    struct stat st {};
    if (::fstat(sfd, &st) != 0 || static_cast<size_t>(st.st_size) < need) {
      ::close(sfd);
      *code = kInvalidArgument;
      return "shared memory " + name + " is smaller than its ring";
    }
    void* m = ::mmap(nullptr, need, PROT_READ, MAP_SHARED, sfd, 0);
    ::close(sfd);
    if (m == MAP_FAILED) return std::string("cannot map the sender's shared memory: ") + std::strerror(errno);
    auto seg = std::make_unique<Segment>();
    seg->name = name, seg->base = static_cast<const uint8_t*>(m), seg->size = need, seg->slots = slots, seg->slot_bytes = slot_bytes;
    if (get32(seg->base) != kSegmentMagic || get32(seg->base + 4) != slots || get64(seg->base + 8) != slot_bytes) {
      *code = kInvalidArgument;
      return "shared memory " + name + " does not hold the ring its descriptor names";
    }
    c->segment = std::move(seg);
  } else if (c->segment->slots != slots || c->segment->slot_bytes != slot_bytes) {
    return "the ring of " + name + " changed shape";
  }
  // The ring's segment is checked (and its name unlinked) even when the tensor goes direct: the
  // sender's segment is then never left behind, and a bad one is refused whichever way it goes.
  if (flags & kRingOfferDirect) {
    std::string dname;
    uint64_t doff = 0;
    if (shared_->find(e->dst, e->len, &dname, &doff)) {
      *direct = true;
      return receive_direct(c, e, dname, doff, code, stop);
    }
    const uint8_t go = kRingGo;
    io = write_all(fd, &go, 1, stall_ms_);
    if (io != Io::kOk) return io_error(io, "before the ring transfer");
  }
  const uint8_t* ring = c->segment->base + kSegmentHeaderBytes;
  const uint8_t free_byte = kChunkFree;
  for (uint64_t off = 0, i = 0; off < e->len; off += slot_bytes, ++i) {
    uint8_t b = 0;
    io = read_exact(fd, &b, 1, stall_ms_, true, stop);
    if (io != Io::kOk) return io_error(io, "mid-tensor");
    *code = kInvalidArgument;
    if (b != kChunkReady) return "expected the doorbell of chunk " + std::to_string(i);
    copy_tensor_piece(e->dst + off, ring + (i % slots) * slot_bytes, std::min<uint64_t>(slot_bytes, e->len - off), e->len);
    io = write_all(fd, &free_byte, 1, stall_ms_);
    if (io != Io::kOk) return io_error(io, "mid-tensor");
  }
  *code = kOk;
  return "";
}

std::string Listener::receive_direct(Conn* c, Expectation* e, const std::string& name, uint64_t offset, Code* code, const std::atomic<bool>* stop) {
  const int fd = c->fd;
  uint8_t msg[1 + kDirectBytes] = {kDirectGo};
  uint8_t* d = msg + 1;
  put32(d, kDirectMagic);
  put64(d + 8, offset);
  put64(d + 16, e->len);
  std::memcpy(d + 24, name.data(), std::min(name.size(), kSegmentNameBytes - 1));
  Io io = write_all(fd, msg, sizeof msg, stall_ms_);
  if (io != Io::kOk) return *code = io == Io::kStalled ? kDeadlineExceeded : kUnavailable, std::string(io_name(io)) + " before the direct transfer";
  const uint64_t pieces = std::max<uint64_t>(1, (e->len + kDirectPieceBytes - 1) / kDirectPieceBytes);
  for (uint64_t i = 0; i < pieces; ++i) {
    uint8_t b = 0;
    io = read_exact(fd, &b, 1, stall_ms_, true, stop);
    if (io == Io::kCancelled) {
      // The sender may be writing the destination right now: ask it to stop and wait until it
      // has (its 'A', or the last piece's doorbell), so that nothing writes the destination once
      // the expectation settled. A sender that says nothing within the stall time is stuck, or
      // gone with the connection (the listener closing shuts it down).
      const uint8_t halt = kDirectStop;
      if (write_all(fd, &halt, 1, stall_ms_) == Io::kOk) {
        for (; i < pieces; ++i) {
          if (read_exact(fd, &b, 1, stall_ms_, true, nullptr) != Io::kOk || b != kChunkReady) break;
        }
      }
      return *code = kCancelled, e->cancel_why;
    }
    if (io != Io::kOk) {
      *code = io == Io::kStalled ? kDeadlineExceeded : kUnavailable;
      if (io == Io::kStalled) return "the sender stopped mid-tensor (no direct-transfer doorbell for " + std::to_string(stall_ms_) + " ms)";
      return std::string(io_name(io)) + " mid-tensor";
    }
    if (b == kDirectAbort) return *code = kFailedPrecondition, "the sender refused to write into this listener's shared destination " + name + " (its own error says why)";
    if (b != kChunkReady) return *code = kInvalidArgument, "expected the doorbell of direct piece " + std::to_string(i);
  }
  *code = kOk;
  return "";
}

std::string Listener::receive_device(Conn* c, const Header& h, Expectation* e, Code* code) {
  uint8_t dd[kDeviceDescriptorBytes];
  Io io = read_exact(c->fd, dd, kDeviceDescriptorBytes, stall_ms_, true, &e->cancelled);
  if (io != Io::kOk) {
    *code = io == Io::kCancelled ? kCancelled : io == Io::kStalled ? kDeadlineExceeded : kUnavailable;
    return io == Io::kCancelled ? e->cancel_why : std::string(io_name(io)) + " before the device descriptor";
  }
  DeviceDescriptor d;
  std::string bad = decode_device_descriptor(h, dd, &d);
  if (!bad.empty()) return *code = kInvalidArgument, bad;
  std::string why;
  if (h.path == kPathCudaIpc) {
    why = cuda::link::ipc_copy(device_, d.ipc_handle, d.offset, e->dst, e->len);
  } else {
    if (!e->has_nccl_id) return *code = kFailedPrecondition, "no NCCL id was announced with this tensor on the control plane";
    if (c->nccl && std::memcmp(c->nccl_id.internal, e->nccl_id.internal, nccl::kUniqueIdBytes) != 0)
      return *code = kFailedPrecondition, "the NCCL id announced for this tensor is not the one of this connection's communicator";
    // Header and descriptor passed: tell the sender to go, then join (first tensor) and receive.
    const uint8_t go = kDeviceGo;
    io = write_all(c->fd, &go, 1, stall_ms_);
    if (io != Io::kOk) return *code = kUnavailable, std::string(io_name(io)) + " before the transfer";
    if (!c->nccl) {
      c->nccl = cuda::link::nccl_join(nccl_, e->nccl_id, 1, device_, stall_ms_, &why);
      c->nccl_id = e->nccl_id;
    }
    if (c->nccl) why = c->nccl->recv(e->dst, e->len);
  }
  if (!why.empty()) return *code = kInternal, why;
  *code = kOk;
  return "";
}

bool Listener::serve_one(Conn* c) {
  const int fd = c->fd;
  uint8_t hb[kHeaderBytes];
  std::vector<uint8_t> reply;
  Io io = read_exact(fd, hb, kHeaderBytes, stall_ms_, false, &closing_);
  if (io != Io::kOk) return false;  // idle connection closed (or listener closing): nothing in flight
  auto t0 = Clock::now();

  // Refusals before any payload byte: answer, stop sending, drain briefly so the answer is read
  // rather than reset away, and close. No expectation of another session is touched.
  auto refuse = [&](Code code, uint64_t seq, const std::string& msg) {
    encode_reply(&reply, code, seq, msg);
    write_all(fd, reply.data(), reply.size(), stall_ms_);
    ::shutdown(fd, SHUT_WR);
    uint8_t sink[65536];
    auto d0 = Clock::now();
    while (since(d0) * 1000 < stall_ms_ && !closing_) {
      if (wait_fd(fd, POLLIN, kPollSliceMs, nullptr) != Io::kOk) continue;
      if (::recv(fd, sink, sizeof sink, 0) <= 0) break;
    }
    return false;
  };

  Header h;
  std::string bad = decode_header(hb, &h);
  if (!bad.empty()) return refuse(kInvalidArgument, 0, "data plane: " + bad);
  const std::string tensor = "tensor seq " + std::to_string(h.seq);
  std::shared_ptr<Expectation> e;
  Code refusal = kOk;
  std::string why;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto s = sessions_.find(h.session);
    uint8_t diff = 0;
    if (s != sessions_.end())
      for (size_t i = 0; i < kKeyBytes; ++i) diff |= s->second[i] ^ h.grant[i];
    ExpKey key{h.session, h.seq};
    if (s == sessions_.end()) {
      refusal = kNotFound, why = "data plane: " + tensor + ": unknown session " + hex(h.session);
    } else if (diff) {
      refusal = kUnauthenticated, why = "data plane: " + tensor + ": wrong grant for session " + hex(h.session);
    } else if (!(paths_ & (1u << h.path))) {
      refusal = kFailedPrecondition, why = "data plane: " + tensor + ": this listener does not take " + path_name(h.path) +
                                           (h.path >= kPathNccl ? " (it has no CUDA device or NCCL to take them with)" : "");
    } else if (!cv_.wait_for(lock, std::chrono::milliseconds(stall_ms_), [&] {
                 // The control-plane announcement may lag the bytes a little; wait, not forever.
                 auto it = expected_.find(key);
                 return closing_ || (it != expected_.end() && !it->second->claimed);
               })) {
      refusal = kFailedPrecondition, why = "data plane: " + tensor + " of session " + hex(h.session) + " was not announced on the control plane within " + std::to_string(stall_ms_) + " ms";
    } else if (closing_) {
      return false;
    } else {
      e = expected_[key];
      if (h.byte_length != e->len) {
        expected_.erase(key);
        refusal = kInvalidArgument, why = "data plane: " + tensor + ": byte_length " + std::to_string(h.byte_length) + " does not match the " + std::to_string(e->len) + " bytes announced";
      } else {
        e->claimed = true;
      }
    }
  }
  if (refusal != kOk) {
    // A wrong length from an authenticated peer fails the tensor it claimed to be.
    if (e) e->done({refusal, why, 0, 0});
    return refuse(refusal, h.seq, why);
  }

  // Header accepted: the payload goes straight into the destination.
  Checksum sum;
  size_t summed = 0;  // bytes of the payload checksummed so far (each piece as it lands, still in cache)
  Result r;
  uint8_t trailer[kTrailerBytes];
  if (h.path == kPathShm || h.path >= kPathNccl) {
    Code code = kOk;
    std::string why = h.path == kPathShm ? receive_ring(c, e.get(), &code, &e->cancelled, &r.direct) : receive_device(c, h, e.get(), &code);
    if (code == kOk) io = read_exact(fd, trailer, kTrailerBytes, stall_ms_, true, &e->cancelled);
    else r.code = code, r.message = "data plane: " + tensor + ": " + why, io = code == kDeadlineExceeded ? Io::kStalled : Io::kError;
  } else {
    io = read_exact(fd, e->dst, e->len, stall_ms_, true, &e->cancelled, [&](size_t got) { sum.update(e->dst + summed, got - summed), summed = got; });
    if (io == Io::kOk) io = read_exact(fd, trailer, kTrailerBytes, stall_ms_, true, &e->cancelled);
  }
  r.bytes = e->len;
  r.seconds = since(t0);
  if (r.code != kOk) {
    // The ring said why.
  } else if (io != Io::kOk) {
    if (io == Io::kCancelled) r.code = kCancelled, r.message = "data plane: " + tensor + ": " + e->cancel_why;
    else if (io == Io::kStalled) r.code = kDeadlineExceeded, r.message = "data plane: " + tensor + ": the sender stopped mid-tensor (no bytes for " + std::to_string(stall_ms_) + " ms)";
    else r.code = kUnavailable, r.message = "data plane: " + tensor + ": " + io_name(io) + " mid-tensor";
  } else if (get32(trailer + 4) != kTrailerMagic) {
    r.code = kInvalidArgument, r.message = "data plane: " + tensor + ": bad trailer (payload longer than byte_length?)";
  } else if (h.path == kPathTcp) {
    uint32_t want = get32(trailer), got = sum.value();
    if (want != got) r.code = kDataLoss, r.message = "data plane: " + tensor + ": checksum mismatch (payload corrupted in transit)";
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    expected_.erase(ExpKey{h.session, h.seq});
  }
  e->done(r);
  if (r.code != kOk) {
    // A direct transfer cancelled here was stopped with the sender's agreement (or it is stuck):
    // it reads a reply next and learns why.
    if (io == Io::kOk || io == Io::kStalled || (h.path != kPathTcp && r.code == kInvalidArgument) || r.code == kFailedPrecondition || (h.path >= kPathNccl && r.code == kInternal) ||
        (r.direct && r.code == kCancelled && !closing_))
      refuse(r.code, h.seq, r.message);
    return false;
  }
  encode_reply(&reply, kOk, h.seq, "");
  return write_all(fd, reply.data(), reply.size(), stall_ms_) == Io::kOk;
}

// ---- Sender ------------------------------------------------------------------------------------

Sender::Sender(const std::string& host, int port, int stall_ms, size_t slot_bytes, uint32_t slots, Path device_path, int device, bool offer_direct)
    : host_(host), slot_bytes_(slot_bytes), slots_(slots), device_path_(device_path), device_(device), offer_direct_(offer_direct), port_(port), stall_ms_(stall_ms) {
  if (device_path >= kPathNccl) {
    std::string why = cuda::link::usable(device);
    if (why.empty() && device_path == kPathNccl) {
      nccl_ = nccl::load(&why);
      if (nccl_ && nccl_->GetUniqueId(&nccl_id_) != nccl::kSuccess) why = "ncclGetUniqueId failed";
    }
    if (!why.empty()) throw std::runtime_error(std::string("data plane: cannot send through ") + path_name(device_path) + ": " + why);
  }
  thread_ = std::thread([this] { run(); });
}

std::string Sender::send_device(const Job& j, const DeviceDescriptor& d, Code* code, bool* reply_early) {
  Header h = j.h;
  h.path = device_path_;
  uint8_t dd[kDeviceDescriptorBytes];
  encode_device_descriptor(h, d, dd);
  Io io = write_all(fd_, dd, kDeviceDescriptorBytes, stall_ms_);
  if (io != Io::kOk) return *code = io == Io::kStalled ? kDeadlineExceeded : kUnavailable, std::string(io_name(io)) + " while sending";
  if (device_path_ == kPathCudaIpc) return *code = kOk, "";
  // NCCL: the receiver's go (its checks passed), or its reply (a refusal).
  io = wait_fd(fd_, POLLIN, stall_ms_ * 4, nullptr);
  uint8_t b = 0;
  ssize_t r = io == Io::kOk ? ::recv(fd_, &b, 1, MSG_PEEK) : -1;
  if (r <= 0) return *code = io == Io::kStalled ? kDeadlineExceeded : kUnavailable, "no go from the receiver before the NCCL transfer";
  if (b != kDeviceGo) return *reply_early = true, *code = kOk, "";
  ::recv(fd_, &b, 1, 0);
  std::string why;
  if (!nccl_peer_) nccl_peer_ = cuda::link::nccl_join(nccl_, nccl_id_, 0, device_, stall_ms_, &why);
  if (nccl_peer_) why = nccl_peer_->send(j.src, j.h.byte_length);
  if (!why.empty()) return *code = kInternal, why;
  return *code = kOk, "";
}

std::string Sender::create_segment() {
  const std::string name = fresh_segment_name("/longshot-dp");
  segment_size_ = kSegmentHeaderBytes + static_cast<size_t>(slots_) * slot_bytes_;
  int fd = ::shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return std::string("data plane: cannot create shared memory: ") + std::strerror(errno);
  segment_name_ = name;
  segment_linked(name);
  segment_fd_ = fd;  // kept open, and locked, while this sender lives: see sweep_stale_segments
  hold_segment(fd);
  if (::ftruncate(fd, static_cast<off_t>(segment_size_)) != 0) {
    std::string err = std::strerror(errno);
    return "data plane: cannot size shared memory to " + std::to_string(segment_size_) + " bytes: " + err;
  }
  void* m = ::mmap(nullptr, segment_size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return std::string("data plane: cannot map shared memory: ") + std::strerror(errno);
  segment_ = static_cast<uint8_t*>(m);
  put32(segment_, kSegmentMagic);
  put32(segment_ + 4, slots_);
  put64(segment_ + 8, slot_bytes_);
  return "";
}

int Sender::send_ring(const Job& j, bool* reply_early) {
  const size_t n = j.h.byte_length;
  uint8_t* ring = segment_ + kSegmentHeaderBytes;
  uint64_t freed = 0;
  // A slot comes back with one 'C'; anything else starts the receiver's reply (a refusal).
  auto take_free = [&]() -> Io {
    Io w = wait_fd(fd_, POLLIN, stall_ms_, nullptr);
    if (w != Io::kOk) return w;
    uint8_t b = 0;
    ssize_t r = ::recv(fd_, &b, 1, MSG_PEEK);
    if (r == 0) return Io::kClosed;
    if (r < 0) return errno == EINTR || errno == EAGAIN ? Io::kOk : Io::kError;
    if (b != kChunkFree) {
      *reply_early = true;
      return Io::kOk;
    }
    ::recv(fd_, &b, 1, 0);
    ++freed;
    return Io::kOk;
  };
  const uint8_t ready = kChunkReady;
  uint64_t i = 0;
  for (size_t off = 0; off < n; off += slot_bytes_, ++i) {
    while (i >= slots_ && freed + slots_ <= i) {
      Io io = take_free();
      if (io != Io::kOk || *reply_early) return static_cast<int>(io);
    }
    std::memcpy(ring + (i % slots_) * slot_bytes_, j.src + off, std::min(slot_bytes_, n - off));
    Io io = write_all(fd_, &ready, 1, stall_ms_);
    if (io != Io::kOk) return static_cast<int>(io);
  }
  while (freed < i) {
    Io io = take_free();
    if (io != Io::kOk || *reply_early) return static_cast<int>(io);
  }
  return static_cast<int>(Io::kOk);
}

void Sender::drop_mapping(size_t i) {
  ::munmap(direct_maps_[i].base, direct_maps_[i].size);
  ::close(direct_maps_[i].fd);
  direct_maps_.erase(direct_maps_.begin() + static_cast<std::ptrdiff_t>(i));
}

Sender::DirectMapping* Sender::direct_mapping(const std::string& name, Code* code, std::string* why) {
  // A segment the receiver unlinked (it freed that destination) takes no more tensors: let go of
  // its pages now rather than pin them until eviction.
  for (size_t i = direct_maps_.size(); i-- > 0;) {
    struct stat st {};
    if (direct_maps_[i].name != name && (::fstat(direct_maps_[i].fd, &st) != 0 || st.st_nlink == 0)) drop_mapping(i);
  }
  for (auto& m : direct_maps_) {
    if (m.name != name) continue;
    struct stat st {};
    if (::fstat(m.fd, &st) == 0 && st.st_nlink > 0) {
      m.used = ++direct_clock_;
      return &m;
    }
    // Freed and a new segment made under the same name (its 64 random bits make that all but
    // impossible): open the new one.
    drop_mapping(static_cast<size_t>(&m - direct_maps_.data()));
    break;
  }
  int fd = ::shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) return *code = kFailedPrecondition, *why = "cannot open the receiver's shared destination " + name + ": " + std::strerror(errno), nullptr;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0 || st.st_size <= 0) {
    ::close(fd);
    return *code = kFailedPrecondition, *why = "the receiver's shared destination " + name + " is not a segment of this user with mode 0600", nullptr;
  }
  const size_t size = static_cast<size_t>(st.st_size);
  void* m = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (m == MAP_FAILED) {
    const int err = errno;
    ::close(fd);
    return *code = kFailedPrecondition, *why = "cannot map the receiver's shared destination " + name + ": " + std::strerror(err), nullptr;
  }
  if (direct_maps_.size() >= kMaxDirectMappings) {
    size_t lru = 0;
    for (size_t i = 1; i < direct_maps_.size(); ++i)
      if (direct_maps_[i].used < direct_maps_[lru].used) lru = i;
    drop_mapping(lru);
  }
  direct_maps_.push_back({name, fd, static_cast<uint8_t*>(m), size, ++direct_clock_});
  return &direct_maps_.back();
}

std::string Sender::send_shm(const Job& j, Code* code, bool* reply_early, bool* ring, bool* direct) {
  auto io_error = [&](Io io, const char* where) {
    *code = io == Io::kStalled ? kDeadlineExceeded : kUnavailable;
    return std::string(io_name(io)) + " " + where;
  };
  // The receiver's answer: after its checks, which include waiting for the announcement.
  Io io = wait_fd(fd_, POLLIN, stall_ms_ * 4, nullptr);
  uint8_t b = 0;
  ssize_t r = io == Io::kOk ? ::recv(fd_, &b, 1, MSG_PEEK) : -1;
  if (r == 0) io = Io::kClosed;
  if (r <= 0) return io_error(io == Io::kOk ? Io::kError : io, "before the receiver's answer to the ring descriptor");
  if (b == kRingGo) {
    ::recv(fd_, &b, 1, 0);
    return *ring = true, *code = kOk, "";
  }
  if (b != kDirectGo) return *reply_early = true, *code = kOk, "";
  uint8_t msg[1 + kDirectBytes];
  io = read_exact(fd_, msg, sizeof msg, stall_ms_, true, nullptr);
  if (io != Io::kOk) return io_error(io, "in the receiver's direct descriptor");
  const uint8_t* d = msg + 1;
  const uint64_t n = j.h.byte_length, offset = get64(d + 8), length = get64(d + 16);
  // Refused descriptors: the receiver hears 'A' (its expectation fails) and this tensor fails
  // with why; nothing is written anywhere.
  auto refuse = [&](Code c, const std::string& why) {
    const uint8_t abort = kDirectAbort;
    write_all(fd_, &abort, 1, stall_ms_);
    *code = c;
    return "the receiver's direct descriptor was refused: " + why;
  };
  std::string name;
  if (get32(d) != kDirectMagic) return refuse(kInvalidArgument, "not a direct descriptor (bad magic)");
  if (get32(d + 4) != 0) return refuse(kInvalidArgument, "reserved direct-descriptor bytes are not zero");
  if (length != n) return refuse(kInvalidArgument, "its byte_length " + std::to_string(length) + " is not the tensor's " + std::to_string(n));
  if (std::string bad = segment_name_of(d + 24, &name); !bad.empty()) return refuse(kInvalidArgument, bad);
  Code c = kOk;
  std::string why;
  DirectMapping* m = direct_mapping(name, &c, &why);
  if (!m) return refuse(c, why);
  struct stat st {};
  const uint64_t size = ::fstat(m->fd, &st) == 0 ? std::min<uint64_t>(static_cast<uint64_t>(st.st_size), m->size) : 0;
  if (offset > size || n > size - offset)
    return refuse(kInvalidArgument, "bytes [" + std::to_string(offset) + ", " + std::to_string(offset) + " + " + std::to_string(n) + ") are not inside the " + std::to_string(size) + " bytes of segment " + name);
  *direct = true;
  uint8_t* dst = m->base + offset;
  const uint8_t ready = kChunkReady;
  for (uint64_t off = 0;;) {
    // Before each piece: has the receiver asked to stop (its expectation was cancelled) or gone?
    pollfd pfd{fd_, POLLIN, 0};
    if (::poll(&pfd, 1, 0) > 0) {
      r = ::recv(fd_, &b, 1, MSG_PEEK);
      if (r > 0 && b == kDirectStop) {
        ::recv(fd_, &b, 1, 0);
        const uint8_t abort = kDirectAbort;
        write_all(fd_, &abort, 1, stall_ms_);
        return *reply_early = true, *code = kOk, "";  // its reply says why
      }
      if (r > 0) return *reply_early = true, *code = kOk, "";  // a reply (it gave up on this tensor)
      return io_error(Io::kClosed, "mid-tensor");
    }
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(kDirectPieceBytes, n - off));
    copy_tensor_piece(dst + off, j.src + off, piece, n);
    off += piece;
    io = write_all(fd_, &ready, 1, stall_ms_);
    if (io != Io::kOk) return io_error(io, "mid-tensor");
    if (off >= n) break;
  }
  *code = kOk;
  return "";
}

Sender::~Sender() { close(); }

void Sender::send(const Header& h, const uint8_t* src, Done done, const uint8_t* base) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!closing_) {
      queue_.push_back({h, src, std::move(done), base});
      cv_.notify_all();
      return;
    }
  }
  done({kCancelled, "data plane: the sender is closed", 0, 0});
}

void Sender::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return;
    closing_ = true;
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (segment_) ::munmap(segment_, segment_size_);
  segment_ = nullptr;
  if (segment_fd_ >= 0) ::close(segment_fd_);
  segment_fd_ = -1;
  while (!direct_maps_.empty()) drop_mapping(direct_maps_.size() - 1);
  // Normally the receiver unlinked it already; not if it never took a tensor.
  if (!segment_name_.empty()) segment_unlink(segment_name_);
}

void Sender::run() {
  // Connect first; sends queued meanwhile wait.
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  std::string where = host_ + ":" + std::to_string(port_);
  int rc = ::getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &res);
  if (rc != 0) {
    broken_ = "data plane: cannot resolve " + where + ": " + gai_strerror(rc);
  } else {
    std::string err = "no address";
    for (addrinfo* a = res; a && fd_ < 0; a = a->ai_next) {
      int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) continue;
      tune(fd);
      if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
        std::lock_guard<std::mutex> lock(mu_);
        if (closing_) ::shutdown(fd, SHUT_RDWR);
        fd_ = fd;
      } else {
        err = std::strerror(errno);
        ::close(fd);
      }
    }
    ::freeaddrinfo(res);
    if (fd_ < 0) broken_ = "data plane: cannot connect to " + where + ": " + err;
  }
  for (;;) {
    Job j;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      j = std::move(queue_.front());
      queue_.pop_front();
      if (closing_) {
        lock.unlock();
        j.done({kCancelled, "data plane: the sender closed", 0, 0});
        continue;
      }
    }
    if (!broken_.empty()) {
      j.done({kUnavailable, broken_, 0, 0});
      continue;
    }
    Result r;
    {
      CpuSpan span(dataplane_cpu_ns());
      r = send_one(j);
    }
    if (r.code != kOk) broken_ = "data plane: connection unusable after an earlier failure: " + r.message;
    j.done(r);
  }
}

Result Sender::send_one(const Job& j) {
  auto t0 = Clock::now();
  const std::string tensor = "tensor seq " + std::to_string(j.h.seq);
  uint8_t hb[kHeaderBytes];
  Header h = j.h;
  h.path = device_path_ >= kPathNccl ? device_path_ : slot_bytes_ > 0 ? kPathShm : kPathTcp;
  if (h.path == kPathShm && !segment_) {
    std::string err = create_segment();
    if (!err.empty()) return {kFailedPrecondition, err, 0, since(t0)};
  }
  DeviceDescriptor device_descriptor;
  if (h.path == kPathCudaIpc) {
    const uint8_t* base = j.base ? j.base : j.src;
    device_descriptor.offset = static_cast<uint64_t>(j.src - base);
    std::string err = cuda::link::ipc_export(device_, base, &device_descriptor.ipc_handle);
    if (!err.empty()) return {kFailedPrecondition, "data plane: " + tensor + ": " + err, 0, since(t0)};
  }
  encode_header(h, hb);
  Io io = write_all(fd_, hb, kHeaderBytes, stall_ms_);
  Checksum sum;
  size_t off = 0;
  const size_t n = j.h.byte_length;
  bool reply_early = false;
  bool direct = false;
  if (h.path == kPathShm) {
    uint8_t rd[kRingBytes] = {0};
    put32(rd, kRingMagic);
    put32(rd + 4, slots_);
    put64(rd + 8, slot_bytes_);
    std::memcpy(rd + 16, segment_name_.data(), std::min(segment_name_.size(), kSegmentNameBytes - 1));
    put32(rd + 16 + kSegmentNameBytes, offer_direct_ ? kRingOfferDirect : 0);
    if (io == Io::kOk) io = write_all(fd_, rd, kRingBytes, stall_ms_);
    bool ring = !offer_direct_;
    if (io == Io::kOk && offer_direct_) {
      Code code = kOk;
      std::string why = send_shm(j, &code, &reply_early, &ring, &direct);
      if (code != kOk) return {code, "data plane: " + tensor + ": " + why, n, since(t0), direct};
    }
    if (io == Io::kOk && ring && !reply_early) io = static_cast<Io>(send_ring(j, &reply_early));
    off = n;  // no checksum on this path: the trailer carries 0
  } else if (h.path >= kPathNccl && io == Io::kOk) {
    Code code = kOk;
    std::string why = send_device(j, device_descriptor, &code, &reply_early);
    if (code != kOk) {
      // The receiver may have said why (a refusal); otherwise this is the error.
      uint8_t rb[kReplyBytes];
      if (code == kInternal || code == kFailedPrecondition) {
        if (read_exact(fd_, rb, kReplyBytes, 1000, true, nullptr) == Io::kOk && get32(rb) == kReplyMagic && get16(rb + 6) != kOk) {
          uint32_t len = std::min(get32(rb + 16), kMaxReplyMessage);
          std::string msg(len, '\0');
          if (len && read_exact(fd_, reinterpret_cast<uint8_t*>(msg.data()), len, stall_ms_, true, nullptr) == Io::kOk) why += " (the receiver: " + msg + ")";
        }
      }
      return {code, "data plane: " + tensor + ": " + why, n, since(t0)};
    }
    off = n;  // no checksum: the bytes never cross this socket
  }
  // Checksum each piece just before writing it, while it is in cache.
  while (io == Io::kOk && !reply_early && off < n) {
    size_t piece = std::min(n - off, kIoBytes);
    sum.update(j.src + off, piece);
    io = write_all(fd_, j.src + off, piece, stall_ms_);
    off += piece;
  }
  uint8_t trailer[kTrailerBytes];
  put32(trailer, h.path == kPathTcp ? sum.value() : 0);
  put32(trailer + 4, kTrailerMagic);
  if (io == Io::kOk && !reply_early) io = write_all(fd_, trailer, kTrailerBytes, stall_ms_);
  // The reply; after a failed write the receiver may still have said why it refused.
  uint8_t rb[kReplyBytes];
  const int reply_ms = io == Io::kOk ? stall_ms_ * 4 : 1000;
  Io rio = Io::kOk;
  if (direct && !reply_early) {
    // A stop the receiver sent while the last piece's doorbell was on its way: the reply that
    // follows says why.
    uint8_t b = 0;
    rio = wait_fd(fd_, POLLIN, reply_ms, nullptr);
    if (rio == Io::kOk && ::recv(fd_, &b, 1, MSG_PEEK) == 1 && b == kDirectStop) ::recv(fd_, &b, 1, 0);
  }
  if (rio == Io::kOk) rio = read_exact(fd_, rb, kReplyBytes, reply_ms, true, nullptr);
  Result r;
  r.bytes = n;
  r.seconds = since(t0);
  r.direct = direct;
  if (rio == Io::kOk && get32(rb) == kReplyMagic) {
    uint32_t len = std::min(get32(rb + 16), kMaxReplyMessage);
    std::string msg(len, '\0');
    if (len && read_exact(fd_, reinterpret_cast<uint8_t*>(msg.data()), len, stall_ms_, true, nullptr) != Io::kOk) msg = "(message lost)";
    r.code = static_cast<Code>(get16(rb + 6));
    if (r.code == kOk && get64(rb + 8) != j.h.seq) r.code = kInternal, msg = "data plane: reply for seq " + std::to_string(get64(rb + 8)) + " to " + tensor;
    r.message = r.code == kOk ? "" : (msg.empty() ? "data plane: " + tensor + " refused" : msg);
    return r;
  }
  if (rio == Io::kOk) return {kInternal, "data plane: " + tensor + ": the receiver answered with something that is not a reply", n, r.seconds};
  Io cause = io != Io::kOk ? io : rio;
  Code code = cause == Io::kStalled ? kDeadlineExceeded : kUnavailable;
  return {code, "data plane: " + tensor + ": " + io_name(cause) + (io != Io::kOk ? " while sending" : " before acknowledging"), n, r.seconds};
}

}  // namespace ls::dp
