// llama.cpp's tokenizer conformance vectors (tests/data/vocab-tests, copied from llama.cpp's
// models/ folder): the tokenizer built from each vocabulary-only GGUF must reproduce every
// .out line exactly (no BOS, special tokens not parsed, as llama.cpp's test-tokenizer-0 does).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "model/gguf.h"
#include "tokenizer/tokenizer.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

std::string vocab_dir() { return std::string(MERLIN_SOURCE_DIR) + "/tests/data/vocab-tests"; }

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Test strings: each one is terminated by "\n__ggml_vocab_test__\n".
std::vector<std::string> read_inputs(const std::string& path) {
  const std::string text = slurp(path), sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t f = text.find(sep, pos);
    if (f == std::string::npos) break;
    out.push_back(text.substr(pos, f - pos));
    pos = f + sep.size();
  }
  return out;
}

std::vector<Ids> read_outputs(const std::string& path) {
  std::ifstream in(path);
  std::vector<Ids> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    Ids ids;
    TokenId id;
    while (ls >> id) ids.push_back(id);
    out.push_back(ids);
  }
  return out;
}

class VocabTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VocabTest, ReproducesLlamaCppTokenization) {
  const std::string base = vocab_dir() + "/ggml-vocab-" + GetParam() + ".gguf";
  if (!fs::exists(base)) GTEST_SKIP() << base << " is absent";
  auto g = open_gguf(base);
  ASSERT_TRUE(g) << g.error().message;
  auto vocab = gguf_tokenizer_vocab(*g);
  ASSERT_TRUE(vocab) << vocab.error().message;
  auto tok = Tokenizer::from_vocab(std::move(*vocab));
  ASSERT_TRUE(tok) << tok.error().message;
  auto inputs = read_inputs(base + ".inp");
  auto outputs = read_outputs(base + ".out");
  ASSERT_EQ(inputs.size(), outputs.size());
  ASSERT_GT(inputs.size(), 10u);
  int bad = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Ids got = (*tok)->encode(inputs[i], /*parse_special=*/false, /*add_bos=*/false);
    if (got != outputs[i]) {
      ++bad;
      ADD_FAILURE() << GetParam() << " case " << i << " input '" << inputs[i] << "'\n  want: "
                    << fmt::format("{}", fmt::join(outputs[i], " ")) << "\n  got:  " << fmt::format("{}", fmt::join(got, " "));
    }
  }
  std::printf("  %s: %zu/%zu cases match\n", GetParam().c_str(), inputs.size() - bad, inputs.size());
}

INSTANTIATE_TEST_SUITE_P(Families, VocabTest,
                         ::testing::Values("gpt-2", "starcoder", "deepseek-coder", "falcon", "llama-spm", "phi-3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(VocabGguf, MetadataOfLlamaSpmFile) {
  auto g = open_gguf(vocab_dir() + "/ggml-vocab-llama-spm.gguf");
  if (!g) GTEST_SKIP() << "vocab files absent";
  auto v = gguf_tokenizer_vocab(*g);
  ASSERT_TRUE(v) << v.error().message;
  EXPECT_EQ(v->model, TokenizerModel::kSentencePieceBpe);
  EXPECT_EQ(v->tokens.size(), 32000u);
  EXPECT_EQ(v->scores.size(), 32000u);
  EXPECT_EQ(v->types.size(), 32000u);
  EXPECT_EQ(v->bos, 1);
  EXPECT_EQ(v->eos, 2);
  EXPECT_EQ(v->unk, 0);
  EXPECT_TRUE(v->add_bos);
  EXPECT_EQ(v->types[0], TokenType::kUnknown);
  EXPECT_EQ(v->types[1], TokenType::kControl);
  EXPECT_EQ(v->types[3], TokenType::kByte);  // <0x00>
}

}  // namespace
}  // namespace merlin
