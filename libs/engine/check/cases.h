// The shared op case table (cases.json, the one the TypeScript suites read through
// test/reference/cases.ts): loading, checking against the engine's op list, drawing inputs.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "../native/src/engine.h"

namespace ls {
namespace check {

struct InputSpec {
  enum class Kind { absent, normal, uniform, values, ids } kind = Kind::absent;
  double std = 1, mean = 0;  // normal
  double lo = 0, hi = 0;     // uniform
  std::vector<double> values;
  size_t vocab = 0;          // ids: the table's row count
  // "tail": after drawing, the last tail_last of every tail_every elements are set to tail_value.
  size_t tail_every = 0, tail_last = 0;
  double tail_value = 0;
};

struct OpCase {
  Op op;
  std::string label;
  std::vector<double> params;
  std::vector<InputSpec> specs;  // one per input slot
  std::vector<size_t> sizes;     // element count per slot
};

struct CaseTable {
  std::vector<OpCase> cases;                  // grouped by op, in the engine's op order
  std::vector<std::vector<int>> f32_inputs;   // per op: slots the CUDA backend keeps in float32
};

// Throws std::runtime_error naming the file, op and case on anything malformed, and when an op of
// the engine has no case.
CaseTable load_cases(const std::string& path);

struct HostTensor {
  std::vector<float> data;
  bool present = false;
};

// The case's inputs, drawn in slot order from Rng.from('conformance', op, label).
std::vector<HostTensor> draw_inputs(const OpCase& c);

}  // namespace check
}  // namespace ls
