#include "fixture.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

namespace ls {
namespace check {

namespace {

Op op_by_name(const std::string& name, const std::string& where) {
  for (int o = 0; o < kOpCount; ++o)
    if (op_info(static_cast<Op>(o)).name == name) return static_cast<Op>(o);
  throw std::runtime_error(where + ": unknown op '" + name + "'");
}

View parse_view(const Json& j, const Fixture& f, const std::string& where) {
  if (j.size() != 3) throw std::runtime_error(where + ": a view is [buffer, offset, length]");
  View v{static_cast<size_t>(j[0].num()), static_cast<size_t>(j[1].num()), static_cast<size_t>(j[2].num())};
  if (v.buffer >= f.buffers.size()) throw std::runtime_error(where + ": no buffer " + std::to_string(v.buffer));
  if (v.offset + v.length > f.buffers[v.buffer].size)
    throw std::runtime_error(where + ": view [" + std::to_string(v.offset) + ", +" + std::to_string(v.length) +
                             ") outside buffer " + std::to_string(v.buffer) + " of " +
                             std::to_string(f.buffers[v.buffer].size));
  return v;
}

BufferInit parse_init(const Json* j, const std::string& where) {
  BufferInit init;
  if (!j || j->is_null()) return init;
  if (const Json* keys = j->find("rng")) {
    init.kind = BufferInit::Kind::normal;
    for (const Json& k : keys->arr("rng")) {
      if (k.is_string()) {
        init.keys.emplace_back(k.str());
      } else {
        const double n = k.num("rng key");
        if (n != static_cast<double>(static_cast<long long>(n))) throw std::runtime_error(where + ": numeric rng keys must be integers");
        init.keys.push_back(RngKey::number(static_cast<long long>(n)));
      }
    }
    init.std = j->at("normal").num("normal");
    if (const Json* m = j->find("mean")) init.mean = m->num("mean");
  } else if (const Json* v = j->find("fill")) {
    init.kind = BufferInit::Kind::fill;
    init.fill = v->num("fill");
  } else if (const Json* vals = j->find("values")) {
    init.kind = BufferInit::Kind::values;
    for (const Json& x : vals->arr("values")) init.values.push_back(x.num("values"));
  } else {
    throw std::runtime_error(where + ": unknown init " + j->dump());
  }
  return init;
}

void fill(float* p, size_t n, const BufferInit& init) {
  switch (init.kind) {
    case BufferInit::Kind::zeros: break;  // calloc'd
    case BufferInit::Kind::normal: {
      Rng rng = Rng::from(init.keys);
      rng.fill_normal(p, n, init.std);
      if (init.mean != 0)
        for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(static_cast<double>(p[i]) + init.mean);
      break;
    }
    case BufferInit::Kind::fill:
      for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(init.fill);
      break;
    case BufferInit::Kind::values:
      for (size_t i = 0; i < n && i < init.values.size(); ++i) p[i] = static_cast<float>(init.values[i]);
      break;
  }
}

}  // namespace

const FixtureGraph& Fixture::graph(const std::string& name) const {
  for (const auto& g : graphs)
    if (g.name == name) return g;
  throw std::runtime_error(path + ": no graph '" + name + "'");
}

Fixture load_fixture(const std::string& path) {
  Fixture f;
  f.path = path;
  f.doc = Json::read_file(path);
  try {
    if (f.doc.at("format").str("format") != "longshot-stage-fixture/1")
      throw std::runtime_error("unknown format '" + f.doc.at("format").str() + "'");
    for (const Json& b : f.doc.at("buffers").arr("buffers")) {
      FixtureBuffer fb;
      const std::string where = "buffer " + std::to_string(f.buffers.size());
      if (const Json* n = b.find("name")) fb.name = n->str("name");
      fb.size = static_cast<size_t>(b.at("size").num("size"));
      fb.init = parse_init(b.find("init"), where);
      if (fb.init.kind == BufferInit::Kind::values && fb.init.values.size() != fb.size)
        throw std::runtime_error(where + ": " + std::to_string(fb.init.values.size()) + " values for " + std::to_string(fb.size) + " elements");
      f.buffers.push_back(std::move(fb));
    }
    for (const Json& g : f.doc.at("graphs").arr("graphs")) {
      FixtureGraph fg;
      fg.name = g.at("name").str("graph name");
      for (const Json& n : g.at("nodes").arr("nodes")) {
        const std::string where = "graph '" + fg.name + "' node " + std::to_string(fg.nodes.size());
        if (n.size() != 4) throw std::runtime_error(where + ": a node is [op, inputs, output, params]");
        FixtureNode fn;
        fn.op = op_by_name(n[0].str("op"), where);
        const OpInfo& info = op_info(fn.op);
        const auto& ins = n[1].arr("inputs");
        if (ins.size() != info.inputs.size())
          throw std::runtime_error(where + ": " + std::to_string(ins.size()) + " inputs for " + info.name);
        for (const Json& in : ins) {
          fn.present.push_back(!in.is_null());
          fn.inputs.push_back(in.is_null() ? View{} : parse_view(in, f, where));
        }
        fn.output = parse_view(n[2], f, where);
        for (const Json& p : n[3].arr("params")) fn.params.push_back(p.num("param"));
        if (fn.params.size() != info.params.size()) throw std::runtime_error(where + ": wrong param count for " + info.name);
        fg.nodes.push_back(std::move(fn));
      }
      f.graphs.push_back(std::move(fg));
    }
    for (const Json& o : f.doc.at("outputs").arr("outputs"))
      f.outputs.emplace_back(o.at("name").str("output name"), parse_view(o.at("view"), f, "output"));
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return f;
}

World::World(const Fixture& f, int threads) : f_(f) {
  buffers_.resize(f.buffers.size(), nullptr);
  for (size_t i = 0; i < f.buffers.size(); ++i) {
    // calloc: zeros without touching pages that are written before they are read.
    buffers_[i] = static_cast<float*>(std::calloc(std::max<size_t>(f.buffers[i].size, 1), sizeof(float)));
    if (!buffers_[i]) throw std::runtime_error("out of host memory for " + f.path);
    bytes_ += f.buffers[i].size * sizeof(float);
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < f.buffers.size();) fill(buffers_[i], f.buffers[i].size, f.buffers[i].init);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();

  for (const FixtureGraph& g : f.graphs) {
    std::vector<Node> nodes;
    std::vector<bool> written(f.buffers.size(), false);
    for (const FixtureNode& fn : g.nodes) {
      Node n;
      n.op = fn.op;
      n.n_inputs = static_cast<int>(fn.inputs.size());
      for (size_t s = 0; s < fn.inputs.size(); ++s)
        if (fn.present[s]) n.inputs[s] = Tensor{data(fn.inputs[s]), fn.inputs[s].length, true};
      n.output = Tensor{data(fn.output), fn.output.length, true};
      n.params = fn.params;
      validate(n, nodes.size());
      written[fn.output.buffer] = true;
      nodes.push_back(n);
    }
    std::vector<std::pair<size_t, std::vector<float>>> saved;
    for (size_t b = 0; b < f.buffers.size(); ++b)
      if (written[b] && f.buffers[b].init.kind != BufferInit::Kind::zeros)
        saved.emplace_back(b, std::vector<float>(buffers_[b], buffers_[b] + f.buffers[b].size));
    nodes_.push_back(std::move(nodes));
    saved_.push_back(std::move(saved));
  }
}

World::~World() {
  for (float* p : buffers_) std::free(p);
}

const std::vector<Node>& World::nodes(const std::string& graph) const {
  for (size_t i = 0; i < f_.graphs.size(); ++i)
    if (f_.graphs[i].name == graph) return nodes_[i];
  throw std::runtime_error(f_.path + ": no graph '" + graph + "'");
}

void World::restore(const std::string& graph) {
  for (size_t i = 0; i < f_.graphs.size(); ++i)
    if (f_.graphs[i].name == graph)
      for (const auto& s : saved_[i]) std::memcpy(buffers_[s.first], s.second.data(), s.second.size() * sizeof(float));
}

std::vector<Node> validate_fixture(const Fixture& f) {
  // Buffer b starts at a made-up address past the previous one: validate() only compares them.
  std::vector<uintptr_t> base(f.buffers.size());
  uintptr_t next = 1 << 20;
  for (size_t b = 0; b < f.buffers.size(); ++b) {
    base[b] = next;
    next += (f.buffers[b].size * sizeof(float) + 4096) & ~uintptr_t{255};
  }
  auto at = [&](const View& v) { return reinterpret_cast<float*>(base[v.buffer] + v.offset * sizeof(float)); };
  std::vector<Node> nodes;
  for (const FixtureGraph& g : f.graphs) {
    nodes.clear();
    for (const FixtureNode& fn : g.nodes) {
      Node n;
      n.op = fn.op;
      n.n_inputs = static_cast<int>(fn.inputs.size());
      for (size_t s = 0; s < fn.inputs.size(); ++s)
        if (fn.present[s]) n.inputs[s] = Tensor{at(fn.inputs[s]), fn.inputs[s].length, true};
      n.output = Tensor{at(fn.output), fn.output.length, true};
      n.params = fn.params;
      try {
        validate(n, nodes.size());
      } catch (const std::exception& e) {
        throw std::runtime_error(f.path + ": graph '" + g.name + "': " + e.what());
      }
      nodes.push_back(n);
    }
  }
  return nodes;
}

Flops graph_flops(const std::vector<Node>& nodes) {
  Flops f;
  for (const Node& n : nodes) {
    if (n.op == Op::linear) {
      f.gemm += 2.0 * n.params[0] * n.params[1] * n.params[2];
    } else if (n.op == Op::attention) {
      // q.k^T and p.v: 2 * (keys + extra) * headDim multiply-adds per query and head.
      f.attention += 4.0 * n.params[0] * n.params[1] * (n.params[2] + n.params[3]) * n.params[4] * n.params[5];
    }
  }
  return f;
}

}  // namespace check
}  // namespace ls
