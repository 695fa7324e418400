// Fork-join thread pool for kernels. Work is split into chunks that threads claim from a shared
// counter, and the calling thread works too: if a worker is descheduled (a busy or shared
// machine), the others take its chunks instead of waiting for it. Workers spin briefly between
// jobs (a decode step issues hundreds of small jobs) and then sleep.
// One owner: run()/parallel_for() must not be called concurrently from two threads.
#pragma once
#include <algorithm>
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

  // Calls body(c) once for every c in [0, n_chunks), spread over the threads.
  void run_chunks(int64_t n_chunks, const std::function<void(int64_t)>& body);

  // fn(i, n) for i in [0, n_threads): a static split into as many parts as threads.
  void run(const std::function<void(int ith, int nth)>& fn) {
    run_chunks(n_threads_, [&](int64_t c) { fn(static_cast<int>(c), n_threads_); });
  }

  // Split [0, n) into contiguous ranges (multiples of `grain`, except the last), several per
  // thread so that a late thread's share is picked up by the others.
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& f) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n <= grain) {
      f(int64_t{0}, n);
      return;
    }
    const int64_t target = static_cast<int64_t>(n_threads_) * 4;
    int64_t chunk = (n + target - 1) / target;
    chunk = std::max<int64_t>(grain, (chunk + grain - 1) / grain * grain);
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    run_chunks(n_chunks, [&](int64_t c) { f(c * chunk, std::min(n, (c + 1) * chunk)); });
  }

 private:
  void worker();
  void work_on_job();

  int n_threads_;
  std::vector<std::thread> threads_;
  // The current job. `state_` packs (generation << 32) | closed bit (1 << 31) | active count:
  // a worker joins only an open job of the generation it saw, so the caller can return as soon
  // as the job is closed and no joined worker is still inside it.
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t n_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  std::atomic<uint64_t> state_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
};

// Number of threads to use when the user gives none: the cores this process may run on.
int default_thread_count();

}  // namespace merlin
