// The engine end to end (no HTTP): greedy identity with transformers through the batched loop,
// batch invariance, speculative decoding identity, prefix reuse, preemption, cancellation.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <thread>

#include "../test_util.h"
#include "engine/engine.h"
#include "engine/spec.h"
#include "engine_test_util.h"

namespace merlin {
namespace {

using engine_test::make_engine;
using engine_test::target;
using engine_test::draft_weights;
using engine_test::greedy;




struct Out {
  Ids tokens;
  std::string text;
  StreamEvent last;
};

Out collect(RequestStream& s) {
  Out o;
  StreamEvent ev;
  for (;;) {
    if (!s.next(ev, std::chrono::milliseconds(120000))) {
      ADD_FAILURE() << "stream timed out";
      return o;
    }
    o.tokens.insert(o.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    o.text += ev.text;
    if (ev.done) {
      o.last = ev;
      return o;
    }
  }
}

const nlohmann::json& prompts() { return test::reference()["models"]["target"]["prompts"]; }

// Every reference prompt, all submitted at once: the batched loop must reproduce each
// transformers greedy continuation exactly.
void check_all_prompts(Engine& e, std::optional<SpecOptions> spec = std::nullopt) {
  std::vector<std::unique_ptr<RequestStream>> streams;
  for (const auto& p : prompts()) {
    auto req = greedy(p["ids"].get<Ids>(), 48);
    req.spec = spec;
    auto s = e.submit(req);
    ASSERT_TRUE(s.has_value()) << s.error().message;
    streams.push_back(std::move(*s));
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    auto o = collect(*streams[i]);
    EXPECT_EQ(o.tokens, prompts()[i]["greedy_48"].get<Ids>()) << prompts()[i]["text"];
    EXPECT_EQ(o.last.finish, FinishReason::kLength);
    EXPECT_EQ(o.last.usage.completion_tokens, 48);
  }
}

TEST(Engine, GreedyAloneMatchesReference) {
  auto e = make_engine();
  for (const auto& p : prompts()) {
    auto s = e->submit(greedy(p["ids"].get<Ids>(), 48));
    ASSERT_TRUE(s.has_value());
    auto o = collect(**s);
    EXPECT_EQ(o.tokens, p["greedy_48"].get<Ids>()) << p["text"];
    EXPECT_EQ(o.text, p["greedy_48_text"].get<std::string>()) << p["text"];
  }
}

TEST(Engine, GreedyInsideBusyBatchMatchesReference) {
  EngineOptions o;
  o.max_running = 16;
  o.max_batch_tokens = 64;  // forces chunked prefill interleaved with decoding
  auto e = make_engine(o);
  check_all_prompts(*e);
}

TEST(Engine, PreemptionWhenBlocksRunOutLosesNothing) {
  EngineOptions o;
  o.max_running = 9;
  o.ctx_size = 128;
  o.kv_tokens = 200;  // far less than 9 sequences need at once
  auto e = make_engine(o);
  check_all_prompts(*e);
  EXPECT_GT(e->metrics().preemptions.load(), 0u);
}

TEST(Engine, SpeculativeGreedyIdenticalDraftLookupBoth) {
  EngineOptions o;
  o.max_running = 16;
  o.draft = draft_weights();
  auto e = make_engine(o);
  for (auto [draft, lookup] : {std::pair{true, false}, {false, true}, {true, true}}) {
    SpecOptions so;
    so.use_draft = draft;
    so.use_lookup = lookup;
    so.draft_max_batch = 1 << 20;  // the draft proposes inside the full batch too
    check_all_prompts(*e, so);
  }
  EXPECT_GT(e->metrics().spec_accepted.load(), 0u);
}

// Confidence stopping (draft_p_min) shortens proposals, never changes the output.
TEST(Engine, DraftConfidenceStopKeepsGreedyIdentity) {
  auto mean_proposal = [](float p_min) {
    EngineOptions o;
    o.max_running = 16;
    o.draft = draft_weights();
    auto e = make_engine(o);
    SpecOptions so;
    so.use_draft = true;
    so.draft_max_batch = 1 << 20;
    so.draft_p_min = p_min;
    check_all_prompts(*e, so);
    EXPECT_GT(e->metrics().spec_accepted.load(), 0u);
    return static_cast<double>(e->metrics().spec_proposed.load()) /
           static_cast<double>(e->metrics().spec_target_passes.load());
  };
  const double plain = mean_proposal(0.0f), stopped = mean_proposal(0.7f);
  EXPECT_LT(stopped, plain * 0.8) << plain << " vs " << stopped;
}

// With the default cut-off, a full batch decodes without draft proposals (same output).
TEST(Engine, DraftPausedInFullBatch) {
  EngineOptions o;
  o.max_running = 16;
  o.draft = draft_weights();
  auto e = make_engine(o);
  SpecOptions so;
  so.use_draft = true;
  so.use_lookup = false;
  check_all_prompts(*e, so);
  // 9 sequences decode together most of the time: far fewer proposals than tokens.
  EXPECT_LT(e->metrics().spec_proposed.load(), 9u * 48u);
}

TEST(Engine, SpeculativeGreedyIdenticalAlone) {
  EngineOptions o;
  o.draft = draft_weights();
  auto e = make_engine(o);
  SpecOptions so;
  so.use_draft = true;
  so.use_lookup = true;
  for (const auto& p : prompts()) {
    auto req = greedy(p["ids"].get<Ids>(), 48);
    req.spec = so;
    auto out = collect(**e->submit(req));
    EXPECT_EQ(out.tokens, p["greedy_48"].get<Ids>()) << p["text"];
  }
}

TEST(Engine, VocabularyMismatchRefused) {
  auto w = std::make_shared<ModelWeights>();
  w->config = draft_weights()->config;
  w->config.n_vocab = 1000;
  EngineOptions o;
  o.draft = w;
  auto e = Engine::create(target(), o);
  ASSERT_FALSE(e.has_value());
  EXPECT_NE(e.error().message.find("vocabulary"), std::string::npos);
}

TEST(Engine, UnsupportedKvTypeRefused) {
  EngineOptions o;
  o.kv_type = DType::Q4_0;
  auto e = Engine::create(target(), o);
  EXPECT_FALSE(e.has_value());
}

TEST(Engine, PrefixReuseHitsAndGivesIdenticalResult) {
  auto e = make_engine();
  const auto& tok = *target().tokenizer;
  std::string text;
  for (int i = 0; i < 40; ++i) text += "def function_" + std::to_string(i) + "(x):\n    return x * " + std::to_string(i) + "\n\n";
  Ids prompt = tok.encode(text, false);
  ASSERT_GT(prompt.size(), 300u);
  auto a = collect(**e->submit(greedy(prompt, 24)));
  const auto hits0 = e->metrics().prefix_cache_hits.load();
  auto b = collect(**e->submit(greedy(prompt, 24)));
  const auto hits1 = e->metrics().prefix_cache_hits.load();
  EXPECT_GE(hits1 - hits0, prompt.size() - 16);
  EXPECT_EQ(b.last.usage.cached_tokens, static_cast<int32_t>(hits1 - hits0));
  EXPECT_EQ(a.tokens, b.tokens);
  // Without the cache (a fresh engine with prefix caching off) the result is the same.
  EngineOptions o;
  o.prefix_cache = false;
  auto e2 = make_engine(o);
  auto c = collect(**e2->submit(greedy(prompt, 24)));
  EXPECT_EQ(a.tokens, c.tokens);
  EXPECT_EQ(e2->metrics().prefix_cache_hits.load(), 0u);
}

TEST(Engine, CancelEndsPromptlyAndFreesBlocks) {
  EngineOptions o;
  o.prefix_cache = false;
  auto e = make_engine(o);
  auto s = e->submit(greedy(target().tokenizer->encode("int main() {", false), 900));
  ASSERT_TRUE(s.has_value());
  StreamEvent ev;
  ASSERT_TRUE((*s)->next(ev, std::chrono::milliseconds(20000)));
  auto t0 = std::chrono::steady_clock::now();
  (*s)->cancel();
  auto o2 = collect(**s);
  EXPECT_EQ(o2.last.finish, FinishReason::kCancelled);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  for (int i = 0; i < 100 && e->metrics().kv_blocks_used.load() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(e->metrics().kv_blocks_used.load(), 0);
}

TEST(Engine, SupersedeSameClientCancelsOlder) {
  auto e = make_engine();
  auto req = greedy(target().tokenizer->encode("class Foo:", false), 500);
  req.client_id = "editor-1";
  req.supersede_same_client = true;
  req.priority = Priority::kCompletion;
  auto a = e->submit(req);
  auto b = e->submit(req);
  auto oa = collect(**a);
  EXPECT_EQ(oa.last.finish, FinishReason::kCancelled);
  (*b)->cancel();
  collect(**b);
}

// Cancel-on-keystroke touches only requests that opted in: a chat or plain completion carrying
// the same client id runs to its end (the soak found plain completions answered 503).
TEST(Engine, SupersedeSparesRequestsThatDidNotOptIn) {
  auto e = make_engine();
  auto plain = greedy(target().tokenizer->encode("def main():", false), 24);
  plain.client_id = "editor-1";
  auto a = e->submit(plain);
  auto fim = greedy(target().tokenizer->encode("class Foo:", false), 8);
  fim.client_id = "editor-1";
  fim.supersede_same_client = true;
  fim.priority = Priority::kCompletion;
  auto b = e->submit(fim);
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_EQ(collect(**a).last.finish, FinishReason::kLength);
  EXPECT_EQ(collect(**b).last.finish, FinishReason::kLength);
}

TEST(Engine, StopStringsAndBadRequests) {
  auto e = make_engine();
  const auto& p = prompts()[0];
  auto full = p["greedy_48_text"].get<std::string>();
  // Stop at a string that occurs in the greedy text: output is the text before it.
  std::string stop = full.substr(10, 3);
  auto req = greedy(p["ids"].get<Ids>(), 48);
  req.stop = {stop};
  auto o = collect(**e->submit(req));
  EXPECT_EQ(o.text, full.substr(0, full.find(stop)));
  EXPECT_EQ(o.last.finish, FinishReason::kStop);
  EXPECT_FALSE(e->submit(greedy({}, 4)).has_value());
  EXPECT_FALSE(e->submit(greedy({1, 2, 999999}, 4)).has_value());
  EXPECT_FALSE(e->submit(greedy({1, 2, 3}, 5000)).has_value());  // beyond ctx 1024
}

TEST(Engine, SeededSamplingIsReproducible) {
  auto e = make_engine();
  GenerationRequest r = greedy(prompts()[1]["ids"].get<Ids>(), 32);
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 0.9f;
  r.sampling.seed = 1234;
  auto a = collect(**e->submit(r));
  auto b = collect(**e->submit(r));
  EXPECT_EQ(a.tokens, b.tokens);
  r.sampling.seed = 4321;
  auto c = collect(**e->submit(r));
  EXPECT_NE(a.tokens, c.tokens);
}

TEST(Spec, PromptLookupFindsLatestMatch) {
  Ids t = {1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8, 1, 2, 3};
  EXPECT_EQ(Speculator::lookup(t, 3), (Ids{7, 8, 1}));
  EXPECT_EQ(Speculator::lookup({1, 2, 3}, 3), Ids{});
}

// Speculative sampling must leave the output distribution equal to the target's. Two-sample
// chi-square test on the 2nd and 3rd generated tokens (the first speculated ones) between
// plain and draft-speculative sampling, over many seeds.
TEST(Spec, SamplingDistributionMatchesTarget) {
  EngineOptions o;
  o.max_running = 64;
  o.draft = draft_weights();
  auto e = make_engine(o);
  Ids prompt = target().tokenizer->encode("for i in range(", false);
  const int N = 1200;
  std::map<std::pair<int, TokenId>, std::array<int, 2>> counts;
  for (int mode = 0; mode < 2; ++mode) {
    std::vector<std::unique_ptr<RequestStream>> ss;
    for (int i = 0; i < N; ++i) {
      GenerationRequest r = greedy(prompt, 3);
      r.sampling.temperature = 1.0f;
      r.sampling.top_k = 8;
      r.sampling.seed = 1000 + i + mode * 100000;
      SpecOptions so;
      so.use_draft = mode == 1;
      so.use_lookup = false;
      so.draft_max_batch = 1 << 20;  // speculate inside the 64-sequence batch
      r.spec = so;
      ss.push_back(std::move(*e->submit(r)));
    }
    for (auto& s : ss) {
      auto out = collect(*s);
      ASSERT_EQ(out.tokens.size(), 3u);
      counts[{1, out.tokens[1]}][mode]++;
      counts[{2, out.tokens[2]}][mode]++;
    }
  }
  EXPECT_GT(e->metrics().spec_proposed.load(), 0u);
  for (int pos = 1; pos <= 2; ++pos) {
    // Pool categories with few observations into one bucket.
    double chi2 = 0;
    int dof = -1;
    std::array<double, 2> rest{0, 0};
    auto add = [&](double a, double b) {
      const double n = a + b;
      const double ea = n / 2, eb = n / 2;  // equal sample sizes
      chi2 += (a - ea) * (a - ea) / ea + (b - eb) * (b - eb) / eb;
      ++dof;
    };
    for (auto& [k, v] : counts) {
      if (k.first != pos) continue;
      if (v[0] + v[1] < 20) {
        rest[0] += v[0];
        rest[1] += v[1];
      } else {
        add(v[0], v[1]);
      }
    }
    if (rest[0] + rest[1] > 0) add(rest[0], rest[1]);
    ASSERT_GE(dof, 2) << "too few categories to test";
    // Critical value at p = 0.001 (Wilson-Hilferty approximation of the chi-square quantile).
    const double z = 3.09, k = dof;
    const double crit = k * std::pow(1 - 2 / (9 * k) + z * std::sqrt(2 / (9 * k)), 3);
    EXPECT_LT(chi2, crit) << "position " << pos << ", dof " << dof;
  }
}

// The draft prefills a sequence's whole prompt before its first proposal (it has no prefix
// cache), so it sits out a short answer to a long prompt (FIM) and still speculates on a
// longer one; the greedy text is the same either way.
TEST(Engine, DraftSitsOutShortAnswersToLongPrompts) {
  EngineOptions o;
  o.max_running = 4;
  o.draft = draft_weights();
  auto e = make_engine(o);
  std::string longp;
  for (int i = 0; i < 60; ++i) longp += "    value_" + std::to_string(i) + " = compute(value_" + std::to_string(i + 1) + ")\n";
  const Ids prompt = target().tokenizer->encode(longp, false);
  ASSERT_GT(prompt.size(), 400u);
  auto s = e->submit(greedy(prompt, 16));  // catch-up > 8 x 16 tokens: no draft
  ASSERT_TRUE(s.has_value());
  const Ids fim_like = collect(**s).tokens;
  EXPECT_EQ(e->metrics().spec_proposed.load(), 0u);
  auto s2 = e->submit(greedy(Ids(prompt.begin(), prompt.begin() + 40), 64));  // short prompt: the draft proposes
  ASSERT_TRUE(s2.has_value());
  collect(**s2);
  EXPECT_GT(e->metrics().spec_proposed.load(), 0u);
  // Same text as without any speculation.
  EngineOptions plain;
  plain.max_running = 4;
  auto ref = make_engine(plain);
  auto r = ref->submit(greedy(prompt, 16));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(collect(**r).tokens, fim_like);
}

}  // namespace
}  // namespace merlin
