#include "cpu_backend.h"
#include "position_bucket.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

namespace ls {

// ---- SIMD levels -----------------------------------------------------------------------------

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::avx2: return "avx2";
    case SimdLevel::scalar: break;
  }
  return "scalar";
}

bool parse_simd(const std::string& name, SimdLevel* out) {
  for (SimdLevel l : {SimdLevel::scalar, SimdLevel::avx2, SimdLevel::avx512}) {
    if (name == simd_name(l)) {
      *out = l;
      return true;
    }
  }
  return false;
}

std::vector<SimdLevel> simd_available() {
  std::vector<SimdLevel> levels{SimdLevel::scalar};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    levels.push_back(SimdLevel::avx2);
    // The AVX-512 unit is built with F, VL and DQ (and AVX2/FMA for the compiler's own use).
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
      levels.push_back(SimdLevel::avx512);
  }
  return levels;
}

SimdLevel simd_default() {
  // The best this CPU runs; the app caps it from its config (setSimd). No environment is read.
  return simd_available().back();
}

const CpuKernels& cpu_kernels(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return cpu_kernels_avx512();
    case SimdLevel::avx2: return cpu_kernels_avx2();
    case SimdLevel::scalar: break;
  }
  return cpu_kernels_scalar();
}

// ---- Ops without a SIMD-specific kernel ------------------------------------------------------

namespace {

constexpr size_t kCopyBlock = 16384;

void rope3d(ThreadPool& pool, const Node& n) {
  const size_t batch = n.p(0), frames = n.p(1), height = n.p(2), width = n.p(3), heads = n.p(4),
               hd = n.p(5), frame_offset = n.p(6);
  const double theta = n.params[7];
  const size_t pairs = hd / 2, part_r = pairs / 3, part_f = pairs - 2 * part_r;
  // cos/sin per (position, pair) for each axis, in float64; the rotation itself too, since this
  // op is cheap next to the linears around it.
  auto table = [&](size_t positions, size_t offset, size_t count) {
    std::vector<double> t(positions * count * 2);
    const double dims = 2.0 * static_cast<double>(count);
    for (size_t pos = 0; pos < positions; ++pos) {
      for (size_t j = 0; j < count; ++j) {
        const double angle = static_cast<double>(pos + offset) *
                             std::pow(theta, -2.0 * static_cast<double>(j) / dims);
        t[(pos * count + j) * 2] = std::cos(angle);
        t[(pos * count + j) * 2 + 1] = std::sin(angle);
      }
    }
    return t;
  };
  const auto tf = table(frames, frame_offset, part_f);
  const auto th = table(height, 0, part_r);
  const auto tw = table(width, 0, part_r);
  const float* x = n.inputs[0].data;
  float* y = n.output.data;
  const size_t tokens = frames * height * width;
  pool.parallel_for(batch * tokens, [&](size_t t0, size_t t1, int) {
    for (size_t tok = t0; tok < t1; ++tok) {
      const size_t in_batch = tok % tokens;
      const size_t f = in_batch / (height * width), i = (in_batch / width) % height,
                   j = in_batch % width;
      const double* cs[3] = {&tf[f * part_f * 2], &th[i * part_r * 2], &tw[j * part_r * 2]};
      for (size_t h = 0; h < heads; ++h) {
        const size_t base = (tok * heads + h) * hd;
        for (size_t p = 0; p < pairs; ++p) {
          const int part = p < part_f ? 0 : (p < part_f + part_r ? 1 : 2);
          const size_t local = part == 0 ? p : (part == 1 ? p - part_f : p - part_f - part_r);
          const double c = cs[part][local * 2], s = cs[part][local * 2 + 1];
          const double a = x[base + 2 * p], b = x[base + 2 * p + 1];
          y[base + 2 * p] = static_cast<float>(a * c - b * s);
          y[base + 2 * p + 1] = static_cast<float>(a * s + b * c);
        }
      }
    }
  });
}

// Tokens of the window [ch, prefixFrames + frames, H, W], read in place from its two sources: window
// frame f < prefixFrames is frame prefixLength - prefixFrames + f of the prefix, the rest the latents'.
void patchify(ThreadPool& pool, const Node& n) {
  const size_t ch = n.p(0), own = n.p(1), height = n.p(2), width = n.p(3), pf = n.p(4), held = n.p(5);
  const size_t ph_n = height / 2, pw_n = width / 2, frame = height * width, tokens = (pf + own) * ph_n * pw_n;
  const float* latents = n.inputs[0].data;
  const float* prefix = n.inputs[1].data;
  float* dst = n.output.data;
  pool.parallel_for(tokens, [&](size_t t0, size_t t1, int) {
    for (size_t tok = t0; tok < t1; ++tok) {
      const size_t f = tok / (ph_n * pw_n), hh = (tok / pw_n) % ph_n, ww = tok % pw_n;
      // Channel c of window frame f starts at src + c * channel_stride.
      const float* src = f < pf ? prefix + (held - pf + f) * frame : latents + (f - pf) * frame;
      const size_t channel_stride = (f < pf ? held : own) * frame;
      float* out = dst + tok * 4 * ch;
      for (size_t c = 0; c < ch; ++c)
        for (size_t ph = 0; ph < 2; ++ph)
          for (size_t pw = 0; pw < 2; ++pw)
            out[c * 4 + ph * 2 + pw] = src[c * channel_stride + (2 * hh + ph) * width + 2 * ww + pw];
    }
  });
}

void unpatchify(ThreadPool& pool, const Node& n) {
  const size_t ch = n.p(0), frames = n.p(1), height = n.p(2), width = n.p(3);
  const size_t ph_n = height / 2, pw_n = width / 2, tokens = frames * ph_n * pw_n;
  const float* src = n.inputs[0].data;
  float* dst = n.output.data;
  pool.parallel_for(tokens, [&](size_t t0, size_t t1, int) {
    for (size_t tok = t0; tok < t1; ++tok) {
      const size_t f = tok / (ph_n * pw_n), hh = (tok / pw_n) % ph_n, ww = tok % pw_n;
      for (size_t c = 0; c < ch; ++c)
        for (size_t ph = 0; ph < 2; ++ph)
          for (size_t pw = 0; pw < 2; ++pw)
            dst[((c * frames + f) * height + 2 * hh + ph) * width + 2 * ww + pw] = src[tok * 4 * ch + (ph * 2 + pw) * ch + c];
    }
  });
}

void timestep_embedding(const Node& n) {
  const size_t count = n.p(0), dim = n.p(1), half = dim / 2;
  const float* t = n.inputs[0].data;
  float* y = n.output.data;
  for (size_t i = 0; i < count; ++i) {
    float* row = y + i * dim;
    for (size_t j = 0; j < half; ++j) {
      const double freq = std::pow(10000.0, -static_cast<double>(j) / static_cast<double>(half));
      const double arg = static_cast<double>(t[i]) * freq;
      row[j] = static_cast<float>(std::cos(arg));
      row[half + j] = static_cast<float>(std::sin(arg));
    }
    // An odd dim leaves one trailing element, zero as in the usual implementations.
    if (dim % 2) row[dim - 1] = 0.0f;
  }
}

void copy_rows(ThreadPool& pool, const Node& n) {
  const size_t batch = n.p(0), rows = n.p(1), cols = n.p(2), offset = n.p(3), count = n.p(4);
  const float* x = n.inputs[0].data;
  float* y = n.output.data;
  pool.parallel_for(batch * count, [&](size_t r0, size_t r1, int) {
    for (size_t r = r0; r < r1; ++r) {
      const size_t b = r / count, i = r % count;
      std::memcpy(y + r * cols, x + (b * rows + offset + i) * cols, cols * sizeof(float));
    }
  });
}

void embedding(ThreadPool& pool, const Node& n) {
  const size_t rows = n.p(0), dim = n.p(2);
  const float* table = n.inputs[0].data;
  const float* ids = n.inputs[1].data;  // integers in [0, vocab): checked by validate()
  float* y = n.output.data;
  pool.parallel_for(rows, [&](size_t r0, size_t r1, int) {
    for (size_t r = r0; r < r1; ++r)
      std::memcpy(y + r * dim, table + static_cast<size_t>(ids[r]) * dim, dim * sizeof(float));
  });
}

void relative_position_bias(ThreadPool& pool, const Node& n) {
  const size_t queries = n.p(0), keys = n.p(1), heads = n.p(2), buckets = n.p(3),
               max_distance = n.p(4);
  if (queries * keys * heads == 0) return;
  // One bucket per relative position key - query, from -(queries - 1) to keys - 1.
  const long long lo = 1 - static_cast<long long>(queries);
  std::vector<size_t> bucket(queries + keys - 1);
  for (size_t i = 0; i < bucket.size(); ++i)
    bucket[i] = static_cast<size_t>(relative_position_bucket(lo + static_cast<long long>(i),
                                                             static_cast<long long>(buckets),
                                                             static_cast<long long>(max_distance)));
  const float* table = n.inputs[0].data;  // [buckets, heads]
  float* y = n.output.data;               // [heads, queries, keys]
  pool.parallel_for(heads * queries, [&](size_t r0, size_t r1, int) {
    for (size_t r = r0; r < r1; ++r) {
      const size_t h = r / queries, q = r % queries;
      const size_t* row = bucket.data() + (queries - 1 - q);  // rel = k - q starts at -q
      for (size_t k = 0; k < keys; ++k) y[r * keys + k] = table[row[k] * heads + h];
    }
  });
}

// out[b, j, i, :] = x[b, i, j, :] for cells of cellSize floats.
void transpose(ThreadPool& pool, const Node& n) {
  const size_t batch = n.p(0), rows = n.p(1), cols = n.p(2), cell = n.p(3);
  const float* x = n.inputs[0].data;
  float* y = n.output.data;
  pool.parallel_for(batch * cols, [&](size_t r0, size_t r1, int) {
    for (size_t r = r0; r < r1; ++r) {
      const size_t b = r / cols, j = r % cols;
      for (size_t i = 0; i < rows; ++i)
        std::memcpy(y + ((b * cols + j) * rows + i) * cell, x + ((b * rows + i) * cols + j) * cell,
                    cell * sizeof(float));
    }
  });
}

// [frames, height, width, channels] -> [frames, 2 height, 2 width, channels]; output pixel (y, x)
// is input pixel (y / 2, x / 2), which is what nearest-exact gives for a scale of exactly 2.
void upsample_nearest2x(ThreadPool& pool, const Node& n) {
  const size_t frames = n.p(0), height = n.p(1), width = n.p(2), ch = n.p(3);
  const float* x = n.inputs[0].data;
  float* y = n.output.data;
  pool.parallel_for(frames * 2 * height, [&](size_t r0, size_t r1, int) {
    for (size_t r = r0; r < r1; ++r) {
      const size_t f = r / (2 * height), oy = r % (2 * height);
      const float* src = x + (f * height + oy / 2) * width * ch;
      float* dst = y + r * 2 * width * ch;
      for (size_t ox = 0; ox < 2 * width; ++ox) std::memcpy(dst + ox * ch, src + (ox / 2) * ch, ch * sizeof(float));
    }
  });
}

// out = the last `keep` frames of [cache (keep frames), x (frames)]; out may be the cache itself.
// Output frames are written in ascending order, each from a later frame of the cache or from x,
// so in place a cache frame is always read before it is overwritten; the copy within a frame is
// split across threads.
void update_frame_cache(ThreadPool& pool, const Node& n) {
  const size_t keep = n.p(0), frames = n.p(1), size = n.p(2);
  const float* cache = n.inputs[0].data;
  const float* x = n.inputs[1].data;
  float* y = n.output.data;
  for (size_t j = 0; j < keep; ++j) {
    const size_t s = j + frames;  // frame of the concatenation
    const float* src = s < keep ? cache + s * size : x + (s - keep) * size;
    float* dst = y + j * size;
    if (src == dst) continue;
    pool.parallel_for((size + kCopyBlock - 1) / kCopyBlock, [&](size_t b0, size_t b1, int) {
      const size_t e0 = b0 * kCopyBlock, e1 = std::min(size, b1 * kCopyBlock);
      std::memcpy(dst + e0, src + e0, (e1 - e0) * sizeof(float));
    });
  }
}

}  // namespace

// ---- Backend ---------------------------------------------------------------------------------

CpuBackend::CpuBackend()
    : pool_(std::make_unique<ThreadPool>(default_thread_count())),
      kernels_(&cpu_kernels(simd_default())) {}

void CpuBackend::set_threads(int threads) {
  if (threads != pool_->size()) pool_ = std::make_unique<ThreadPool>(threads);
}

void CpuBackend::set_simd(SimdLevel level) { kernels_ = &cpu_kernels(level); }

bool CpuBackend::supports_op(const Node& node, std::string* why) const {
  if (node.op == Op::count) {
    if (why) *why = "no such op";
    return false;
  }
  return true;
}

void CpuBackend::compute(const Node& n) {
  ThreadPool& pool = *pool_;
  const CpuKernels& k = *kernels_;
  const float* in[kMaxInputs];
  for (int i = 0; i < kMaxInputs; ++i) in[i] = n.inputs[i].data;
  float* out = n.output.data;
  switch (n.op) {
    case Op::linear: k.linear(pool, in[0], in[1], in[2], out, n.p(0), n.p(1), n.p(2)); break;
    case Op::layer_norm: k.layer_norm(pool, in[0], in[1], in[2], out, n.p(0), n.p(1), n.pf(2)); break;
    case Op::rms_norm: k.rms_norm(pool, in[0], in[1], out, n.p(0), n.p(1), n.pf(2)); break;
    case Op::modulate: k.modulate(pool, in[0], in[1], in[2], out, n.p(0), n.p(1)); break;
    case Op::gated_add: k.gated_add(pool, in[0], in[1], in[2], out, n.p(0), n.p(1)); break;
    case Op::gelu_tanh: k.gelu_tanh(pool, in[0], out, n.p(0)); break;
    case Op::silu: k.silu(pool, in[0], out, n.p(0)); break;
    case Op::rope3d: rope3d(pool, n); break;
    case Op::attention: {
      const AttentionArgs a{in[0], in[1], in[2], in[3], in[4], out,
                            n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5),
                            1.0f / std::sqrt(static_cast<float>(n.p(5))), nullptr};
      k.attention(pool, a);
      break;
    }
    case Op::biased_attention: {
      const AttentionArgs a{in[0], in[1], in[2], nullptr, nullptr, out,
                            n.p(0), n.p(1), n.p(2), 0, n.p(3), n.p(4), n.pf(5), in[3]};
      k.attention(pool, a);
      break;
    }
    case Op::mul: k.mul(pool, in[0], in[1], out, n.p(0)); break;
    case Op::embedding: embedding(pool, n); break;
    case Op::relative_position_bias: relative_position_bias(pool, n); break;
    case Op::patchify: patchify(pool, n); break;
    case Op::unpatchify: unpatchify(pool, n); break;
    case Op::timestep_embedding: timestep_embedding(n); break;
    case Op::cfg_combine: k.cfg_combine(pool, in[0], in[0] + n.p(0), out, n.p(0), n.pf(1)); break;
    case Op::copy_rows: copy_rows(pool, n); break;
    case Op::axpy: k.axpy(pool, in[0], in[1], out, n.p(0), n.pf(1)); break;
    case Op::causal_conv3d: {
      const ConvArgs a{in[0], in[1], in[2], in[3], out, n.p(0), n.p(1), n.p(2),
                       n.p(3), n.p(4), n.p(5), n.p(6), n.p(7), n.p(8)};
      k.causal_conv3d(pool, a);
      break;
    }
    case Op::channel_rms_norm: k.channel_rms_norm(pool, in[0], in[1], out, n.p(0), n.p(1), n.pf(2)); break;
    case Op::upsample_nearest2x: upsample_nearest2x(pool, n); break;
    case Op::transpose: transpose(pool, n); break;
    case Op::update_frame_cache: update_frame_cache(pool, n); break;
    case Op::clamp: k.clamp(pool, in[0], out, n.p(0), n.pf(1), n.pf(2)); break;
    case Op::weighted_sum: {
      const float* terms[kMaxInputs];
      float coefs[kMaxInputs];
      const int count = weighted_sum_terms(n, in, terms, coefs);
      k.weighted_sum(pool, terms, coefs, count, out, n.p(0));
      break;
    }
    case Op::count: throw std::logic_error("unvalidated node");
  }
}

CpuBackend& cpu_backend() {
  static CpuBackend* backend = [] {
    auto owned = std::make_unique<CpuBackend>();
    CpuBackend* raw = owned.get();
    register_backend(std::move(owned));
    return raw;
  }();
  return *backend;
}

}  // namespace ls
