// Launchers of the CUDA kernels (cuda_kernels.cu, built by nvcc). Plain C++ so that the graph
// runner (cuda_backend.cc) is compiled by the host compiler and only this interface crosses the
// nvcc boundary. Every launcher enqueues on `stream` and returns at once; launch errors are picked
// up by the runner with cudaGetLastError after each node.
//
// Device tensors hold the backend's STORAGE type (float32, bfloat16 or float16), row-major and
// contiguous like the host Float32Arrays they mirror; every kernel loads to float32, computes in
// float32 (float64 where ops.ts says so) and rounds once when it stores.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "cuda_limits.h"

namespace ls {
namespace cuda {

enum class Storage { f32, bf16, f16 };

inline size_t storage_bytes(Storage s) { return s == Storage::f32 ? 4 : 2; }

// float32 host-layout staging <-> storage (identity for f32, never called for it).
void to_storage(Storage s, const float* src, void* dst, size_t n, cudaStream_t stream);
void from_storage(Storage s, const void* src, float* dst, size_t n, cudaStream_t stream);

// y[m, n] = bias[n] (or 0): the C operand a cuBLAS GEMM with beta = 1 accumulates onto.
void fill_rows(Storage s, const void* bias, void* y, size_t m, size_t n, cudaStream_t stream);
// y[m, n] = x[m, k] . w[n, k]^T + bias[n] with shared-memory tiles and float32 accumulation:
// the GEMM used when cuBLAS cannot be loaded.
void linear_fallback(Storage s, const void* x, const void* w, const void* bias, void* y, size_t m,
                     size_t k, size_t n, cudaStream_t stream);

void layer_norm(Storage s, const void* x, const void* w, const void* b, void* y, size_t rows,
                size_t dim, float eps, cudaStream_t stream);
void rms_norm(Storage s, const void* x, const void* w, void* y, size_t rows, size_t dim, float eps,
              cudaStream_t stream);
void modulate(Storage s, const void* x, const void* shift, const void* scale, void* y, size_t rows,
              size_t dim, cudaStream_t stream);
void gated_add(Storage s, const void* x, const void* y, const void* gate, void* out, size_t rows,
               size_t dim, cudaStream_t stream);
void gelu_tanh(Storage s, const void* x, void* y, size_t n, cudaStream_t stream);
void silu(Storage s, const void* x, void* y, size_t n, cudaStream_t stream);

struct RopeArgs {
  size_t batch, frames, height, width, heads, head_dim, frame_offset;
  double theta;
};
// Bytes of device scratch rope3d needs for its float64 cos/sin tables.
size_t rope3d_scratch_bytes(const RopeArgs& a);
void rope3d(Storage s, const void* x, void* y, const RopeArgs& a, void* scratch,
            cudaStream_t stream);

struct AttentionShape {
  size_t batch, queries, keys, extra_keys, heads, head_dim;
};
// Scores are q.k * scale, plus bias[head, query, key] (storage type) over the non-extra keys when
// `bias` is not null: `attention` passes 1/sqrt(headDim) and no bias, `biased_attention` its own.
// Returns whether the tensor-core kernel ran (16-bit storage, no bias, head dim 16, 32, 64 or 128,
// 16-byte aligned tensors, an sm_80+ build) rather than the float32 one.
bool attention(Storage s, const void* q, const void* k, const void* v, const void* extra_k,
               const void* extra_v, const void* bias, float scale, void* out,
               const AttentionShape& a, cudaStream_t stream);

// The window's first prefix_frames frames are the last ones of `prefix` [channels, prefix_length, H, W]
// (null when prefix_frames is 0), the rest `latents` [channels, frames, H, W] (engine op patchify).
void patchify(Storage s, const void* latents, const void* prefix, void* dst, size_t channels, size_t frames,
              size_t height, size_t width, size_t prefix_frames, size_t prefix_length, cudaStream_t stream);
void unpatchify(Storage s, const void* src, void* dst, size_t channels, size_t frames, size_t height,
                size_t width, cudaStream_t stream);
// `timesteps` is float32 when `timesteps_f32` (the runner keeps that input in float32 whatever
// the storage: rounding t = 620 to bfloat16 would move it to 624), else the storage type.
void timestep_embedding(Storage s, const void* timesteps, bool timesteps_f32, void* y, size_t n,
                        size_t dim, cudaStream_t stream);
void cfg_combine(Storage s, const void* x, void* y, size_t n, float guidance, cudaStream_t stream);
void axpy(Storage s, const void* x, const void* y, void* out, size_t n, float alpha, cudaStream_t stream);
void mul(Storage s, const void* x, const void* y, void* out, size_t n, cudaStream_t stream);
// out = sum of coefs[j] * terms[j] for j < count (1..5), fused multiply-adds in order from 0.
void weighted_sum(Storage s, const void* const* terms, const float* coefs, int count, void* out, size_t n,
                  cudaStream_t stream);
// `ids` is float32 when `ids_f32` (the runner keeps ids in float32 whatever the storage: float16
// holds integers exactly only up to 2048, bfloat16 up to 256), else the storage type.
void embedding(Storage s, const void* table, const void* ids, bool ids_f32, void* y, size_t rows,
               size_t dim, cudaStream_t stream);
void relative_position_bias(Storage s, const void* table, void* y, size_t queries, size_t keys,
                            size_t heads, size_t buckets, size_t max_distance, cudaStream_t stream);
void copy_rows(Storage s, const void* x, void* y, size_t batch, size_t rows, size_t cols,
               size_t offset, size_t count, cudaStream_t stream);

struct ConvShape {
  size_t frames, cache_frames, height, width, in_channels, out_channels, kernel_t, kernel_h, kernel_w;
};
// causal_conv3d (ops.ts) as an implicit GEMM with shared-memory tiles and float32 accumulation.
void causal_conv3d(Storage s, const void* x, const void* w, const void* bias, const void* cache,
                   void* out, const ConvShape& a, cudaStream_t stream);
void channel_rms_norm(Storage s, const void* x, const void* w, void* y, size_t rows, size_t dim,
                      float eps, cudaStream_t stream);
void upsample_nearest2x(Storage s, const void* x, void* y, size_t frames, size_t height,
                        size_t width, size_t channels, cudaStream_t stream);
void transpose(Storage s, const void* x, void* y, size_t batch, size_t rows, size_t cols,
               size_t cell, cudaStream_t stream);
// One copy per kept frame, in order on the stream, so the in-place form (y == cache) is safe.
void update_frame_cache(Storage s, const void* cache, const void* x, void* y, size_t keep,
                        size_t frames, size_t frame_size, cudaStream_t stream);
void clamp(Storage s, const void* x, void* y, size_t n, float lo, float hi, cudaStream_t stream);

}  // namespace cuda
}  // namespace ls
