// Stage fixtures: the op graphs libs/model's Stage builds for one block-step, recorded by
// test/native/stage-fixture.ts (checked for staleness by the test suite) so the driver runs the
// very same graph without Node. A fixture names host buffers (with how the graph inputs among them
// are drawn: seeded normals, constants or literal values) and lists graphs of nodes over views of
// those buffers, run in order; `outputs` are the views a stage returns (velocity or hidden
// states, and its K/V cache).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "../native/src/engine.h"
#include "json.h"
#include "rng.h"

namespace ls {
namespace check {

struct View {
  size_t buffer = 0, offset = 0, length = 0;
};

struct BufferInit {
  enum class Kind { zeros, normal, fill, values } kind = Kind::zeros;
  std::vector<RngKey> keys;  // normal: Rng.from(keys)
  double std = 1, mean = 0;
  double fill = 0;
  std::vector<double> values;
};

struct FixtureBuffer {
  std::string name;
  size_t size = 0;
  BufferInit init;
};

struct FixtureNode {
  Op op;
  std::vector<View> inputs;
  std::vector<bool> present;
  View output;
  std::vector<double> params;
};

struct FixtureGraph {
  std::string name;
  std::vector<FixtureNode> nodes;
};

struct Fixture {
  std::string path;
  Json doc;  // the whole file (model, step, bench settings, PyTorch arguments)
  std::vector<FixtureBuffer> buffers;
  std::vector<FixtureGraph> graphs;
  std::vector<std::pair<std::string, View>> outputs;

  const FixtureGraph& graph(const std::string& name) const;
};

Fixture load_fixture(const std::string& path);

// The host memory of one run of a fixture: every buffer allocated and initialised as the fixture
// says (in parallel over `threads`), nodes built over it and validated.
class World {
 public:
  World(const Fixture& f, int threads);
  ~World();
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  float* data(const View& v) const { return buffers_[v.buffer] + v.offset; }
  const std::vector<Node>& nodes(const std::string& graph) const;
  // Buffers `graph` both reads as an initialised input and writes (such as a stage's hidden state
  // input, updated in place): restore() puts their initial values back before a repeated run.
  void restore(const std::string& graph);
  size_t bytes() const { return bytes_; }

 private:
  const Fixture& f_;
  std::vector<float*> buffers_;
  std::vector<std::vector<Node>> nodes_;
  std::vector<std::vector<std::pair<size_t, std::vector<float>>>> saved_;  // per graph
  size_t bytes_ = 0;
};

// Checks every node of every graph with the engine's validate() (shapes, sizes, aliasing)
// without allocating the buffers, and returns the nodes of the last graph over a fake address
// space (for counting, never for running).
std::vector<Node> validate_fixture(const Fixture& f);

// Floating-point operations of a graph's matrix work (2 per multiply-add of linear and attention).
struct Flops {
  double gemm = 0, attention = 0;
};
Flops graph_flops(const std::vector<Node>& nodes);

}  // namespace check
}  // namespace ls
