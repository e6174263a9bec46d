// A fixed-size pool with static partitioning: thread t always receives the same share of a
// range, and kernels split only over independent outputs, so results do not depend on how many
// threads there are.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ls {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Calls fn(t) once for every t in [0, size()), t = 0 on the calling thread; returns when all
  // are done and rethrows the first exception any of them raised. Not reentrant.
  void run(const std::function<void(int)>& fn);

  // Splits [0, n) into size() contiguous, near-equal ranges; fn(begin, end, thread).
  template <class F>
  void parallel_for(size_t n, F&& fn) {
    if (n == 0) return;
    const size_t t_count = static_cast<size_t>(size_);
    if (t_count == 1 || n == 1) {
      fn(size_t{0}, n, 0);
      return;
    }
    run([&](int t) {
      const size_t begin = n * static_cast<size_t>(t) / t_count;
      const size_t end = n * (static_cast<size_t>(t) + 1) / t_count;
      if (begin < end) fn(begin, end, t);
    });
  }

 private:
  void worker(int t);

  int size_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  unsigned long generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

// LONGSHOT_THREADS when set to a positive integer, else every hardware thread.
int default_thread_count();

}  // namespace ls
