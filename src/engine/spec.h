// Speculative decoding proposers: a draft model sharing the target's vocabulary, and prompt
// lookup (copy what followed the latest earlier occurrence of the sequence's last n-gram).
// Verification lives in the engine loop. Engine thread only.
#pragma once
#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "engine/block_pool.h"
#include "model/model.h"

namespace merlin {

struct Sequence;

struct DraftState {
  std::vector<int32_t> blocks;  // in the speculator's own draft KV cache
  int32_t n_computed = 0;       // draft KV valid for tokens[0..n_computed)
};

struct Proposal {
  Ids tokens;                              // proposed continuation (may be empty)
  std::vector<std::vector<float>> q;       // draft probabilities per token (empty: deterministic)
};

class Speculator {
 public:
  Speculator(std::shared_ptr<const ModelWeights> draft, int32_t ctx, int32_t max_seqs, int32_t block_size,
             Precision precision);
  // One proposal per sequence, at most seqs[i]->spec_len tokens and `limit[i]`.
  void propose(ThreadPool& pool, const std::vector<Sequence*>& seqs, const std::vector<int32_t>& limit,
               std::vector<Proposal>& out);
  // After verification: the draft KV stays valid only for the accepted prefix.
  void rollback(Sequence& s, int32_t valid_tokens);
  void release(Sequence& s);

  // Prompt lookup: up to k tokens following the most recent earlier match of the longest
  // suffix n-gram (n from max_n down to min_n). Empty when nothing matches.
  static Ids lookup(const Ids& tokens, int32_t k, int32_t min_n = 2, int32_t max_n = 4);

 private:
  bool ensure_blocks(DraftState& d, int32_t n_tokens);

  std::shared_ptr<const ModelWeights> draft_w_;
  std::unique_ptr<Model> draft_;
  std::unique_ptr<KvCache> kv_;
  std::unique_ptr<BlockPool> blocks_;
  Precision precision_;
  std::vector<float> logits_;
};

}  // namespace merlin
