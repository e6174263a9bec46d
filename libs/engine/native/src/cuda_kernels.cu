// CUDA kernels of every engine op (semantics: libs/engine/src/ops.ts). Written for clarity first:
// one thread per output element for the data-movement ops, one block per row for the row
// reductions; attention is the exception, a tensor-core flash kernel for 16-bit storage (a
// warp-per-4-queries float32 kernel otherwise). Each kernel is a template over the storage type
// T; values are loaded to float32 (float64 where ops.ts asks for it) and rounded to T once on
// store. The GEMM of `linear` normally goes to cuBLAS (cuda_backend.cc); the tiled kernel here is
// its fallback.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_kernels.h"
#include "position_bucket.h"

namespace ls {
namespace cuda {

namespace {

// ---- storage type helpers ----------------------------------------------------------------------

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }

// Runs BODY with `T` bound to the device type of storage `s`.
#define LS_DISPATCH(s, ...)                 \
  switch (s) {                              \
    case Storage::f32: {                    \
      using T = float;                      \
      __VA_ARGS__;                          \
      break;                                \
    }                                       \
    case Storage::bf16: {                   \
      using T = __nv_bfloat16;              \
      __VA_ARGS__;                          \
      break;                                \
    }                                       \
    case Storage::f16: {                    \
      using T = __half;                     \
      __VA_ARGS__;                          \
      break;                                \
    }                                       \
  }

constexpr int kThreads = 256;

// Grid for a grid-stride loop over n items: enough blocks to fill any current GPU several times
// over, capped so the block count stays far below gridDim.x's limit.
unsigned blocks_for(size_t n) {
  const size_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<size_t>(std::max<size_t>(b, 1), 65536));
}

#define LS_GRID_STRIDE(i, n) \
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<size_t>(gridDim.x) * blockDim.x)

template <typename T>
const T* cp(const void* p) {
  return static_cast<const T*>(p);
}
template <typename T>
T* mp(void* p) {
  return static_cast<T*>(p);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x == kThreads); every thread gets the result. `red` holds 32
// floats of shared memory; the trailing barrier lets the caller reuse it at once.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < (kThreads / 32) ? red[lane] : 0.0f;
  t = warp_sum(t);
  __syncthreads();
  return t;
}

// ---- conversions -------------------------------------------------------------------------------

template <typename T>
__global__ void to_storage_k(const float* src, T* dst, size_t n) {
  LS_GRID_STRIDE(i, n) st(dst + i, src[i]);
}

template <typename T>
__global__ void from_storage_k(const T* src, float* dst, size_t n) {
  LS_GRID_STRIDE(i, n) dst[i] = ld(src + i);
}

// ---- linear ------------------------------------------------------------------------------------

template <typename T>
__global__ void fill_rows_k(const T* bias, T* y, size_t m, size_t n) {
  LS_GRID_STRIDE(i, m * n) {
    if (bias)
      y[i] = bias[i % n];
    else
      st(y + i, 0.0f);
  }
}

constexpr int kTile = 16;

// Row tiles on gridDim.x (up to 2^31 - 1), column tiles on gridDim.y (checked by the launcher).
template <typename T>
__global__ void linear_fallback_k(const T* x, const T* w, const T* bias, T* y, size_t m, size_t k,
                                  size_t n) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ws[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const size_t row = static_cast<size_t>(blockIdx.x) * kTile + ty;
  const size_t col = static_cast<size_t>(blockIdx.y) * kTile + tx;
  const size_t wrow = static_cast<size_t>(blockIdx.y) * kTile + ty;  // the W row this thread loads
  float acc = 0.0f;
  for (size_t k0 = 0; k0 < k; k0 += kTile) {
    const size_t kk = k0 + tx;
    xs[ty][tx] = (row < m && kk < k) ? ld(x + row * k + kk) : 0.0f;
    ws[ty][tx] = (wrow < n && kk < k) ? ld(w + wrow * k + kk) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; ++j) acc = fmaf(xs[ty][j], ws[tx][j], acc);
    __syncthreads();
  }
  if (row < m && col < n) st(y + row * n + col, acc + (bias ? ld(bias + col) : 0.0f));
}

// causal_conv3d: the tiled GEMM above with A read through im2col. Row = output pixel (frame, y,
// x), column = output channel, k = tap * in + channel with tap = (dt, dy, dx), as on the CPU.
template <typename T>
__device__ __forceinline__ float conv_input(const T* x, const T* cache, const ConvShape& a,
                                            size_t row, size_t k) {
  const size_t hw = a.height * a.width, cin = a.in_channels;
  const size_t tap = k / cin, c = k % cin;
  const size_t dt = tap / (a.kernel_h * a.kernel_w), dy = (tap / a.kernel_w) % a.kernel_h,
               dx = tap % a.kernel_w;
  const size_t t = row / hw, yy = (row / a.width) % a.height, xx = row % a.width;
  const size_t zero_frames = a.kernel_t - 1 - a.cache_frames;
  size_t s = t + dt;
  if (s < zero_frames) return 0.0f;
  s -= zero_frames;
  const size_t ph = a.kernel_h / 2, pw = a.kernel_w / 2;
  const size_t sy = yy + dy, sx = xx + dx;
  if (sy < ph || sy >= a.height + ph || sx < pw || sx >= a.width + pw) return 0.0f;
  const size_t pixel = (sy - ph) * a.width + (sx - pw);
  return s < a.cache_frames ? ld(cache + (s * hw + pixel) * cin + c)
                            : ld(x + ((s - a.cache_frames) * hw + pixel) * cin + c);
}

template <typename T>
__global__ void causal_conv3d_k(const T* x, const T* w, const T* bias, const T* cache, T* y,
                                ConvShape a) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ws[kTile][kTile + 1];
  const size_t taps = a.kernel_t * a.kernel_h * a.kernel_w;
  const size_t m = a.frames * a.height * a.width, k = taps * a.in_channels, n = a.out_channels;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const size_t row = static_cast<size_t>(blockIdx.x) * kTile + ty;
  const size_t col = static_cast<size_t>(blockIdx.y) * kTile + tx;
  const size_t wrow = static_cast<size_t>(blockIdx.y) * kTile + ty;
  float acc = 0.0f;
  for (size_t k0 = 0; k0 < k; k0 += kTile) {
    const size_t kk = k0 + tx;
    xs[ty][tx] = (row < m && kk < k) ? conv_input(x, cache, a, row, kk) : 0.0f;
    // PyTorch weight [out, in, taps]: k = tap * in + c reads w[(out * in + c) * taps + tap].
    ws[ty][tx] = (wrow < n && kk < k)
                     ? ld(w + (wrow * a.in_channels + kk % a.in_channels) * taps + kk / a.in_channels)
                     : 0.0f;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kTile; ++j) acc = fmaf(xs[ty][j], ws[tx][j], acc);
    __syncthreads();
  }
  if (row < m && col < n) st(y + row * n + col, acc + (bias ? ld(bias + col) : 0.0f));
}

// ---- row ops -----------------------------------------------------------------------------------

// One block per row; the row is read three times (mean, centred variance, output), which keeps
// the biased variance as accurate as the CPU's two-pass form. In place is safe: each thread
// writes only the elements it reads in the last pass, after both reductions have finished.
template <typename T>
__global__ void layer_norm_k(const T* x, const T* w, const T* b, T* y, size_t dim, float eps) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float s = 0.0f;
  for (size_t i = threadIdx.x; i < dim; i += kThreads) s += ld(xr + i);
  const float mean = block_sum(s, red) / static_cast<float>(dim);
  float q = 0.0f;
  for (size_t i = threadIdx.x; i < dim; i += kThreads) {
    const float d = ld(xr + i) - mean;
    q = fmaf(d, d, q);
  }
  const float var = block_sum(q, red) / static_cast<float>(dim);
  const float inv = 1.0f / sqrtf(var + eps);
  for (size_t i = threadIdx.x; i < dim; i += kThreads) {
    float t = (ld(xr + i) - mean) * inv;
    if (w) t *= ld(w + i);
    if (b) t += ld(b + i);
    st(yr + i, t);
  }
}

template <typename T>
__global__ void rms_norm_k(const T* x, const T* w, T* y, size_t dim, float eps) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float q = 0.0f;
  for (size_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = ld(xr + i);
    q = fmaf(v, v, q);
  }
  const float inv = 1.0f / sqrtf(block_sum(q, red) / static_cast<float>(dim) + eps);
  for (size_t i = threadIdx.x; i < dim; i += kThreads) st(yr + i, ld(xr + i) * inv * ld(w + i));
}

template <typename T>
__global__ void channel_rms_norm_k(const T* x, const T* w, T* y, size_t dim, float eps) {
  __shared__ float red[32];
  const T* xr = x + blockIdx.x * dim;
  T* yr = y + blockIdx.x * dim;
  float q = 0.0f;
  for (size_t i = threadIdx.x; i < dim; i += kThreads) {
    const float v = ld(xr + i);
    q = fmaf(v, v, q);
  }
  const float inv = sqrtf(static_cast<float>(dim)) / fmaxf(sqrtf(block_sum(q, red)), eps);
  for (size_t i = threadIdx.x; i < dim; i += kThreads) st(yr + i, ld(xr + i) * inv * ld(w + i));
}

// ---- elementwise -------------------------------------------------------------------------------

template <typename T>
__global__ void clamp_k(const T* x, T* y, size_t n, float lo, float hi) {
  LS_GRID_STRIDE(i, n) { st(y + i, fminf(fmaxf(ld(x + i), lo), hi)); }
}

template <typename T>
__global__ void modulate_k(const T* x, const T* shift, const T* scale, T* y, size_t rows,
                           size_t dim) {
  LS_GRID_STRIDE(i, rows * dim) {
    const size_t d = i % dim;
    st(y + i, fmaf(ld(x + i), 1.0f + ld(scale + d), ld(shift + d)));
  }
}

template <typename T>
__global__ void gated_add_k(const T* x, const T* yv, const T* gate, T* out, size_t rows,
                            size_t dim) {
  LS_GRID_STRIDE(i, rows * dim) {
    const float g = gate ? ld(gate + i % dim) : 1.0f;
    st(out + i, fmaf(g, ld(yv + i), ld(x + i)));
  }
}

// 0.5 x (1 + tanh(u)) written as x / (1 + exp(-2u)), like the CPU kernel: no cancellation in
// 1 + tanh(u) on the left tail. expf, not __expf: float32 storage is compared at ~1e-5.
template <typename T>
__global__ void gelu_tanh_k(const T* x, T* y, size_t n) {
  LS_GRID_STRIDE(i, n) {
    const float v = ld(x + i);
    const float u = 0.7978845608028654f * fmaf(0.044715f, v * v * v, v);
    st(y + i, v / (1.0f + expf(-2.0f * u)));
  }
}

template <typename T>
__global__ void silu_k(const T* x, T* y, size_t n) {
  LS_GRID_STRIDE(i, n) {
    const float v = ld(x + i);
    st(y + i, v / (1.0f + expf(-v)));
  }
}

template <typename T>
__global__ void axpy_k(const T* x, const T* y, T* out, size_t n, float alpha) {
  LS_GRID_STRIDE(i, n) { st(out + i, fmaf(alpha, ld(y + i), ld(x + i))); }
}

// Up to five terms, by value: the kernel reads them from its parameter space.
template <typename T>
struct WeightedTerms {
  const T* t[5];
  float c[5];
  int count;
};

template <typename T>
__global__ void weighted_sum_k(WeightedTerms<T> w, T* out, size_t n) {
  LS_GRID_STRIDE(i, n) {
    float acc = fmaf(w.c[0], ld(w.t[0] + i), 0.0f);
    for (int j = 1; j < w.count; ++j) acc = fmaf(w.c[j], ld(w.t[j] + i), acc);
    st(out + i, acc);
  }
}

template <typename T>
__global__ void mul_k(const T* x, const T* y, T* out, size_t n) {
  LS_GRID_STRIDE(i, n) { st(out + i, ld(x + i) * ld(y + i)); }
}

// Ids are integers in [0, vocab), checked on the host before the graph runs.
template <typename T, typename I>
__global__ void embedding_k(const T* table, const I* ids, T* y, size_t rows, size_t dim) {
  LS_GRID_STRIDE(o, rows * dim) {
    const size_t r = o / dim, c = o % dim;
    const size_t id = static_cast<size_t>(ld(ids + r));
    y[o] = table[id * dim + c];
  }
}

template <typename T>
__global__ void relative_position_bias_k(const T* table, T* y, size_t queries, size_t keys,
                                         size_t heads, size_t buckets, size_t max_distance) {
  LS_GRID_STRIDE(o, heads * queries * keys) {
    const size_t k = o % keys, q = (o / keys) % queries, h = o / (keys * queries);
    const long long b = relative_position_bucket(static_cast<long long>(k) - static_cast<long long>(q),
                                                 static_cast<long long>(buckets),
                                                 static_cast<long long>(max_distance));
    y[o] = table[static_cast<size_t>(b) * heads + h];
  }
}

template <typename T>
__global__ void cfg_combine_k(const T* x, T* y, size_t n, float g) {
  LS_GRID_STRIDE(i, n) {
    const float c = ld(x + i), u = ld(x + n + i);
    st(y + i, fmaf(g, c - u, u));
  }
}

// ---- rope3d ------------------------------------------------------------------------------------

// cos/sin per (position, pair) of each axis, in float64 as ops.ts specifies: the frame table
// [frames][part_f], then rows [height][part_r], then columns [width][part_r].
__global__ void rope_table_k(double2* table, size_t frames, size_t height, size_t width,
                             size_t part_f, size_t part_r, size_t frame_offset, double theta) {
  const size_t nf = frames * part_f, nh = height * part_r, nw = width * part_r;
  LS_GRID_STRIDE(e, nf + nh + nw) {
    size_t pos, j, count, offset = 0;
    if (e < nf) {
      pos = e / part_f, j = e % part_f, count = part_f, offset = frame_offset;
    } else if (e < nf + nh) {
      pos = (e - nf) / part_r, j = (e - nf) % part_r, count = part_r;
    } else {
      pos = (e - nf - nh) / part_r, j = (e - nf - nh) % part_r, count = part_r;
    }
    const double angle = static_cast<double>(pos + offset) *
                         pow(theta, -2.0 * static_cast<double>(j) / (2.0 * static_cast<double>(count)));
    double s, c;
    sincos(angle, &s, &c);
    table[e] = make_double2(c, s);
  }
}

// One thread per rotated pair; the rotation itself in float64 like the CPU backend.
template <typename T>
__global__ void rope_apply_k(const T* x, T* y, const double2* table, RopeArgs a, size_t part_f,
                             size_t part_r) {
  const size_t pairs = a.head_dim / 2, hw = a.height * a.width, tokens = a.frames * hw;
  const double2* tf = table;
  const double2* th = tf + a.frames * part_f;
  const double2* tw = th + a.height * part_r;
  LS_GRID_STRIDE(idx, a.batch * tokens * a.heads * pairs) {
    const size_t p = idx % pairs;
    const size_t tok = idx / (pairs * a.heads);  // token within the whole batch
    const size_t in_batch = tok % tokens;
    const size_t f = in_batch / hw, i = (in_batch / a.width) % a.height, j = in_batch % a.width;
    double2 cs;
    if (p < part_f)
      cs = tf[f * part_f + p];
    else if (p < part_f + part_r)
      cs = th[i * part_r + (p - part_f)];
    else
      cs = tw[j * part_r + (p - part_f - part_r)];
    const size_t base = (idx / pairs) * a.head_dim + 2 * p;  // (tok * heads + h) * hd + 2p
    const double u = ld(x + base), v = ld(x + base + 1);
    st(y + base, static_cast<float>(u * cs.x - v * cs.y));
    st(y + base + 1, static_cast<float>(u * cs.y + v * cs.x));
  }
}

// ---- attention ---------------------------------------------------------------------------------

// A block of kAttWarps warps takes kAttWarps * kAttQW consecutive queries of one (batch, head)
// and walks the keys, then the extra keys, in tiles of 32 held in shared memory as float32. For
// each tile, lane j of a warp scores key j against the warp's kAttQW queries, the warp updates
// each query's running max m and denominator l (online softmax), and then every lane adds
// p_j * V[j] to the output columns it owns (lane, lane + 32, ...). Scores are never stored
// beyond one tile. Ks rows are padded by one float so lane j's walk along its row is
// bank-conflict free; Q and V reads are broadcasts or consecutive.
constexpr int kAttWarps = 8;
constexpr int kAttQW = 4;
constexpr int kAttKT = 32;

size_t attention_smem_bytes(size_t hd) {
  return (kAttKT * (hd + 1) + kAttKT * hd + kAttWarps * kAttQW * hd) * sizeof(float);
}

template <typename T, int DPL>
__global__ void __launch_bounds__(kAttWarps * 32) attention_k(const T* q, const T* k, const T* v,
                                                               const T* ek, const T* ev,
                                                               const T* bias, T* out,
                                                               AttentionShape a, float scale) {
  extern __shared__ float smem[];
  const int hd = static_cast<int>(a.head_dim);
  const int ks = hd + 1;
  float* k_s = smem;                   // [kAttKT][hd + 1]
  float* v_s = k_s + kAttKT * ks;      // [kAttKT][hd]
  float* q_s = v_s + kAttKT * hd;      // [kAttWarps * kAttQW][hd]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t b = blockIdx.z, h = blockIdx.y;
  const size_t stride = a.heads * a.head_dim;
  const size_t q_first = static_cast<size_t>(blockIdx.x) * (kAttWarps * kAttQW) + warp * kAttQW;

  float* my_q = q_s + warp * kAttQW * hd;
#pragma unroll
  for (int qi = 0; qi < kAttQW; ++qi) {
    const size_t qq = q_first + qi;
    for (int d = lane; d < hd; d += 32)
      my_q[qi * hd + d] = qq < a.queries ? ld(q + (b * a.queries + qq) * stride + h * hd + d) : 0.0f;
  }

  float m[kAttQW], l[kAttQW], o[kAttQW][DPL];
#pragma unroll
  for (int qi = 0; qi < kAttQW; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0.0f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) o[qi][c] = 0.0f;
  }

  for (int src = 0; src < 2; ++src) {
    const size_t len = src == 0 ? a.keys : a.extra_keys;
    if (len == 0) continue;  // uniform across the block: no barrier is skipped by some threads only
    const T* kb = (src == 0 ? k : ek) + b * len * stride + h * hd;
    const T* vb = (src == 0 ? v : ev) + b * len * stride + h * hd;
    for (size_t k0 = 0; k0 < len; k0 += kAttKT) {
      const int nk = static_cast<int>(min(static_cast<size_t>(kAttKT), len - k0));
      __syncthreads();  // the previous tile is consumed (and, the first time, q_s is written)
      for (int e = threadIdx.x; e < kAttKT * hd; e += blockDim.x) {
        const int j = e / hd, d = e % hd;
        float kv = 0.0f, vv = 0.0f;
        if (j < nk) {
          kv = ld(kb + (k0 + j) * stride + d);
          vv = ld(vb + (k0 + j) * stride + d);
        }
        k_s[j * ks + d] = kv;
        v_s[j * hd + d] = vv;
      }
      __syncthreads();

      float s[kAttQW];
#pragma unroll
      for (int qi = 0; qi < kAttQW; ++qi) s[qi] = 0.0f;
      const float* kr = k_s + lane * ks;
      for (int d = 0; d < hd; ++d) {
        const float kd = kr[d];
#pragma unroll
        for (int qi = 0; qi < kAttQW; ++qi) s[qi] = fmaf(my_q[qi * hd + d], kd, s[qi]);
      }
#pragma unroll
      for (int qi = 0; qi < kAttQW; ++qi) {
        const size_t qq = q_first + qi;
        float sc = -INFINITY;
        if (lane < nk) {
          sc = s[qi] * scale;
          if (src == 0 && bias && qq < a.queries) sc += ld(bias + (h * a.queries + qq) * a.keys + k0 + lane);
        }
        const float m_new = fmaxf(m[qi], warp_max(sc));
        const float p = lane < nk ? expf(sc - m_new) : 0.0f;
        const float alpha = expf(m[qi] - m_new);  // 0 on the first tile (m = -inf)
        l[qi] = fmaf(l[qi], alpha, warp_sum(p));
        m[qi] = m_new;
#pragma unroll
        for (int c = 0; c < DPL; ++c) o[qi][c] *= alpha;
        s[qi] = p;
      }
      for (int j = 0; j < nk; ++j) {
        float vj[DPL];
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
          const int d = lane + 32 * c;
          vj[c] = d < hd ? v_s[j * hd + d] : 0.0f;
        }
#pragma unroll
        for (int qi = 0; qi < kAttQW; ++qi) {
          const float pj = __shfl_sync(0xffffffffu, s[qi], j);
#pragma unroll
          for (int c = 0; c < DPL; ++c) o[qi][c] = fmaf(pj, vj[c], o[qi][c]);
        }
      }
    }
  }

#pragma unroll
  for (int qi = 0; qi < kAttQW; ++qi) {
    const size_t qq = q_first + qi;
    if (qq >= a.queries) continue;
    T* orow = out + (b * a.queries + qq) * stride + h * hd;
    const float inv = 1.0f / l[qi];
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) st(orow + d, o[qi][c] * inv);
    }
  }
}

template <typename T, int DPL>
void launch_attention(const T* q, const T* k, const T* v, const T* ek, const T* ev, const T* bias,
                      float scale, T* out, const AttentionShape& a, cudaStream_t stream) {
  const size_t smem = attention_smem_bytes(a.head_dim);
  // Above 48 KiB a kernel must opt in to more dynamic shared memory (hd >= 124 with these tiles).
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(attention_k<T, DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess)
      throw std::runtime_error(std::string("attention: cannot reserve ") + std::to_string(smem) +
                               " bytes of shared memory: " + cudaGetErrorString(err));
  }
  const size_t per_block = kAttWarps * kAttQW;
  const dim3 grid(static_cast<unsigned>((a.queries + per_block - 1) / per_block),
                  static_cast<unsigned>(a.heads), static_cast<unsigned>(a.batch));
  attention_k<T, DPL><<<grid, kAttWarps * 32, smem, stream>>>(q, k, v, ek, ev, bias, out, a, scale);
}

// ---- attention on tensor cores (bf16 and f16 storage, sm_80 and later) -------------------------

// The flash-attention scheme of FlashAttention-2 on mma.sync: a block of kMmaWarps warps takes
// kMmaWarps * 16 consecutive queries of one (batch, head); each warp keeps its 16 query rows as
// A fragments in registers and walks the keys, then the extra keys, in tiles of kMmaKeys rows of K
// and V. Tiles are copied to shared memory with cp.async, two stages deep, so the next tile loads
// while this one is computed. Per tile: S = Q K^T on the tensor cores (float32 accumulators), the
// online softmax in float32 (exp2 of log2-scaled scores), P rounded to the storage type and
// O += P V on the tensor cores. Each query row depends only on its own values and on the fixed
// key tiling, so a row's result does not depend on how many queries share the call. Shared rows
// are padded by 8 elements (16 bytes), which keeps ldmatrix conflict-free.
constexpr int kMmaWarps = 4;
constexpr int kMmaQueries = 16 * kMmaWarps;
constexpr int kMmaKeys = 64;

template <int HD>
constexpr size_t mma_smem_bytes() {
  return 2 /* stages */ * 2 /* K, V */ * kMmaKeys * (HD + 8) * 2 /* bytes per value */;
}

__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// D += A B for one m16n8k16 tile: A 16x16 row-major (4 registers of 2 values), B 16x8 column-major
// (2 registers), D 16x8 float32 (4 registers); the fragment layouts of the PTX ISA.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                         __nv_bfloat16) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// N 8x8 matrices of 16-bit values from shared memory (transposed with TRANS): lane i gives the
// address of row i % 8 of matrix i / 8.
template <int N, bool TRANS>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], const void* smem_row) {
#if __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  if constexpr (N == 4 && TRANS)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else if constexpr (N == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
#endif
}

// 16 bytes global -> shared without passing through registers; zeros when !valid (nothing read).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if __CUDA_ARCH__ >= 800
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(gmem), "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most N of this thread's committed copy groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// 2^x with the hardware approximation (2 ulp; ex2(-inf) = 0): the softmax's weights are rounded
// to 16 bits right after.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t ld2(const void* p) { return *static_cast<const uint32_t*>(p); }

template <typename T, int HD>
__global__ void __launch_bounds__(kMmaWarps * 32) attention_mma_k(const T* q, const T* k, const T* v,
                                                                   const T* ek, const T* ev, T* out,
                                                                   AttentionShape a, float scale_log2) {
  // Compiled for every architecture (the helpers' instructions only for sm_80+), launched only on
  // code for sm_80+ (mma_kernel_usable).
  constexpr int RS = HD + 8;                // shared row stride in elements
  constexpr int kStage = 2 * kMmaKeys * RS;  // one stage: K tile, then V tile
  extern __shared__ __align__(16) unsigned char mma_smem[];
  T* smem = reinterpret_cast<T*>(mma_smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;  // fragment row (and row + 8) and column pair
  const size_t b = blockIdx.z, h = blockIdx.y;
  const size_t stride = a.heads * HD;
  const size_t r0 = static_cast<size_t>(blockIdx.x) * kMmaQueries + warp * 16 + g, r1 = r0 + 8;
  const bool has0 = r0 < a.queries, has1 = r1 < a.queries;

  // Tiles: ceil(keys / kMmaKeys) of the keys, then those of the extra keys.
  const int tiles0 = static_cast<int>((a.keys + kMmaKeys - 1) / kMmaKeys);
  const int tiles = tiles0 + static_cast<int>((a.extra_keys + kMmaKeys - 1) / kMmaKeys);
  auto tile_keys = [&](int t) -> int {
    const size_t len = t < tiles0 ? a.keys : a.extra_keys;
    const size_t k0 = static_cast<size_t>(t < tiles0 ? t : t - tiles0) * kMmaKeys;
    return static_cast<int>(min(static_cast<size_t>(kMmaKeys), len - k0));
  };
  auto load_tile = [&](int t) {
    const bool extra = t >= tiles0;
    const size_t len = extra ? a.extra_keys : a.keys;
    const size_t k0 = static_cast<size_t>(extra ? t - tiles0 : t) * kMmaKeys;
    const T* kb = (extra ? ek : k) + b * len * stride + h * HD;
    const T* vb = (extra ? ev : v) + b * len * stride + h * HD;
    const int nk = tile_keys(t);
    T* ks = smem + (t & 1) * kStage;
    T* vs = ks + kMmaKeys * RS;
    for (int e = threadIdx.x; e < kMmaKeys * (HD / 8); e += blockDim.x) {
      const int j = e / (HD / 8), d = (e % (HD / 8)) * 8;
      const size_t row = j < nk ? k0 + j : 0;
      cp_async16(ks + j * RS + d, kb + row * stride + d, j < nk);
      cp_async16(vs + j * RS + d, vb + row * stride + d, j < nk);
    }
    cp_async_commit();
  };
  if (tiles > 0) load_tile(0);

  uint32_t qf[HD / 16][4];
  {
    const T* q0p = q + (b * a.queries + (has0 ? r0 : 0)) * stride + h * HD;
    const T* q1p = q + (b * a.queries + (has1 ? r1 : 0)) * stride + h * HD;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
      const int col = kk * 16 + 2 * c;
      qf[kk][0] = has0 ? ld2(q0p + col) : 0u;
      qf[kk][1] = has1 ? ld2(q1p + col) : 0u;
      qf[kk][2] = has0 ? ld2(q0p + col + 8) : 0u;
      qf[kk][3] = has1 ? ld2(q1p + col + 8) : 0u;
    }
  }

  float o[HD / 8][4];
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f;  // l: this thread's columns only

  for (int t = 0; t < tiles; ++t) {
    if (t + 1 < tiles) {
      load_tile(t + 1);  // into the other stage, freed by the barrier at the end of the last tile
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // tile t is in shared memory for every thread
    const T* ks = smem + (t & 1) * kStage;
    const T* vs = ks + kMmaKeys * RS;
    const int nk = tile_keys(t);

    float s[kMmaKeys / 8][4];
#pragma unroll
    for (int nt = 0; nt < kMmaKeys / 8; ++nt) {
      s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
      const T* krow = ks + (nt * 8 + (lane & 7)) * RS + (lane >> 3) * 8;
      if constexpr (HD % 32 == 0) {
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk += 2) {
          uint32_t kb4[4];
          ldmatrix<4, false>(kb4, krow + kk * 16);
          mma16816(s[nt], qf[kk], kb4[0], kb4[1], T());
          mma16816(s[nt], qf[kk + 1], kb4[2], kb4[3], T());
        }
      } else {
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) {
          uint32_t kb2[2];
          ldmatrix<2, false>(kb2, krow + kk * 16);
          mma16816(s[nt], qf[kk], kb2[0], kb2[1], T());
        }
      }
    }
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int nt = 0; nt < kMmaKeys / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool valid = nt * 8 + 2 * c + e < nk;
        s[nt][e] = valid ? s[nt][e] * scale_log2 : -INFINITY;
        s[nt][2 + e] = valid ? s[nt][2 + e] * scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[nt][e]);
        mx1 = fmaxf(mx1, s[nt][2 + e]);
      }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float alpha0 = fast_exp2(m0 - mx0), alpha1 = fast_exp2(m1 - mx1);  // 0 on the first tile
    m0 = mx0;
    m1 = mx1;
    l0 *= alpha0;
    l1 *= alpha1;
#pragma unroll
    for (int dt = 0; dt < HD / 8; ++dt) {
      o[dt][0] *= alpha0;
      o[dt][1] *= alpha0;
      o[dt][2] *= alpha1;
      o[dt][3] *= alpha1;
    }
#pragma unroll
    for (int nt = 0; nt < kMmaKeys / 8; ++nt) {
      s[nt][0] = fast_exp2(s[nt][0] - m0);
      s[nt][1] = fast_exp2(s[nt][1] - m0);
      s[nt][2] = fast_exp2(s[nt][2] - m1);
      s[nt][3] = fast_exp2(s[nt][3] - m1);
      l0 += s[nt][0] + s[nt][1];
      l1 += s[nt][2] + s[nt][3];
    }
#pragma unroll
    for (int kt = 0; kt < kMmaKeys / 16; ++kt) {
      const uint32_t pa[4] = {pack2(s[2 * kt][0], s[2 * kt][1], T()), pack2(s[2 * kt][2], s[2 * kt][3], T()),
                              pack2(s[2 * kt + 1][0], s[2 * kt + 1][1], T()),
                              pack2(s[2 * kt + 1][2], s[2 * kt + 1][3], T())};
      const T* vrow = vs + (kt * 16 + (lane & 15)) * RS + (lane >> 4) * 8;
#pragma unroll
      for (int dt = 0; dt < HD / 8; dt += 2) {
        uint32_t vb4[4];
        ldmatrix<4, true>(vb4, vrow + dt * 8);
        mma16816(o[dt], pa, vb4[0], vb4[1], T());
        mma16816(o[dt + 1], pa, vb4[2], vb4[3], T());
      }
    }
    __syncthreads();  // every warp is done with this stage before tile t + 2 is copied into it
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, off);
    l1 += __shfl_xor_sync(0xffffffffu, l1, off);
  }
  const float inv0 = 1.0f / l0, inv1 = 1.0f / l1;
  T* o0 = out + (b * a.queries + (has0 ? r0 : 0)) * stride + h * HD + 2 * c;
  T* o1 = out + (b * a.queries + (has1 ? r1 : 0)) * stride + h * HD + 2 * c;
#pragma unroll
  for (int dt = 0; dt < HD / 8; ++dt) {
    if (has0) *reinterpret_cast<uint32_t*>(o0 + dt * 8) = pack2(o[dt][0] * inv0, o[dt][1] * inv0, T());
    if (has1) *reinterpret_cast<uint32_t*>(o1 + dt * 8) = pack2(o[dt][2] * inv1, o[dt][3] * inv1, T());
  }
}

// Whether this build has sm_80+ code of the kernel for the current device: a build for older
// architectures only (or PTX JIT-compiled from one) compiles the body away.
// The same probe reserves the kernel's dynamic shared memory (above the 48 KiB default at HD 128).
template <typename T, int HD>
bool mma_kernel_usable() {
  static const bool usable = [] {
    cudaFuncAttributes attr;
    if (cudaFuncGetAttributes(&attr, attention_mma_k<T, HD>) != cudaSuccess || attr.binaryVersion < 80 ||
        attr.ptxVersion < 80 ||
        cudaFuncSetAttribute(attention_mma_k<T, HD>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(mma_smem_bytes<HD>())) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return true;
  }();
  return usable;
}

template <typename T, int HD>
bool try_attention_mma(const T* q, const T* k, const T* v, const T* ek, const T* ev, float scale, T* out,
                       const AttentionShape& a, cudaStream_t stream) {
  if (!mma_kernel_usable<T, HD>()) return false;
  const dim3 grid(static_cast<unsigned>((a.queries + kMmaQueries - 1) / kMmaQueries), static_cast<unsigned>(a.heads),
                  static_cast<unsigned>(a.batch));
  attention_mma_k<T, HD><<<grid, kMmaWarps * 32, mma_smem_bytes<HD>(), stream>>>(q, k, v, ek, ev, out, a,
                                                                                scale * 1.4426950408889634f);
  return true;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// The tensor-core kernel when it applies: 16-bit storage, no bias, head dim 16, 32, 64 or 128, and
// every tensor 16-byte aligned (its rows are then too: a row is heads * headDim 16-bit values).
template <typename T>
bool attention_on_tensor_cores(const T* q, const T* k, const T* v, const T* ek, const T* ev, const T* bias,
                               float scale, T* out, const AttentionShape& a, cudaStream_t stream) {
  if (bias) return false;
  if (!aligned16(q) || !aligned16(out) || (a.keys && (!aligned16(k) || !aligned16(v))) ||
      (a.extra_keys && (!aligned16(ek) || !aligned16(ev))))
    return false;
  switch (a.head_dim) {
    case 16: return try_attention_mma<T, 16>(q, k, v, ek, ev, scale, out, a, stream);
    case 32: return try_attention_mma<T, 32>(q, k, v, ek, ev, scale, out, a, stream);
    case 64: return try_attention_mma<T, 64>(q, k, v, ek, ev, scale, out, a, stream);
    case 128: return try_attention_mma<T, 128>(q, k, v, ek, ev, scale, out, a, stream);
    default: return false;
  }
}
template <>
bool attention_on_tensor_cores<float>(const float*, const float*, const float*, const float*, const float*,
                                      const float*, float, float*, const AttentionShape&, cudaStream_t) {
  return false;
}

// ---- data movement -----------------------------------------------------------------------------

// Window frame f < prefix_frames is frame prefix_length - prefix_frames + f of the prefix, the rest
// the latents' (CPU: cpu_backend.cc patchify).
template <typename T>
__global__ void patchify_k(const T* latents, const T* prefix, T* dst, size_t ch, size_t own, size_t height,
                           size_t width, size_t prefix_frames, size_t prefix_length) {
  const size_t ph_n = height / 2, pw_n = width / 2, frame = height * width;
  LS_GRID_STRIDE(o, ch * (prefix_frames + own) * frame) {
    const size_t tok = o / (4 * ch), r = o % (4 * ch);
    const size_t c = r / 4, ph = (r / 2) % 2, pw = r % 2;
    const size_t f = tok / (ph_n * pw_n), hh = (tok / pw_n) % ph_n, ww = tok % pw_n;
    const size_t at = (2 * hh + ph) * width + 2 * ww + pw;
    dst[o] = f < prefix_frames ? prefix[(c * prefix_length + prefix_length - prefix_frames + f) * frame + at]
                               : latents[(c * own + f - prefix_frames) * frame + at];
  }
}

template <typename T>
__global__ void unpatchify_k(const T* src, T* dst, size_t ch, size_t frames, size_t height,
                             size_t width) {
  const size_t pw_n = width / 2;
  LS_GRID_STRIDE(lat, ch * frames * height * width) {
    const size_t xx = lat % width, yy = (lat / width) % height;
    const size_t f = (lat / (width * height)) % frames, c = lat / (width * height * frames);
    const size_t tok = (f * (height / 2) + yy / 2) * pw_n + xx / 2;
    dst[lat] = src[tok * 4 * ch + ((yy % 2) * 2 + xx % 2) * ch + c];
  }
}

template <typename T, typename TIn>
__global__ void timestep_embedding_k(const TIn* t, T* y, size_t n, size_t dim) {
  const size_t half = dim / 2;
  LS_GRID_STRIDE(e, n * dim) {
    const size_t i = e / dim, j = e % dim;
    if (j >= 2 * half) {
      st(y + e, 0.0f);  // odd dim: the trailing element is zero, as on the CPU
      continue;
    }
    const size_t jj = j < half ? j : j - half;
    const double freq = pow(10000.0, -static_cast<double>(jj) / static_cast<double>(half));
    const double arg = static_cast<double>(ld(t + i)) * freq;
    st(y + e, static_cast<float>(j < half ? cos(arg) : sin(arg)));
  }
}

template <typename T>
__global__ void copy_rows_k(const T* x, T* y, size_t rows, size_t cols, size_t offset,
                            size_t count, size_t total) {
  LS_GRID_STRIDE(e, total) {
    const size_t r = e / cols, c = e % cols;
    const size_t b = r / count, i = r % count;
    y[e] = x[(b * rows + offset + i) * cols + c];
  }
}

template <typename T>
__global__ void upsample_nearest2x_k(const T* x, T* y, size_t frames, size_t height, size_t width,
                                     size_t ch) {
  LS_GRID_STRIDE(o, frames * 4 * height * width * ch) {
    const size_t c = o % ch, ox = (o / ch) % (2 * width), oy = (o / (ch * 2 * width)) % (2 * height);
    const size_t f = o / (ch * 4 * width * height);
    y[o] = x[((f * height + oy / 2) * width + ox / 2) * ch + c];
  }
}

template <typename T>
__global__ void transpose_k(const T* x, T* y, size_t batch, size_t rows, size_t cols, size_t cell) {
  LS_GRID_STRIDE(o, batch * rows * cols * cell) {
    const size_t e = o % cell, i = (o / cell) % rows, j = (o / (cell * rows)) % cols;
    const size_t b = o / (cell * rows * cols);
    y[o] = x[((b * rows + i) * cols + j) * cell + e];
  }
}

template <typename T>
__global__ void copy_k(const T* x, T* y, size_t n) {
  LS_GRID_STRIDE(i, n) y[i] = x[i];
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------

void to_storage(Storage s, const float* src, void* dst, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, to_storage_k<T><<<blocks_for(n), kThreads, 0, stream>>>(src, mp<T>(dst), n));
}

void from_storage(Storage s, const void* src, float* dst, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, from_storage_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(src), dst, n));
}

void fill_rows(Storage s, const void* bias, void* y, size_t m, size_t n, cudaStream_t stream) {
  if (m * n == 0) return;
  LS_DISPATCH(s, fill_rows_k<T><<<blocks_for(m * n), kThreads, 0, stream>>>(cp<T>(bias), mp<T>(y), m, n));
}

void linear_fallback(Storage s, const void* x, const void* w, const void* bias, void* y, size_t m,
                     size_t k, size_t n, cudaStream_t stream) {
  if (m == 0 || n == 0) return;
  const size_t gx = (m + kTile - 1) / kTile, gy = (n + kTile - 1) / kTile;
  if (gx > 2147483647u || gy > 65535u)
    throw std::runtime_error("linear: " + std::to_string(m) + "x" + std::to_string(n) +
                             " output is too large for the fallback GEMM grid");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  const dim3 block(kTile, kTile);
  LS_DISPATCH(s, linear_fallback_k<T><<<grid, block, 0, stream>>>(cp<T>(x), cp<T>(w), cp<T>(bias), mp<T>(y), m, k, n));
}

void layer_norm(Storage s, const void* x, const void* w, const void* b, void* y, size_t rows,
                size_t dim, float eps, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return;
  if (rows > 2147483647u) throw std::runtime_error("layer_norm: more than 2^31 - 1 rows");
  LS_DISPATCH(s, layer_norm_k<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
                     cp<T>(x), cp<T>(w), cp<T>(b), mp<T>(y), dim, eps));
}

void rms_norm(Storage s, const void* x, const void* w, void* y, size_t rows, size_t dim, float eps,
              cudaStream_t stream) {
  if (rows == 0 || dim == 0) return;
  if (rows > 2147483647u) throw std::runtime_error("rms_norm: more than 2^31 - 1 rows");
  LS_DISPATCH(s, rms_norm_k<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(cp<T>(x), cp<T>(w), mp<T>(y), dim, eps));
}

void modulate(Storage s, const void* x, const void* shift, const void* scale, void* y, size_t rows,
              size_t dim, cudaStream_t stream) {
  if (rows * dim == 0) return;
  LS_DISPATCH(s, modulate_k<T><<<blocks_for(rows * dim), kThreads, 0, stream>>>(
                     cp<T>(x), cp<T>(shift), cp<T>(scale), mp<T>(y), rows, dim));
}

void gated_add(Storage s, const void* x, const void* y, const void* gate, void* out, size_t rows,
               size_t dim, cudaStream_t stream) {
  if (rows * dim == 0) return;
  LS_DISPATCH(s, gated_add_k<T><<<blocks_for(rows * dim), kThreads, 0, stream>>>(
                     cp<T>(x), cp<T>(y), cp<T>(gate), mp<T>(out), rows, dim));
}

void gelu_tanh(Storage s, const void* x, void* y, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, gelu_tanh_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), n));
}

void silu(Storage s, const void* x, void* y, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, silu_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), n));
}

size_t rope3d_scratch_bytes(const RopeArgs& a) {
  const size_t pairs = a.head_dim / 2, part_r = pairs / 3, part_f = pairs - 2 * part_r;
  return (a.frames * part_f + (a.height + a.width) * part_r) * sizeof(double2);
}

void rope3d(Storage s, const void* x, void* y, const RopeArgs& a, void* scratch,
            cudaStream_t stream) {
  const size_t pairs = a.head_dim / 2, part_r = pairs / 3, part_f = pairs - 2 * part_r;
  const size_t total = a.batch * a.frames * a.height * a.width * a.heads * pairs;
  if (total == 0) return;
  auto* table = static_cast<double2*>(scratch);
  const size_t entries = a.frames * part_f + (a.height + a.width) * part_r;
  rope_table_k<<<blocks_for(entries), kThreads, 0, stream>>>(table, a.frames, a.height, a.width, part_f,
                                                              part_r, a.frame_offset, a.theta);
  LS_DISPATCH(s, rope_apply_k<T><<<blocks_for(total), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), table, a,
                                                                              part_f, part_r));
}

bool attention(Storage s, const void* q, const void* k, const void* v, const void* extra_k,
               const void* extra_v, const void* bias, float scale, void* out,
               const AttentionShape& a, cudaStream_t stream) {
  if (a.batch * a.queries * a.heads * a.head_dim == 0) return false;
  if (a.head_dim > kMaxAttentionHeadDim)
    throw std::runtime_error("attention: headDim " + std::to_string(a.head_dim) + " exceeds the CUDA kernel's limit of " +
                             std::to_string(kMaxAttentionHeadDim));
  if (a.heads > 65535 || a.batch > 65535 || (a.queries + kAttWarps * kAttQW - 1) / (kAttWarps * kAttQW) > 2147483647u)
    throw std::runtime_error("attention: batch or heads above 65535, or too many queries, for the CUDA grid");
  // Columns per lane, rounded up to a power of two so only five instantiations exist.
  const size_t dpl = (a.head_dim + 31) / 32;
  LS_DISPATCH(s, {
    const T *qt = cp<T>(q), *kt = cp<T>(k), *vt = cp<T>(v), *ekt = cp<T>(extra_k), *evt = cp<T>(extra_v);
    const T* bt = cp<T>(bias);
    T* ot = mp<T>(out);
    if (attention_on_tensor_cores<T>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream))
      return true;
    if (dpl <= 1)
      launch_attention<T, 1>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream);
    else if (dpl <= 2)
      launch_attention<T, 2>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream);
    else if (dpl <= 4)
      launch_attention<T, 4>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream);
    else if (dpl <= 8)
      launch_attention<T, 8>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream);
    else
      launch_attention<T, 16>(qt, kt, vt, ekt, evt, bt, scale, ot, a, stream);
  });
  return false;
}

void patchify(Storage s, const void* latents, const void* prefix, void* dst, size_t channels, size_t frames,
              size_t height, size_t width, size_t prefix_frames, size_t prefix_length, cudaStream_t stream) {
  const size_t n = channels * (prefix_frames + frames) * height * width;
  if (n == 0) return;
  LS_DISPATCH(s, patchify_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(latents), cp<T>(prefix), mp<T>(dst), channels,
                                                                        frames, height, width, prefix_frames,
                                                                        prefix_length));
}

void unpatchify(Storage s, const void* src, void* dst, size_t channels, size_t frames, size_t height,
                size_t width, cudaStream_t stream) {
  const size_t n = channels * frames * height * width;
  if (n == 0) return;
  LS_DISPATCH(s, unpatchify_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(src), mp<T>(dst), channels, frames,
                                                                          height, width));
}

void timestep_embedding(Storage s, const void* timesteps, bool timesteps_f32, void* y, size_t n,
                        size_t dim, cudaStream_t stream) {
  if (n * dim == 0) return;
  if (timesteps_f32) {
    LS_DISPATCH(s, timestep_embedding_k<T, float><<<blocks_for(n * dim), kThreads, 0, stream>>>(
                       cp<float>(timesteps), mp<T>(y), n, dim));
  } else {
    LS_DISPATCH(s, timestep_embedding_k<T, T><<<blocks_for(n * dim), kThreads, 0, stream>>>(
                       cp<T>(timesteps), mp<T>(y), n, dim));
  }
}

void cfg_combine(Storage s, const void* x, void* y, size_t n, float guidance, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, cfg_combine_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), n, guidance));
}

void axpy(Storage s, const void* x, const void* y, void* out, size_t n, float alpha, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, axpy_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), cp<T>(y), mp<T>(out), n, alpha));
}

void weighted_sum(Storage s, const void* const* terms, const float* coefs, int count, void* out, size_t n,
                  cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, {
    WeightedTerms<T> w{};
    w.count = count;
    for (int j = 0; j < count; ++j) w.t[j] = cp<T>(terms[j]), w.c[j] = coefs[j];
    weighted_sum_k<T><<<blocks_for(n), kThreads, 0, stream>>>(w, mp<T>(out), n);
  });
}

void mul(Storage s, const void* x, const void* y, void* out, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, mul_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), cp<T>(y), mp<T>(out), n));
}

void embedding(Storage s, const void* table, const void* ids, bool ids_f32, void* y, size_t rows,
               size_t dim, cudaStream_t stream) {
  if (rows * dim == 0) return;
  if (ids_f32) {
    LS_DISPATCH(s, embedding_k<T, float><<<blocks_for(rows * dim), kThreads, 0, stream>>>(
                       cp<T>(table), cp<float>(ids), mp<T>(y), rows, dim));
  } else {
    LS_DISPATCH(s, embedding_k<T, T><<<blocks_for(rows * dim), kThreads, 0, stream>>>(
                       cp<T>(table), cp<T>(ids), mp<T>(y), rows, dim));
  }
}

void relative_position_bias(Storage s, const void* table, void* y, size_t queries, size_t keys,
                            size_t heads, size_t buckets, size_t max_distance, cudaStream_t stream) {
  const size_t total = heads * queries * keys;
  if (total == 0) return;
  LS_DISPATCH(s, relative_position_bias_k<T><<<blocks_for(total), kThreads, 0, stream>>>(
                     cp<T>(table), mp<T>(y), queries, keys, heads, buckets, max_distance));
}

void copy_rows(Storage s, const void* x, void* y, size_t batch, size_t rows, size_t cols,
               size_t offset, size_t count, cudaStream_t stream) {
  const size_t total = batch * count * cols;
  if (total == 0) return;
  LS_DISPATCH(s, copy_rows_k<T><<<blocks_for(total), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), rows, cols, offset,
                                                                             count, total));
}

void causal_conv3d(Storage s, const void* x, const void* w, const void* bias, const void* cache,
                   void* out, const ConvShape& a, cudaStream_t stream) {
  const size_t m = a.frames * a.height * a.width, n = a.out_channels;
  if (m == 0 || n == 0) return;
  const size_t gx = (m + kTile - 1) / kTile, gy = (n + kTile - 1) / kTile;
  if (gx > 2147483647u || gy > 65535u)
    throw std::runtime_error("causal_conv3d: " + std::to_string(m) + " pixels x " + std::to_string(n) +
                             " channels is too large for the CUDA grid");
  const dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy));
  const dim3 block(kTile, kTile);
  LS_DISPATCH(s, causal_conv3d_k<T><<<grid, block, 0, stream>>>(cp<T>(x), cp<T>(w), cp<T>(bias), cp<T>(cache),
                                                                 mp<T>(out), a));
}

void channel_rms_norm(Storage s, const void* x, const void* w, void* y, size_t rows, size_t dim,
                      float eps, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return;
  if (rows > 2147483647u) throw std::runtime_error("channel_rms_norm: more than 2^31 - 1 rows");
  LS_DISPATCH(s, channel_rms_norm_k<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
                     cp<T>(x), cp<T>(w), mp<T>(y), dim, eps));
}

void upsample_nearest2x(Storage s, const void* x, void* y, size_t frames, size_t height,
                        size_t width, size_t channels, cudaStream_t stream) {
  const size_t n = frames * 4 * height * width * channels;
  if (n == 0) return;
  LS_DISPATCH(s, upsample_nearest2x_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), frames, height,
                                                                                  width, channels));
}

void transpose(Storage s, const void* x, void* y, size_t batch, size_t rows, size_t cols,
               size_t cell, cudaStream_t stream) {
  const size_t n = batch * rows * cols * cell;
  if (n == 0) return;
  LS_DISPATCH(s, transpose_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), batch, rows, cols, cell));
}

void update_frame_cache(Storage s, const void* cache, const void* x, void* y, size_t keep,
                        size_t frames, size_t frame_size, cudaStream_t stream) {
  if (frame_size == 0) return;
  const size_t bytes = storage_bytes(s);
  for (size_t j = 0; j < keep; ++j) {
    const size_t f = j + frames;
    const char* src = f < keep ? static_cast<const char*>(cache) + f * frame_size * bytes
                               : static_cast<const char*>(x) + (f - keep) * frame_size * bytes;
    char* dst = static_cast<char*>(y) + j * frame_size * bytes;
    if (src == dst) continue;
    LS_DISPATCH(s, copy_k<T><<<blocks_for(frame_size), kThreads, 0, stream>>>(cp<T>(src), mp<T>(dst), frame_size));
  }
}

void clamp(Storage s, const void* x, void* y, size_t n, float lo, float hi, cudaStream_t stream) {
  if (n == 0) return;
  LS_DISPATCH(s, clamp_k<T><<<blocks_for(n), kThreads, 0, stream>>>(cp<T>(x), mp<T>(y), n, lo, hi));
}

}  // namespace cuda
}  // namespace ls
