// A float64 reference of every engine op, written from the op semantics documented in
// libs/engine/src/ops.ts (never from the float32 kernels): plain loops, float64 accumulation, a
// full softmax. It is the native driver's yardstick for every CPU SIMD level.
#pragma once

#include <stdexcept>
#include <vector>

#include "../native/src/engine.h"

namespace ls {
namespace check {

// One input slot: its values, or absent (an optional slot given as null).
struct RefInput {
  const float* data = nullptr;
  size_t size = 0;
  bool present = false;
};

// Returns output_elements() values; throws std::runtime_error when an input has the wrong
// element count for the params.
std::vector<double> reference(Op op, const std::vector<RefInput>& inputs, const std::vector<double>& params);

}  // namespace check
}  // namespace ls
