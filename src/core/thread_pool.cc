#include "core/thread_pool.h"

#include <sched.h>

#include <chrono>

namespace merlin {

namespace {
constexpr uint64_t kClosed = uint64_t{1} << 31;
constexpr uint64_t kActiveMask = kClosed - 1;
inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  // Start closed so no worker joins before the first job.
  state_.store(kClosed);
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this] { worker(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_.store(true);
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::work_on_job() {
  for (;;) {
    const int64_t c = next_chunk_.fetch_add(1, std::memory_order_acq_rel);
    if (c >= n_chunks_) return;
    (*body_)(c);
  }
}

void ThreadPool::run_chunks(int64_t n_chunks, const std::function<void(int64_t)>& body) {
  if (n_chunks <= 0) return;
  if (n_threads_ == 1 || n_chunks == 1) {
    for (int64_t c = 0; c < n_chunks; ++c) body(c);
    return;
  }
  body_ = &body;
  n_chunks_ = n_chunks;
  next_chunk_.store(0, std::memory_order_relaxed);
  const uint64_t gen = (state_.load() >> 32) + 1;
  {
    std::lock_guard lk(mu_);
    state_.store(gen << 32, std::memory_order_release);  // open, nobody active
  }
  if (sleepers_.load() > 0) cv_.notify_all();
  work_on_job();
  // Close the job; then wait only for workers that joined it and are still inside.
  uint64_t s = state_.load();
  while (!state_.compare_exchange_weak(s, s | kClosed)) {
  }
  while ((state_.load(std::memory_order_acquire) & kActiveMask) != 0) cpu_relax();
}

void ThreadPool::worker() {
  uint64_t seen_gen = 0;
  for (;;) {
    // Wait for a generation newer than the last one seen: spin briefly, then sleep.
    auto t0 = std::chrono::steady_clock::now();
    int spins = 0;
    uint64_t s;
    for (;;) {
      if (stop_.load()) return;
      s = state_.load(std::memory_order_acquire);
      if ((s >> 32) != seen_gen && !(s & kClosed)) break;
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(1)) {
        std::unique_lock lk(mu_);
        sleepers_.fetch_add(1);
        cv_.wait_for(lk, std::chrono::milliseconds(50), [&] {
          uint64_t x = state_.load();
          return stop_.load() || ((x >> 32) != seen_gen && !(x & kClosed));
        });
        sleepers_.fetch_sub(1);
        t0 = std::chrono::steady_clock::now();
      } else {
        cpu_relax();
      }
    }
    seen_gen = s >> 32;
    // Join: only while the job of that generation is still open.
    bool joined = false;
    while (!(s & kClosed) && (s >> 32) == seen_gen) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
        joined = true;
        break;
      }
    }
    if (!joined) continue;
    work_on_job();
    state_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace merlin
