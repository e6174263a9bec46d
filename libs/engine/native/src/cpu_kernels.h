// The SIMD-specialised CPU kernels. Each level (scalar, AVX2+FMA, AVX-512) is the same template
// code (kernels_impl.inc) compiled in its own translation unit with its own target flags, and
// exposes one table; the CPU backend picks a table at run time from what the CPU supports.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "thread_pool.h"

namespace ls {

enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* simd_name(SimdLevel level);
bool parse_simd(const std::string& name, SimdLevel* out);
// Levels this CPU and build can run, lowest first.
std::vector<SimdLevel> simd_available();
// The best available level, lowered to LONGSHOT_SIMD when that names an available level.
SimdLevel simd_default();

struct AttentionArgs {
  const float* q;
  const float* k;
  const float* v;
  const float* extra_k;  // null when extra_keys == 0
  const float* extra_v;
  float* out;
  size_t batch, queries, keys, extra_keys, heads, head_dim;
  // Scores are q.k * scale, plus bias[head, query, key] over the (non-extra) keys when not null.
  float scale;
  const float* bias;
};

// causal_conv3d (ops.ts): x [frames, height, width, in] and cache [cache_frames, height, width, in]
// channels-last, weight [out, in, kernel_t, kernel_h, kernel_w] as in PyTorch, out [frames,
// height, width, out].
struct ConvArgs {
  const float* x;
  const float* weight;
  const float* bias;   // null: none
  const float* cache;  // null when cache_frames == 0
  float* out;
  size_t frames, cache_frames, height, width, in_channels, out_channels, kernel_t, kernel_h, kernel_w;
};

struct CpuKernels {
  SimdLevel level;
  void (*linear)(ThreadPool&, const float* x, const float* w, const float* bias, float* y,
                 size_t m, size_t k, size_t n);
  void (*attention)(ThreadPool&, const AttentionArgs&);
  void (*layer_norm)(ThreadPool&, const float* x, const float* w, const float* b, float* y,
                     size_t rows, size_t dim, float eps);
  void (*rms_norm)(ThreadPool&, const float* x, const float* w, float* y, size_t rows, size_t dim,
                   float eps);
  void (*modulate)(ThreadPool&, const float* x, const float* shift, const float* scale, float* y,
                   size_t rows, size_t dim);
  void (*gated_add)(ThreadPool&, const float* x, const float* y, const float* gate, float* out,
                    size_t rows, size_t dim);
  void (*gelu_tanh)(ThreadPool&, const float* x, float* y, size_t n);
  void (*silu)(ThreadPool&, const float* x, float* y, size_t n);
  void (*cfg_combine)(ThreadPool&, const float* cond, const float* uncond, float* y, size_t n,
                      float guidance);
  void (*axpy)(ThreadPool&, const float* x, const float* y, float* out, size_t n, float alpha);
  void (*mul)(ThreadPool&, const float* x, const float* y, float* out, size_t n);
  void (*causal_conv3d)(ThreadPool&, const ConvArgs&);
  void (*channel_rms_norm)(ThreadPool&, const float* x, const float* w, float* y, size_t rows,
                           size_t dim, float eps);
  void (*clamp)(ThreadPool&, const float* x, float* y, size_t n, float lo, float hi);
  // out = sum of coefs[j] * terms[j] for j < count (1..kMaxInputs), fused multiply-adds in order from 0.
  void (*weighted_sum)(ThreadPool&, const float* const* terms, const float* coefs, int count, float* out,
                       size_t n);
};

const CpuKernels& cpu_kernels_scalar();
const CpuKernels& cpu_kernels_avx2();
const CpuKernels& cpu_kernels_avx512();
const CpuKernels& cpu_kernels(SimdLevel level);

}  // namespace ls
