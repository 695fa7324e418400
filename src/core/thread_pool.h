// Fork-join thread pool for kernels: run(fn) calls fn(thread_index, n_threads) on every thread
// (the caller is thread 0) and returns when all are done. Workers spin briefly between jobs
// (a decode step issues hundreds of small jobs) and then sleep on a condition variable.
// One pool per engine; run() must not be called concurrently from two threads.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace merlin {

class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }
  void run(const std::function<void(int ith, int nth)>& fn);

  // Split [0, n) into contiguous chunks, one per thread, rounded to `grain`.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& f) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n <= grain) {
      f(int64_t{0}, n);
      return;
    }
    run([&](int ith, int nth) {
      int64_t chunks = (n + grain - 1) / grain;
      int64_t per = (chunks + nth - 1) / nth;
      int64_t b = ith * per * grain, e = std::min<int64_t>(n, (ith + 1) * per * grain);
      if (b < e) f(b, e);
    });
  }

 private:
  void worker(int ith);

  int n_threads_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)>* job_ = nullptr;  // valid while a run() is active
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

// Number of threads to use when the user gives none: the physical cores available.
int default_thread_count();

}  // namespace merlin
