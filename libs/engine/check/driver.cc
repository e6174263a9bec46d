// longshot-check: the engine's native test driver and stage benchmark, built by CMake from the
// engine's sources alone (no Node) and run by deploy/gpu-check.sh.
//
//   longshot-check conformance --cases cases.json --stage stage-small.json [--dump DIR]
//     Every op of the engine on every case of the shared table: each CPU SIMD level against the
//     float64 reference (reference.cc), deterministic across runs and thread counts, in place
//     where allowed; CUDA against the CPU for each storage type (f32, bf16, f16); then the stage
//     fixture's window (prefix + own frames + successor K/V) on CUDA against the CPU, three
//     forwards in a row (the later ones with weights served from the device cache). Without a
//     usable device the CUDA cases are counted as skipped, with the reason. --dump writes the
//     CPU stage outputs as raw float32 files (the test suite compares them with libs/model).
//
//   longshot-check bench --fixture stage-wan2.1-t2v-1.3b.json [--pytorch bench/gpu_pytorch.py]
//     Times the fixture's forward graph on CUDA (its storage, warm-up and repetitions), profiles
//     one more run per node, then runs bench/gpu_pytorch.py with the fixture's arguments (the
//     same computation in PyTorch, on the same GPU) and reports both. --backend cpu times it on
//     the CPU instead (the test suite runs it so on the small window, to keep this code honest).
//
//   longshot-check validate FIXTURE...
//     Loads fixtures and checks every node with the engine's validate(), without running them.
//
// Each prints one JSON line on stdout (progress goes to stderr) and exits 0 when everything
// passed, 1 on a failed check, 2 when it could not run at all.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../native/src/cpu_backend.h"
#include "../native/src/cuda_backend.h"
#include "../native/src/engine.h"
#include "cases.h"
#include "fixture.h"
#include "json.h"
#include "reference.h"

using namespace ls;
using namespace ls::check;

namespace {

// ---- bounds (the ones of test/conformance/{ops,cuda}.test.ts) --------------------------------------

constexpr double kCpuBound = 1e-4;  // CPU vs float64, relative to max|ref|
const char* const kStorages[] = {"f32", "bf16", "f16"};
double op_bound(const std::string& s) { return s == "f32" ? 1e-5 : s == "bf16" ? 1e-2 : 5e-3; }
double stage_bound(const std::string& s) { return s == "f32" ? 1e-4 : s == "bf16" ? 5e-2 : 1e-2; }

// ---- helpers ---------------------------------------------------------------------------------------

template <class Ref>
double rel_error(const float* got, const Ref* ref, size_t n) {
  double diff = 0, top = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(ref[i]));
    if (!std::isfinite(d)) return INFINITY;
    diff = std::max(diff, d);
    top = std::max(top, std::fabs(static_cast<double>(ref[i])));
  }
  return diff / std::max(1e-6, top);
}

// FNV-1a over bytes, continued from `h`: the digest of every drawn input, which the test suite
// recomputes from test/reference/cases.ts to prove both sides draw the same numbers.
uint32_t fnv1a(const void* data, size_t n, uint32_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x01000193u;
  return h;
}

// `v` with `digits` significant digits, for readable reports.
double sig(double v, int digits) {
  if (!std::isfinite(v) || v == 0) return v;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return std::strtod(buf, nullptr);
}
double sig3(double v) { return sig(v, 3); }

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", v);
  return buf;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Round to nearest even at the storage type's precision (bfloat16 by its bits; float16 with its
// subnormals and overflow), as the device does when it stores a value.
float round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf, nan
  u += 0x7fffu + ((u >> 16) & 1u);
  u &= 0xffff0000u;
  std::memcpy(&x, &u, 4);
  return x;
}
float round_f16(float x) {
  const double ax = std::fabs(static_cast<double>(x));
  if (ax == 0 || !std::isfinite(ax)) return x;
  int e = std::ilogb(ax);
  e = std::max(e, -14);
  const double ulp = std::ldexp(1.0, e - 10);
  const double r = std::nearbyint(static_cast<double>(x) / ulp) * ulp;  // ties to even (default mode)
  return std::fabs(r) > 65504.0 ? std::copysign(INFINITY, r) : static_cast<float>(r);
}
void round_to(const std::string& storage, std::vector<float>& v) {
  if (storage == "bf16")
    for (float& x : v) x = round_bf16(x);
  else if (storage == "f16")
    for (float& x : v) x = round_f16(x);
}

Node make_node(Op op, std::vector<HostTensor>& in, std::vector<float>& out, const std::vector<double>& params) {
  Node n;
  n.op = op;
  n.n_inputs = static_cast<int>(in.size());
  for (size_t s = 0; s < in.size(); ++s)
    if (in[s].present) n.inputs[s] = Tensor{in[s].data.data(), in[s].data.size(), true};
  n.output = Tensor{out.data(), out.size(), true};
  n.params = params;
  return n;
}

// Runs one node on `b`, out of place (a fresh output) or in place (into a copy of input 0).
std::vector<float> run_op(Backend& b, const OpCase& c, std::vector<HostTensor> in, bool in_place) {
  std::vector<float> out;
  Node n;
  if (in_place) {
    out = in[0].data;
    n = make_node(c.op, in, out, c.params);
    n.inputs[0] = n.output;
  } else {
    Node probe;
    probe.op = c.op;
    probe.params = c.params;
    out.assign(output_elements(probe), 0.0f);
    n = make_node(c.op, in, out, c.params);
  }
  validate(n, 0);
  b.compute(n);
  return out;
}

struct Report {
  size_t cases = 0, passed = 0, skipped = 0;
  std::vector<std::string> failures;
  // worst[op][target]: the largest error seen.
  std::map<std::string, std::map<std::string, double>> worst;

  void note(const std::string& op, const std::string& target, double err) {
    double& w = worst[op][target];
    if (!(w >= err)) w = err;  // also replaces with NaN/inf
  }
  void fail(const std::string& what) {
    failures.push_back(what);
    std::fprintf(stderr, "FAIL %s\n", what.c_str());
  }
};

// ---- conformance: CPU ------------------------------------------------------------------------------

void cpu_conformance(const CaseTable& table, Report& r, Writer& w) {
  CpuBackend& cpu = cpu_backend();
  const SimdLevel original = cpu.simd();
  const int threads = cpu.threads();
  std::vector<int> other_threads;
  for (int t : {1, 3})
    if (t != threads) other_threads.push_back(t);
  const auto levels = simd_available();
  size_t cases = 0;
  const size_t passed_before = r.passed;
  for (SimdLevel level : levels) {
    cpu.set_simd(level);
    const std::string target = std::string("cpu:") + simd_name(level);
    for (const OpCase& c : table.cases) {
      const std::string& op = op_info(c.op).name;
      const std::string what = op + " '" + c.label + "' " + target;
      ++r.cases;
      ++cases;
      try {
        std::vector<HostTensor> in = draw_inputs(c);
        const std::vector<HostTensor> snapshot = in;
        std::vector<RefInput> ref_in;
        for (const auto& t : in) ref_in.push_back({t.data.data(), t.data.size(), t.present});
        const std::vector<double> ref = reference(c.op, ref_in, c.params);
        bool ok = true;
        auto expect = [&](bool cond, const std::string& why) {
          if (!cond) {
            ok = false;
            r.fail(what + ": " + why);
          }
        };
        const std::vector<float> got = run_op(cpu, c, in, false);
        double err = got.size() == ref.size() ? rel_error(got.data(), ref.data(), ref.size()) : INFINITY;
        expect(err <= kCpuBound, "rel error " + fmt(err) + " > " + fmt(kCpuBound) + " vs the float64 reference");
        for (size_t s = 0; s < in.size(); ++s) expect(in[s].data == snapshot[s].data, "modified input " + std::to_string(s));
        expect(run_op(cpu, c, in, false) == got, "a second run differs");
        for (int t : other_threads) {
          cpu.set_threads(t);
          const bool same = run_op(cpu, c, in, false) == got;
          cpu.set_threads(threads);
          expect(same, "differs with " + std::to_string(t) + " threads vs " + std::to_string(threads));
        }
        if (op_info(c.op).in_place) {
          const std::vector<float> inplace = run_op(cpu, c, in, true);
          const double e2 = rel_error(inplace.data(), ref.data(), ref.size());
          expect(e2 <= kCpuBound, "in place: rel error " + fmt(e2) + " > " + fmt(kCpuBound));
          err = std::max(err, e2);
        }
        r.note(op, target, err);
        if (ok) ++r.passed;
      } catch (const std::exception& e) {
        r.fail(what + ": " + e.what());
      }
    }
  }
  cpu.set_simd(original);
  w.key("cpu").begin_object();
  w.key("simd").begin_array();
  for (SimdLevel l : levels) w.value(simd_name(l));
  w.end_array();
  const size_t failed = cases - (r.passed - passed_before);
  w.key("threads").value(threads).key("cases").value(cases).key("failures").value(failed);
  w.end_object();
  std::fprintf(stderr, "cpu: %zu cases over %zu SIMD levels, %zu failed\n", cases, levels.size(), failed);
}

// ---- conformance: CUDA ops -------------------------------------------------------------------------

// Adds to `tensor_core_attention` the attention cases that ran on the tensor-core kernel.
size_t cuda_op_conformance(const CaseTable& table, Report& r, size_t& tensor_core_attention) {
  CpuBackend& cpu = cpu_backend();
  size_t cases = 0;
  for (const char* storage : kStorages) {
    Backend* cuda = find_backend(std::string("cuda:") + storage);
    if (!cuda) throw std::runtime_error(std::string("backend cuda:") + storage + " is not registered");
    const std::string target = std::string("cuda:") + storage;
    const double bound = op_bound(storage);
    for (const OpCase& c : table.cases) {
      const std::string& op = op_info(c.op).name;
      const std::string what = op + " '" + c.label + "' " + target;
      ++r.cases;
      ++cases;
      try {
        std::vector<HostTensor> in = draw_inputs(c);
        const auto& keep = table.f32_inputs[static_cast<int>(c.op)];
        for (size_t s = 0; s < in.size(); ++s)
          if (std::find(keep.begin(), keep.end(), static_cast<int>(s)) == keep.end()) round_to(storage, in[s].data);
        bool ok = true;
        double worst = 0;
        for (bool in_place : {false, true}) {
          if (in_place && !op_info(c.op).in_place) continue;
          const std::vector<float> want = run_op(cpu, c, in, in_place);
          const std::vector<float> got = run_op(*cuda, c, in, in_place);
          tensor_core_attention += cuda::last_run_stats().tensor_core_attention;
          const double err = got.size() == want.size() ? rel_error(got.data(), want.data(), want.size()) : INFINITY;
          worst = std::max(worst, err);
          if (!(err <= bound)) {
            ok = false;
            r.fail(what + (in_place ? " in place" : "") + ": rel error " + fmt(err) + " > " + fmt(bound) + " vs the CPU");
          }
        }
        r.note(op, target, worst);
        if (ok) ++r.passed;
      } catch (const std::exception& e) {
        r.fail(what + ": " + e.what());
      }
    }
  }
  return cases;
}

// ---- conformance: CUDA linear rows independent of M ------------------------------------------------
// A stage group's member runs each linear on a shard of the rows the single stage has
// (docs/parallelism.md), so a row's bits must not depend on how many rows share the call, on
// where the call starts, or on the row's place in a 1024-row GEMM chunk (docs/cuda.md, "Pinned
// GEMMs"). One graph per shape: the linear of all M rows, and the same linear on views of row
// ranges of the same x (single rows, a few rows, a whole chunk's worth starting off a chunk
// boundary, the rest), whose device addresses are as (mis)aligned as their host offsets; every
// range's output must equal the full call's rows bit for bit. Shapes: 1.3B's model dim and
// feed-forward width, and a small K whose rows are not 16-byte aligned.

void run_graph(Backend& b, const std::vector<Node>& nodes, const RunHints& hints = {});

struct RowShape {
  size_t k, n;
};
const RowShape kRowShapes[] = {{66, 40}, {1536, 1536}, {1536, 8960}};
constexpr size_t kRowRows = 2 * 1024 + 300;
const size_t kRowRanges[][2] = {{0, 1}, {1, 4}, {4, 5}, {5, 1029}, {1029, 1030}, {1030, kRowRows}, {2047, 2049}};

// Attention too: a stage group's member attends with a shard of the queries over all the keys, so a
// query's row must not depend on which queries share the call. 1.3B's head dim, keys and extra keys
// spanning several key tiles with a remainder, query ranges across the kernels' query blocks.
constexpr size_t kAttentionQueries = 200, kAttentionKeys = 150, kAttentionExtra = 70, kAttentionHeads = 2,
                 kAttentionHeadDim = 128;
const size_t kAttentionRanges[][2] = {{0, 1}, {1, 64}, {64, 65}, {65, kAttentionQueries}, {130, 131}};

// How many of kAttentionRanges give rows other than the full call's.
size_t attention_row_mismatches(Backend& cuda) {
  const size_t width = kAttentionHeads * kAttentionHeadDim;
  Rng rng = Rng::from({"row independence", "attention"});
  std::vector<float> q(kAttentionQueries * width), k(kAttentionKeys * width), v(k.size()), ek(kAttentionExtra * width),
      ev(ek.size()), full(q.size());
  for (std::vector<float>* t : {&q, &k, &v, &ek, &ev}) rng.fill_normal(t->data(), t->size(), 1.0);
  std::vector<std::vector<float>> parts;
  for (const auto& range : kAttentionRanges) parts.emplace_back((range[1] - range[0]) * width);
  std::vector<Node> nodes;
  auto attention = [&](size_t r0, size_t r1, std::vector<float>& out) {
    Node n;
    n.op = Op::attention;
    n.n_inputs = 5;
    n.inputs[0] = Tensor{q.data() + r0 * width, (r1 - r0) * width, true};
    n.inputs[1] = Tensor{k.data(), k.size(), true};
    n.inputs[2] = Tensor{v.data(), v.size(), true};
    n.inputs[3] = Tensor{ek.data(), ek.size(), true};
    n.inputs[4] = Tensor{ev.data(), ev.size(), true};
    n.output = Tensor{out.data(), out.size(), true};
    n.params = {1, static_cast<double>(r1 - r0), static_cast<double>(kAttentionKeys), static_cast<double>(kAttentionExtra),
                static_cast<double>(kAttentionHeads), static_cast<double>(kAttentionHeadDim)};
    validate(n, nodes.size());
    nodes.push_back(n);
  };
  attention(0, kAttentionQueries, full);
  for (size_t i = 0; i < parts.size(); ++i) attention(kAttentionRanges[i][0], kAttentionRanges[i][1], parts[i]);
  run_graph(cuda, nodes);
  std::vector<HostPin> pins;
  cuda::release_device_cache(&pins);
  size_t mismatched = 0;
  for (size_t i = 0; i < parts.size(); ++i)
    if (std::memcmp(parts[i].data(), full.data() + kAttentionRanges[i][0] * width, parts[i].size() * sizeof(float)) != 0)
      ++mismatched;
  return mismatched;
}

size_t cuda_row_independence(Report& r, Writer& w) {
  size_t cases = 0;
  w.key("row_independence").begin_object();
  w.key("rows").value(kRowRows);
  w.key("results").begin_array();
  for (const char* storage : kStorages) {
    Backend* cuda = find_backend(std::string("cuda:") + storage);
    if (!cuda) throw std::runtime_error(std::string("backend cuda:") + storage + " is not registered");
    for (const RowShape& sh : kRowShapes) {
      const std::string what = std::string("linear rows independent of M, k ") + std::to_string(sh.k) + " n " +
                               std::to_string(sh.n) + " cuda:" + storage;
      ++r.cases;
      ++cases;
      size_t mismatched = 0;
      try {
        Rng rng = Rng::from({"row independence", RngKey::number(static_cast<long long>(sh.k)), RngKey::number(static_cast<long long>(sh.n))});
        std::vector<float> x(kRowRows * sh.k), wt(sh.n * sh.k), bias(sh.n);
        rng.fill_normal(x.data(), x.size(), 1.0);
        rng.fill_normal(wt.data(), wt.size(), 1.0 / std::sqrt(static_cast<double>(sh.k)));
        rng.fill_normal(bias.data(), bias.size(), 0.1);
        std::vector<float> full(kRowRows * sh.n);
        std::vector<std::vector<float>> parts;
        for (const auto& range : kRowRanges) parts.emplace_back((range[1] - range[0]) * sh.n);
        std::vector<Node> nodes;
        auto linear = [&](size_t r0, size_t r1, std::vector<float>& out) {
          Node n;
          n.op = Op::linear;
          n.n_inputs = 3;
          n.inputs[0] = Tensor{x.data() + r0 * sh.k, (r1 - r0) * sh.k, true};
          n.inputs[1] = Tensor{wt.data(), wt.size(), true};
          n.inputs[2] = Tensor{bias.data(), bias.size(), true};
          n.output = Tensor{out.data(), out.size(), true};
          n.params = {static_cast<double>(r1 - r0), static_cast<double>(sh.k), static_cast<double>(sh.n)};
          validate(n, nodes.size());
          nodes.push_back(n);
        };
        linear(0, kRowRows, full);
        for (size_t i = 0; i < parts.size(); ++i) linear(kRowRanges[i][0], kRowRanges[i][1], parts[i]);
        run_graph(*cuda, nodes);
        std::vector<HostPin> pins;
        cuda::release_device_cache(&pins);
        for (size_t i = 0; i < parts.size(); ++i)
          if (std::memcmp(parts[i].data(), full.data() + kRowRanges[i][0] * sh.n, parts[i].size() * sizeof(float)) != 0)
            ++mismatched;
        if (mismatched == 0)
          ++r.passed;
        else
          r.fail(what + ": " + std::to_string(mismatched) + " of " + std::to_string(parts.size()) +
                 " row ranges differ from the full call's rows");
      } catch (const std::exception& e) {
        r.fail(what + ": " + e.what());
        mismatched = SIZE_MAX;
      }
      w.begin_object().key("storage").value(storage).key("k").value(sh.k).key("n").value(sh.n);
      w.key("identical").value(mismatched == 0).end_object();
    }
  }
  for (const char* storage : kStorages) {
    Backend* cuda = find_backend(std::string("cuda:") + storage);
    const std::string what = std::string("attention rows independent of the query count cuda:") + storage;
    ++r.cases;
    ++cases;
    size_t mismatched = 0;
    try {
      mismatched = attention_row_mismatches(*cuda);
      if (mismatched == 0)
        ++r.passed;
      else
        r.fail(what + ": " + std::to_string(mismatched) + " of " + std::to_string(std::size(kAttentionRanges)) +
               " query ranges differ from the full call's rows");
    } catch (const std::exception& e) {
      r.fail(what + ": " + e.what());
      mismatched = SIZE_MAX;
    }
    w.begin_object().key("storage").value(storage).key("op").value("attention");
    w.key("identical").value(mismatched == 0).end_object();
  }
  w.end_array();
  w.end_object();
  return cases;
}

// ---- conformance: CUDA run hints -------------------------------------------------------------------
// RunHints::rewritten (engine.h): an input two runs read without writing is kept on the device as
// if it were a weight; a host change to it must reach the device when the run names it rewritten.
// And RunHints::discard: the named outputs are not copied back, the others are.

bool cuda_run_hints(Report& r, Writer& w) {
  ++r.cases;
  const std::string what = "run hints cuda:f32";
  bool fresh = false, discarded = false, resident = false;
  try {
    Backend* cuda = find_backend("cuda:f32");
    constexpr size_t n = 4096;
    std::vector<float> x(n), y(n), z(n);
    Rng rng = Rng::from({"run hints"});
    rng.fill_normal(x.data(), n, 1.0);
    std::vector<Node> nodes(2);
    nodes[0].op = nodes[1].op = Op::silu;
    nodes[0].n_inputs = nodes[1].n_inputs = 1;
    nodes[0].inputs[0] = nodes[1].inputs[0] = Tensor{x.data(), n, true};
    nodes[0].output = Tensor{y.data(), n, true};
    nodes[1].output = Tensor{z.data(), n, true};
    nodes[0].params = nodes[1].params = {static_cast<double>(n)};
    for (size_t i = 0; i < nodes.size(); ++i) validate(nodes[i], i);
    run_graph(*cuda, nodes);
    run_graph(*cuda, nodes);  // x read twice, never written: kept on the device
    for (float& v : x) v = -v;
    std::fill(z.begin(), z.end(), 7.0f);
    std::vector<HostPin> pins;
    RunHints hints;
    hints.rewritten.push_back({x.data(), n * sizeof(float)});
    hints.discard.push_back({z.data(), n * sizeof(float)});
    cuda->run_graph(nodes, &pins, hints);
    cuda::release_device_cache(&pins);
    std::vector<float> want(n);
    Node cpu_node = nodes[0];
    cpu_node.output = Tensor{want.data(), n, true};
    cpu_backend().compute(cpu_node);
    fresh = rel_error(y.data(), want.data(), n) <= op_bound("f32");  // the stale copy gives silu(-x)
    discarded = std::all_of(z.begin(), z.end(), [](float v) { return v == 7.0f; });

    // Resident: y = silu(x) stays on the device (its host copy keeps the 7s), the next run reads
    // it from there (z = silu(y)), writes it again in place, and the release copies it back.
    std::vector<Node> chain(2);
    chain[0] = nodes[0];
    chain[1].op = Op::silu;
    chain[1].n_inputs = 1;
    chain[1].inputs[0] = Tensor{y.data(), n, true};
    chain[1].output = Tensor{z.data(), n, true};
    chain[1].params = {static_cast<double>(n)};
    RunHints keep;
    keep.resident.push_back({y.data(), n * sizeof(float)});
    std::fill(y.begin(), y.end(), 7.0f);
    cuda->run_graph({chain[0]}, &pins, keep);
    const bool stayed = std::all_of(y.begin(), y.end(), [](float v) { return v == 7.0f; });
    cuda->run_graph({chain[1]}, &pins, {});
    std::vector<float> want_z(n);
    Node z_node = chain[1];
    z_node.inputs[0] = Tensor{want.data(), n, true};
    z_node.output = Tensor{want_z.data(), n, true};
    cpu_backend().compute(z_node);
    const bool read = rel_error(z.data(), want_z.data(), n) <= op_bound("f32");
    cuda->run_graph({chain[0]}, &pins, keep);  // in place, over its own entry
    cuda::release_device_cache(&pins);
    resident = stayed && read && rel_error(y.data(), want.data(), n) <= op_bound("f32");
    if (fresh && discarded && resident)
      ++r.passed;
    else
      r.fail(what + (fresh ? "" : ": a rewritten input was served from the device copy") +
             (discarded ? "" : ": a discarded output was copied back") +
             (resident ? "" : stayed ? (read ? ": a resident output was not copied back on release" : ": a run read a resident output from the stale host copy") : ": a resident output was copied back"));
  } catch (const std::exception& e) {
    r.fail(what + ": " + e.what());
  }
  w.key("run_hints").begin_object().key("rewritten_uploaded").value(fresh).key("discard_not_copied").value(discarded);
  w.key("resident_kept").value(resident).end_object();
  return fresh && discarded && resident;
}

// ---- conformance: stage window ---------------------------------------------------------------------

void run_graph(Backend& b, const std::vector<Node>& nodes, const RunHints& hints) {
  std::vector<HostPin> pins;  // the world outlives every cached copy (released before it is freed)
  b.run_graph(nodes, &pins, hints);
}

bool is_kv_output(const std::string& name) { return name.rfind("kv.", 0) == 0; }

// The hints libs/model's Stage gives its forward's last run: every buffer of `world` holding none
// of the fixture's outputs may be left stale (its workspace), and the K/V cache outputs stay on
// the device (the CUDA backend then copies back only the hidden states or the velocity). Not for
// the graphs before the forward, whose results the forward reads.
RunHints forward_hints(const Fixture& f, const World& world) {
  std::vector<bool> holds_output(f.buffers.size(), false);
  RunHints hints;
  for (const auto& o : f.outputs) {
    holds_output[o.second.buffer] = true;
    if (is_kv_output(o.first)) hints.resident.push_back({world.data(o.second), o.second.length * sizeof(float)});
  }
  for (size_t b = 0; b < f.buffers.size(); ++b)
    if (!holds_output[b]) hints.discard.push_back({world.data(View{b, 0, f.buffers[b].size}), f.buffers[b].size * sizeof(float)});
  return hints;
}

void dump_outputs(const Fixture& f, const World& world, const std::string& dir) {
  for (const auto& o : f.outputs) {
    const std::string path = dir + "/" + o.first + ".f32";
    std::ofstream out(path, std::ios::binary);
    if (!out) throw std::runtime_error("cannot write " + path);
    out.write(reinterpret_cast<const char*>(world.data(o.second)), static_cast<std::streamsize>(o.second.length * sizeof(float)));
  }
}

void stage_conformance(const Fixture& f, bool cuda_usable, const std::string& skip_reason, const std::string& dump,
                       Report& r, Writer& w) {
  const int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::string model = f.doc.at("model").at("name").str();
  w.key("stage").begin_object();
  w.key("fixture").value(f.path.substr(f.path.find_last_of('/') + 1)).key("model").value(model);
  w.key("graphs").begin_array();
  for (const auto& g : f.graphs) w.begin_object().key("name").value(g.name).key("nodes").value(g.nodes.size()).end_object();
  w.end_array();

  // CPU: the yardstick. Every output must be finite.
  World cpu_world(f, threads);
  CpuBackend& cpu = cpu_backend();
  ++r.cases;
  const std::string cpu_what = "stage " + model + " cpu";
  try {
    for (const auto& g : f.graphs) run_graph(cpu, cpu_world.nodes(g.name));
    bool finite = true;
    for (const auto& o : f.outputs) {
      const float* p = cpu_world.data(o.second);
      for (size_t i = 0; i < o.second.length; ++i) finite = finite && std::isfinite(p[i]);
    }
    if (finite)
      ++r.passed;
    else
      r.fail(cpu_what + ": non-finite output");
    if (!dump.empty()) dump_outputs(f, cpu_world, dump);
  } catch (const std::exception& e) {
    r.fail(cpu_what + ": " + e.what());
  }
  w.key("cpu").value("ran");

  // The storage types' own error, emulated on the CPU: every graph input rounded to the storage
  // type (but timesteps, which the CUDA backend keeps in float32) and every node's output rounded
  // as the device stores it. What a correct CUDA run should come close to; a report, not a check.
  w.key("emulated").begin_object();
  for (const char* storage : {"bf16", "f16"}) {
    World world(f, threads);
    std::vector<bool> timestep(f.buffers.size(), false), other(f.buffers.size(), false);
    for (const auto& g : f.graphs)
      for (const auto& n : g.nodes)
        for (size_t s = 0; s < n.inputs.size(); ++s)
          if (n.present[s]) (n.op == Op::timestep_embedding ? timestep : other)[n.inputs[s].buffer] = true;
    for (size_t b = 0; b < f.buffers.size(); ++b) {
      if (timestep[b] && !other[b]) continue;
      std::vector<float> v(world.data(View{b, 0, f.buffers[b].size}), world.data(View{b, 0, f.buffers[b].size}) + f.buffers[b].size);
      round_to(storage, v);
      std::copy(v.begin(), v.end(), world.data(View{b, 0, f.buffers[b].size}));
    }
    for (const auto& g : f.graphs)
      for (const Node& n : world.nodes(g.name)) {
        cpu.compute(n);
        std::vector<float> v(n.output.data, n.output.data + output_elements(n));
        round_to(storage, v);
        std::copy(v.begin(), v.end(), n.output.data);
      }
    double worst = 0;
    for (const auto& o : f.outputs) worst = std::max(worst, rel_error(world.data(o.second), cpu_world.data(o.second), o.second.length));
    w.key(storage).value(sig3(worst));
  }
  w.end_object();

  // CUDA: the first graphs once, the last one (the forward) three times, each compared.
  std::map<std::string, size_t> stage_tensor_core_attention;  // attention nodes of the forward on tensor cores
  w.key("cuda").begin_object();
  const int rounds = 3;
  for (const char* storage : kStorages) {
    const std::string target = std::string("cuda:") + storage;
    const std::string what = "stage " + model + " " + target;
    ++r.cases;
    if (!cuda_usable) {
      ++r.skipped;
      w.key(target).value("skipped");
      continue;
    }
    Backend* cuda = find_backend(target);
    double worst = 0;
    bool ok = true;
    try {
      World world(f, threads);
      for (size_t g = 0; g + 1 < f.graphs.size(); ++g) run_graph(*cuda, world.nodes(f.graphs[g].name));
      const std::string& forward = f.graphs.back().name;
      // The K/V outputs stay on the device (resident, written in place in rounds 1 and 2) until
      // the release after the last round copies them back; the other outputs come back each round.
      auto compare = [&](int round, bool kv) {
        for (const auto& o : f.outputs) {
          if (is_kv_output(o.first) != kv) continue;
          const double err = rel_error(world.data(o.second), cpu_world.data(o.second), o.second.length);
          worst = std::max(worst, err);
          if (!(err <= stage_bound(storage))) {
            ok = false;
            r.fail(what + " round " + std::to_string(round) + " " + o.first + ": rel error " + fmt(err) + " > " +
                   fmt(stage_bound(storage)) + " vs the CPU");
          }
        }
      };
      for (int round = 0; round < rounds; ++round) {
        world.restore(forward);
        run_graph(*cuda, world.nodes(forward), forward_hints(f, world));
        stage_tensor_core_attention[target] = cuda::last_run_stats().tensor_core_attention;
        compare(round, false);
      }
      std::vector<HostPin> pins;
      cuda::release_device_cache(&pins);  // before the world's memory goes back to the allocator
      compare(rounds - 1, true);
    } catch (const std::exception& e) {
      ok = false;
      std::vector<HostPin> pins;
      cuda::release_device_cache(&pins);
      r.fail(what + ": " + e.what());
    }
    if (ok) ++r.passed;
    r.note("stage", target, worst);
    w.key(target).value(sig3(worst));
  }
  w.end_object();
  if (cuda_usable) {
    w.key("tensor_core_attention").begin_object();
    for (const auto& kv : stage_tensor_core_attention) w.key(kv.first).value(kv.second);
    w.end_object();
  } else {
    w.key("skip_reason").value(skip_reason);
  }
  w.end_object();
}

// ---- conformance -----------------------------------------------------------------------------------

int conformance(const std::string& cases_path, const std::string& stage_path, const std::string& dump) {
  const double t0 = now_s();
  Report r;
  Writer w;
  w.begin_object().key("check").value("conformance");
  const CaseTable table = load_cases(cases_path);

  uint32_t digest = 0x811c9dc5u;
  for (const OpCase& c : table.cases)
    for (const HostTensor& t : draw_inputs(c))
      if (t.present) digest = fnv1a(t.data.data(), t.data.size() * sizeof(float), digest);
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", digest);
  w.key("inputs_digest").value(hex);

  cpu_conformance(table, r, w);

  const cuda::Status& st = cuda::status();
  cuda::register_backends();
  const bool usable = st.usable;
  const std::string reason = usable ? "" : st.reason;
  size_t cuda_cases = 0, cuda_op_failures = 0, tensor_core_attention = 0;
  if (usable) {
    const size_t passed_before = r.passed;
    cuda_cases = cuda_op_conformance(table, r, tensor_core_attention);
    cuda_op_failures = cuda_cases - (r.passed - passed_before);
  } else {
    cuda_cases = table.cases.size() * 3;
    r.cases += cuda_cases;
    r.skipped += cuda_cases;
  }
  std::fprintf(stderr, "cuda ops: %s\n",
               usable ? (std::to_string(cuda_cases) + " cases, " + std::to_string(cuda_op_failures) + " failed").c_str()
                      : ("skipped: " + reason).c_str());

  if (usable) {
    const size_t passed_before = r.passed;
    const size_t row_cases = cuda_row_independence(r, w);
    std::fprintf(stderr, "cuda linear and attention row independence: %zu cases, %zu failed\n", row_cases, row_cases - (r.passed - passed_before));
    std::fprintf(stderr, "cuda run hints: %s\n", cuda_run_hints(r, w) ? "ok" : "failed");
  } else {
    const size_t row_cases = std::size(kStorages) * (std::size(kRowShapes) + 1);
    r.cases += row_cases + 1;  // and the run hints
    r.skipped += row_cases + 1;
    w.key("row_independence").begin_object().key("skip_reason").value(reason).end_object();
    w.key("run_hints").begin_object().key("skip_reason").value(reason).end_object();
  }

  if (!stage_path.empty()) {
    const Fixture f = load_fixture(stage_path);
    stage_conformance(f, usable, reason, dump, r, w);
  }

  w.key("cuda").begin_object();
  w.key("built").value(st.built).key("devices").value(st.devices).key("usable").value(usable);
  if (usable) {
    w.key("device").value(st.device).key("cublas").value(cuda::cublas_loaded());
  } else {
    w.key("skip_reason").value(reason);
  }
  w.key("op_cases").value(cuda_cases).key("op_failures").value(cuda_op_failures);
  // Op-case runs (in place or not) whose attention took the tensor-core kernel, not the float32 one.
  w.key("tensor_core_attention_runs").value(tensor_core_attention);
  w.end_object();

  w.key("bounds").begin_object();
  w.key("cpu_vs_float64").value(kCpuBound);
  w.key("cuda_vs_cpu").begin_object();
  for (const char* s : kStorages) w.key(s).value(op_bound(s));
  w.end_object();
  w.key("stage_cuda_vs_cpu").begin_object();
  for (const char* s : kStorages) w.key(s).value(stage_bound(s));
  w.end_object();
  w.end_object();

  w.key("worst").begin_object();
  for (int o = 0; o <= kOpCount; ++o) {
    const std::string op = o < kOpCount ? op_info(static_cast<Op>(o)).name : "stage";
    const auto it = r.worst.find(op);
    if (it == r.worst.end()) continue;
    w.key(op).begin_object();
    for (const auto& t : it->second) w.key(t.first).value(sig3(t.second));
    w.end_object();
  }
  w.end_object();

  // failures: cases that failed; failed: what failed (a case may fail more than one check).
  w.key("cases").value(r.cases).key("passed").value(r.passed).key("skipped").value(r.skipped);
  w.key("failures").value(r.cases - r.passed - r.skipped);
  w.key("failed").begin_array();
  for (size_t i = 0; i < r.failures.size() && i < 100; ++i) w.value(r.failures[i]);
  w.end_array();
  w.key("seconds").value(std::round((now_s() - t0) * 100) / 100);
  w.key("ok").value(r.failures.empty());
  w.end_object();
  std::printf("%s\n", w.str().c_str());
  std::fprintf(stderr, "conformance: %zu cases, %zu passed, %zu skipped, %zu failed\n", r.cases, r.passed, r.skipped,
               r.cases - r.passed - r.skipped);
  return r.failures.empty() ? 0 : 1;
}

// ---- bench -----------------------------------------------------------------------------------------

double median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  const size_t n = xs.size();
  return n == 0 ? NAN : n % 2 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
}

// Runs argv (no shell), returns its stdout; its stderr is copied to ours afterwards, and its last
// line kept in `last_err`. Throws on a failure to start.
std::string capture(const std::vector<std::string>& argv, int* status, std::string* last_err) {
  char err_path[] = "/tmp/longshot-check-XXXXXX";
  const int err_fd = mkstemp(err_path);
  if (err_fd < 0) throw std::runtime_error("mkstemp failed");
  unlink(err_path);
  int fd[2];
  if (pipe(fd) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    // gpu-check.sh points LD_LIBRARY_PATH at the toolkit's cuBLAS for the driver; the child
    // (PyTorch, which brings its own) gets the caller's original one back.
    if (const char* ld = std::getenv("LONGSHOT_CHILD_LD_LIBRARY_PATH")) {
      if (*ld)
        setenv("LD_LIBRARY_PATH", ld, 1);
      else
        unsetenv("LD_LIBRARY_PATH");
    }
    dup2(fd[1], 1);
    dup2(err_fd, 2);
    close(fd[0]);
    close(fd[1]);
    close(err_fd);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fd[1]);
  std::string out;
  char buf[4096];
  ssize_t k;
  while ((k = read(fd[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(k));
  close(fd[0]);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  *status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128;
  std::string err;
  lseek(err_fd, 0, SEEK_SET);
  while ((k = read(err_fd, buf, sizeof buf)) > 0) err.append(buf, static_cast<size_t>(k));
  close(err_fd);
  std::fwrite(err.data(), 1, err.size(), stderr);
  while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) err.pop_back();
  *last_err = err.substr(err.find_last_of('\n') == std::string::npos ? 0 : err.find_last_of('\n') + 1);
  return out;
}

int bench(const std::string& fixture_path, const std::string& pytorch, const std::string& python, const std::string& on) {
  if (on != "cuda" && on != "cpu") throw std::runtime_error("--backend must be cuda or cpu, got '" + on + "'");
  const bool on_cuda = on == "cuda";
  const cuda::Status& st = cuda::status();
  Writer w;
  w.begin_object().key("check").value("bench");
  if (on_cuda && !st.usable) {
    const std::string reason = st.reason;
    w.key("skipped").value(true).key("skip_reason").value(reason).end_object();
    std::printf("%s\n", w.str().c_str());
    std::fprintf(stderr, "bench: skipped (%s)\n", reason.c_str());
    return 0;
  }
  cuda::register_backends();
  const Fixture f = load_fixture(fixture_path);
  // Fixtures made for timing say how; others (the conformance window, timed on the CPU to test
  // this very code) get a short default.
  const Json* cfg = f.doc.find("bench");
  const std::string storage = on_cuda ? (cfg ? cfg->at("storage").str() : "f32") : "f32";
  const int warmup = cfg ? static_cast<int>(cfg->at("warmup").num()) : 1;
  const int reps = cfg ? static_cast<int>(cfg->at("reps").num()) : 2;
  Backend* backend = on_cuda ? find_backend("cuda:" + storage) : &cpu_backend();
  if (!backend) throw std::runtime_error("no backend cuda:" + storage);

  const double t_init = now_s();
  World world(f, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  std::fprintf(stderr, "bench: %.1f GB of host buffers drawn in %.1f s\n", world.bytes() / 1e9, now_s() - t_init);
  for (size_t g = 0; g + 1 < f.graphs.size(); ++g) run_graph(*backend, world.nodes(f.graphs[g].name));
  const std::string& forward = f.graphs.back().name;
  const std::vector<Node>& nodes = world.nodes(forward);
  // As the pipeline runs it: everything but the outputs may stay stale on the host.
  const RunHints hints = forward_hints(f, world);

  std::vector<double> runs;
  for (int i = 0; i < warmup + reps; ++i) {
    world.restore(forward);
    const double t0 = now_s();
    run_graph(*backend, nodes, hints);
    const double s = now_s() - t0;
    std::fprintf(stderr, "bench: %s run %d: %.3f s\n", i < warmup ? "warm-up" : "timed", i, s);
    if (i >= warmup) runs.push_back(s);
  }
  cuda::RunStats last = on_cuda ? cuda::last_run_stats() : cuda::RunStats{};

  // One more run, timing every node: on CUDA with an event after each, on the CPU node by node.
  std::vector<double> node_ms;
  world.restore(forward);
  if (on_cuda) {
    cuda::set_profiling(true);
    run_graph(*backend, nodes, hints);
    cuda::set_profiling(false);
    node_ms = cuda::last_run_stats().node_ms;
  } else {
    for (const Node& n : nodes) {
      const double t0 = now_s();
      backend->compute(n);
      node_ms.push_back((now_s() - t0) * 1e3);
    }
  }
  std::map<std::string, double> op_ms;
  double attention_ms = 0, gemm_ms = 0, other_ms = 0;
  for (size_t i = 0; i < nodes.size() && i < node_ms.size(); ++i) {
    const std::string& op = op_info(nodes[i].op).name;
    op_ms[op] += node_ms[i];
    (nodes[i].op == Op::attention ? attention_ms : nodes[i].op == Op::linear ? gemm_ms : other_ms) += node_ms[i];
  }
  if (on_cuda) {
    std::vector<HostPin> pins;
    cuda::release_device_cache(&pins);  // give the device memory back before PyTorch allocates its own
  }

  const Flops flops = graph_flops(nodes);
  const double total_flops = flops.gemm + flops.attention;
  const double seconds = median(runs);
  if (!on_cuda) last.compute_ms = seconds * 1e3;  // all of it is kernels
  const double profiled_ms = attention_ms + gemm_ms + other_ms;
  // Shares of the timed wall time: the profiled kernel split scaled to the timed kernel time;
  // the rest is the other kernels, the transfers and the host.
  const double kernel_scale = profiled_ms > 0 ? last.compute_ms / profiled_ms : 0;
  const double wall_ms = seconds * 1e3;

  w.key("model").value(f.doc.at("model").at("name").str());
  w.key("backend").value(on_cuda ? "cuda:" + storage : std::string("cpu:") + simd_name(cpu_backend().simd()));
  w.key("device").value(on_cuda ? st.device : "cpu");
  if (on_cuda) w.key("cublas").value(cuda::cublas_loaded());
  if (const Json* shape = f.doc.find("shape")) w.key("shape").raw(shape->dump());
  w.key("storage").value(storage);
  w.key("flops").begin_object().key("gemm").value(flops.gemm).key("attention").value(flops.attention).key("total").value(total_flops).end_object();
  w.key("longshot").begin_object();
  w.key("seconds").value(seconds);
  w.key("runs").begin_array();
  for (double s : runs) w.value(s);
  w.end_array();
  w.key("upload_ms").value(sig(last.upload_ms, 4)).key("compute_ms").value(sig(last.compute_ms, 4));
  w.key("download_ms").value(sig(last.download_ms, 4));
  w.key("upload_bytes").value(last.upload_bytes).key("download_bytes").value(last.download_bytes);
  w.key("tensor_core_attention").value(last.tensor_core_attention);
  w.key("tflops").value(sig3(total_flops / seconds / 1e12));
  w.key("kernel_tflops").value(sig3(total_flops / (last.compute_ms / 1e3) / 1e12));
  // Of the timed wall time: attention and GEMM kernels; the rest is the other kernels, the
  // transfers (upload and download) and the host.
  w.key("shares").begin_object();
  w.key("attention").value(sig3(attention_ms * kernel_scale / wall_ms));
  w.key("gemm").value(sig3(gemm_ms * kernel_scale / wall_ms));
  w.key("rest").value(sig3(1 - (attention_ms + gemm_ms) * kernel_scale / wall_ms));
  w.key("rest_other_kernels").value(sig3(other_ms * kernel_scale / wall_ms));
  w.key("rest_transfers").value(sig3((last.upload_ms + last.download_ms) / wall_ms));
  w.end_object();
  w.key("profile_ms").begin_object();
  for (const auto& kv : op_ms) w.key(kv.first).value(sig(kv.second, 4));
  w.end_object();
  w.end_object();

  // PyTorch, same computation, same GPU, same run.
  double py_seconds = NAN;
  w.key("pytorch");
  if (pytorch.empty()) {
    w.begin_object().key("error").value("not run (no --pytorch)").end_object();
  } else {
    int status = 0;
    const Json* py_args = f.doc.find("pytorch");
    const std::string args = py_args ? py_args->dump() : "{}";
    std::fprintf(stderr, "bench: %s %s\n", python.c_str(), pytorch.c_str());
    std::string out, last_err;
    try {
      out = capture({python, pytorch, args}, &status, &last_err);
    } catch (const std::exception& e) {
      status = -1;
      last_err = e.what();
    }
    std::string last_line;
    for (size_t a = 0, b; a < out.size(); a = b + 1) {
      b = out.find('\n', a);
      if (b == std::string::npos) b = out.size();
      if (b > a) last_line = out.substr(a, b - a);
    }
    Json py;
    bool parsed = false;
    if (status == 0) {
      try {
        py = Json::parse(last_line);
        parsed = py.find("seconds") != nullptr;
      } catch (const std::exception&) {
      }
    }
    if (parsed) {
      py_seconds = py.at("seconds").num();
      w.begin_object();
      for (const auto& kv : py.obj()) w.key(kv.first).raw(kv.second.dump());
      w.key("tflops").value(sig3(total_flops / py_seconds / 1e12));
      w.end_object();
    } else {
      w.begin_object().key("error").value(python + " " + pytorch + " failed (status " + std::to_string(status) + "): " +
                                          (status == 0 ? "no JSON report: " + last_line : last_err)).end_object();
    }
  }
  // > 1: Longshot is faster.
  w.key("ratio");
  if (std::isfinite(py_seconds))
    w.value(sig(py_seconds / seconds, 4));
  else
    w.null();
  w.end_object();
  std::printf("%s\n", w.str().c_str());
  std::fprintf(stderr, "bench: longshot %.3f s, pytorch %s s, ratio %s\n", seconds,
               std::isfinite(py_seconds) ? fmt(py_seconds).c_str() : "-",
               std::isfinite(py_seconds) ? fmt(py_seconds / seconds).c_str() : "-");
  return 0;
}

// Loads and validates fixtures without running them (cheap even for the 1.3B stage).
int validate_fixtures(const std::vector<std::string>& paths) {
  Writer w;
  w.begin_object().key("check").value("validate").key("fixtures").begin_array();
  for (const std::string& p : paths) {
    const Fixture f = load_fixture(p);
    const std::vector<Node> forward = validate_fixture(f);
    const Flops fl = graph_flops(forward);
    size_t bytes = 0, nodes = 0;
    for (const auto& b : f.buffers) bytes += b.size * sizeof(float);
    for (const auto& g : f.graphs) nodes += g.nodes.size();
    w.begin_object().key("fixture").value(p.substr(p.find_last_of('/') + 1)).key("buffers").value(f.buffers.size());
    w.key("host_bytes").value(bytes).key("nodes").value(nodes).key("forward_flops").value(fl.gemm + fl.attention).end_object();
  }
  w.end_array().key("ok").value(true).end_object();
  std::printf("%s\n", w.str().c_str());
  return 0;
}

int usage() {
  std::fprintf(stderr,
               "usage: longshot-check conformance --cases FILE [--stage FILE] [--dump DIR]\n"
               "       longshot-check bench --fixture FILE [--pytorch SCRIPT] [--python PYTHON] [--backend cuda|cpu]\n"
               "       longshot-check validate FIXTURE...\n");
  return 2;
}

}  // namespace

// The engine reads no environment: this program, like the apps, passes the settings in
// (LONGSHOT_THREADS, LONGSHOT_SIMD, LONGSHOT_CUDA_DEVICE, LONGSHOT_CUDA_CACHE_MB; docs/configuration.md).
static void configure_engine_from_env() {
  auto integer = [](const char* name, long long lo, long long hi, long long* out) {
    const char* v = std::getenv(name);
    if (!v || !*v) return false;
    char* end = nullptr;
    const long long n = std::strtoll(v, &end, 10);
    if (*end != '\0' || n < lo || n > hi) throw std::runtime_error(std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v + "'");
    *out = n;
    return true;
  };
  long long n = 0;
  if (integer("LONGSHOT_THREADS", 1, 4096, &n)) cpu_backend().set_threads(static_cast<int>(n));
  if (const char* v = std::getenv("LONGSHOT_SIMD"); v && *v) {
    SimdLevel wanted;
    if (!parse_simd(v, &wanted)) throw std::runtime_error(std::string("LONGSHOT_SIMD must be scalar, avx2 or avx512, got '") + v + "'");
    cpu_backend().set_simd(std::min(wanted, simd_available().back()));
  }
  cuda::Options o;
  if (integer("LONGSHOT_CUDA_DEVICE", 0, 1024, &n)) o.device = static_cast<int>(n);
  if (integer("LONGSHOT_CUDA_CACHE_MB", 0, 1LL << 40, &n)) o.cache_mb = n;
  cuda::configure(o);
}

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const std::string mode = argv[1];
  std::map<std::string, std::string> opt;
  for (int i = 2; mode != "validate" && i < argc; i += 2) {
    if (std::strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) return usage();
    opt[argv[i] + 2] = argv[i + 1];
  }
  auto get = [&](const char* k) { return opt.count(k) ? opt[k] : std::string(); };
  try {
    configure_engine_from_env();
    if (mode == "conformance" && opt.count("cases")) return conformance(get("cases"), get("stage"), get("dump"));
    if (mode == "validate" && argc > 2) return validate_fixtures(std::vector<std::string>(argv + 2, argv + argc));
    if (mode == "bench" && opt.count("fixture"))
      return bench(get("fixture"), get("pytorch"), opt.count("python") ? get("python") : "python3",
                   opt.count("backend") ? get("backend") : "cuda");
    return usage();
  } catch (const std::exception& e) {
    Writer w;
    w.begin_object().key("check").value(mode).key("error").value(e.what()).key("ok").value(false).end_object();
    std::printf("%s\n", w.str().c_str());
    std::fprintf(stderr, "longshot-check: %s\n", e.what());
    return 2;
  }
}
