// The engine: one thread owns the model, the KV cache and the scheduling loop (continuous
// batching, chunked prefill, paged KV with prefix reuse, priorities, preemption, speculative
// decoding). Other threads talk to it through submit() / RequestStream / cancel().
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"
#include "engine/metrics.h"
#include "engine/sampler.h"
#include "kernels/matmul.h"
#include "model/model.h"

namespace merlin {

// Lower value = scheduled first. Interactive code completion runs ahead of chat and batch work.
enum class Priority : int32_t { kCompletion = 0, kChat = 1, kBatch = 2 };

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError, kTimeBudget, kTimeout };
// "stop", "length", "cancelled", "error", "time_budget", "timeout"
const char* finish_reason_name(FinishReason r);

struct SpecOptions {
  bool use_draft = true;     // only effective when the engine has a draft model
  bool use_lookup = false;   // prompt lookup (n-gram) proposals
  int32_t max_draft = 16;    // upper bound of the adaptive draft length (grows +2 per fully accepted proposal)
  // The draft model proposes only while fewer than this many sequences decode together: with a
  // full batch a step is no longer weight-read-bound, so verifying proposals costs nearly as
  // much as generating them (vLLM's speculative_disable_by_batch_size). Prompt lookup, which
  // costs no model pass to propose, is not limited.
  int32_t draft_max_batch = 4;
  // The draft stops extending a proposal at a token it is less sure of than this (its own
  // probability of the token it chose; llama.cpp's --draft-p-min): such tokens are mostly
  // rejected, and each costs a draft pass plus a verification row.
  float draft_p_min = 0.0f;
};

struct GenerationRequest {
  Ids prompt;                          // token ids, already templated/tokenized
  SamplingParams sampling;
  int32_t max_tokens = 256;            // generated tokens at most (also capped by the context)
  std::vector<std::string> stop;       // stop strings; the text ends before them
  std::vector<TokenId> stop_tokens;    // extra stop token ids (besides EOG unless ignore_eos)
  bool ignore_eos = false;
  int32_t n_logprobs = -1;             // -1: none; 0: chosen token only; n: top n as well
  Priority priority = Priority::kChat;
  std::string client_id;               // cancel-on-keystroke: a new completion of the same
  bool supersede_same_client = false;  //   client cancels its unfinished ones that also set this
  std::optional<double> time_budget_ms;  // stop generating after this long (FIM editors)
  // Whole-request limit from arrival (queueing included): past it the request ends with
  // FinishReason::kTimeout, whatever it has generated so far in its final event.
  std::optional<double> timeout_ms;
  std::optional<SpecOptions> spec;     // none: engine default
  // FIM: stop when the generated text reproduces the start of this (the suffix's next line).
  std::string stop_at_suffix_line;
  int32_t max_lines = 0;               // stop after this many newlines in the output (0 = off)
};

struct Usage {
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t cached_tokens = 0;           // prompt tokens served from the prefix cache
};

struct StreamEvent {
  std::string text;                    // new UTF-8 text (whole characters, stop strings removed)
  std::vector<TokenId> tokens;         // the tokens this event covers
  std::vector<TokenLogprob> logprobs;  // per token in `tokens`, when asked
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // per token, when n_logprobs > 0
  bool done = false;
  FinishReason finish = FinishReason::kNone;
  std::string error;                   // set when finish == kError
  Usage usage;                         // filled on the final event
  uint64_t step = 0;                   // the engine step (EngineMetrics::steps) that produced it
  double queue_ms = 0;                 // on the final event: arrival to first scheduled step
  double ttft_ms = 0;                  // on the final event
  double e2e_ms = 0;
};

// The receiving end of one request. next() blocks until an event arrives or the timeout
// passes; the last event has done == true. Dropping the stream cancels the request.
class RequestStream {
 public:
  ~RequestStream();
  // Returns false on timeout (ev untouched).
  bool next(StreamEvent& ev, std::chrono::milliseconds timeout = std::chrono::milliseconds(60000));
  void cancel();
  uint64_t id() const { return id_; }

 // Internal: shared between the stream and the engine thread.
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<StreamEvent> events;  // guarded by mu
    std::atomic<bool> cancelled{false};
    std::atomic<bool> finished{false};
    std::string client_id;  // set at submit for requests that may be superseded (else empty)
  };

 private:
  friend class Engine;
  std::shared_ptr<Shared> shared_;
  uint64_t id_ = 0;
  class Engine* engine_ = nullptr;
};

struct EngineOptions {
  int32_t n_threads = 0;               // 0 = all available cores
  int32_t max_running = 16;            // sequences decoded together (--parallel)
  int32_t ctx_size = 0;                // max tokens per sequence; 0 = model's max_position
  int32_t kv_tokens = 0;               // KV capacity in tokens; 0 = max_running * ctx_size
  int32_t block_size = 16;
  int32_t max_batch_tokens = 256;      // tokens per step: prompt chunks are cut to fit
  bool prefix_cache = true;
  // Requests waiting for admission per priority lane beyond which submit() refuses with
  // Code::kOverloaded (the server answers 429 / 529). 0: unbounded.
  int32_t max_queue = 0;
  // While completion requests keep arriving, chat and batch sequences wait; after this long
  // one step runs every lane together, so they advance instead of starving.
  double lane_max_pause_ms = 500;
  Precision precision = Precision::kF32;
  DType kv_type = DType::F32;          // KV cache storage: F32 or Q8_0 (--kv-type)
  std::shared_ptr<const ModelWeights> draft;  // optional draft model (same vocabulary)
  SpecOptions spec_default;            // used when a request does not say
};

class Engine {
 public:
  // Validates options (draft vocabulary, KV size) and starts the engine thread.
  static Result<std::unique_ptr<Engine>> create(LoadedModel model, EngineOptions opt);
  ~Engine();  // stops the thread; unfinished requests end with FinishReason::kCancelled

  // Thread-safe. Invalid requests (empty prompt, prompt + max_tokens beyond the context or the
  // KV cache) are refused here with kInvalidArgument, before any work; a request beyond a full
  // lane's queue (EngineOptions::max_queue) with kOverloaded.
  Result<std::unique_ptr<RequestStream>> submit(GenerationRequest req);
  void cancel(uint64_t id);
  // Ends every request (final event with kCancelled) and stops accepting new ones.
  void shutdown();

  const Tokenizer& tokenizer() const { return *model_.tokenizer; }
  const ModelConfig& config() const { return model_.weights->config; }
  const LoadedModel& model() const { return model_; }
  int32_t ctx_size() const { return ctx_size_; }
  EngineMetrics& metrics() { return metrics_; }
  const EngineOptions& options() const { return opt_; }
  bool has_draft() const { return opt_.draft != nullptr; }
  // Requests submitted at `p` and not yet admitted to the running batch.
  int32_t queued(Priority p) const;

 private:
  Engine(LoadedModel model, EngineOptions opt);
  struct Impl;
  void loop();

  LoadedModel model_;
  EngineOptions opt_;
  int32_t ctx_size_ = 0;
  EngineMetrics metrics_;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
};

}  // namespace merlin
