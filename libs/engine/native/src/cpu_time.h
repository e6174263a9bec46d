// Host CPU time by part, for the workers' per-block-step metrics (docs/dataplane.md "Host CPU"):
// the calling thread's CPU clock, and process-wide counters of the CPU time spent running compute
// graphs (the thread that runs a graph and the pool threads that share its kernels) and in the
// data plane's threads (sending and receiving tensors). Measured with CLOCK_THREAD_CPUTIME_ID, so
// time blocked on a lock, a socket or a condition variable does not count.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>

namespace ls {

// CPU time of the calling thread, in nanoseconds.
inline uint64_t thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// Process-wide totals (inline functions: one instance across translation units).
inline std::atomic<uint64_t>& kernel_cpu_ns() {
  static std::atomic<uint64_t> total{0};
  return total;
}
inline std::atomic<uint64_t>& dataplane_cpu_ns() {
  static std::atomic<uint64_t> total{0};
  return total;
}

// Graph time run on the calling thread itself (a synchronous run on the JS thread counts here, so
// the JS thread's own time can leave it out).
inline uint64_t& thread_kernel_cpu_ns() {
  thread_local uint64_t total = 0;
  return total;
}

// Adds the calling thread's CPU time between construction and destruction to `total`.
class CpuSpan {
 public:
  explicit CpuSpan(std::atomic<uint64_t>& total) : total_(total), start_(thread_cpu_ns()) {}
  ~CpuSpan() { total_.fetch_add(elapsed(), std::memory_order_relaxed); }
  uint64_t elapsed() const { return thread_cpu_ns() - start_; }
  CpuSpan(const CpuSpan&) = delete;
  CpuSpan& operator=(const CpuSpan&) = delete;

 private:
  std::atomic<uint64_t>& total_;
  uint64_t start_;
};

}  // namespace ls
