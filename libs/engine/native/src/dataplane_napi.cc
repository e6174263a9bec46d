// JavaScript face of the data plane (dataplane.h): DataPlaneListener and DataPlaneSender
// objects whose operations return promises settled from the data-plane threads through a
// thread-safe function; the framing helpers tests use to build traffic by hand.
#include "dataplane_napi.h"

#include <cstring>
#include <memory>
#include <stdexcept>

#include "crc32c.h"
#include "dataplane.h"
#include "device_link.h"
#include "nccl_loader.h"

namespace ls::dp {
namespace {

const char* code_name(Code c) {
  switch (c) {
    case kOk: return "OK";
    case kCancelled: return "CANCELLED";
    case kInvalidArgument: return "INVALID_ARGUMENT";
    case kDeadlineExceeded: return "DEADLINE_EXCEEDED";
    case kNotFound: return "NOT_FOUND";
    case kFailedPrecondition: return "FAILED_PRECONDITION";
    case kInternal: return "INTERNAL";
    case kUnavailable: return "UNAVAILABLE";
    case kDataLoss: return "DATA_LOSS";
    case kUnauthenticated: return "UNAUTHENTICATED";
  }
  return "UNKNOWN";
}

struct View {
  uint8_t* data;
  size_t length;
};

View view_arg(const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a typed array or Buffer");
  // The element pointer as napi gives it: TypedArray::ArrayBuffer().Data() fails (napi_invalid_arg)
  // on an array over a SharedArrayBuffer, which is what the head's block latents are.
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* data = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(v.Env(), v, &type, &length, &data, &buffer, &offset) != napi_ok)
    throw Napi::TypeError::New(v.Env(), std::string(what) + ": its memory cannot be read");
  return {static_cast<uint8_t*>(data), v.As<Napi::TypedArray>().ByteLength()};
}

// A path by name: 'tcp', 'shm', 'nccl', 'cuda-ipc'.
Path path_arg(const Napi::Value& v) {
  const std::string p = v.IsUndefined() ? "tcp" : v.ToString().Utf8Value();
  if (p == "tcp") return kPathTcp;
  if (p == "shm") return kPathShm;
  if (p == "nccl") return kPathNccl;
  if (p == "cuda-ipc") return kPathCudaIpc;
  throw Napi::RangeError::New(v.Env(), "path must be tcp, shm, nccl or cuda-ipc, got '" + p + "'");
}

nccl::UniqueId nccl_id_arg(const Napi::Value& v) {
  View b = view_arg(v, "ncclId");
  if (b.length != nccl::kUniqueIdBytes) throw Napi::TypeError::New(v.Env(), "ncclId must be " + std::to_string(nccl::kUniqueIdBytes) + " bytes");
  nccl::UniqueId id;
  std::memcpy(id.internal, b.data, nccl::kUniqueIdBytes);
  return id;
}

Key key_arg(const Napi::Value& v, const char* what) {
  View b = view_arg(v, what);
  if (b.length != kKeyBytes) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be " + std::to_string(kKeyBytes) + " bytes");
  Key k;
  std::memcpy(k.data(), b.data, kKeyBytes);
  return k;
}

uint64_t seq_arg(const Napi::Value& v) {
  double d = v.ToNumber().DoubleValue();
  if (!(d >= 1 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
    throw Napi::RangeError::New(v.Env(), "seq must be a positive safe integer");
  return static_cast<uint64_t>(d);
}

int int_arg(const Napi::Value& v, const char* what, int lo, int hi) {
  double d = v.ToNumber().DoubleValue();
  if (!(d >= lo && d <= hi) || d != static_cast<int>(d)) throw Napi::RangeError::New(v.Env(), std::string(what) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(d);
}

// One pending operation: its promise and the buffer it reads or writes, kept alive until settled.
struct Op {
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference keep;
  Result result;
};

// Settles operations on the JS thread; keeps the event loop alive while any is pending.
class Completer {
 public:
  explicit Completer(Napi::Env env) : finalized_(std::make_shared<bool>(false)) {
    auto finalized = finalized_;
    tsfn_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "longshot.dataplane", 0, 1,
                                          [finalized](Napi::Env) { *finalized = true; });
    tsfn_.Unref(env);
  }
  // At process exit Node may delete this function before it finalizes the object that owns it
  // (the environment goes once its last thread-safe function is gone, finalizing what is left):
  // releasing it then would touch freed memory (an abort at exit).
  ~Completer() {
    if (!*finalized_) tsfn_.Release();
  }

  // A new operation on `buffer`; the returned callback may run on any thread, once.
  std::pair<Napi::Promise, Done> start(Napi::Env env, Napi::Value buffer) {
    auto* op = new Op{Napi::Promise::Deferred::New(env), Napi::Persistent(buffer.As<Napi::Object>()), {}};
    if (pending_++ == 0) tsfn_.Ref(env);
    Napi::Promise promise = op->deferred.Promise();
    Done done = [this, op](const Result& r) {
      op->result = r;
      tsfn_.NonBlockingCall(op, [this](Napi::Env env, Napi::Function, Op* op) { settle(env, op); });
    };
    return {promise, done};
  }

 private:
  void settle(Napi::Env env, Op* op) {
    std::unique_ptr<Op> owned(op);
    if (--pending_ == 0) tsfn_.Unref(env);
    const Result& r = op->result;
    if (r.code == kOk) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("bytes", static_cast<double>(r.bytes));
      o.Set("seconds", r.seconds);
      o.Set("direct", r.direct);
      op->deferred.Resolve(o);
    } else {
      Napi::Error e = Napi::Error::New(env, r.message);
      e.Set("code", Napi::Number::New(env, r.code));
      e.Set("codeName", Napi::String::New(env, code_name(r.code)));
      op->deferred.Reject(e.Value());
    }
  }

  Napi::ThreadSafeFunction tsfn_;
  std::shared_ptr<bool> finalized_;  // set by the function's finalizer (JS thread)
  int pending_ = 0;
};

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DataPlaneListener",
                       {InstanceAccessor<&ListenerWrap::Port>("port"), InstanceAccessor<&ListenerWrap::Swept>("swept"), InstanceMethod<&ListenerWrap::AddSession>("addSession"),
                        InstanceMethod<&ListenerWrap::RemoveSession>("removeSession"), InstanceMethod<&ListenerWrap::Expect>("expect"),
                        InstanceMethod<&ListenerWrap::Cancel>("cancel"), InstanceMethod<&ListenerWrap::AllocateShared>("allocateShared"),
                        InstanceMethod<&ListenerWrap::Close>("close")});
  }
  // new DataPlaneListener(host, port, stallMs, shm, nccl?, cudaIpc?, device?): shm also takes
  // tensors through shared memory; nccl and cudaIpc through those (throws why when it cannot).
  ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info), completer_(info.Env()) {
    try {
      unsigned paths = (1u << kPathTcp) | (info[3].ToBoolean().Value() ? 1u << kPathShm : 0u) | (info[4].ToBoolean().Value() ? 1u << kPathNccl : 0u) |
                       (info[5].ToBoolean().Value() ? 1u << kPathCudaIpc : 0u);
      int device = info.Length() > 6 && !info[6].IsUndefined() ? int_arg(info[6], "device", 0, 1023) : 0;
      listener_ = std::make_unique<Listener>(info[0].ToString().Utf8Value(), int_arg(info[1], "port", 0, 65535), int_arg(info[2], "stallMs", 1, 3600000), paths, device);
    } catch (const std::runtime_error& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
  }
  ~ListenerWrap() override { listener_->close(); }

 private:
  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), listener_->port()); }
  Napi::Value Swept(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), listener_->swept()); }
  void AddSession(const Napi::CallbackInfo& info) { listener_->add_session(key_arg(info[0], "session"), key_arg(info[1], "grant")); }
  void RemoveSession(const Napi::CallbackInfo& info) { listener_->remove_session(key_arg(info[0], "session")); }
  // expect(session, seq, destination, ncclId?): resolves {bytes, seconds} once the tensor is in.
  Napi::Value Expect(const Napi::CallbackInfo& info) {
    Key session = key_arg(info[0], "session");
    uint64_t seq = seq_arg(info[1]);
    View dst = view_arg(info[2], "destination");
    std::unique_ptr<nccl::UniqueId> id;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) id = std::make_unique<nccl::UniqueId>(nccl_id_arg(info[3]));
    auto [promise, done] = completer_.start(info.Env(), info[2]);
    listener_->expect(session, seq, dst.data, dst.length, std::move(done), id.get());
    return promise;
  }
  void Cancel(const Napi::CallbackInfo& info) { listener_->cancel(key_arg(info[0], "session"), seq_arg(info[1]), info[2].ToString().Utf8Value()); }
  // allocateShared(bytes) -> Buffer: a destination in shared memory that senders on this host
  // write straight into; throws an Error saying why when shared memory is unusable.
  Napi::Value AllocateShared(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    double d = info[0].ToNumber().DoubleValue();
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d))) throw Napi::RangeError::New(env, "bytes must be a non-negative safe integer");
    std::unique_ptr<SharedDestination> dst;
    try {
      dst = listener_->allocate_shared(static_cast<size_t>(d));
    } catch (const std::runtime_error& e) {
      throw Napi::Error::New(env, e.what());
    }
    // The buffer owns the segment: its finalizer (JS thread) unregisters, unmaps and unlinks it.
    // It needs nothing of the listener (the registry is shared), so it may run after the
    // listener was closed and collected. Until the buffer is created, `dst` still owns it.
    // V8 is told of the memory, as it is of a Buffer.alloc: a heap that holds dropped shared
    // buffers of hundreds of MB is collected as soon as it would be for ordinary ones, which
    // returns their pages to /dev/shm.
    const int64_t bytes = static_cast<int64_t>(dst->size());
    Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::New(
        env, dst->data(), dst->size(),
        [bytes](Napi::Env env, uint8_t*, SharedDestination* hint) {
          delete hint;
          Napi::MemoryManagement::AdjustExternalMemory(env, -bytes);
        },
        dst.get());
    dst.release();
    Napi::MemoryManagement::AdjustExternalMemory(env, bytes);
    return buf;
  }
  void Close(const Napi::CallbackInfo&) { listener_->close(); }

  Completer completer_;
  std::unique_ptr<Listener> listener_;
};

class SenderWrap : public Napi::ObjectWrap<SenderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DataPlaneSender",
                       {InstanceMethod<&SenderWrap::Send>("send"), InstanceMethod<&SenderWrap::Close>("close"), InstanceAccessor<&SenderWrap::NcclId>("ncclId")});
  }
  // new DataPlaneSender(host, port, stallMs, slotBytes, slots): connects in the background;
  // slotBytes > 0 sends through shared memory: a ring of `slots` slots, or straight into a
  // receiver's shared destination (unless offerDirect, the eighth argument, is false).
  SenderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SenderWrap>(info), completer_(info.Env()) {
    int slot_bytes = info.Length() > 3 ? int_arg(info[3], "slotBytes", 0, 1 << 30) : 0;
    int slots = info.Length() > 4 ? int_arg(info[4], "slots", 0, 1024) : 0;
    if (slot_bytes > 0 && (slot_bytes < 4096 || slot_bytes % 64 != 0 || slots < 1)) throw Napi::RangeError::New(info.Env(), "slotBytes must be a multiple of 64 of at least 4096, with at least one slot");
    // (…, devicePath?, device?): 'nccl' or 'cuda-ipc' sends through that device path.
    Path device_path = info.Length() > 5 ? path_arg(info[5]) : kPathTcp;
    if (device_path == kPathShm) throw Napi::RangeError::New(info.Env(), "devicePath must be nccl or cuda-ipc");
    int device = info.Length() > 6 && !info[6].IsUndefined() ? int_arg(info[6], "device", 0, 1023) : 0;
    bool offer_direct = info.Length() > 7 && !info[7].IsUndefined() ? info[7].ToBoolean().Value() : true;
    try {
      sender_ = std::make_unique<Sender>(info[0].ToString().Utf8Value(), int_arg(info[1], "port", 1, 65535), int_arg(info[2], "stallMs", 1, 3600000), static_cast<size_t>(slot_bytes),
                                         static_cast<uint32_t>(slots), device_path, device, offer_direct);
    } catch (const std::runtime_error& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
    nccl_ = device_path == kPathNccl;
  }
  ~SenderWrap() override { sender_->close(); }

 private:
  // send(session, grant, seq, payload): resolves {bytes, seconds} once the receiver has it.
  Napi::Value Send(const Napi::CallbackInfo& info) {
    Header h;
    h.session = key_arg(info[0], "session");
    h.grant = key_arg(info[1], "grant");
    h.seq = seq_arg(info[2]);
    View src = view_arg(info[3], "payload");
    h.byte_length = src.length;
    auto [promise, done] = completer_.start(info.Env(), info[3]);
    sender_->send(h, src.data, std::move(done));
    return promise;
  }
  void Close(const Napi::CallbackInfo&) { sender_->close(); }
  // The NCCL rendezvous id (128 bytes) to announce on the control plane; null off the NCCL path.
  Napi::Value NcclId(const Napi::CallbackInfo& info) {
    if (!nccl_) return info.Env().Null();
    return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<const uint8_t*>(sender_->nccl_id().internal), nccl::kUniqueIdBytes);
  }

  Completer completer_;
  std::unique_ptr<Sender> sender_;
  bool nccl_ = false;
};

// header({seq, byteLength, session, grant}) -> Buffer: the frame header, for tests that build
// traffic by hand.
Napi::Value EncodeHeader(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  Header h;
  h.seq = static_cast<uint64_t>(o.Get("seq").ToNumber().DoubleValue());
  h.byte_length = static_cast<uint64_t>(o.Get("byteLength").ToNumber().DoubleValue());
  h.session = key_arg(o.Get("session"), "session");
  h.grant = key_arg(o.Get("grant"), "grant");
  h.path = o.Has("path") ? path_arg(o.Get("path")) : o.Get("shm").ToBoolean().Value() ? kPathShm : kPathTcp;
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), kHeaderBytes);
  encode_header(h, out.Data());
  return out;
}

Header header_of(const Napi::Object& o) {
  Header h;
  h.seq = static_cast<uint64_t>(o.Get("seq").ToNumber().DoubleValue());
  h.byte_length = static_cast<uint64_t>(o.Get("byteLength").ToNumber().DoubleValue());
  h.path = path_arg(o.Get("path"));
  return h;
}

// encodeDeviceDescriptor({seq, byteLength, path, offset?, handle?}) -> Buffer (128 bytes).
Napi::Value EncodeDeviceDescriptor(const Napi::CallbackInfo& info) {
  Napi::Object o = info[0].As<Napi::Object>();
  Header h = header_of(o);
  DeviceDescriptor d;
  if (!o.Get("offset").IsUndefined()) d.offset = static_cast<uint64_t>(o.Get("offset").ToNumber().DoubleValue());
  if (!o.Get("handle").IsUndefined()) {
    View b = view_arg(o.Get("handle"), "handle");
    if (b.length != d.ipc_handle.size()) throw Napi::TypeError::New(info.Env(), "handle must be 64 bytes");
    std::memcpy(d.ipc_handle.data(), b.data, b.length);
  }
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), kDeviceDescriptorBytes);
  encode_device_descriptor(h, d, out.Data());
  return out;
}

// checkDeviceDescriptor({seq, byteLength, path}, descriptor) -> '' or why the listener refuses it.
Napi::Value CheckDeviceDescriptor(const Napi::CallbackInfo& info) {
  Header h = header_of(info[0].As<Napi::Object>());
  View b = view_arg(info[1], "descriptor");
  if (b.length != kDeviceDescriptorBytes) throw Napi::TypeError::New(info.Env(), "descriptor must be " + std::to_string(kDeviceDescriptorBytes) + " bytes");
  DeviceDescriptor d;
  return Napi::String::New(info.Env(), decode_device_descriptor(h, b.data, &d));
}

// deviceLinks(device?, ncclLibrary?) -> {cuda: '' or why not, nccl: {version} or {reason}}: what
// the device paths would find here (the worker advertises them only when both are usable).
Napi::Value DeviceLinks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int device = info.Length() > 0 && !info[0].IsUndefined() ? int_arg(info[0], "device", 0, 1023) : 0;
  std::string library = info.Length() > 1 && !info[1].IsUndefined() ? info[1].ToString().Utf8Value() : nccl::kLibrary;
  Napi::Object out = Napi::Object::New(env);
  out.Set("cuda", cuda::link::usable(device));
  std::string why;
  const nccl::Api* api = nccl::load(&why, library);
  Napi::Object n = Napi::Object::New(env);
  n.Set("library", library);
  if (api) n.Set("version", nccl::version_string(api->version));
  else n.Set("reason", why);
  out.Set("nccl", n);
  return out;
}

// checksum(bytes, variant?): the payload checksum (CRC-32C) by the fastest implementation, or by
// the named one of checksumVariants() (the tests compare them all with a reference).
Napi::Value ChecksumOf(const Napi::CallbackInfo& info) {
  View v = view_arg(info[0], "bytes");
  crc::UpdateFn f = crc::best();
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    std::string want = info[1].ToString().Utf8Value();
    f = nullptr;
    for (const auto& var : crc::variants())
      if (want == var.name) f = var.update;
    if (!f) throw Napi::RangeError::New(info.Env(), "checksum variant '" + want + "' is not available on this CPU");
  }
  return Napi::Number::New(info.Env(), ~f(0xffffffffu, v.data, v.length));
}

Napi::Value ChecksumVariants(const Napi::CallbackInfo& info) {
  const auto& vs = crc::variants();
  Napi::Array out = Napi::Array::New(info.Env(), vs.size());
  for (size_t i = 0; i < vs.size(); ++i) out.Set(static_cast<uint32_t>(i), vs[i].name);
  return out;
}

}  // namespace

void register_dataplane(Napi::Env env, Napi::Object exports) {
  Napi::Object dp = Napi::Object::New(env);
  dp.Set("Listener", ListenerWrap::Define(env));
  dp.Set("Sender", SenderWrap::Define(env));
  dp.Set("encodeHeader", Napi::Function::New(env, EncodeHeader, "encodeHeader"));
  dp.Set("checksum", Napi::Function::New(env, ChecksumOf, "checksum"));
  dp.Set("checksumVariants", Napi::Function::New(env, ChecksumVariants, "checksumVariants"));
  dp.Set("encodeDeviceDescriptor", Napi::Function::New(env, EncodeDeviceDescriptor, "encodeDeviceDescriptor"));
  dp.Set("checkDeviceDescriptor", Napi::Function::New(env, CheckDeviceDescriptor, "checkDeviceDescriptor"));
  dp.Set("deviceLinks", Napi::Function::New(env, DeviceLinks, "deviceLinks"));
  Napi::Object c = Napi::Object::New(env);
  c.Set("headerBytes", static_cast<double>(kHeaderBytes));
  c.Set("trailerBytes", static_cast<double>(kTrailerBytes));
  c.Set("replyBytes", static_cast<double>(kReplyBytes));
  c.Set("keyBytes", static_cast<double>(kKeyBytes));
  c.Set("trailerMagic", static_cast<double>(kTrailerMagic));
  c.Set("replyMagic", static_cast<double>(kReplyMagic));
  c.Set("ringBytes", static_cast<double>(kRingBytes));
  c.Set("ringMagic", static_cast<double>(kRingMagic));
  c.Set("directMagic", static_cast<double>(kDirectMagic));
  c.Set("directBytes", static_cast<double>(kDirectBytes));
  c.Set("directPieceBytes", static_cast<double>(kDirectPieceBytes));
  c.Set("deviceDescriptorBytes", static_cast<double>(kDeviceDescriptorBytes));
  c.Set("ncclIdBytes", static_cast<double>(nccl::kUniqueIdBytes));
  dp.Set("constants", c);
  exports.Set("dataplane", dp);
}

}  // namespace ls::dp
