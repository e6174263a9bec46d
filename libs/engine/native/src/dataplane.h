// Data plane: tensor bytes between stages over TCP or, between processes of one host, through
// shared memory (a ring, or straight into a destination that lives in shared memory), moved by
// native threads from the sender's buffer into the receiver's preallocated buffer. gRPC stays
// the control plane: it announces each tensor (session, seq, byte length) to the receiver, which
// registers the destination here (`Listener::expect`) before or while the bytes arrive.
//
// Wire format on one connection, per tensor (all integers little-endian):
//   header  (64 bytes)  magic "LSDP" u32 | version u16 | header bytes u16 (64) | seq u64 |
//                       byte_length u64 | session key [16] | grant [16] | path u8 | reserved [7] (0)
//   path 0 (TCP): payload (byte_length bytes)
//   path 1 (shared memory): ring descriptor (64 bytes) magic "LSDS" u32 | slots u32 |
//                       slot bytes u64 | segment name [40] (NUL-padded, starts with '/') |
//                       flags u32 (bit 0: the sender offers a direct transfer) | reserved u32 (0);
//       without the offer, the ring: per chunk i (slot i % slots, slot bytes each but the last)
//               the sender writes one byte 'D' when the chunk is in its slot and the receiver one
//               byte 'C' once it has copied it out (the socket is the doorbell)
//       with the offer, the receiver first answers one byte:
//               'R': the ring, as above (the destination is not in a shared segment);
//               'W' and a direct descriptor (64 bytes) magic "LSDW" u32 | reserved u32 (0) |
//                   offset u64 | byte_length u64 (the header's) | segment name [40] (NUL-padded):
//                   the destination is bytes [offset, offset + byte_length) of the receiver's
//                   segment of that name. The sender maps it read-write and copies the payload
//                   there itself, in pieces of kDirectPieceBytes (at least one piece, even empty),
//                   writing one byte 'D' after each; or one byte 'A' instead when it refuses the
//                   descriptor (then it fails the tensor) or when the receiver asked it to stop
//                   (one byte 'S', sent by a receiver whose expectation was cancelled, which
//                   waits for that 'A' or the last 'D' before it settles: a live sender never
//                   writes a destination after its expectation settled).
//               or its reply: a refusal.
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
// Shared memory, the ring: the sender creates one segment per connection (shm_open O_EXCL,
// mode 0600): a 64-byte segment header (magic "LSDM" u32 | slots u32 | slot bytes u64) and
// `slots` slots. The receiver maps it read-only after the tensor's header passed every check,
// unlinks its name (so nothing else attaches and nothing is left behind once both ends exit) and
// copies each chunk from its slot into the destination. Path 1 carries no checksum: the bytes
// never leave the host's memory, and a second copy pass would cost a fifth of the bandwidth.
//
// Shared memory, direct (one copy instead of the ring's two): a destination the receiver
// allocated with `Listener::allocate_shared` is itself a POSIX shared-memory segment (created
// O_EXCL, mode 0600, its pages reserved with posix_fallocate, named /longshot-dd-<pid>-<random>
// until the buffer is freed, or until exit() of its process: an atexit handler unlinks what
// finalizers did not). When a path-1 tensor's header passed every check, its sender
// offered direct, and its destination lies whole inside one such segment, the receiver names the
// segment and the destination's range in it instead of taking the ring; the sender copies the
// tensor there itself (streaming stores for a large tensor, as the ring's copy out). The sender
// refuses a descriptor whose name is not a POSIX shared-memory name, whose segment it cannot open
// or is not its own user's with mode 0600, or whose range is not inside the segment (INVALID_ARGUMENT
// or FAILED_PRECONDITION for that tensor, nothing written). The sender keeps up to
// kMaxDirectMappings receivers' segments mapped and drops one as soon as the receiver unlinked it.
// Trust: segments are mode 0600, so only processes of the same user can open them, and a name
// travels only to a peer that passed the session's key and grant checks; a process of the same
// user could ptrace the worker and write its memory anyway, so a direct segment gives a peer no
// power it did not have. The receiver asks only for the expected range; nothing in the kernel
// stops a malicious sender of the same user from writing elsewhere in the segment (or shrinking
// it under the receiver), which is the same-user trust above. A sender that stops mid-tensor
// fails it with DEADLINE_EXCEEDED after stall_ms with no piece doorbell, as on the ring; if such
// a sender resumed later it would finish at most its current piece before it saw the closed
// connection (a cancellation while the listener closes has the same limit).
//
// Device descriptor (paths 2 and 3): magic "LSDV" u32 | path u8 | reserved [3] | seq u64 |
// byte_length u64 (both equal to the header's) | offset u64 (path 3: of the payload in the
// allocation the handle names; 0 on path 2) | reserved [32] (0) | IPC handle [64] (path 3;
// 0 on path 2). NCCL's rendezvous id travels on the control plane (the gRPC TensorHeader), never
// here: the receiver gets it with the expectation (`Listener::expect`).
//
// Version 2 checksums the payload with the standard CRC-32C (version 1 used four interleaved
// lanes combined by a second CRC). Version 3 adds the direct transfer: its sender waits for the
// receiver's answer to the offer, which a version-2 receiver would never send, so each refuses
// the other's headers with a message naming both versions rather than stalling.
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
constexpr uint16_t kVersion = 3;
constexpr size_t kHeaderBytes = 64;
constexpr size_t kTrailerBytes = 8;
constexpr size_t kReplyBytes = 24;
constexpr size_t kKeyBytes = 16;
constexpr uint32_t kMaxReplyMessage = 4096;
constexpr uint32_t kRingMagic = 0x5344534cu;     // "LSDS"
constexpr uint32_t kSegmentMagic = 0x4d44534cu;  // "LSDM"
constexpr size_t kRingBytes = 64;
constexpr size_t kSegmentHeaderBytes = 64;
constexpr size_t kSegmentNameBytes = 40;  // a name field, its NUL included
constexpr uint32_t kRingOfferDirect = 1u;  // ring descriptor flag
constexpr uint8_t kChunkReady = 'D';
constexpr uint8_t kChunkFree = 'C';
constexpr uint8_t kRingGo = 'R';
constexpr uint8_t kDirectGo = 'W';
constexpr uint8_t kDirectAbort = 'A';
constexpr uint8_t kDirectStop = 'S';
constexpr uint32_t kDirectMagic = 0x5744534cu;  // "LSDW"
constexpr size_t kDirectBytes = 64;
// A direct transfer rings one doorbell per piece: the receiver's stall clock runs per piece, as
// per chunk on the ring, whatever the tensor's size.
constexpr uint64_t kDirectPieceBytes = 16u << 20;
constexpr size_t kMaxDirectMappings = 8;
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
  bool direct = false;  // the sender wrote straight into a shared destination (path 1)
};
using Done = std::function<void(const Result&)>;

// The shared destinations of one Listener (`Listener::allocate_shared`), by address: a path-1
// tensor goes direct when its destination lies whole inside one of them. It has its own mutex
// and lifetime (shared with every destination): a destination is freed by its JavaScript
// finalizer, on the JS thread, possibly after its Listener was closed and deleted, while the
// data-plane threads look destinations up here.
class SharedRegistry {
 public:
  void add(const uint8_t* base, size_t bytes, const std::string& name);
  void remove(const uint8_t* base);
  // The segment holding [p, p + n) whole: its name and p's offset in it; false if none does.
  bool find(const uint8_t* p, size_t n, std::string* name, uint64_t* offset) const;

 private:
  struct Entry {
    size_t bytes;
    std::string name;
  };
  mutable std::mutex mu_;
  std::map<const uint8_t*, Entry> by_base_;
};

// A destination buffer of `size()` bytes in a POSIX shared-memory segment of this process,
// mapped read-write. Deleting it unregisters it, then unmaps and unlinks the segment (a sender
// that still has it mapped keeps its pages until it lets go: writes there reach no one).
class SharedDestination {
 public:
  ~SharedDestination();
  uint8_t* data() const { return base_; }
  size_t size() const { return bytes_; }
  const std::string& name() const { return name_; }

 private:
  friend class Listener;
  SharedDestination() = default;
  std::shared_ptr<SharedRegistry> registry_;
  std::string name_;
  uint8_t* base_ = nullptr;
  size_t bytes_ = 0;
  size_t mapped_ = 0;
  int fd_ = -1;  // holds the segment's liveness lock (sweep_stale_segments)
};

// Segments of this data plane (names /longshot-dd-* and /longshot-dp-*) in `dir` (/dev/shm) that
// no live process owns any more, unlinked: each owner holds a shared flock on its segment while it
// lives, and a process killed by a signal releases it with its descriptors but cannot unlink. Only
// this user's segments, and only those unchanged for `min_age_seconds` (a segment being created
// is locked a moment after it exists). Returns how many it unlinked.
int sweep_stale_segments(const char* dir, int min_age_seconds);
constexpr int kStaleSegmentSeconds = 60;

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
  // Stale segments the constructor unlinked (sweep_stale_segments; listeners that take shm only).
  int swept() const { return swept_; }

  void add_session(const Key& session, const Key& grant);
  // Fails the session's outstanding expectations with CANCELLED.
  void remove_session(const Key& session);
  // Registers the destination of tensor `seq` of `session`; `done` runs once, on a data-plane
  // thread (or this one), after which `dst` is never written again. `nccl_id`: the NCCL
  // rendezvous id the control plane announced with the tensor (path 2 only).
  void expect(const Key& session, uint64_t seq, uint8_t* dst, size_t len, Done done, const nccl::UniqueId* nccl_id = nullptr);
  // Settles an expectation with CANCELLED (now if unclaimed, else once its reader stops).
  void cancel(const Key& session, uint64_t seq, const std::string& why);
  // A destination buffer of `bytes` bytes (zeroed) that senders on this host write straight
  // into (a direct transfer, path 1), whole or any part of it as a destination. Throws
  // std::runtime_error saying why when shared memory is unusable (no shm path, /dev/shm full).
  std::unique_ptr<SharedDestination> allocate_shared(size_t bytes);
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
  // Path 1's payload: chunks from the sender's ring into `e->dst`, or the sender's direct
  // transfer into it (`*direct` set) when it offered one and `e->dst` is a shared destination.
  // Empty, or why it failed (`*code` set).
  std::string receive_ring(Conn* c, Expectation* e, Code* code, const std::atomic<bool>* stop, bool* direct);
  // The direct transfer into `e->dst`, bytes [offset, offset + e->len) of segment `name`.
  std::string receive_direct(Conn* c, Expectation* e, const std::string& name, uint64_t offset, Code* code, const std::atomic<bool>* stop);
  // Paths 2 and 3: the descriptor, then the bytes through NCCL or an IPC handle. Same contract.
  std::string receive_device(Conn* c, const Header& h, Expectation* e, Code* code);
  void reap_locked();

  int listen_fd_ = -1;
  int port_ = 0;
  int swept_ = 0;
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
  std::shared_ptr<SharedRegistry> shared_ = std::make_shared<SharedRegistry>();
};

// One data-plane connection to a Listener; sends tensors in call order from its own thread.
// With slot_bytes > 0 the payloads go through a shared-memory ring of `slots` slots (path 1):
// only for a listener on this host. With a device path (`device_path` 2 or 3) the payloads go
// through NCCL (a communicator whose id `nccl_id()` gives, to pass on the control plane) or as
// CUDA IPC handles (same GPU only); the constructor throws why when that path is not available.
// On path 1 it offers each tensor direct (`offer_direct`), and writes it straight into the
// receiver's destination when that is a shared one; the ring carries the others.
class Sender {
 public:
  Sender(const std::string& host, int port, int stall_ms, size_t slot_bytes = 0, uint32_t slots = 0, Path device_path = kPathTcp, int device = 0,
         bool offer_direct = true);
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
  // Path 1 with the direct offer: the receiver's answer, then the direct copy into the
  // destination it named (`*direct` set), or `*ring` set when it answered for the ring. Empty, or
  // why it failed (`*code` set: the tensor fails with it); `*reply_early` when the receiver
  // answered with its reply.
  std::string send_shm(const Job& j, Code* code, bool* reply_early, bool* ring, bool* direct);
  // A receiver's segment mapped read-write, cached by name; nullptr and why (`*code` set) if it
  // cannot be opened or is not a segment of this user with mode 0600.
  struct DirectMapping {
    std::string name;
    int fd = -1;
    uint8_t* base = nullptr;
    size_t size = 0;
    uint64_t used = 0;  // when it was last used, for eviction
  };
  DirectMapping* direct_mapping(const std::string& name, Code* code, std::string* why);
  void drop_mapping(size_t i);
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
  int segment_fd_ = -1;  // holds the ring's liveness lock (sweep_stale_segments)
  bool offer_direct_;
  std::vector<DirectMapping> direct_maps_;
  uint64_t direct_clock_ = 0;
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
