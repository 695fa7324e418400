// config.json fields that decide how a model may be run: sliding_window (and Qwen2's
// use_sliding_window: false), the context cap it implies, and KV cache types the cache refuses.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "model/kv_cache.h"

namespace merlin {
namespace {

nlohmann::json base_config(const char* model_type = "mistral") {
  return {{"model_type", model_type}, {"vocab_size", 256}, {"hidden_size", 64}, {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"intermediate_size", 128},
          {"max_position_embeddings", 8192}};
}

ModelConfig parse(const nlohmann::json& j) {
  auto c = parse_hf_config(j.dump(), "config.json");
  EXPECT_TRUE(c) << c.error().message;
  return c ? *c : ModelConfig{};
}

TEST(SlidingWindow, AppliesWhenSet) {
  auto j = base_config();
  j["sliding_window"] = 4096;
  const ModelConfig c = parse(j);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.max_context(), 4096);
}

TEST(SlidingWindow, NullOrAbsentMeansNone) {
  auto j = base_config();
  EXPECT_EQ(parse(j).sliding_window, 0);
  j["sliding_window"] = nullptr;
  EXPECT_EQ(parse(j).sliding_window, 0);
  EXPECT_EQ(parse(j).max_context(), 8192);
}

TEST(SlidingWindow, Qwen2UseSlidingWindowFalseTurnsItOff) {
  auto j = base_config("qwen2");
  j["sliding_window"] = 4096;
  j["use_sliding_window"] = false;
  EXPECT_EQ(parse(j).sliding_window, 0);
  EXPECT_EQ(parse(j).max_context(), 8192);
  j["use_sliding_window"] = true;
  EXPECT_EQ(parse(j).sliding_window, 4096);
}

TEST(SlidingWindow, HostileValuesRefused) {
  auto j = base_config();
  j["sliding_window"] = -5;
  EXPECT_FALSE(parse_hf_config(j.dump(), "config.json"));
  j["sliding_window"] = 1e12;
  EXPECT_FALSE(parse_hf_config(j.dump(), "config.json"));
}

TEST(SlidingWindow, ContextSizeCapsTheDefaultAndRefusesLongerRequests) {
  ModelConfig c;
  c.max_pos = 8192;
  c.sliding_window = 4096;
  auto d = context_size(c, 0);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, 4096);
  auto ok = context_size(c, 2048);
  ASSERT_TRUE(ok);
  EXPECT_EQ(*ok, 2048);
  auto bad = context_size(c, 8192);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Code::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("sliding attention window"), std::string::npos) << bad.error().message;
  // A window at least as long as the context changes nothing.
  c.sliding_window = 32768;
  EXPECT_EQ(*context_size(c, 0), 8192);
  c.sliding_window = 0;
  EXPECT_EQ(*context_size(c, 0), 8192);
  EXPECT_EQ(*context_size(c, 100000), 100000);
}

TEST(KvCacheType, UnsupportedTypeIsRefusedNotReplacedByF32) {
  ModelConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_head_kv = 2;
  c.head_dim = 48;  // q8_0 blocks are 32 values: a head must start a block
  EXPECT_FALSE(KvCache::supported_type(c, DType::Q8_0).ok());
  EXPECT_TRUE(KvCache::supported_type(c, DType::F32).ok());
  EXPECT_FALSE(KvCache::supported_type(c, DType::F16).ok());
  // Constructing the cache anyway is a caller bug: it aborts instead of quietly storing f32.
  EXPECT_DEATH(KvCache(c, 1, 16, DType::Q8_0), "head_dim");
  c.head_dim = 64;
  EXPECT_EQ(KvCache(c, 1, 16, DType::Q8_0).type(), DType::Q8_0);
}

}  // namespace
}  // namespace merlin
