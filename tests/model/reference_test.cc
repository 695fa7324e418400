// The forward pass against Hugging Face transformers (tests/data/reference.json): last-position
// logits within 1e-3 in f32, argmax identical at every position, greedy_48 identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "model_test_util.h"
#include "model/model.h"

namespace merlin {
namespace {

struct Fixture {
  std::shared_ptr<ModelWeights> w;
  std::unique_ptr<Model> model;
};

Fixture& get(const std::string& which) {
  static std::map<std::string, Fixture> cache;
  auto& f = cache[which];
  if (!f.model) {
    auto w = load_hf_weights(test::model_dir(which));
    EXPECT_TRUE(w.has_value()) << (w ? "" : w.error().message);
    f.w = *w;
    f.model = std::make_unique<Model>(f.w);
  }
  return f;
}

using test::argmax;

class ReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceTest, LogitsArgmaxAndGreedyMatchTransformers) {
  auto& f = get(GetParam());
  ASSERT_TRUE(f.model);
  ThreadPool pool(2);
  const int V = f.model->config().n_vocab;
  const auto& prompts = test::reference()["models"][GetParam()]["prompts"];
  ASSERT_GE(prompts.size(), 5u);
  for (const auto& pr : prompts) {
    auto ids = pr["ids"].get<std::vector<int32_t>>();
    auto logits = test::forward_all(*f.model, pool, ids);
    const int n = static_cast<int>(ids.size());
    auto argmaxes = pr["argmax_per_position"].get<std::vector<int>>();
    ASSERT_EQ(argmaxes.size(), ids.size());
    for (int i = 0; i < n; ++i)
      EXPECT_EQ(argmax(logits.data() + static_cast<size_t>(i) * V, V), argmaxes[i]) << pr["text"] << " pos " << i;
    auto raw = test::base64_decode(pr["last_logits_f32_b64"].get<std::string>());
    ASSERT_EQ(raw.size(), static_cast<size_t>(V) * 4);
    std::vector<float> ref(V);
    std::memcpy(ref.data(), raw.data(), raw.size());
    float max_diff = 0;
    for (int v = 0; v < V; ++v)
      max_diff = std::max(max_diff, std::fabs(ref[v] - logits[static_cast<size_t>(n - 1) * V + v]));
    EXPECT_LT(max_diff, 1e-3f) << pr["text"];

    // Greedy continuation: one token at a time through the KV cache (decode path).
    auto want = pr["greedy_48"].get<std::vector<int32_t>>();
    auto got = test::greedy(*f.model, pool, ids, 48);
    EXPECT_EQ(got, want) << pr["text"];
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ReferenceTest, ::testing::Values("target", "draft"));

}  // namespace
}  // namespace merlin
