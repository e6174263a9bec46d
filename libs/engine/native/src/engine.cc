#include "engine.h"

#include <cmath>
#include <cstdint>

namespace ls {

namespace {

std::vector<std::string> split(const char* list) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* c = list; *c; ++c) {
    if (*c == ',') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += *c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

OpInfo make_info(const char* name, const char* inputs, const char* params, bool in_place) {
  OpInfo info{name, {}, {}, split(params), {}, in_place};
  for (std::string slot : split(inputs)) {
    const bool opt = !slot.empty() && slot.back() == '?';
    if (opt) slot.pop_back();
    info.inputs.push_back(slot);
    info.optional.push_back(opt);
  }
  for (const auto& p : info.params) {
    const std::string suffix = "(float)";
    info.float_param.push_back(p.size() >= suffix.size() &&
                               p.compare(p.size() - suffix.size(), suffix.size(), suffix) == 0);
  }
  return info;
}

const std::vector<OpInfo>& op_table() {
  static const std::vector<OpInfo> table = {
#define LS_OP(name, inputs, params, in_place) make_info(#name, inputs, params, in_place),
#include "ops.def"
#undef LS_OP
  };
  return table;
}

// Products of shape params, saturating so that absurd shapes fail the size check instead of
// wrapping around.
uint64_t mul(std::initializer_list<size_t> xs) {
  uint64_t r = 1;
  for (size_t x : xs) {
    if (__builtin_mul_overflow(r, static_cast<uint64_t>(x), &r)) return UINT64_MAX;
  }
  return r;
}

std::string where(const Node& n, size_t index) {
  return "node " + std::to_string(index) + " (" + op_info(n.op).name + "): ";
}

}  // namespace

const OpInfo& op_info(Op op) { return op_table()[static_cast<int>(op)]; }

namespace {
std::vector<std::unique_ptr<Backend>>& registry() {
  static std::vector<std::unique_ptr<Backend>> list;
  return list;
}
}  // namespace

void register_backend(std::unique_ptr<Backend> backend) { registry().push_back(std::move(backend)); }

const std::vector<std::unique_ptr<Backend>>& backends() { return registry(); }

Backend* find_backend(const std::string& name) {
  for (const auto& b : registry())
    if (name == b->name()) return b.get();
  return nullptr;
}

size_t output_elements(const Node& n) {
  switch (n.op) {
    case Op::linear: return n.p(0) * n.p(2);
    case Op::layer_norm:
    case Op::rms_norm:
    case Op::modulate:
    case Op::gated_add: return n.p(0) * n.p(1);
    case Op::gelu_tanh:
    case Op::silu: return n.p(0);
    case Op::rope3d: return n.p(0) * n.p(1) * n.p(2) * n.p(3) * n.p(4) * n.p(5);
    case Op::attention: return n.p(0) * n.p(1) * n.p(4) * n.p(5);
    case Op::patchify: return n.p(0) * (n.p(4) + n.p(1)) * n.p(2) * n.p(3);
    case Op::unpatchify: return n.p(0) * n.p(1) * n.p(2) * n.p(3);
    case Op::timestep_embedding: return n.p(0) * n.p(1);
    case Op::cfg_combine: return n.p(0);
    case Op::copy_rows: return n.p(0) * n.p(4) * n.p(2);
    case Op::axpy:
    case Op::mul: return n.p(0);
    case Op::embedding: return n.p(0) * n.p(2);
    case Op::relative_position_bias: return n.p(2) * n.p(0) * n.p(1);
    case Op::biased_attention: return n.p(0) * n.p(1) * n.p(3) * n.p(4);
    case Op::causal_conv3d: return n.p(0) * n.p(2) * n.p(3) * n.p(5);
    case Op::channel_rms_norm: return n.p(0) * n.p(1);
    case Op::upsample_nearest2x: return n.p(0) * 4 * n.p(1) * n.p(2) * n.p(3);
    case Op::transpose: return n.p(0) * n.p(1) * n.p(2) * n.p(3);
    case Op::update_frame_cache: return n.p(0) * n.p(2);
    case Op::clamp:
    case Op::weighted_sum: return n.p(0);
    case Op::count: break;
  }
  throw std::logic_error("output_elements: unknown op");
}

void validate(const Node& n, size_t index) {
  const OpInfo& info = op_info(n.op);
  for (size_t i = 0; i < info.params.size(); ++i) {
    const double v = n.params[i];
    if (!std::isfinite(v))
      throw ShapeError(where(n, index) + "param '" + info.params[i] + "' must be finite");
    if (!info.float_param[i] && (v < 0 || v != std::floor(v) || v > 9007199254740991.0))
      throw ShapeError(where(n, index) + "param '" + info.params[i] +
                       "' must be a non-negative integer, got " + std::to_string(v));
  }

  std::vector<uint64_t> need(info.inputs.size(), 0);
  uint64_t out_need = 0;
  auto bad_param = [&](int i, const std::string& why) {
    throw ShapeError(where(n, index) + "param '" + info.params[i] + "' " + why);
  };
  switch (n.op) {
    case Op::linear:
      need = {mul({n.p(0), n.p(1)}), mul({n.p(2), n.p(1)}), n.p(2)};
      out_need = mul({n.p(0), n.p(2)});
      break;
    case Op::layer_norm:
    case Op::rms_norm:
      need = {mul({n.p(0), n.p(1)}), n.p(1), n.p(1)};
      need.resize(info.inputs.size());
      out_need = mul({n.p(0), n.p(1)});
      break;
    case Op::modulate:
      need = {mul({n.p(0), n.p(1)}), n.p(1), n.p(1)};
      out_need = need[0];
      break;
    case Op::gated_add:
      need = {mul({n.p(0), n.p(1)}), mul({n.p(0), n.p(1)}), n.p(1)};
      out_need = need[0];
      break;
    case Op::gelu_tanh:
    case Op::silu:
      need = {n.p(0)};
      out_need = n.p(0);
      break;
    case Op::rope3d:
      if (n.p(5) % 2 != 0) bad_param(5, "must be even (the head dim is rotated in pairs)");
      need = {mul({n.p(0), n.p(1), n.p(2), n.p(3), n.p(4), n.p(5)})};
      out_need = need[0];
      break;
    case Op::attention: {
      const uint64_t q = mul({n.p(0), n.p(1), n.p(4), n.p(5)});
      const uint64_t kv = mul({n.p(0), n.p(2), n.p(4), n.p(5)});
      const uint64_t ex = mul({n.p(0), n.p(3), n.p(4), n.p(5)});
      if (q > 0 && n.p(2) + n.p(3) == 0) bad_param(2, "and 'extraKeys' are both 0: no keys to attend to");
      need = {q, kv, kv, ex, ex};
      out_need = q;
      if (n.p(3) > 0) {
        for (int slot = 3; slot < 5; ++slot)
          if (!n.inputs[slot].present)
            throw ShapeError(where(n, index) + "input '" + info.inputs[slot] + "' (slot " +
                             std::to_string(slot) + ") is null but extraKeys is " +
                             std::to_string(n.p(3)));
      }
      break;
    }
    case Op::patchify: {
      const size_t ch = n.p(0), frames = n.p(1), h = n.p(2), w = n.p(3), prefix = n.p(4), held = n.p(5);
      if (h % 2 != 0) bad_param(2, "must be even (patch size 2)");
      if (w % 2 != 0) bad_param(3, "must be even (patch size 2)");
      if (prefix > held) bad_param(4, "exceeds 'prefixLength', the frames the prefix tensor holds");
      if (prefix > 0 && !n.inputs[1].present)
        throw ShapeError(where(n, index) + "input 'prefix' (slot 1) is null but prefixFrames is " + std::to_string(prefix));
      need = {mul({ch, frames, h, w}), mul({ch, held, h, w})};
      out_need = mul({ch, prefix + frames, h, w});
      break;
    }
    case Op::unpatchify:
      if (n.p(2) % 2 != 0) bad_param(2, "must be even (patch size 2)");
      if (n.p(3) % 2 != 0) bad_param(3, "must be even (patch size 2)");
      need = {mul({n.p(0), n.p(1), n.p(2), n.p(3)})};
      out_need = need[0];
      break;
    case Op::timestep_embedding:
      need = {n.p(0)};
      out_need = mul({n.p(0), n.p(1)});
      break;
    case Op::cfg_combine:
      need = {mul({2, n.p(0)})};
      out_need = n.p(0);
      break;
    case Op::axpy:
    case Op::mul:
      need = {n.p(0), n.p(0)};
      out_need = n.p(0);
      break;
    case Op::embedding: {
      need = {mul({n.p(1), n.p(2)}), n.p(0)};
      out_need = mul({n.p(0), n.p(2)});
      // Ids are data, not shape, but a bad one would read outside the table on every backend, so
      // they are checked here, before any node runs: an embedding's ids must be ready when the
      // graph starts (they come from the tokenizer), not produced by an earlier node.
      const Tensor& ids = n.inputs[1];
      if (ids.present && ids.size >= n.p(0)) {
        const double vocab = static_cast<double>(n.p(1));
        for (size_t r = 0; r < n.p(0); ++r) {
          const double id = ids.data[r];
          if (!(id >= 0 && id < vocab && id == std::floor(id)))
            throw ShapeError(where(n, index) + "ids[" + std::to_string(r) + "] = " + std::to_string(id) +
                             " is not a token id in [0, " + std::to_string(n.p(1)) + ")");
        }
      }
      break;
    }
    case Op::relative_position_bias:
      if (n.p(3) < 4) bad_param(3, "must be at least 4 (two signs, each with exact and log buckets)");
      if (n.p(4) <= n.p(3) / 4)
        bad_param(4, "must exceed buckets / 4, the largest distance with a bucket of its own");
      need = {mul({n.p(3), n.p(2)})};
      out_need = mul({n.p(2), n.p(0), n.p(1)});
      break;
    case Op::biased_attention: {
      const uint64_t q = mul({n.p(0), n.p(1), n.p(3), n.p(4)});
      const uint64_t kv = mul({n.p(0), n.p(2), n.p(3), n.p(4)});
      if (q > 0 && n.p(2) == 0) bad_param(2, "is 0: no keys to attend to");
      need = {q, kv, kv, mul({n.p(3), n.p(1), n.p(2)})};
      out_need = q;
      break;
    }
    case Op::causal_conv3d: {
      const size_t frames = n.p(0), cache = n.p(1), h = n.p(2), w = n.p(3), cin = n.p(4),
                   cout = n.p(5), kt = n.p(6), kh = n.p(7), kw = n.p(8);
      if (kt == 0) bad_param(6, "must be at least 1");
      if (kh % 2 == 0) bad_param(7, "must be odd (zero padding of kernelH / 2 keeps the height)");
      if (kw % 2 == 0) bad_param(8, "must be odd (zero padding of kernelW / 2 keeps the width)");
      if (cache > kt - 1) bad_param(1, "exceeds kernelT - 1, the frames before a frame that a causal kernel reads");
      if (cache > 0 && !n.inputs[3].present)
        throw ShapeError(where(n, index) + "input 'cache' (slot 3) is null but cacheFrames is " + std::to_string(cache));
      need = {mul({frames, h, w, cin}), mul({cout, cin, kt, kh, kw}), cout, mul({cache, h, w, cin})};
      out_need = mul({frames, h, w, cout});
      break;
    }
    case Op::channel_rms_norm:
      need = {mul({n.p(0), n.p(1)}), n.p(1)};
      out_need = need[0];
      break;
    case Op::upsample_nearest2x:
      need = {mul({n.p(0), n.p(1), n.p(2), n.p(3)})};
      out_need = mul({n.p(0), 4, n.p(1), n.p(2), n.p(3)});
      break;
    case Op::transpose:
      need = {mul({n.p(0), n.p(1), n.p(2), n.p(3)})};
      out_need = need[0];
      break;
    case Op::update_frame_cache:
      need = {mul({n.p(0), n.p(2)}), mul({n.p(1), n.p(2)})};
      out_need = need[0];
      break;
    case Op::clamp:
      if (!(n.params[1] <= n.params[2])) bad_param(1, "exceeds 'hi'");
      need = {n.p(0)};
      out_need = n.p(0);
      break;
    case Op::weighted_sum:
      need = {n.p(0), n.p(0), n.p(0), n.p(0), n.p(0)};
      out_need = n.p(0);
      break;
    case Op::copy_rows:
      if (n.p(3) + n.p(4) > n.p(1)) bad_param(3, "+ 'count' exceeds 'rows'");
      need = {mul({n.p(0), n.p(1), n.p(2)})};
      out_need = mul({n.p(0), n.p(4), n.p(2)});
      break;
    case Op::count:
      throw ShapeError(where(n, index) + "unknown op");
  }

  for (size_t slot = 0; slot < info.inputs.size(); ++slot) {
    const Tensor& t = n.inputs[slot];
    if (t.present && t.size < need[slot])
      throw ShapeError(where(n, index) + "input '" + info.inputs[slot] + "' (slot " +
                       std::to_string(slot) + ") has " + std::to_string(t.size) +
                       " elements, needs " + std::to_string(need[slot]));
  }
  if (n.output.size < out_need)
    throw ShapeError(where(n, index) + "output has " + std::to_string(n.output.size) +
                     " elements, needs " + std::to_string(out_need));

  // Kernels read inputs while writing the output, so overlap is only safe where the op is
  // elementwise in its first input and the two start at the same element.
  const auto out_begin = reinterpret_cast<uintptr_t>(n.output.data);
  const auto out_end = out_begin + out_need * sizeof(float);
  for (size_t slot = 0; slot < info.inputs.size(); ++slot) {
    const Tensor& t = n.inputs[slot];
    if (!t.present || out_need == 0 || need[slot] == 0) continue;
    const auto in_begin = reinterpret_cast<uintptr_t>(t.data);
    const auto in_end = in_begin + need[slot] * sizeof(float);
    if (in_begin >= out_end || out_begin >= in_end) continue;
    if (slot == 0 && info.in_place && in_begin == out_begin) continue;
    throw ShapeError(where(n, index) + "output overlaps input '" + info.inputs[slot] + "' (slot " +
                     std::to_string(slot) + ")" +
                     (slot == 0 && info.in_place ? "; in-place use must start at the same element"
                                                 : "; this op cannot run in place"));
  }
}

}  // namespace ls
