// JavaScript face of the data plane (dataplane.h): DataPlaneListener and DataPlaneSender
// objects whose operations return promises settled from the data-plane threads through a
// thread-safe function; the framing helpers tests use to build traffic by hand.
#include "dataplane_napi.h"

#include <cstring>
#include <memory>

#include "crc32c.h"
#include "dataplane.h"

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
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  return {static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset(), t.ByteLength()};
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
  explicit Completer(Napi::Env env) {
    tsfn_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "longshot.dataplane", 0, 1);
    tsfn_.Unref(env);
  }
  ~Completer() { tsfn_.Release(); }

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
      op->deferred.Resolve(o);
    } else {
      Napi::Error e = Napi::Error::New(env, r.message);
      e.Set("code", Napi::Number::New(env, r.code));
      e.Set("codeName", Napi::String::New(env, code_name(r.code)));
      op->deferred.Reject(e.Value());
    }
  }

  Napi::ThreadSafeFunction tsfn_;
  int pending_ = 0;
};

class ListenerWrap : public Napi::ObjectWrap<ListenerWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DataPlaneListener",
                       {InstanceAccessor<&ListenerWrap::Port>("port"), InstanceMethod<&ListenerWrap::AddSession>("addSession"),
                        InstanceMethod<&ListenerWrap::RemoveSession>("removeSession"), InstanceMethod<&ListenerWrap::Expect>("expect"),
                        InstanceMethod<&ListenerWrap::Cancel>("cancel"), InstanceMethod<&ListenerWrap::Close>("close")});
  }
  // new DataPlaneListener(host, port, stallMs, shm): shm also takes tensors through shared memory.
  ListenerWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ListenerWrap>(info), completer_(info.Env()) {
    try {
      unsigned paths = (1u << kPathTcp) | (info[3].ToBoolean().Value() ? 1u << kPathShm : 0u);
      listener_ = std::make_unique<Listener>(info[0].ToString().Utf8Value(), int_arg(info[1], "port", 0, 65535), int_arg(info[2], "stallMs", 1, 3600000), paths);
    } catch (const std::runtime_error& e) {
      throw Napi::Error::New(info.Env(), e.what());
    }
  }
  ~ListenerWrap() override { listener_->close(); }

 private:
  Napi::Value Port(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), listener_->port()); }
  void AddSession(const Napi::CallbackInfo& info) { listener_->add_session(key_arg(info[0], "session"), key_arg(info[1], "grant")); }
  void RemoveSession(const Napi::CallbackInfo& info) { listener_->remove_session(key_arg(info[0], "session")); }
  // expect(session, seq, destination): resolves {bytes, seconds} once the tensor is in.
  Napi::Value Expect(const Napi::CallbackInfo& info) {
    Key session = key_arg(info[0], "session");
    uint64_t seq = seq_arg(info[1]);
    View dst = view_arg(info[2], "destination");
    auto [promise, done] = completer_.start(info.Env(), info[2]);
    listener_->expect(session, seq, dst.data, dst.length, std::move(done));
    return promise;
  }
  void Cancel(const Napi::CallbackInfo& info) { listener_->cancel(key_arg(info[0], "session"), seq_arg(info[1]), info[2].ToString().Utf8Value()); }
  void Close(const Napi::CallbackInfo&) { listener_->close(); }

  Completer completer_;
  std::unique_ptr<Listener> listener_;
};

class SenderWrap : public Napi::ObjectWrap<SenderWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DataPlaneSender", {InstanceMethod<&SenderWrap::Send>("send"), InstanceMethod<&SenderWrap::Close>("close")});
  }
  // new DataPlaneSender(host, port, stallMs, slotBytes, slots): connects in the background;
  // slotBytes > 0 sends through a shared-memory ring of `slots` slots.
  SenderWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SenderWrap>(info), completer_(info.Env()) {
    int slot_bytes = info.Length() > 3 ? int_arg(info[3], "slotBytes", 0, 1 << 30) : 0;
    int slots = info.Length() > 4 ? int_arg(info[4], "slots", 0, 1024) : 0;
    if (slot_bytes > 0 && (slot_bytes < 4096 || slot_bytes % 64 != 0 || slots < 1)) throw Napi::RangeError::New(info.Env(), "slotBytes must be a multiple of 64 of at least 4096, with at least one slot");
    sender_ = std::make_unique<Sender>(info[0].ToString().Utf8Value(), int_arg(info[1], "port", 1, 65535), int_arg(info[2], "stallMs", 1, 3600000), static_cast<size_t>(slot_bytes), static_cast<uint32_t>(slots));
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

  Completer completer_;
  std::unique_ptr<Sender> sender_;
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
  h.path = o.Get("shm").ToBoolean().Value() ? kPathShm : kPathTcp;
  Napi::Buffer<uint8_t> out = Napi::Buffer<uint8_t>::New(info.Env(), kHeaderBytes);
  encode_header(h, out.Data());
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
  Napi::Object c = Napi::Object::New(env);
  c.Set("headerBytes", static_cast<double>(kHeaderBytes));
  c.Set("trailerBytes", static_cast<double>(kTrailerBytes));
  c.Set("replyBytes", static_cast<double>(kReplyBytes));
  c.Set("keyBytes", static_cast<double>(kKeyBytes));
  c.Set("trailerMagic", static_cast<double>(kTrailerMagic));
  c.Set("replyMagic", static_cast<double>(kReplyMagic));
  c.Set("ringBytes", static_cast<double>(kRingBytes));
  c.Set("ringMagic", static_cast<double>(kRingMagic));
  dp.Set("constants", c);
  exports.Set("dataplane", dp);
}

}  // namespace ls::dp
