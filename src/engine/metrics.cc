#include "engine/metrics.h"

#include <fmt/format.h>

namespace merlin {

void Histogram::observe(double v) {
  std::lock_guard lk(mu_);
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i]++;
  sum_ += v;
  n_++;
}

uint64_t Histogram::count() const {
  std::lock_guard lk(mu_);
  return n_;
}

double Histogram::quantile(double q) const {
  std::lock_guard lk(mu_);
  if (n_ == 0) return 0;
  const double target = q * static_cast<double>(n_);
  double cum = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    cum += static_cast<double>(counts_[i]);
    if (cum >= target) return i < bounds_.size() ? bounds_[i] : bounds_.back();
  }
  return bounds_.back();
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard lk(mu_);
  out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cum);
  }
  cum += counts_.back();
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, cum, name, sum_, name, n_);
}

static std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
          0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0};
}

EngineMetrics::EngineMetrics()
    : ttft_s(latency_buckets()), itl_s(latency_buckets()), e2e_s(latency_buckets()), queue_s(latency_buckets()) {}

std::string EngineMetrics::render_prometheus(const std::string& model) const {
  std::string out;
  ttft_s.render(out, "merlin_time_to_first_token_seconds", "Time from request arrival to its first generated token");
  itl_s.render(out, "merlin_inter_token_latency_seconds", "Time between consecutive generated tokens of a request");
  e2e_s.render(out, "merlin_e2e_request_latency_seconds", "Time from request arrival to its last token");
  queue_s.render(out, "merlin_request_queue_time_seconds", "Time a request waited before its first scheduling");
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} counter\n{}{{model=\"{}\"}} {}\n", name, help, name, name, model, v);
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    out += fmt::format("# HELP {} {}\n# TYPE {} gauge\n{}{{model=\"{}\"}} {}\n", name, help, name, name, model, v);
  };
  counter("merlin_prompt_tokens_total", "Prompt tokens received", prompt_tokens.load());
  counter("merlin_generation_tokens_total", "Tokens generated", generated_tokens.load());
  counter("merlin_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", prefix_cache_queries.load());
  counter("merlin_prefix_cache_hits_total", "Prompt tokens served from the prefix cache", prefix_cache_hits.load());
  counter("merlin_requests_finished_total", "Requests finished (any reason)", requests_finished.load());
  counter("merlin_requests_cancelled_total", "Requests cancelled (client gone, superseded, shutdown)", requests_cancelled.load());
  counter("merlin_preemptions_total", "Sequences preempted for lack of KV blocks", preemptions.load());
  counter("merlin_parked_total", "Lower-priority sequences parked (KV kept) to free a slot", parked.load());
  counter("merlin_engine_steps_total", "Forward passes of the engine loop", steps.load());
  counter("merlin_aborted_steps_total", "Forward passes stopped early: every request in them was cancelled",
          aborted_steps.load());
  counter("merlin_lane_yields_total", "Steps that ran lower lanes beside waiting completion requests", lane_yields.load());
  counter("merlin_spec_draft_tokens_total", "Speculative tokens proposed", spec_proposed.load());
  counter("merlin_spec_accepted_tokens_total", "Speculative tokens accepted", spec_accepted.load());
  counter("merlin_spec_verify_passes_total", "Target-model passes that verified proposals", spec_target_passes.load());
  gauge("merlin_requests_running", "Sequences in the running batch", static_cast<double>(running.load()));
  gauge("merlin_requests_waiting", "Requests waiting to be scheduled", static_cast<double>(waiting.load()));
  const double total = static_cast<double>(kv_blocks_total.load());
  gauge("merlin_kv_cache_usage_ratio", "Fraction of KV blocks held by sequences",
        total > 0 ? static_cast<double>(kv_blocks_used.load()) / total : 0.0);
  gauge("merlin_kv_cache_blocks_total", "KV blocks in the cache", total);
  gauge("merlin_kv_cache_blocks_cached", "Free KV blocks still holding reusable prefixes", static_cast<double>(kv_blocks_cached.load()));
  return out;
}

}  // namespace merlin
