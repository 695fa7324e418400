// Sampling: logits -> next token. Order as llama.cpp and vLLM apply it: logit bias, penalties
// (repetition, presence, frequency over the generated tokens and the prompt's last
// penalty_last_n), then temperature; greedy when temperature == 0; otherwise top-k, top-p,
// min-p, and a draw from a seeded generator (same seed, same text).
#pragma once
#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace merlin {

struct SamplingParams {
  float temperature = 0.0f;          // 0 = greedy
  int32_t top_k = 0;                 // 0 = off
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;   // HF/llama.cpp style: divide positive logits, multiply negative
  float presence_penalty = 0.0f;     // OpenAI style: subtract once if the token appeared
  float frequency_penalty = 0.0f;    // OpenAI style: subtract count * penalty
  int32_t penalty_last_n = 64;       // window of recent tokens the penalties look at (-1 = all)
  std::optional<uint64_t> seed;      // none = random
  std::vector<std::pair<TokenId, float>> logit_bias;

  bool greedy() const { return temperature <= 0.0f; }
};

struct TokenLogprob {
  TokenId id = 0;
  float logprob = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // Picks the next token. `logits` is modified (penalties, temperature). `history` holds the
  // sequence so far (prompt then generated). Deterministic for a given seed and inputs.
  TokenId sample(std::span<float> logits, std::span<const TokenId> history);
  // The probability distribution sample() draws from (after all transforms), for speculative
  // verification; greedy gives a one-hot vector. Writes probs[n_vocab].
  void distribution(std::span<float> logits, std::span<const TokenId> history, std::vector<float>& probs);
  // Uniform [0,1) from the request's generator (speculative acceptance tests draw from it too).
  float uniform();
  TokenId draw(const std::vector<float>& probs);
  const SamplingParams& params() const { return p_; }

 private:
  void apply_penalties(std::span<float> logits, std::span<const TokenId> history) const;
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, TokenId>> cand_;  // scratch
};

// log-softmax of the raw logits: the chosen token's logprob and the top n alternatives.
void compute_logprobs(std::span<const float> logits, TokenId chosen, int32_t top_n,
                      TokenLogprob& chosen_out, std::vector<TokenLogprob>& top_out);

}  // namespace merlin
