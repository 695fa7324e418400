#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/ops.h"

namespace merlin {

Sampler::Sampler(const SamplingParams& p) : p_(p) {
  if (p.seed) rng_.seed(*p.seed);
  else rng_.seed(std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32));
}

float Sampler::uniform() {
  // 24 random bits -> [0, 1): identical across platforms, unlike std::uniform_real_distribution.
  return static_cast<float>(rng_() >> 40) * (1.0f / 16777216.0f);
}

void Sampler::apply_penalties(std::span<float> logits, std::span<const TokenId> history) const {
  for (auto [id, bias] : p_.logit_bias)
    if (id >= 0 && static_cast<size_t>(id) < logits.size()) logits[id] += bias;
  const bool any = p_.repetition_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f;
  if (!any || history.empty()) return;
  size_t start = 0;
  if (p_.penalty_last_n >= 0 && history.size() > static_cast<size_t>(p_.penalty_last_n))
    start = history.size() - static_cast<size_t>(p_.penalty_last_n);
  std::unordered_map<TokenId, int> counts;
  for (size_t i = start; i < history.size(); ++i) counts[history[i]]++;
  for (auto [id, n] : counts) {
    if (id < 0 || static_cast<size_t>(id) >= logits.size()) continue;
    float& l = logits[id];
    if (p_.repetition_penalty != 1.0f) l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
    l -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(n);
  }
}

void Sampler::distribution(std::span<float> logits, std::span<const TokenId> history, std::vector<float>& probs) {
  apply_penalties(logits, history);
  const size_t n = logits.size();
  probs.assign(n, 0.0f);
  if (p_.greedy()) {
    probs[static_cast<size_t>(argmax(logits.data(), static_cast<int64_t>(n)))] = 1.0f;
    return;
  }
  const float inv_t = 1.0f / p_.temperature;
  cand_.clear();
  cand_.reserve(n);
  for (size_t i = 0; i < n; ++i) cand_.emplace_back(logits[i] * inv_t, static_cast<TokenId>(i));
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t keep = n;
  if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < n) {
    keep = static_cast<size_t>(p_.top_k);
    std::partial_sort(cand_.begin(), cand_.begin() + keep, cand_.end(), by_logit);
  } else if (p_.top_p < 1.0f || p_.min_p > 0.0f) {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  } else {
    // Plain temperature sampling: no ordering needed.
    float mx = -std::numeric_limits<float>::infinity();
    for (auto& c : cand_) mx = std::max(mx, c.first);
    double sum = 0;
    for (auto& c : cand_) sum += std::exp(c.first - mx);
    for (auto& c : cand_) probs[c.second] = static_cast<float>(std::exp(c.first - mx) / sum);
    return;
  }
  cand_.resize(keep);
  const float mx = cand_[0].first;
  std::vector<double> p(keep);
  double sum = 0;
  for (size_t i = 0; i < keep; ++i) sum += (p[i] = std::exp(static_cast<double>(cand_[i].first - mx)));
  for (auto& v : p) v /= sum;
  if (p_.top_p < 1.0f) {
    double cum = 0;
    size_t cut = keep;
    for (size_t i = 0; i < keep; ++i) {
      cum += p[i];
      if (cum >= p_.top_p) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
  }
  if (p_.min_p > 0.0f) {
    const double floor = p_.min_p * p[0];
    size_t cut = 1;
    while (cut < keep && p[cut] >= floor) ++cut;
    keep = cut;
  }
  double s = 0;
  for (size_t i = 0; i < keep; ++i) s += p[i];
  for (size_t i = 0; i < keep; ++i) probs[cand_[i].second] = static_cast<float>(p[i] / s);
}

TokenId Sampler::draw(const std::vector<float>& probs) {
  const float u = uniform();
  double cum = 0;
  TokenId last = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0) continue;
    cum += probs[i];
    last = static_cast<TokenId>(i);
    if (u < cum) return last;
  }
  return last;  // rounding: the last token with mass
}

TokenId Sampler::sample(std::span<float> logits, std::span<const TokenId> history) {
  if (p_.greedy()) {
    apply_penalties(logits, history);
    return static_cast<TokenId>(argmax(logits.data(), static_cast<int64_t>(logits.size())));
  }
  std::vector<float> probs;
  distribution(logits, history, probs);
  return draw(probs);
}

void compute_logprobs(std::span<const float> logits, TokenId chosen, int32_t top_n, TokenLogprob& chosen_out,
                      std::vector<TokenLogprob>& top_out) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float l : logits) mx = std::max(mx, l);
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  chosen_out = {chosen, logits[chosen] - lse};
  top_out.clear();
  if (top_n <= 0) return;
  std::vector<TokenId> idx(logits.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<TokenId>(i);
  const size_t k = std::min<size_t>(static_cast<size_t>(top_n), idx.size());
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](TokenId a, TokenId b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (size_t i = 0; i < k; ++i) top_out.push_back({idx[i], logits[idx[i]] - lse});
}

}  // namespace merlin
