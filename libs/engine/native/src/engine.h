// Core types of the native engine: the op table (from ops.def), graph nodes, and the backend
// interface. Nothing here knows about Node-API, so a CUDA backend can be added beside the CPU one
// by implementing Backend and registering it, without touching the addon or the model.
#pragma once

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace ls {

enum class Op : int {
#define LS_OP(name, inputs, params, in_place) name,
#include "ops.def"
#undef LS_OP
  count
};

constexpr int kOpCount = static_cast<int>(Op::count);
constexpr int kMaxInputs = 5;

struct OpInfo {
  std::string name;
  std::vector<std::string> inputs;    // slot names without the `?`
  std::vector<bool> optional;         // slot may be null
  std::vector<std::string> params;    // as written in ops.def
  std::vector<bool> float_param;      // fractional values allowed
  bool in_place;
};

const OpInfo& op_info(Op op);

// A tensor view over memory owned by the caller (a Float32Array on the JS side).
struct Tensor {
  float* data = nullptr;  // may be null for an empty array, so presence is tracked apart
  size_t size = 0;        // elements
  bool present = false;   // false for an absent optional input
};

struct Node {
  Op op = Op::count;
  Tensor inputs[kMaxInputs];
  int n_inputs = 0;
  Tensor output;
  std::vector<double> params;

  size_t p(int i) const { return static_cast<size_t>(params[i]); }
  float pf(int i) const { return static_cast<float>(params[i]); }
};

// A weighted_sum node's present slots, in slot order: each one's address (from `in`, a backend's
// per-slot addresses) and coefficient (param 1 + slot). Returns how many (t0 is always present).
template <typename Address>
int weighted_sum_terms(const Node& n, const Address* in, Address* terms, float* coefs) {
  int count = 0;
  for (int s = 0; s < kMaxInputs; ++s)
    if (n.inputs[s].present) terms[count] = in[s], coefs[count++] = n.pf(1 + s);
  return count;
}

// Thrown by validate() for bad shapes or values; the addon turns it into a JS RangeError.
struct ShapeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Checks a node whose slots are already typed (right input count, nulls only in optional slots,
// params numeric): param values, element counts and aliasing. `index` is for the message.
void validate(const Node& node, size_t index);

// A host byte range an accelerator backend starts (pin) or stops (!pin) keeping a device copy of
// across graph runs. The addon holds a reference to the JS ArrayBuffer behind every pinned range,
// so the memory cannot be freed and reused for another array while the copy is cached. Events
// are produced wherever the backend runs and applied on the JS thread afterwards.
struct HostPin {
  const void* data;
  size_t bytes;
  bool pin;
};

struct HostRange {
  const void* data;
  size_t bytes;
};

// What the caller knows of a graph's memory that the nodes cannot say. Only a backend that computes
// away from host memory (CUDA) uses it.
struct RunHints {
  // Outputs nobody reads after the run (a model's scratch buffers): they may be left stale. The
  // CUDA backend skips copying back every region that lies wholly inside them.
  std::vector<HostRange> discard;
  // Inputs the caller rewrote since an earlier run read them (scratch filled on the host, such as
  // a stage group's exchanged tensors): never served from a device copy kept from that run. Left
  // out, a range that two runs read without writing looks like a weight to the CUDA weight cache.
  std::vector<HostRange> rewritten;
  // Outputs that stay on the device for later runs (a stage's K/V cache, which only the stage's
  // next forward reads): the CUDA backend keeps each region wholly inside them in its cache
  // instead of copying it back, and serves later runs that read it from there. The host copy is
  // stale until releaseDeviceCache(), which copies such regions back first.
  std::vector<HostRange> resident;
};

struct Backend {
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // Whether this backend can run this validated node (op and params, ggml's supports_op). When
  // not, `why` says what it cannot do, e.g. a kernel's limit, so a graph is refused before any of
  // it runs rather than failing halfway.
  virtual bool supports_op(const Node& node, std::string* why) const = 0;
  // Runs one validated node; blocking. Callers serialise calls (see Engine).
  virtual void compute(const Node& node) = 0;
  // Runs validated nodes in order; blocking, serialised like compute(). The default runs them one
  // at a time; an accelerator overrides it to keep intermediates on the device for the whole
  // graph, reporting the host ranges it starts or stops caching in `pins` and following `hints`.
  virtual void run_graph(const std::vector<Node>& nodes, std::vector<HostPin>* pins, const RunHints& hints) {
    (void)pins;
    (void)hints;
    for (const Node& n : nodes) compute(n);
  }
};

// Number of float32 elements node `n` writes (OPS[op].outputSize); the node must be validated.
size_t output_elements(const Node& n);

// Backends in registration order (the addon registers the CPU backend at load; an accelerator
// backend registers itself the same way).
void register_backend(std::unique_ptr<Backend> backend);
const std::vector<std::unique_ptr<Backend>>& backends();
Backend* find_backend(const std::string& name);

}  // namespace ls
