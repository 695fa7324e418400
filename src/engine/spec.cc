#include "engine/spec.h"

#include <algorithm>
#include <cmath>

#include "engine/sequence.h"
#include "kernels/ops.h"

namespace merlin {

Speculator::Speculator(std::shared_ptr<const ModelWeights> draft, int32_t ctx, int32_t max_seqs, int32_t block_size,
                       Precision precision)
    : draft_w_(std::move(draft)), precision_(precision) {
  if (!draft_w_) return;
  draft_ = std::make_unique<Model>(draft_w_);
  // Room for every running sequence's full context plus its longest proposal.
  const int64_t tokens = static_cast<int64_t>(max_seqs) * (ctx + 64);
  const int32_t n_blocks = static_cast<int32_t>((tokens + block_size - 1) / block_size) + 1;
  kv_ = std::make_unique<KvCache>(draft_w_->config, n_blocks, block_size);
  blocks_ = std::make_unique<BlockPool>(n_blocks, block_size);
}

Ids Speculator::lookup(const Ids& tokens, int32_t k, int32_t min_n, int32_t max_n) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  for (int32_t g = std::min(max_n, n - 1); g >= min_n; --g) {
    const TokenId* tail = tokens.data() + n - g;
    // Most recent earlier occurrence of the last g tokens.
    for (int32_t start = n - g - 1; start >= 0; --start) {
      if (!std::equal(tail, tail + g, tokens.data() + start)) continue;
      const int32_t from = start + g;
      const int32_t len = std::min(k, n - from);
      if (len <= 0) continue;
      return Ids(tokens.begin() + from, tokens.begin() + from + len);
    }
  }
  return {};
}

// Softmax probability of the largest logit: 1 / sum(exp(l - max)). Logits more than 20 below
// the maximum add under 2e-9 each and are skipped.
static float top_probability(std::span<const float> lg, float max) {
  double sum = 0;
  for (float l : lg)
    if (l > max - 20.0f) sum += std::exp(static_cast<double>(l - max));
  return static_cast<float>(1.0 / sum);
}

bool Speculator::ensure_blocks(DraftState& d, int32_t n_tokens) {
  while (static_cast<int32_t>(d.blocks.size()) * blocks_->block_size() < n_tokens) {
    auto b = blocks_->allocate();
    if (!b) return false;
    d.blocks.push_back(*b);
  }
  return true;
}

void Speculator::propose(ThreadPool& pool, const std::vector<Sequence*>& seqs, const std::vector<int32_t>& limit,
                         std::vector<Proposal>& out) {
  out.assign(seqs.size(), Proposal{});
  std::vector<size_t> use_draft;
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    if (s.spec.use_lookup) {
      out[i].tokens = lookup(s.tokens, limit[i]);
      if (!out[i].tokens.empty()) continue;
    }
    if (s.spec_draft_now && draft_) use_draft.push_back(i);
  }
  if (use_draft.empty()) return;

  // Draft model: catch each sequence's draft KV up with its tokens (one batched pass), then
  // extend all of them one token per pass, keeping the draft's distributions for verification.
  const int32_t V = draft_w_->config.n_vocab;
  std::vector<size_t> active;
  StepBatch b;
  for (size_t i : use_draft) {
    Sequence& s = *seqs[i];
    if (!s.draft) s.draft = std::make_unique<DraftState>();
    DraftState& d = *s.draft;
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    if (!ensure_blocks(d, n + limit[i])) continue;
    const int32_t start = static_cast<int32_t>(b.tokens.size());
    for (int32_t t = d.n_computed; t < n; ++t) b.tokens.push_back(s.tokens[t]);
    b.seqs.push_back({start, n - d.n_computed, d.n_computed, d.blocks.data(), static_cast<int32_t>(d.blocks.size())});
    b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size()) - 1);
    active.push_back(i);
  }
  ForwardOptions fo;
  fo.precision = precision_;
  std::vector<float> probs;
  for (int32_t step = 0; !active.empty(); ++step) {
    logits_.resize(b.logit_rows.size() * static_cast<size_t>(V));
    if (!draft_->forward(pool, b, *kv_, logits_.data(), fo).ok()) return;
    StepBatch next;
    std::vector<size_t> still;
    for (size_t a = 0; a < active.size(); ++a) {
      const size_t i = active[a];
      Sequence& s = *seqs[i];
      DraftState& d = *s.draft;
      d.n_computed = b.seqs[a].n_past + b.seqs[a].n_tokens;
      std::span<float> lg(logits_.data() + a * V, V);
      // The draft samples with the request's own settings (greedy stays greedy), so q is the
      // distribution the proposal was drawn from.
      TokenId t;
      float conf = 1.0f;  // the draft's probability of the token it chose
      const auto& sp = s.sampler.params();
      const bool plain_greedy = sp.greedy() && sp.logit_bias.empty() && sp.repetition_penalty == 1.0f &&
                                sp.presence_penalty == 0.0f && sp.frequency_penalty == 0.0f;
      if (plain_greedy) {
        t = static_cast<TokenId>(argmax(lg.data(), V));
        if (s.spec.draft_p_min > 0) conf = top_probability(lg, lg[t]);
      } else {
        Ids hist = s.tokens;
        hist.insert(hist.end(), out[i].tokens.begin(), out[i].tokens.end());
        s.sampler.distribution(lg, hist, probs);
        if (sp.greedy()) {
          t = static_cast<TokenId>(argmax(probs.data(), V));
        } else {
          t = s.sampler.draw(probs);
        }
        conf = probs[t];
      }
      // A proposal ends at the first token the draft doubts (but holds at least one token).
      if (conf < s.spec.draft_p_min && !out[i].tokens.empty()) continue;
      if (!sp.greedy()) out[i].q.push_back(probs);
      out[i].tokens.push_back(t);
      if (conf < s.spec.draft_p_min) continue;
      if (static_cast<int32_t>(out[i].tokens.size()) >= limit[i]) continue;
      const int32_t start = static_cast<int32_t>(next.tokens.size());
      next.tokens.push_back(t);
      next.seqs.push_back({start, 1, d.n_computed, d.blocks.data(), static_cast<int32_t>(d.blocks.size())});
      next.logit_rows.push_back(start);
      still.push_back(i);
    }
    b = std::move(next);
    active = std::move(still);
  }
}

void Speculator::rollback(Sequence& s, int32_t valid_tokens) {
  if (s.draft) s.draft->n_computed = std::min(s.draft->n_computed, valid_tokens);
}

void Speculator::release(Sequence& s) {
  if (!s.draft) return;
  for (int32_t b : s.draft->blocks) blocks_->release(b);
  s.draft.reset();
}

}  // namespace merlin
