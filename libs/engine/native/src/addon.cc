// Node-API surface of the engine. Every node is checked here on the JS thread, so a bad graph
// fails with a TypeError/RangeError naming the node, op and slot before any work is queued; the
// graph then runs in order on one backend, on a libuv worker (run) or inline (runSync). One
// mutex serialises graph runs and setting changes: the thread pool runs one op at a time.
#include <napi.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane_napi.h"
#include "blas.h"
#include "cpu_backend.h"
#include "cpu_time.h"
#include "cuda_backend.h"
#include "cuda_limits.h"
#include "engine.h"

namespace {

using ls::Node;
using ls::Op;

std::mutex g_engine_mutex;

using Keep = std::vector<Napi::Reference<Napi::Float32Array>>;

// JS buffers behind host ranges an accelerator caches on its device (HostPin): each pinned range
// holds a reference to its ArrayBuffer so the memory stays allocated (and is not reused for
// another array) while the device copy exists. Keyed by the range's first byte; `balance` counts
// pins minus unpins, so an unpin applied before its pin (events of two runs applied out of order)
// cancels that pin instead of leaking it. JS thread only.
struct PinSlot {
  int balance = 0;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> refs;
};
// Never destroyed: the references must not be deleted after the JS environment is gone.
std::map<const void*, PinSlot>& g_pins = *new std::map<const void*, PinSlot>();

// Applies pin events; `arrays` are the typed arrays of the run that produced them (a pinned range
// always lies inside one of them). JS thread only.
void apply_pins(const std::vector<ls::HostPin>& pins, const Keep& arrays) {
  for (const ls::HostPin& p : pins) {
    PinSlot& slot = g_pins[p.data];
    if (p.pin) {
      ++slot.balance;
      if (slot.balance > 0 && static_cast<int>(slot.refs.size()) < slot.balance) {
        const auto* begin = static_cast<const char*>(p.data);
        for (const auto& ref : arrays) {
          Napi::Float32Array a = ref.Value();
          const auto* data = reinterpret_cast<const char*>(a.Data());
          if (begin >= data && begin + p.bytes <= data + a.ByteLength()) {
            slot.refs.push_back(Napi::Persistent(a.ArrayBuffer()));
            break;
          }
        }
      }
    } else {
      --slot.balance;
      while (static_cast<int>(slot.refs.size()) > std::max(slot.balance, 0)) slot.refs.pop_back();
    }
    if (slot.balance == 0 && slot.refs.empty()) g_pins.erase(p.data);
  }
}

std::string node_prefix(size_t index, const std::string& op) {
  return "node " + std::to_string(index) + " (" + op + "): ";
}

ls::Backend* backend_arg(const Napi::Value& v) {
  const Napi::Env env = v.Env();
  if (!v.IsString()) throw Napi::TypeError::New(env, "backend name must be a string");
  const std::string name = v.As<Napi::String>();
  ls::Backend* b = ls::find_backend(name);
  if (!b) throw Napi::TypeError::New(env, "unknown backend '" + name + "'");
  return b;
}

// Parses and validates nodes; `keep` receives a reference to every typed array, so that they
// outlive an asynchronous run and pin events can find the buffer behind a range.
// Parses and validates nodes; with a backend, also asks it whether it runs each one.
std::vector<Node> parse_nodes(const Napi::Value& value, ls::Backend* backend, Keep* keep) {
  const Napi::Env env = value.Env();
  if (!value.IsArray()) throw Napi::TypeError::New(env, "nodes must be an array");
  const Napi::Array arr = value.As<Napi::Array>();
  std::vector<Node> nodes(arr.Length());
  for (uint32_t idx = 0; idx < arr.Length(); ++idx) {
    Node& n = nodes[idx];
    const Napi::Value item = arr.Get(idx);
    if (!item.IsObject())
      throw Napi::TypeError::New(env, "node " + std::to_string(idx) + ": must be an object");
    const Napi::Object obj = item.As<Napi::Object>();
    const Napi::Value op = obj.Get("op");
    const double op_num = op.IsNumber() ? op.As<Napi::Number>().DoubleValue() : -1.0;
    if (!(op_num >= 0 && op_num < ls::kOpCount && op_num == static_cast<int>(op_num)))
      throw Napi::TypeError::New(env, "node " + std::to_string(idx) + ": unknown op " +
                                          op.ToString().Utf8Value());
    n.op = static_cast<Op>(static_cast<int>(op_num));
    const ls::OpInfo& info = ls::op_info(n.op);
    const std::string where = node_prefix(idx, info.name);

    auto typed = [&](const Napi::Value& v, const std::string& what) -> ls::Tensor {
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        throw Napi::TypeError::New(env, where + what + " must be a Float32Array");
      Napi::Float32Array a = v.As<Napi::Float32Array>();
      keep->push_back(Napi::Persistent(a));
      return {a.Data(), a.ElementLength(), true};
    };

    const Napi::Value inputs = obj.Get("inputs");
    if (!inputs.IsArray())
      throw Napi::TypeError::New(env, where + "inputs must be an array");
    const Napi::Array in_arr = inputs.As<Napi::Array>();
    if (in_arr.Length() != info.inputs.size())
      throw Napi::TypeError::New(env, where + "expected " + std::to_string(info.inputs.size()) +
                                          " inputs, got " + std::to_string(in_arr.Length()));
    n.n_inputs = static_cast<int>(info.inputs.size());
    for (uint32_t s = 0; s < in_arr.Length(); ++s) {
      const Napi::Value v = in_arr.Get(s);
      const std::string slot = "input '" + info.inputs[s] + "' (slot " + std::to_string(s) + ")";
      if (v.IsNull() || v.IsUndefined()) {
        if (!info.optional[s]) throw Napi::TypeError::New(env, where + slot + " must not be null");
        continue;
      }
      n.inputs[s] = typed(v, slot);
    }
    n.output = typed(obj.Get("output"), "output");

    const Napi::Value params = obj.Get("params");
    if (!params.IsArray()) throw Napi::TypeError::New(env, where + "params must be an array");
    const Napi::Array p_arr = params.As<Napi::Array>();
    if (p_arr.Length() != info.params.size())
      throw Napi::TypeError::New(env, where + "expected " + std::to_string(info.params.size()) +
                                          " params, got " + std::to_string(p_arr.Length()));
    for (uint32_t s = 0; s < p_arr.Length(); ++s) {
      const Napi::Value v = p_arr.Get(s);
      if (!v.IsNumber())
        throw Napi::TypeError::New(env, where + "param '" + info.params[s] + "' must be a number");
      n.params.push_back(v.As<Napi::Number>().DoubleValue());
    }
    try {
      ls::validate(n, idx);
    } catch (const ls::ShapeError& e) {
      throw Napi::RangeError::New(env, e.what());
    }
    std::string why;
    if (backend && !backend->supports_op(n, &why))
      throw Napi::RangeError::New(env, where + "not supported by backend '" + backend->name() + "': " + why);
  }
  return nodes;
}

// run's optional third argument, RunOptions: { discard?, rewritten?, resident? }, each a list of
// Float32Array.
// The host ranges of `list`, an array of Float32Array named `name` in errors.
std::vector<ls::HostRange> parse_ranges(const Napi::Value& list, const std::string& name, Keep* keep) {
  if (!list.IsArray()) throw Napi::TypeError::New(list.Env(), name + " must be an array of Float32Array");
  const Napi::Array arr = list.As<Napi::Array>();
  std::vector<ls::HostRange> ranges;
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    const Napi::Value v = arr.Get(i);
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(list.Env(), name + "[" + std::to_string(i) + "] must be a Float32Array");
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    keep->push_back(Napi::Persistent(a));
    ranges.push_back({a.Data(), a.ElementLength() * sizeof(float)});
  }
  return ranges;
}

ls::RunHints parse_hints(const Napi::Value& value, Keep* keep) {
  ls::RunHints hints;
  if (value.IsUndefined() || value.IsNull()) return hints;
  if (!value.IsObject()) throw Napi::TypeError::New(value.Env(), "run options must be an object");
  const Napi::Object options = value.As<Napi::Object>();
  const std::pair<const char*, std::vector<ls::HostRange>*> lists[] = {
      {"discard", &hints.discard}, {"rewritten", &hints.rewritten}, {"resident", &hints.resident}};
  for (const auto& [name, ranges] : lists) {
    const Napi::Value list = options.Get(name);
    if (!list.IsUndefined()) *ranges = parse_ranges(list, name, keep);
  }
  return hints;
}

void execute(ls::Backend* backend, const std::vector<Node>& nodes, std::vector<ls::HostPin>* pins,
             const ls::RunHints& hints) {
  std::lock_guard<std::mutex> lock(g_engine_mutex);
  ls::CpuSpan span(ls::kernel_cpu_ns());
  backend->run_graph(nodes, pins, hints);
  ls::thread_kernel_cpu_ns() += span.elapsed();
}

class RunWorker : public Napi::AsyncWorker {
 public:
  RunWorker(Napi::Env env, ls::Backend* backend, std::vector<Node> nodes, ls::RunHints hints, Keep keep)
      : Napi::AsyncWorker(env, "longshot_engine.run"),
        deferred_(Napi::Promise::Deferred::New(env)),
        backend_(backend),
        nodes_(std::move(nodes)),
        hints_(std::move(hints)),
        keep_(std::move(keep)) {}

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      execute(backend_, nodes_, &pins_, hints_);
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  // Pins are applied on the JS thread while keep_ still holds the run's arrays; a failed run can
  // have changed the cache too.
  void OnOK() override {
    apply_pins(pins_, keep_);
    deferred_.Resolve(Env().Undefined());
  }
  void OnError(const Napi::Error& e) override {
    apply_pins(pins_, keep_);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  ls::Backend* backend_;
  std::vector<Node> nodes_;
  ls::RunHints hints_;
  Keep keep_;
  std::vector<ls::HostPin> pins_;
};

Napi::Value Run(const Napi::CallbackInfo& info) {
  ls::Backend* backend = backend_arg(info[0]);
  Keep keep;
  std::vector<Node> nodes = parse_nodes(info[1], backend, &keep);
  ls::RunHints hints = parse_hints(info[2], &keep);
  auto* worker = new RunWorker(info.Env(), backend, std::move(nodes), std::move(hints), std::move(keep));
  Napi::Promise promise = worker->promise();
  worker->Queue();
  return promise;
}

// supportsNode(backend, node): null when the backend runs the node, else why not. `backend` is a
// registered backend's name, or 'cuda' for the CUDA kernels' limits on a machine without a device
// (the same function the registered CUDA backends answer with).
Napi::Value SupportsNode(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Keep keep;
  Napi::Array one = Napi::Array::New(env, 1);
  one.Set(0u, info[1]);
  const bool cuda_kind = info[0].IsString() && info[0].As<Napi::String>().Utf8Value() == "cuda";
  ls::Backend* backend = cuda_kind ? nullptr : backend_arg(info[0]);
  const std::vector<Node> nodes = parse_nodes(one, nullptr, &keep);
  std::string why;
  const bool ok = cuda_kind ? ls::cuda::supports(nodes[0], &why) : backend->supports_op(nodes[0], &why);
  return ok ? env.Null() : Napi::String::New(env, why);
}

Napi::Value RunSync(const Napi::CallbackInfo& info) {
  ls::Backend* backend = backend_arg(info[0]);
  Keep keep;
  const std::vector<Node> nodes = parse_nodes(info[1], backend, &keep);
  const ls::RunHints hints = parse_hints(info[2], &keep);
  std::vector<ls::HostPin> pins;
  try {
    execute(backend, nodes, &pins, hints);
  } catch (const std::exception& e) {
    apply_pins(pins, keep);
    throw Napi::Error::New(info.Env(), e.what());
  }
  apply_pins(pins, keep);
  return info.Env().Undefined();
}

// Host CPU seconds by part: the calling (JS) thread's own time without the graphs it ran
// synchronously, all graph runs (kernels, on every thread), and the data plane's threads.
Napi::Value HostCpu(const Napi::CallbackInfo& info) {
  Napi::Object out = Napi::Object::New(info.Env());
  const double ns = 1e-9;
  out.Set("jsThread", static_cast<double>(ls::thread_cpu_ns() - ls::thread_kernel_cpu_ns()) * ns);
  out.Set("kernels", static_cast<double>(ls::kernel_cpu_ns().load(std::memory_order_relaxed)) * ns);
  out.Set("dataPlane", static_cast<double>(ls::dataplane_cpu_ns().load(std::memory_order_relaxed)) * ns);
  return out;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  std::lock_guard<std::mutex> lock(g_engine_mutex);
  Napi::Object out = Napi::Object::New(env);
  // Backend kinds, not registry names: the CUDA backend is registered once per storage type
  // (cuda:f32, cuda:bf16, cuda:f16) and listed once, and only when a device is usable.
  const ls::cuda::Status& cuda = ls::cuda::status();
  Napi::Array names = Napi::Array::New(env);
  names.Set(0u, "cpu");
  if (cuda.usable) names.Set(1u, "cuda");
  out.Set("backends", names);
  out.Set("cudaBuilt", cuda.built);
  out.Set("cudaDevices", cuda.devices);
  if (cuda.usable) {
    out.Set("cudaDevice", cuda.device);
    out.Set("cudaDeviceIndex", cuda.index);
    out.Set("cudaDeviceUuid", cuda.uuid);
    out.Set("cudaSms", cuda.sms);
    out.Set("cudaGemm", cuda.gemm);
    out.Set("cublas", ls::cuda::cublas_loaded());
  } else {
    out.Set("cudaUnavailable", cuda.reason);
  }
  out.Set("simd", ls::simd_name(ls::cpu_backend().simd()));
  Napi::Array avail = Napi::Array::New(env);
  for (ls::SimdLevel l : ls::simd_available()) avail.Set(avail.Length(), ls::simd_name(l));
  out.Set("simdAvailable", avail);
  out.Set("threads", ls::cpu_backend().threads());
  return out;
}

Napi::Value SetSimd(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  if (!info[0].IsString()) throw Napi::TypeError::New(env, "setSimd: level must be a string");
  const std::string name = info[0].As<Napi::String>();
  ls::SimdLevel level;
  if (!ls::parse_simd(name, &level))
    throw Napi::RangeError::New(env, "setSimd: unknown level '" + name + "' (scalar, avx2, avx512)");
  if (level > ls::simd_available().back())
    throw Napi::RangeError::New(env, "setSimd: this CPU cannot run '" + name + "'");
  std::lock_guard<std::mutex> lock(g_engine_mutex);
  ls::cpu_backend().set_simd(level);
  return env.Undefined();
}

// initCuda(device, cacheMb): probes CUDA with the app's settings and registers the cuda:<storage>
// backends when a device is usable. Called once, before anything else touches CUDA (index.ts).
Napi::Value InitCuda(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const double device = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1.0;
  const double cache_mb = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : -2.0;
  if (!(device >= 0 && device <= 1024 && device == static_cast<int>(device)))
    throw Napi::RangeError::New(env, "initCuda: device must be an integer in [0, 1024]");
  if (!(cache_mb >= -1 && cache_mb <= 1e12 && cache_mb == static_cast<double>(static_cast<long long>(cache_mb))))
    throw Napi::RangeError::New(env, "initCuda: cacheMb must be -1 (default) or an integer >= 0");
  std::lock_guard<std::mutex> lock(g_engine_mutex);
  if (!ls::cuda::configure({static_cast<int>(device), static_cast<long long>(cache_mb)}))
    throw Napi::Error::New(env, "initCuda: CUDA was probed already; configure the engine before its first use");
  ls::cuda::register_backends();  // no-op without a usable device (or without CUDA in the build)
  return env.Undefined();
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const double n = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0.0;
  if (!(n >= 1 && n <= 4096 && n == static_cast<int>(n)))
    throw Napi::RangeError::New(env, "setThreads: expected an integer in [1, 4096]");
  std::lock_guard<std::mutex> lock(g_engine_mutex);
  ls::cpu_backend().set_threads(static_cast<int>(n));
  return env.Undefined();
}

Napi::Value BlasSgemm(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  size_t dims[3];
  const char* names[3] = {"M", "N", "K"};
  for (int i = 0; i < 3; ++i) {
    const double v = info[i].IsNumber() ? info[i].As<Napi::Number>().DoubleValue() : -1.0;
    if (!(v >= 1 && v <= 2147483647.0 && v == static_cast<double>(static_cast<long>(v))))
      throw Napi::RangeError::New(env, std::string("blasSgemm: ") + names[i] +
                                           " must be a positive 32-bit integer");
    dims[i] = static_cast<size_t>(v);
  }
  const size_t m = dims[0], n = dims[1], k = dims[2];
  const char* arg_names[3] = {"A", "W", "C"};
  const size_t need[3] = {m * k, n * k, m * n};
  float* ptr[3];
  for (int i = 0; i < 3; ++i) {
    const Napi::Value v = info[3 + i];
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw Napi::TypeError::New(env, std::string("blasSgemm: ") + arg_names[i] + " must be a Float32Array");
    Napi::Float32Array a = v.As<Napi::Float32Array>();
    if (a.ElementLength() < need[i])
      throw Napi::RangeError::New(env, std::string("blasSgemm: ") + arg_names[i] + " has " +
                                           std::to_string(a.ElementLength()) + " elements, needs " +
                                           std::to_string(need[i]));
    ptr[i] = a.Data();
  }
  const double threads = info[6].IsNumber() ? info[6].As<Napi::Number>().DoubleValue() : 0.0;
  if (!(threads >= 1 && threads <= 4096 && threads == static_cast<int>(threads)))
    throw Napi::RangeError::New(env, "blasSgemm: threads must be an integer in [1, 4096]");
  try {
    ls::blas_sgemm(m, n, k, ptr[0], ptr[1], ptr[2], static_cast<int>(threads));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
  return env.Undefined();
}

Napi::Value BlasCore(const Napi::CallbackInfo& info) {
  try {
    return Napi::String::New(info.Env(), ls::blas_core());
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

Napi::Value ReleaseDeviceCache(const Napi::CallbackInfo& info) {
  std::vector<ls::HostPin> pins;
  {
    std::lock_guard<std::mutex> lock(g_engine_mutex);
    ls::cuda::release_device_cache(&pins);
  }
  apply_pins(pins, Keep{});  // unpins only: no arrays needed
  return info.Env().Undefined();
}

// forgetDeviceCopies(arrays): Backend.forget (src/backend.ts).
Napi::Value ForgetDeviceCopies(const Napi::CallbackInfo& info) {
  Keep keep;
  const std::vector<ls::HostRange> ranges = parse_ranges(info[0], "arrays", &keep);
  std::vector<ls::HostPin> pins;
  {
    std::lock_guard<std::mutex> lock(g_engine_mutex);
    ls::cuda::forget_device_copies(ranges, &pins);
  }
  apply_pins(pins, Keep{});  // unpins only
  return info.Env().Undefined();
}

Napi::Value CudaLastRun(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  ls::cuda::RunStats st;
  {
    std::lock_guard<std::mutex> lock(g_engine_mutex);
    st = ls::cuda::last_run_stats();
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("uploadMs", st.upload_ms);
  out.Set("computeMs", st.compute_ms);
  out.Set("downloadMs", st.download_ms);
  out.Set("uploadBytes", st.upload_bytes);
  out.Set("downloadBytes", st.download_bytes);
  out.Set("cachedBytes", st.cached_bytes);
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ls::cpu_backend();  // registers it; the CUDA backends register in initCuda, with the app's settings

  Napi::Array specs = Napi::Array::New(env);
  for (int i = 0; i < ls::kOpCount; ++i) {
    const ls::OpInfo& op = ls::op_info(static_cast<Op>(i));
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", op.name);
    Napi::Array inputs = Napi::Array::New(env);
    for (size_t s = 0; s < op.inputs.size(); ++s)
      inputs.Set(static_cast<uint32_t>(s), op.inputs[s] + (op.optional[s] ? "?" : ""));
    o.Set("inputs", inputs);
    Napi::Array params = Napi::Array::New(env);
    for (size_t s = 0; s < op.params.size(); ++s) params.Set(static_cast<uint32_t>(s), op.params[s]);
    o.Set("params", params);
    o.Set("inPlace", op.in_place);
    specs.Set(static_cast<uint32_t>(i), o);
  }
  exports.Set("ops", specs);
  exports.Set("run", Napi::Function::New(env, Run, "run"));
  exports.Set("supportsNode", Napi::Function::New(env, SupportsNode, "supportsNode"));
  exports.Set("runSync", Napi::Function::New(env, RunSync, "runSync"));
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("hostCpu", Napi::Function::New(env, HostCpu, "hostCpu"));
  exports.Set("setSimd", Napi::Function::New(env, SetSimd, "setSimd"));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads, "setThreads"));
  exports.Set("initCuda", Napi::Function::New(env, InitCuda, "initCuda"));
  exports.Set("blasSgemm", Napi::Function::New(env, BlasSgemm, "blasSgemm"));
  exports.Set("blasCore", Napi::Function::New(env, BlasCore, "blasCore"));
  exports.Set("releaseDeviceCache", Napi::Function::New(env, ReleaseDeviceCache, "releaseDeviceCache"));
  exports.Set("forgetDeviceCopies", Napi::Function::New(env, ForgetDeviceCopies, "forgetDeviceCopies"));
  exports.Set("cudaLastRun", Napi::Function::New(env, CudaLastRun, "cudaLastRun"));
  ls::dp::register_dataplane(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(longshot_engine, Init)
