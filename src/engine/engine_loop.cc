// The scheduling loop: admission, prefix reuse, chunked prefill, continuous batching,
// priorities, preemption, speculative proposal + verification, sampling and streaming.
#include <algorithm>
#include <cmath>

#include "core/log.h"
#include "engine/engine_impl.h"

namespace merlin {

using Clock = std::chrono::steady_clock;

namespace {

struct Planned {
  Sequence* s = nullptr;
  int32_t n_new = 0;       // tokens fed this step (for speculation: last token + proposal)
  Proposal prop;
  bool sample = false;     // the step reaches the end of the sequence: sample from its logits
  int32_t row0 = 0;        // first row in the batch
  int32_t logit0 = 0;      // first logits row
};

bool before(const Sequence* a, const Sequence* b) {
  if (a->req.priority != b->req.priority) return a->req.priority < b->req.priority;
  return a->t_arrival < b->t_arrival || (a->t_arrival == b->t_arrival && a->id < b->id);
}

double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

void Engine::loop() {
  auto& I = *impl_;
  for (;;) {
    bool stopping = false;
    {
      std::unique_lock lk(I.mu);
      if (I.running.empty() && I.waiting.empty() && I.inbox.empty() && !I.stop)
        I.cv.wait_for(lk, std::chrono::milliseconds(100));
      while (!I.inbox.empty()) {
        auto s = std::move(I.inbox.front());
        I.inbox.pop_front();
        // Cancel-on-keystroke already happened in Engine::submit.
        I.waiting.push_back(std::move(s));
      }
      stopping = I.stop;
    }
    if (stopping) {
      for (auto* list : {&I.running, &I.waiting})
        for (auto& s : *list) {
          s->finish = FinishReason::kCancelled;
          s->out->cancelled.store(true);
        }
      I.step(*this);  // reaps everything
      std::lock_guard lk(I.mu);
      for (auto& s : I.inbox) {
        s->finish = FinishReason::kCancelled;
        s->send(s->final_event());
        s->out->finished.store(true);
      }
      I.inbox.clear();
      return;
    }
    I.step(*this);
  }
}

void Engine::Impl::step(Engine& e) {
  auto& m = e.metrics_;
  const auto& opt = e.opt_;
  const int32_t bs = blocks->block_size();
  const auto now = Clock::now();

  auto release_blocks = [&](Sequence& s) {
    for (int32_t b : s.blocks) blocks->release(b);
    s.blocks.clear();
    s.block_hashes.clear();
    s.n_computed = 0;
    s.looked_up = false;
    if (spec) spec->release(s);
  };
  auto finish_seq = [&](Sequence& s) {
    if (!s.scheduled_once) {
      s.scheduled_once = true;  // leaves the queue
      queued[static_cast<int>(s.req.priority)].fetch_sub(1);
    }
    release_blocks(s);
    s.send(s.final_event());
    s.out->finished.store(true);
    m.requests_finished++;
    if (s.finish == FinishReason::kCancelled) m.requests_cancelled++;
    m.e2e_s.observe(secs(Clock::now() - s.t_arrival));
    std::lock_guard lk(mu);
    live.erase(s.id);
  };

  // 1. Reap cancelled, finished and out-of-time sequences.
  for (auto* list : {&running, &waiting}) {
    for (auto& sp : *list) {
      Sequence& s = *sp;
      if (s.finish == FinishReason::kNone && s.cancelled()) s.finish = FinishReason::kCancelled;
      if (s.finish == FinishReason::kNone && s.req.time_budget_ms && s.n_generated > 0 &&
          secs(now - s.t_first_token) * 1000.0 > *s.req.time_budget_ms)
        s.finish = FinishReason::kTimeBudget;
      if (s.finish == FinishReason::kNone && s.req.timeout_ms && secs(now - s.t_arrival) * 1000.0 > *s.req.timeout_ms)
        s.finish = FinishReason::kTimeout;
      if (s.finish != FinishReason::kNone) {
        finish_seq(s);
        sp.reset();
      }
    }
    std::erase(*list, nullptr);
  }
  if (running.empty() && waiting.empty()) {
    m.running = 0;
    m.waiting = 0;
    m.kv_blocks_used = blocks->n_used();
    m.kv_blocks_cached = blocks->n_cached_free();
    return;
  }

  // 2. The priority lane: while completion requests exist, only they are scheduled; the others
  // keep their KV blocks and resume afterwards.
  // A lower lane is never starved: once it has waited lane_max_pause_ms, one step takes every
  // lane together (the completion requests still come first in it).
  Priority active = Priority::kBatch, lowest = Priority::kCompletion;
  for (auto* list : {&running, &waiting})
    for (auto& s : *list) {
      active = std::min(active, s->req.priority);
      lowest = std::max(lowest, s->req.priority);
    }
  if (lowest == active) {
    lower_since = {};
  } else if (lower_since == Clock::time_point{}) {
    lower_since = now;
  } else if (secs(now - lower_since) * 1000.0 >= opt.lane_max_pause_ms) {
    active = lowest;
    lower_since = now;
    m.lane_yields++;
  }

  std::sort(running.begin(), running.end(), [](auto& a, auto& b) {
    // Decoding sequences first (one token each), then prompt chunks; each group by priority.
    const bool da = !a->in_prefill(), db = !b->in_prefill();
    if (da != db) return da;
    return before(a.get(), b.get());
  });
  std::sort(waiting.begin(), waiting.end(), [](auto& a, auto& b) { return before(a.get(), b.get()); });

  std::vector<Planned> plan;
  int32_t budget = opt.max_batch_tokens;
  std::vector<Sequence*> preempted;
  std::vector<std::unique_ptr<Sequence>> parked;  // out of the batch this step, blocks kept (3c)

  auto unplan = [&](Sequence* v) {
    for (size_t i = 0; i < plan.size(); ++i)
      if (plan[i].s == v) {
        budget += plan[i].n_new;
        plan.erase(plan.begin() + static_cast<long>(i));
        return;
      }
  };
  auto preempt = [&](Sequence* v) {
    unplan(v);
    release_blocks(*v);
    preempted.push_back(v);
    m.preemptions++;
    spdlog::debug("preempted request {} (KV blocks exhausted)", v->id);
  };
  // Grows s's block table to cover n_tokens slots, preempting later / lower-priority running
  // sequences when the pool is empty. False when it cannot.
  auto ensure_blocks = [&](Sequence& s, int32_t n_tokens, bool may_preempt) {
    while (static_cast<int32_t>(s.blocks.size()) * bs < n_tokens) {
      auto b = blocks->allocate();
      if (b) {
        s.blocks.push_back(*b);
        continue;
      }
      if (!may_preempt) return false;
      // The lowest-ranked holder of blocks that ranks after s: a running sequence, or one
      // waiting with its blocks kept (parked by the completion lane, or never finished).
      Sequence* victim = nullptr;
      bool victim_waiting = false;
      for (auto* list : {&running, &waiting, &parked})
        for (auto& r : *list) {
          Sequence* c = r.get();
          if (!c || c == &s || c->blocks.empty() ||
              std::find(preempted.begin(), preempted.end(), c) != preempted.end())
            continue;
          if (!before(&s, c)) continue;  // only sequences that rank after s
          if (!victim || before(victim, c)) {
            victim = c;
            victim_waiting = list != &running;
          }
        }
      if (!victim) return false;
      if (victim_waiting) {
        // Already out of the batch: give back its blocks (the full ones stay in the prefix
        // cache, so resuming recomputes little) and let it be looked up again on admission.
        release_blocks(*victim);
        m.preemptions++;
        spdlog::debug("preempted waiting request {} (KV blocks needed by request {})", victim->id, s.id);
      } else {
        preempt(victim);
      }
    }
    return true;
  };

  // 3a. Proposals for decoding sequences that speculate.
  std::vector<Sequence*> spec_seqs;
  std::vector<int32_t> spec_limit;
  if (spec) {
    int32_t n_decoding = 0;
    for (auto& r : running)
      if (r->req.priority <= active && !r->in_prefill() && r->n_uncomputed() == 1) ++n_decoding;
    for (auto& r : running) {
      Sequence& s = *r;
      if (s.req.priority > active || s.in_prefill() || s.n_uncomputed() != 1) continue;
      // The draft has no prefix cache: before its first proposal it prefills the whole prompt.
      // For a short answer to a long prompt (a FIM request: ~1,500 tokens in, 32 out) that
      // costs more than speculation can save, so the draft sits out while its catch-up exceeds
      // kDraftCatchUpPerToken tokens per token still to generate.
      constexpr int64_t kDraftCatchUpPerToken = 8;
      const int64_t catch_up = static_cast<int64_t>(s.tokens.size()) - (s.draft ? s.draft->n_computed : 0);
      const int64_t to_go = std::max(0, s.req.max_tokens - s.n_generated);
      s.spec_draft_now = s.spec.use_draft && n_decoding < s.spec.draft_max_batch &&
                         catch_up <= kDraftCatchUpPerToken * to_go;
      if (!s.spec_draft_now && !s.spec.use_lookup) continue;
      const int32_t room = std::min(s.req.max_tokens - s.n_generated - 1,
                                    e.ctx_size_ - static_cast<int32_t>(s.tokens.size()) - 1);
      const int32_t lim = std::min({s.spec_len, s.spec.max_draft, room});
      if (lim <= 0) continue;
      spec_seqs.push_back(&s);
      spec_limit.push_back(lim);
    }
  }
  std::vector<Proposal> props;
  if (!spec_seqs.empty()) spec->propose(*pool, spec_seqs, spec_limit, props);

  // 3b. Running sequences.
  for (auto& r : running) {
    Sequence& s = *r;
    if (s.req.priority > active) continue;
    if (std::find(preempted.begin(), preempted.end(), &s) != preempted.end()) continue;
    if (budget <= 0) break;
    Planned p;
    p.s = &s;
    auto it = std::find(spec_seqs.begin(), spec_seqs.end(), &s);
    if (it != spec_seqs.end()) p.prop = std::move(props[static_cast<size_t>(it - spec_seqs.begin())]);
    const int32_t k = std::min<int32_t>(static_cast<int32_t>(p.prop.tokens.size()), std::max(0, budget - 1));
    p.prop.tokens.resize(k);
    if (!p.prop.q.empty()) p.prop.q.resize(k);
    p.n_new = std::min(s.n_uncomputed(), budget) + k;
    if (!ensure_blocks(s, s.n_computed + p.n_new, true)) {
      // Could not even preempt: shrink to what fits, or give up on this step.
      p.prop.tokens.clear();
      p.prop.q.clear();
      p.n_new = std::min(s.n_uncomputed(), budget);
      if (!ensure_blocks(s, s.n_computed + p.n_new, false)) {
        if (running.size() == 1) {
          s.finish = FinishReason::kError;
          s.error = "the KV cache is too small for this request";
        } else {
          preempt(&s);
        }
        continue;
      }
    }
    p.sample = s.n_computed + std::min(s.n_uncomputed(), budget) == static_cast<int32_t>(s.tokens.size());
    budget -= p.n_new;
    plan.push_back(std::move(p));
  }

  // 3c. Admission: waiting sequences join the running batch between steps.
  // A request of the active lane that finds every slot taken parks the lowest-ranked running
  // sequence of a lower lane: it leaves the batch with its KV blocks and resumes from them when
  // the lane is idle again (or recomputes, if its blocks had to be given up meanwhile).
  // Sequences preempted above leave the batch below, so their slots are free.
  int32_t n_slots = static_cast<int32_t>(running.size() - preempted.size());
  for (auto& w : waiting) {
    Sequence& s = *w;
    if (budget <= 0) break;
    if (s.req.priority > active) break;
    if (n_slots >= opt.max_running) {
      std::unique_ptr<Sequence>* victim = nullptr;
      for (auto& r : running)
        if (r && r->req.priority > s.req.priority &&
            std::find(preempted.begin(), preempted.end(), r.get()) == preempted.end() &&
            (!victim || before(victim->get(), r.get())))
          victim = &r;
      if (!victim) break;
      unplan(victim->get());
      spdlog::debug("parked request {} for request {}", (*victim)->id, s.id);
      m.parked++;
      parked.push_back(std::move(*victim));
      --n_slots;
    }
    if (!s.looked_up) {
      s.looked_up = true;
      if (opt.prefix_cache) {
        uint64_t parent = 0;
        const int32_t usable = (static_cast<int32_t>(s.tokens.size()) - 1) / bs;  // leave one to compute
        for (int32_t b = 0; b < usable; ++b) {
          const uint64_t h = BlockPool::chain_hash(parent, std::span<const TokenId>(s.tokens.data() + b * bs, bs));
          auto blk = blocks->lookup(h);
          if (!blk) break;
          s.blocks.push_back(*blk);
          s.block_hashes.push_back(h);
          parent = h;
        }
        s.n_computed = static_cast<int32_t>(s.blocks.size()) * bs;
      }
      if (!s.scheduled_once) {
        s.cached_tokens = s.n_computed;
        m.prefix_cache_queries += static_cast<uint64_t>(s.n_prompt);
        m.prefix_cache_hits += static_cast<uint64_t>(s.n_computed);
        m.prompt_tokens += static_cast<uint64_t>(s.n_prompt);
      }
    }
    Planned p;
    p.s = &s;
    p.n_new = std::min(s.n_uncomputed(), budget);
    if (!ensure_blocks(s, s.n_computed + p.n_new, true)) {
      release_blocks(s);
      if (running.empty() && plan.empty()) {
        s.finish = FinishReason::kError;
        s.error = "the KV cache is too small for this request";
      }
      break;
    }
    if (!s.scheduled_once) {
      s.scheduled_once = true;
      queued[static_cast<int>(s.req.priority)].fetch_sub(1);
      s.t_first_sched = Clock::now();
      m.queue_s.observe(secs(s.t_first_sched - s.t_arrival));
    }
    p.sample = s.n_computed + p.n_new == static_cast<int32_t>(s.tokens.size());
    budget -= p.n_new;
    plan.push_back(std::move(p));
    running.push_back(std::move(w));
    ++n_slots;
  }
  std::erase(waiting, nullptr);
  std::erase(running, nullptr);
  for (auto& v : parked) waiting.push_back(std::move(v));
  for (Sequence* v : preempted) {
    for (auto& r : running)
      if (r.get() == v) {
        waiting.push_back(std::move(r));
        break;
      }
  }
  std::erase(running, nullptr);

  m.running = static_cast<int64_t>(running.size());
  m.waiting = static_cast<int64_t>(waiting.size());
  if (plan.empty()) {
    m.kv_blocks_used = blocks->n_used();
    m.kv_blocks_cached = blocks->n_cached_free();
    if (!running.empty() || !waiting.empty()) std::this_thread::yield();
    return;
  }

  // 4. One forward pass over every planned sequence.
  const uint64_t step_no = ++m.steps;
  StepBatch batch;
  int32_t n_logits = 0;
  for (auto& p : plan) {
    Sequence& s = *p.s;
    p.row0 = static_cast<int32_t>(batch.tokens.size());
    const int32_t n_real = p.n_new - static_cast<int32_t>(p.prop.tokens.size());
    for (int32_t i = 0; i < n_real; ++i) batch.tokens.push_back(s.tokens[s.n_computed + i]);
    for (TokenId t : p.prop.tokens) batch.tokens.push_back(t);
    batch.seqs.push_back({p.row0, p.n_new, s.n_computed, s.blocks.data(), static_cast<int32_t>(s.blocks.size())});
    p.logit0 = n_logits;
    if (p.sample) {
      for (int32_t i = n_real - 1; i < p.n_new; ++i) batch.logit_rows.push_back(p.row0 + i);
      n_logits += p.n_new - n_real + 1;
    }
  }
  const int32_t V = e.config().n_vocab;
  logits.resize(static_cast<size_t>(n_logits) * V);
  ForwardOptions fo;
  fo.precision = opt.precision;
  // A step whose every sequence has been cancelled meanwhile (a completion superseded by the
  // next keystroke's) stops at the next layer, so the new request waits a layer, not a step.
  fo.abort = [&plan] {
    for (const auto& p : plan)
      if (!p.s->cancelled()) return false;
    return true;
  };
  Status st = model->forward(*pool, batch, *kv, logits.data(), fo);
  if (st.code == Code::kCancelled) {
    m.aborted_steps++;
    return;  // nothing is counted as computed; the next step reaps the cancelled sequences
  }
  if (!st.ok()) {
    spdlog::error("forward pass failed: {}", st.message);
    for (auto& p : plan) {
      p.s->finish = FinishReason::kError;
      p.s->error = st.message;
    }
    return;
  }

  // 5. Sampling, speculative verification, streaming.
  std::vector<float> row(V), probs;
  for (auto& p : plan) {
    Sequence& s = *p.s;
    const int32_t k = static_cast<int32_t>(p.prop.tokens.size());
    const int32_t n_real = p.n_new - k;
    if (!p.sample) {
      s.n_computed += p.n_new;
      continue;
    }
    s.n_computed += n_real;  // the real tokens; accepted proposals are added below
    StreamEvent ev;
    const auto t_step = Clock::now();
    int32_t accepted = 0;
    for (int32_t i = 0; i <= k; ++i) {
      const float* lg = logits.data() + static_cast<size_t>(p.logit0 + i) * V;
      std::copy(lg, lg + V, row.begin());
      TokenId tok;
      bool draft_ok = false;
      if (s.sampler.params().greedy()) {
        tok = s.sampler.sample(row, s.tokens);
        draft_ok = i < k && tok == p.prop.tokens[i];
      } else {
        s.sampler.distribution(row, s.tokens, probs);
        if (i < k) {
          // Leviathan / Chen: accept draft token d with probability min(1, p(d) / q(d)).
          const TokenId d = p.prop.tokens[i];
          const float qd = p.prop.q.empty() ? 1.0f : p.prop.q[i][d];
          const float u = s.sampler.uniform();
          if (qd > 0 && u * qd < probs[d]) {
            tok = d;
            draft_ok = true;
          } else {
            // Rejected: sample from the normalized residual max(0, p - q).
            double sum = 0;
            for (int32_t v = 0; v < V; ++v) {
              const float q = p.prop.q.empty() ? (v == d ? 1.0f : 0.0f) : p.prop.q[i][v];
              probs[v] = std::max(0.0f, probs[v] - q);
              sum += probs[v];
            }
            if (sum > 0)
              for (auto& x : probs) x = static_cast<float>(x / sum);
            tok = s.sampler.draw(probs);
          }
        } else {
          tok = s.sampler.draw(probs);
        }
      }
      TokenLogprob lp;
      std::vector<TokenLogprob> top;
      if (s.req.n_logprobs >= 0) compute_logprobs(std::span<const float>(lg, V), tok, s.req.n_logprobs, lp, top);
      if (s.n_generated == 0) {
        s.t_first_token = t_step;
        m.ttft_s.observe(secs(t_step - s.t_arrival));
      } else {
        m.itl_s.observe(secs(t_step - s.t_last_token) / (k + 1));
      }
      s.t_last_token = t_step;
      m.generated_tokens++;
      const bool done = s.accept_token(tok, s.req.n_logprobs >= 0 ? &lp : nullptr,
                                       s.req.n_logprobs > 0 ? &top : nullptr, e.ctx_size_, ev);
      if (draft_ok) ++accepted;
      if (done || !draft_ok) break;
      s.n_computed += 1;  // the accepted proposal's K/V stays in the cache
    }
    if (k > 0) {
      m.spec_proposed += static_cast<uint64_t>(k);
      m.spec_accepted += static_cast<uint64_t>(accepted);
      m.spec_target_passes++;
      // Adaptive length: grow after a fully accepted proposal, shrink to what was accepted.
      s.spec_len = accepted == k ? std::min(s.spec_len + 2, s.spec.max_draft) : std::max(1, accepted + 1);
    }
    if (spec) spec->rollback(s, s.n_computed);
    ev.step = step_no;
    if (!ev.text.empty() || !ev.tokens.empty()) s.send(std::move(ev));
  }

  // 6. Publish newly completed full blocks to the prefix cache.
  if (opt.prefix_cache) {
    for (auto& p : plan) {
      Sequence& s = *p.s;
      const int32_t n_full = std::min<int32_t>(s.n_computed / bs, static_cast<int32_t>(s.blocks.size()));
      for (int32_t b = static_cast<int32_t>(s.block_hashes.size()); b < n_full; ++b) {
        const uint64_t parent = b == 0 ? 0 : s.block_hashes[b - 1];
        const uint64_t h = BlockPool::chain_hash(parent, std::span<const TokenId>(s.tokens.data() + b * bs, bs));
        blocks->publish(s.blocks[b], h);
        s.block_hashes.push_back(h);
      }
    }
  }
  m.kv_blocks_used = blocks->n_used();
  m.kv_blocks_cached = blocks->n_cached_free();
}

}  // namespace merlin
