// What the CUDA kernels can take, as a pure function of a validated node: the CUDA backend's
// supports_op. Free of CUDA headers, so every build (and the tests of machines without a GPU) can
// ask it.
#pragma once

#include <cstddef>
#include <string>

#include "engine.h"

namespace ls {
namespace cuda {

// Largest head dim the attention kernel takes (each lane of a warp owns head_dim/32 columns);
// 512 covers the single-head attention of Wan's VAE (384 channels).
constexpr size_t kMaxAttentionHeadDim = 512;
// Grid limits of the attention kernel: heads and batch are grid dimensions y and z.
constexpr size_t kMaxAttentionGridYZ = 65535;

inline bool supports(const Node& n, std::string* why) {
  size_t batch = 0, heads = 0, head_dim = 0;
  switch (n.op) {
    case Op::count:
      if (why) *why = "no such op";
      return false;
    case Op::attention: batch = n.p(0), heads = n.p(4), head_dim = n.p(5); break;
    case Op::biased_attention: batch = n.p(0), heads = n.p(3), head_dim = n.p(4); break;
    default: return true;
  }
  if (head_dim > kMaxAttentionHeadDim) {
    if (why) *why = "head dim " + std::to_string(head_dim) + " is above the attention kernel's " + std::to_string(kMaxAttentionHeadDim);
    return false;
  }
  if (heads > kMaxAttentionGridYZ || batch > kMaxAttentionGridYZ) {
    if (why) *why = "batch or heads above the attention kernel's grid limit of " + std::to_string(kMaxAttentionGridYZ);
    return false;
  }
  return true;
}

}  // namespace cuda
}  // namespace ls
