// Engine metrics in Prometheus text exposition format: histograms of latency, counters and
// gauges. Thread-safe: observed on the engine thread, rendered on HTTP threads.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace merlin {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  // Appends the _bucket/_sum/_count lines for `name`.
  void render(std::string& out, const std::string& name, const std::string& help) const;
  double quantile(double q) const;  // estimate from buckets (for logs), 0 when empty
  uint64_t count() const;

 private:
  mutable std::mutex mu_;
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // guarded by mu_
  double sum_ = 0;                // guarded by mu_
  uint64_t n_ = 0;                // guarded by mu_
};

struct EngineMetrics {
  EngineMetrics();
  Histogram ttft_s, itl_s, e2e_s, queue_s;
  std::atomic<uint64_t> prompt_tokens{0}, generated_tokens{0};
  std::atomic<uint64_t> prefix_cache_queries{0}, prefix_cache_hits{0};  // in tokens
  std::atomic<uint64_t> requests_finished{0}, requests_cancelled{0}, preemptions{0};
  std::atomic<uint64_t> parked{0};  // lower-priority sequences parked to free a slot for a higher one
  std::atomic<uint64_t> steps{0};   // forward passes of the engine loop
  std::atomic<uint64_t> lane_yields{0};
  std::atomic<uint64_t> aborted_steps{0};  // forward passes stopped because all their requests were cancelled  // steps given to lower lanes so they do not starve
  std::atomic<uint64_t> spec_proposed{0}, spec_accepted{0}, spec_target_passes{0};
  std::atomic<int64_t> running{0}, waiting{0};
  std::atomic<int64_t> kv_blocks_used{0}, kv_blocks_total{0}, kv_blocks_cached{0};

  std::string render_prometheus(const std::string& model_name) const;
};

}  // namespace merlin
