#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "core/log.h"
#include "engine/block_pool.h"
#include "engine/sequence.h"
#include "engine/engine_impl.h"
#include "engine/spec.h"

namespace merlin {

using Clock = std::chrono::steady_clock;

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
    case FinishReason::kTimeBudget: return "time_budget";
    case FinishReason::kTimeout: return "timeout";
  }
  return "?";
}

// ---------------- RequestStream ----------------

RequestStream::~RequestStream() { cancel(); }

void RequestStream::cancel() {
  if (shared_ && !shared_->finished.load()) shared_->cancelled.store(true);
}

bool RequestStream::next(StreamEvent& ev, std::chrono::milliseconds timeout) {
  std::unique_lock lk(shared_->mu);
  if (!shared_->cv.wait_for(lk, timeout, [&] { return !shared_->events.empty(); })) return false;
  ev = std::move(shared_->events.front());
  shared_->events.pop_front();
  return true;
}

// ---------------- Engine ----------------



Engine::Engine(LoadedModel model, EngineOptions opt) : model_(std::move(model)), opt_(std::move(opt)) {}

Result<std::unique_ptr<Engine>> Engine::create(LoadedModel model, EngineOptions opt) {
  const auto& c = model.weights->config;
  if (opt.n_threads <= 0) opt.n_threads = default_thread_count();
  if (opt.max_running <= 0) return Err(Code::kInvalidArgument, "--parallel must be at least 1");
  if (opt.block_size <= 0 || opt.block_size > 1024) return Err(Code::kInvalidArgument, "block size out of range");
  if (opt.max_batch_tokens < 16) opt.max_batch_tokens = 16;
  MERLIN_TRY(ctx, context_size(c, opt.ctx_size));  // max_pos, or capped at a sliding window
  if (ctx < 16) return Err(Code::kInvalidArgument, "context size must be at least 16 tokens");
  // An unsupported KV type is refused, not silently replaced by f32.
  if (auto st = KvCache::supported_type(c, opt.kv_type); !st.ok()) return std::unexpected(st);
  if (opt.draft) {
    const auto& d = opt.draft->config;
    if (d.n_vocab != c.n_vocab)
      return Errf(Code::kInvalidArgument, "draft model vocabulary ({} tokens) does not match the target's ({} tokens)",
                  d.n_vocab, c.n_vocab);
  }
  std::unique_ptr<Engine> e(new Engine(std::move(model), std::move(opt)));
  e->ctx_size_ = ctx;
  auto& o = e->opt_;
  int64_t kv_tokens = o.kv_tokens > 0 ? o.kv_tokens : static_cast<int64_t>(o.max_running) * ctx;
  // Cap the default KV allocation at 4 GiB; a user who wants more says --kv-tokens.
  const int64_t per_tok = static_cast<int64_t>(KvCache::bytes_per_token(e->config(), o.kv_type));
  if (o.kv_tokens <= 0 && kv_tokens * per_tok > (int64_t{4} << 30)) kv_tokens = (int64_t{4} << 30) / per_tok;
  if (kv_tokens < ctx) kv_tokens = ctx;
  const int32_t n_blocks = static_cast<int32_t>((kv_tokens + o.block_size - 1) / o.block_size) + 1;
  e->impl_ = std::make_unique<Impl>();
  auto& I = *e->impl_;
  I.pool = std::make_unique<ThreadPool>(o.n_threads);
  I.model = std::make_unique<Model>(e->model_.weights);
  I.kv = std::make_unique<KvCache>(e->config(), n_blocks, o.block_size, o.kv_type);
  I.blocks = std::make_unique<BlockPool>(n_blocks, o.block_size);
  I.n_blocks = n_blocks;
  e->metrics_.kv_blocks_total = n_blocks;
  // Always present: prompt lookup needs no model, and requests may turn it on per request.
  I.spec = std::make_unique<Speculator>(o.draft, ctx, o.max_running, o.block_size, o.precision);
  spdlog::info("engine: {} threads, ctx {}, parallel {}, KV {} blocks x {} tokens ({:.1f} MiB){}", o.n_threads, ctx,
               o.max_running, n_blocks, o.block_size, I.kv->bytes() / 1048576.0,
               o.draft ? ", draft model loaded" : "");
  e->thread_ = std::thread([p = e.get()] { p->loop(); });
  return e;
}

Engine::~Engine() {
  shutdown();
  if (thread_.joinable()) thread_.join();
}

void Engine::shutdown() {
  {
    std::lock_guard lk(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
}

Result<std::unique_ptr<RequestStream>> Engine::submit(GenerationRequest req) {
  if (req.prompt.empty()) return Err(Code::kInvalidArgument, "the prompt is empty");
  for (TokenId t : req.prompt)
    if (t < 0 || t >= config().n_vocab) return Errf(Code::kInvalidArgument, "token id {} is out of range", t);
  if (static_cast<int64_t>(req.prompt.size()) >= ctx_size_)
    return Errf(Code::kInvalidArgument, "the prompt has {} tokens; the context holds {}", req.prompt.size(), ctx_size_);
  if (req.max_tokens < 0) return Err(Code::kInvalidArgument, "max_tokens must not be negative");
  if (static_cast<int64_t>(req.prompt.size()) + req.max_tokens > ctx_size_)
    return Errf(Code::kInvalidArgument, "prompt ({} tokens) + max_tokens ({}) exceeds the context size ({})",
                req.prompt.size(), req.max_tokens, ctx_size_);
  {
    // Every block but one can hold this request's tokens; a request that needs more could
    // never be admitted, so it is refused now rather than left waiting.
    const int64_t need = (static_cast<int64_t>(req.prompt.size()) + req.max_tokens + opt_.block_size - 1) / opt_.block_size;
    if (need > impl_->n_blocks - 1)
      return Errf(Code::kInvalidArgument, "prompt ({} tokens) + max_tokens ({}) needs {} KV blocks; the cache has {}",
                  req.prompt.size(), req.max_tokens, need, impl_->n_blocks - 1);
  }
  const int prio = static_cast<int>(req.priority);
  if (prio < 0 || prio > 2) return Err(Code::kInvalidArgument, "unknown priority");
  auto stream = std::unique_ptr<RequestStream>(new RequestStream());
  stream->shared_ = std::make_shared<RequestStream::Shared>();
  stream->id_ = impl_->next_id.fetch_add(1);
  stream->engine_ = this;
  auto seq = std::make_unique<Sequence>(stream->id_, std::move(req), stream->shared_, tokenizer(), opt_.spec_default,
                                        opt_.draft != nullptr);
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->stop) return Err(Code::kCancelled, "the server is shutting down");
    if (opt_.max_queue > 0 && impl_->queued[prio].load() >= opt_.max_queue)
      return Errf(Code::kOverloaded, "the {} queue is full ({} requests waiting)",
                  prio == 0 ? "completion" : prio == 1 ? "chat" : "batch", opt_.max_queue);
    impl_->queued[prio].fetch_add(1);
    // Cancel-on-keystroke takes effect now, not at the next step: the step in progress stops
    // at its next layer when everything in it has been superseded.
    if (seq->req.supersede_same_client && !seq->req.client_id.empty()) {
      for (auto& [id, w] : impl_->live)
        if (auto sh = w.lock(); sh && !sh->client_id.empty() && sh->client_id == seq->req.client_id && id < stream->id_)
          sh->cancelled.store(true);
    }
    // Only requests that opted in (editor completions) are superseded, never a chat or plain
    // completion that happens to carry the same `user`.
    if (seq->req.supersede_same_client) stream->shared_->client_id = seq->req.client_id;
    impl_->live[stream->id_] = stream->shared_;
    impl_->inbox.push_back(std::move(seq));
  }
  metrics_.waiting.fetch_add(1);
  impl_->cv.notify_all();
  return stream;
}

int32_t Engine::queued(Priority p) const { return impl_->queued[static_cast<int>(p)].load(); }

void Engine::cancel(uint64_t id) {
  // Requests are cancelled through their shared state; the loop notices at its next step.
  std::lock_guard lk(impl_->mu);
  auto it = impl_->live.find(id);
  if (it == impl_->live.end()) return;
  if (auto sh = it->second.lock()) sh->cancelled.store(true);
}

}  // namespace merlin
