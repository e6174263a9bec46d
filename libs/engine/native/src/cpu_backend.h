#pragma once

#include <memory>

#include "cpu_kernels.h"
#include "engine.h"
#include "thread_pool.h"

namespace ls {

// Runs every op on the host: SIMD kernels from the selected level's table, the data-movement
// and float64-table ops here. Its settings change only between graph runs (the addon holds the
// engine lock around both).
class CpuBackend final : public Backend {
 public:
  CpuBackend();
  const char* name() const override { return "cpu"; }
  // The reference backend: every op, every valid shape.
  bool supports_op(const Node& node, std::string* why) const override;
  void compute(const Node& node) override;

  int threads() const { return pool_->size(); }
  void set_threads(int threads);
  SimdLevel simd() const { return kernels_->level; }
  void set_simd(SimdLevel level);

 private:
  std::unique_ptr<ThreadPool> pool_;
  const CpuKernels* kernels_;
};

CpuBackend& cpu_backend();

}  // namespace ls
