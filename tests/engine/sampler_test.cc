// Sampler: each transform against hand-computed expectations.
#include <gtest/gtest.h>

#include <cmath>

#include "engine/sampler.h"

namespace merlin {
namespace {

TEST(Sampler, GreedyPicksArgmax) {
  Sampler s(SamplingParams{});
  std::vector<float> l = {0.1f, 2.0f, 1.9f, -1.0f};
  EXPECT_EQ(s.sample(l, {}), 1);
}

TEST(Sampler, TopKKeepsOnlyK) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  Sampler s(p);
  std::vector<float> l = {3.0f, 2.0f, 1.0f, 0.0f}, probs;
  s.distribution(l, {}, probs);
  EXPECT_NEAR(probs[0], 1 / (1 + std::exp(-1.0f)), 1e-6);
  EXPECT_NEAR(probs[1], std::exp(-1.0f) / (1 + std::exp(-1.0f)), 1e-6);
  EXPECT_EQ(probs[2], 0.0f);
  EXPECT_EQ(probs[3], 0.0f);
}

TEST(Sampler, TopPAndMinP) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.7f;
  Sampler s(p);
  // softmax of log(0.5, 0.3, 0.15, 0.05) = those probabilities.
  std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)}, probs;
  auto l2 = l;
  s.distribution(l, {}, probs);
  EXPECT_NEAR(probs[0], 0.5 / 0.8, 1e-5);  // 0.5 + 0.3 >= 0.7: two tokens kept
  EXPECT_NEAR(probs[1], 0.3 / 0.8, 1e-5);
  EXPECT_EQ(probs[2], 0.0f);
  SamplingParams m;
  m.temperature = 1.0f;
  m.min_p = 0.25f;  // keep p >= 0.125
  Sampler s2(m);
  s2.distribution(l2, {}, probs);
  EXPECT_GT(probs[2], 0.0f);
  EXPECT_EQ(probs[3], 0.0f);
}

TEST(Sampler, PenaltiesAndBias) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  p.logit_bias = {{3, 10.0f}};
  Sampler s(p);
  std::vector<float> l = {4.0f, -1.0f, 0.0f, 0.0f};
  Ids hist = {0, 0, 1};
  std::vector<float> probs;
  s.distribution(l, hist, probs);
  EXPECT_FLOAT_EQ(l[0], 4.0f / 2 - 0.5f - 0.25f * 2);
  EXPECT_FLOAT_EQ(l[1], -1.0f * 2 - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(l[3], 10.0f);
  EXPECT_EQ(probs[3], 1.0f);  // greedy after the transforms
}

TEST(Sampler, SameSeedSameDraws) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 7;
  Sampler a(p), b(p);
  std::vector<float> l(100);
  for (int i = 0; i < 100; ++i) l[i] = std::sin(i * 1.0f);
  for (int i = 0; i < 50; ++i) {
    auto la = l, lb = l;
    EXPECT_EQ(a.sample(la, {}), b.sample(lb, {}));
  }
}

TEST(Sampler, LogprobsAreLogSoftmax) {
  std::vector<float> l = {1.0f, 2.0f, 3.0f};
  TokenLogprob c;
  std::vector<TokenLogprob> top;
  compute_logprobs(l, 0, 2, c, top);
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  EXPECT_NEAR(c.logprob, 1.0 - lse, 1e-6);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].id, 2);
  EXPECT_EQ(top[1].id, 1);
}

}  // namespace
}  // namespace merlin
