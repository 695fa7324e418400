// The Qwen2 path (q/k/v biases): the draft model rewritten as a qwen2 folder with zero biases
// must give exactly the llama folder's logits; non-zero biases must change them.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "model_test_util.h"
#include "model/model.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

std::string make_qwen2(const std::string& name, float bias_value) {
  const std::string dir = test::temp_dir(name);
  const fs::path src = test::model_dir("draft");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(src / f, fs::path(dir) / f, fs::copy_options::overwrite_existing);
  std::ifstream cin(src / "config.json");
  auto cfg = nlohmann::json::parse(cin);
  cfg["model_type"] = "qwen2";
  std::ofstream(fs::path(dir) / "config.json") << cfg.dump();
  std::ifstream in(src / "model.safetensors", std::ios::binary);
  std::vector<char> bytes(std::istreambuf_iterator<char>(in), {});
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(hlen));
  std::vector<char> data(bytes.begin() + 8 + static_cast<long>(hlen), bytes.end());
  const int64_t D = cfg["head_dim"], H = cfg["num_attention_heads"], KV = cfg["num_key_value_heads"];
  const uint16_t b = f32_to_bf16(bias_value);
  for (int l = 0; l < cfg["num_hidden_layers"].get<int>(); ++l) {
    for (auto [proj, n] : {std::pair{"q", H * D}, {"k", KV * D}, {"v", KV * D}}) {
      const uint64_t off = data.size();
      for (int64_t i = 0; i < n; ++i) data.insert(data.end(), reinterpret_cast<const char*>(&b), reinterpret_cast<const char*>(&b) + 2);
      header[fmt::format("model.layers.{}.self_attn.{}_proj.bias", l, proj)] = {
          {"dtype", "BF16"}, {"shape", {n}}, {"data_offsets", {off, off + 2 * n}}};
    }
  }
  const std::string h = header.dump();
  const uint64_t n = h.size();
  std::ofstream out(fs::path(dir) / "model.safetensors", std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(h.data(), static_cast<long>(h.size()));
  out.write(data.data(), static_cast<long>(data.size()));
  return dir;
}

std::vector<float> last_logits(const std::string& dir, const std::vector<int32_t>& ids) {
  auto w = load_hf_weights(dir);
  EXPECT_TRUE(w.has_value()) << (w ? "" : w.error().message);
  if (!w) return {};
  Model m(*w);
  ThreadPool pool(2);
  return test::OneSeqCache(m.config(), static_cast<int>(ids.size())).feed(m, pool, ids, 0, false);
}

TEST(Qwen2, ZeroBiasesMatchLlamaAndBiasesMatter) {
  const auto ids = test::reference()["models"]["draft"]["prompts"][0]["ids"].get<std::vector<int32_t>>();
  const auto llama = last_logits(test::model_dir("draft"), ids);
  const auto zero = last_logits(make_qwen2("qwen2-zero", 0.0f), ids);
  const auto biased = last_logits(make_qwen2("qwen2-bias", 0.5f), ids);
  ASSERT_EQ(llama.size(), zero.size());
  ASSERT_EQ(llama.size(), biased.size());
  EXPECT_EQ(llama, zero);
  float diff = 0;
  for (size_t i = 0; i < llama.size(); ++i) diff = std::max(diff, std::fabs(llama[i] - biased[i]));
  EXPECT_GT(diff, 1e-3f);
}

TEST(Qwen2, MissingBiasRefused) {
  const std::string dir = test::temp_dir("qwen2-nobias");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "model.safetensors"})
    fs::copy_file(fs::path(test::model_dir("draft")) / f, fs::path(dir) / f, fs::copy_options::overwrite_existing);
  std::ifstream cin(fs::path(test::model_dir("draft")) / "config.json");
  auto cfg = nlohmann::json::parse(cin);
  cfg["model_type"] = "qwen2";
  std::ofstream(fs::path(dir) / "config.json") << cfg.dump();
  auto w = load_hf_weights(dir);
  ASSERT_FALSE(w.has_value());
  EXPECT_NE(w.error().message.find("q_proj.bias"), std::string::npos) << w.error().message;
}

}  // namespace
}  // namespace merlin
