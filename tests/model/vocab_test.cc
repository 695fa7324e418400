// llama.cpp's tokenizer conformance vectors (tests/data/vocab-tests, copied from llama.cpp's
// models/ folder): the tokenizer built from each vocabulary-only GGUF must reproduce every
// .out line exactly (no BOS, special tokens not parsed, as llama.cpp's test-tokenizer-0 does),
// through the library and through `merlin tokenize -m FILE.gguf`. Tokenizers Merlin does not
// implement are refused with the file, the key and the value.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "model/gguf.h"
#include "model/model.h"
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
  ASSERT_TRUE(fs::exists(base)) << base << " is missing: the vectors ship in tests/data/vocab-tests";
  auto g = open_gguf(base);
  ASSERT_TRUE(g) << g.error().message;
  auto vocab = gguf_tokenizer_vocab(*g);
  ASSERT_TRUE(vocab) << vocab.error().message;
  auto tok = Tokenizer::from_vocab(std::move(*vocab), base);
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

std::string q(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// The built `merlin tokenize -m FILE.gguf` on the vocabulary-only file: no weights, any
// architecture, the same ids as llama.cpp.
TEST_P(VocabTest, CliTokenizeOnVocabOnlyGguf) {
  const std::string base = vocab_dir() + "/ggml-vocab-" + GetParam() + ".gguf";
  ASSERT_TRUE(fs::exists(base)) << base << " is missing: the vectors ship in tests/data/vocab-tests";
  auto inputs = read_inputs(base + ".inp");
  auto outputs = read_outputs(base + ".out");
  ASSERT_EQ(inputs.size(), outputs.size());
  const std::string dir = test::temp_dir("tokcli-" + GetParam());
  const std::string file = dir + "/text";
  for (size_t i = 0; i < inputs.size(); ++i) {
    std::ofstream(file, std::ios::binary) << inputs[i];
    int rc = -1;
    const std::string out = test::run_cmd(std::string(MERLIN_BINARY) + " tokenize -m " + q(base) + " -f " + q(file) +
                                              " --json --no-parse-special 2>&1", &rc);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_EQ(nlohmann::json::parse(out).get<Ids>(), outputs[i]) << GetParam() << " case " << i << " '" << inputs[i] << "'";
  }
  fs::remove_all(dir);
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
  ASSERT_TRUE(g) << g.error().message;
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

// A copy of the gpt-2 vocabulary file with some tokenizer.ggml.* keys replaced.
std::string rewritten_gpt2(const std::string& name, const std::vector<std::pair<std::string, GgufValue>>& set) {
  auto g = open_gguf(vocab_dir() + "/ggml-vocab-gpt-2.gguf");
  EXPECT_TRUE(g) << g.error().message;
  GgufWriter w;
  for (const auto& [k, v] : g->kv) w.set(k, v);
  for (const auto& [k, v] : set) w.set(k, v);
  const std::string dir = test::temp_dir("vocab-refuse");
  fs::create_directories(dir);
  const std::string path = dir + "/" + name;
  EXPECT_TRUE(w.write(path).ok());
  return path;
}

TEST(VocabGguf, UnimplementedTokenizerModelsAreRefused) {
  for (const char* model : {"bert", "t5", "rwkv", "plamo2", "gemma4", "no_vocab", "mystery"}) {
    const std::string path = rewritten_gpt2(std::string(model) + ".gguf", {{"tokenizer.ggml.model", GgufValue::Str(model)}});
    const std::string want = fmt::format(
        "{}: tokenizer.ggml.model '{}' is not supported (Merlin implements 'gpt2' and 'llama')", path, model);
    auto g = open_gguf(path);
    ASSERT_TRUE(g) << g.error().message;
    auto v = gguf_tokenizer_vocab(*g);
    ASSERT_FALSE(v);
    EXPECT_EQ(v.error().code, Code::kUnsupported);
    EXPECT_EQ(v.error().message, want);
    int rc = 0;
    const std::string out = test::run_cmd(std::string(MERLIN_BINARY) + " tokenize -m " + q(path) + " hello 2>&1", &rc);
    EXPECT_NE(rc, 0);
    EXPECT_EQ(out, "error: " + want + "\n");
  }
}

TEST(VocabGguf, UnknownPreTokenizerIsRefused) {
  const std::string path = rewritten_gpt2("pre.gguf", {{"tokenizer.ggml.pre", GgufValue::Str("brand-new-bpe")}});
  const std::string want = fmt::format(
      "{}: tokenizer.ggml.pre 'brand-new-bpe' is not supported: it is not a pre-tokenizer llama.cpp or Merlin knows",
      path);
  int rc = 0;
  const std::string out = test::run_cmd(std::string(MERLIN_BINARY) + " tokenize -m " + q(path) + " hello 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_EQ(out, "error: " + want + "\n");
  // load_model refuses it the same way (before looking at weights, which this file has none of).
  auto m = load_model(path);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().message, want);
}

TEST(VocabGguf, TokenizeHelpDocumentsEveryFlag) {
  int rc = 0;
  const std::string out = test::run_cmd(std::string(MERLIN_BINARY) + " tokenize --help 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  for (const char* flag : {"-m", "--model", "-f", "--file", "--json", "--bos", "--pieces", "--no-parse-special", "TEXT"})
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " missing from:\n" << out;
}

}  // namespace
}  // namespace merlin
