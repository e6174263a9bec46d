// Data plane: tensor bytes between stages over TCP or, between processes of one host, through a
// shared-memory ring, moved by native threads straight from the sender's buffer into the
// receiver's preallocated buffer. gRPC stays the control plane: it
// announces each tensor (session, seq, byte length) to the receiver, which registers the
// destination here (`Listener::expect`) before or while the bytes arrive.
//
// Wire format on one connection, per tensor (all integers little-endian):
//   header  (64 bytes)  magic "LSDP" u32 | version u16 | header bytes u16 (64) | seq u64 |
//                       byte_length u64 | session key [16] | grant [16] | path u8 | reserved [7] (0)
//   path 0 (TCP): payload (byte_length bytes)
//   path 1 (shared memory): ring descriptor (64 bytes) magic "LSDS" u32 | slots u32 |
//                       slot bytes u64 | segment name [48] (NUL-padded, starts with '/');
//                       then per chunk i (slot i % slots, slot bytes each but the last) the
//                       sender writes one byte 'D' when the chunk is in its slot and the receiver
//                       one byte 'C' once it has copied it out (the socket is the doorbell)
//   paths 2 (NCCL) and 3 (CUDA IPC): device descriptor (128 bytes), then
//       path 2: the receiver answers one byte 'G' once the header and descriptor passed its
//               checks (or its reply: a refusal), and only then do both ends move the payload
//               with ncclSend / ncclRecv on the connection's two-rank communicator, in messages
//               of kNcclMessageBytes (device_link.h)
//       path 3: nothing; the receiver opens the handle and copies device to device
//   trailer (8 bytes)   checksum u32 (CRC-32C of the payload, crc32c.h; 0 on path 1) | magic "LSDE" u32
// and the receiver answers each tensor with
//   reply   (24 bytes)  magic "LSDR" u32 | version u16 | code u16 (gRPC status) | seq u64 |
//                       message bytes u32 | reserved u32; then the message (UTF-8)
//
// The receiver checks the header (magic, version, session key, grant, seq, byte_length against
// what the control plane announced) before any payload byte reaches a destination buffer; the
// checksum, which the sender computes while it writes (hence a trailer, not a header field), is
// checked once the bytes are in. A refused or failed tensor settles only its own expectation.
//
// Shared memory: the sender creates one segment per connection (shm_open O_EXCL, mode 0600):
// a 64-byte segment header (magic "LSDM" u32 | slots u32 | slot bytes u64) and `slots` slots.
// The receiver maps it read-only after the tensor's header passed every check, unlinks its name
// (so nothing else attaches and nothing is left behind once both ends exit) and copies each
// chunk from its slot into the destination. Path 1 carries no checksum: the bytes never leave
// the host's memory, and a second copy pass would cost a fifth of the bandwidth.
//
// Device descriptor (paths 2 and 3): magic "LSDV" u32 | path u8 | reserved [3] | seq u64 |
// byte_length u64 (both equal to the header's) | offset u64 (path 3: of the payload in the
// allocation the handle names; 0 on path 2) | reserved [32] (0) | IPC handle [64] (path 3;
// 0 on path 2). NCCL's rendezvous id travels on the control plane (the gRPC TensorHeader), never
// here: the receiver gets it with the expectation (`Listener::expect`).
//
// Version 2 checksums the payload with the standard CRC-32C (version 1 used four interleaved
// lanes combined by a second CRC; a version-1 peer is refused with a clear message).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "device_link.h"
#include "nccl_abi.h"

namespace ls::dp {

constexpr uint32_t kMagic = 0x5044534cu;         // "LSDP"
constexpr uint32_t kTrailerMagic = 0x4544534cu;  // "LSDE"
constexpr uint32_t kReplyMagic = 0x5244534cu;    // "LSDR"
constexpr uint16_t kVersion = 2;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kTrailerBytes = 8;
constexpr size_t kReplyBytes = 24;
constexpr size_t kKeyBytes = 16;
constexpr uint32_t kMaxReplyMessage = 4096;
constexpr uint32_t kRingMagic = 0x5344534cu;     // "LSDS"
constexpr uint32_t kSegmentMagic = 0x4d44534cu;  // "LSDM"
constexpr size_t kRingBytes = 64;
constexpr size_t kSegmentHeaderBytes = 64;
constexpr size_t kSegmentNameBytes = 48;
constexpr uint8_t kChunkReady = 'D';
constexpr uint8_t kChunkFree = 'C';
constexpr uint32_t kDeviceMagic = 0x5644534cu;   // "LSDV"
constexpr size_t kDeviceDescriptorBytes = 128;
constexpr uint8_t kDeviceGo = 'G';

enum Path : uint8_t { kPathTcp = 0, kPathShm = 1, kPathNccl = 2, kPathCudaIpc = 3 };
const char* path_name(Path p);

// gRPC status codes, so the control plane can pass them on unchanged.
enum Code : uint16_t {
  kOk = 0,
  kCancelled = 1,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kFailedPrecondition = 9,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};

using Key = std::array<uint8_t, kKeyBytes>;

struct Header {
  uint64_t seq = 0;
  uint64_t byte_length = 0;
  Key session{};
  Key grant{};
  Path path = kPathTcp;
};

void encode_header(const Header& h, uint8_t out[kHeaderBytes]);
// Empty on success, else why the bytes are not a header of this version.
std::string decode_header(const uint8_t in[kHeaderBytes], Header* h);

struct DeviceDescriptor {
  uint64_t offset = 0;
  std::array<uint8_t, 64> ipc_handle{};
};
void encode_device_descriptor(const Header& h, const DeviceDescriptor& d, uint8_t out[kDeviceDescriptorBytes]);
// Empty when `in` is the descriptor of tensor `h` (its path, seq and byte_length), else why not.
std::string decode_device_descriptor(const Header& h, const uint8_t in[kDeviceDescriptorBytes], DeviceDescriptor* d);

// CRC-32C of a payload fed in pieces (crc32c.h picks the fastest implementation once).
class Checksum {
 public:
  void update(const uint8_t* p, size_t n);
  uint32_t value() const { return ~state_; }

 private:
  uint32_t state_ = 0xffffffffu;
};

struct Result {
  Code code = kOk;
  std::string message;
  uint64_t bytes = 0;
  double seconds = 0;  // first header byte to last payload byte
};
using Done = std::function<void(const Result&)>;

// Accepts data-plane connections and lands announced tensors in their destination buffers.
class Listener {
 public:
  // Binds host:port (port 0: any) and starts accepting. `stall_ms`: the longest a peer may stop
  // mid-frame, and how long a tensor may wait for its control-plane announcement. `paths`:
  // bit 1 << Path for each path it takes (others are refused with FAILED_PRECONDITION). The
  // device paths need a usable CUDA `device` (and NCCL for path 2): without, it throws why.
  Listener(const std::string& host, int port, int stall_ms, unsigned paths = 1u << kPathTcp, int device = 0);
  ~Listener();
  int port() const { return port_; }

  void add_session(const Key& session, const Key& grant);
  // Fails the session's outstanding expectations with CANCELLED.
  void remove_session(const Key& session);
  // Registers the destination of tensor `seq` of `session`; `done` runs once, on a data-plane
  // thread (or this one), after which `dst` is never written again. `nccl_id`: the NCCL
  // rendezvous id the control plane announced with the tensor (path 2 only).
  void expect(const Key& session, uint64_t seq, uint8_t* dst, size_t len, Done done, const nccl::UniqueId* nccl_id = nullptr);
  // Settles an expectation with CANCELLED (now if unclaimed, else once its reader stops).
  void cancel(const Key& session, uint64_t seq, const std::string& why);
  void close();

 private:
  struct Expectation {
    uint8_t* dst;
    size_t len;
    Done done;
    bool claimed = false;
    bool has_nccl_id = false;
    nccl::UniqueId nccl_id{};
    std::atomic<bool> cancelled{false};
    std::string cancel_why;
  };
  // A sender's shared-memory segment, mapped read-only once its first tensor was accepted.
  struct Segment {
    std::string name;
    const uint8_t* base = nullptr;
    size_t size = 0;
    uint32_t slots = 0;
    uint64_t slot_bytes = 0;
    ~Segment();
  };
  struct Conn {
    int fd;
    std::thread thread;
    std::atomic<bool> finished{false};
    std::unique_ptr<Segment> segment;
    std::unique_ptr<cuda::link::NcclPeer> nccl;  // rank 1, joined at the first path-2 tensor
    nccl::UniqueId nccl_id{};
  };
  using ExpKey = std::pair<Key, uint64_t>;

  void accept_loop();
  void serve(Conn* c);
  // One tensor on `c`; false when the connection must close.
  bool serve_one(Conn* c);
  // Path 1's payload: chunks from the sender's ring into `e->dst`. Empty, or why it failed
  // (`*code` set).
  std::string receive_ring(Conn* c, Expectation* e, Code* code, const std::atomic<bool>* stop);
  // Paths 2 and 3: the descriptor, then the bytes through NCCL or an IPC handle. Same contract.
  std::string receive_device(Conn* c, const Header& h, Expectation* e, Code* code);
  void reap_locked();

  int listen_fd_ = -1;
  int port_ = 0;
  int stall_ms_;
  unsigned paths_;
  int device_;
  const nccl::Api* nccl_ = nullptr;
  std::atomic<bool> closing_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<Key, Key> sessions_;
  std::map<ExpKey, std::shared_ptr<Expectation>> expected_;
  std::vector<std::unique_ptr<Conn>> conns_;
};

// One data-plane connection to a Listener; sends tensors in call order from its own thread.
// With slot_bytes > 0 the payloads go through a shared-memory ring of `slots` slots (path 1):
// only for a listener on this host. With a device path (`device_path` 2 or 3) the payloads go
// through NCCL (a communicator whose id `nccl_id()` gives, to pass on the control plane) or as
// CUDA IPC handles (same GPU only); the constructor throws why when that path is not available.
class Sender {
 public:
  Sender(const std::string& host, int port, int stall_ms, size_t slot_bytes = 0, uint32_t slots = 0, Path device_path = kPathTcp, int device = 0);
  ~Sender();
  // `src` must stay valid and unchanged until `done` has run. Path 3: `src` is device memory at
  // `src - base` bytes into the allocation that starts at `base` (nullptr: `src` is its start).
  void send(const Header& h, const uint8_t* src, Done done, const uint8_t* base = nullptr);
  void close();
  const nccl::UniqueId& nccl_id() const { return nccl_id_; }

 private:
  struct Job {
    Header h;
    const uint8_t* src;
    Done done;
    const uint8_t* base = nullptr;
  };
  void run();
  Result send_one(const Job& j);
  // Path 1's payload through the ring; returns the I/O outcome, `*reply_early` when the
  // receiver answered instead of freeing a slot (a refusal).
  int send_ring(const Job& j, bool* reply_early);
  // Paths 2 and 3: the descriptor `d` (prepared before the header, so that a buffer CUDA IPC
  // cannot export fails the tensor without touching the connection) and the bytes. Empty, or
  // why it failed (`*code` set); `*reply_early` when the receiver refused instead of saying go.
  std::string send_device(const Job& j, const DeviceDescriptor& d, Code* code, bool* reply_early);
  std::string create_segment();

  std::string host_;
  size_t slot_bytes_;
  uint32_t slots_;
  Path device_path_;
  int device_;
  const nccl::Api* nccl_ = nullptr;
  nccl::UniqueId nccl_id_{};
  std::unique_ptr<cuda::link::NcclPeer> nccl_peer_;  // rank 0, joined at the first tensor
  std::string segment_name_;
  uint8_t* segment_ = nullptr;
  size_t segment_size_ = 0;
  int port_;
  int stall_ms_;
  int fd_ = -1;
  std::string broken_;  // why the connection is unusable, once it is
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool closing_ = false;
};

}  // namespace ls::dp
