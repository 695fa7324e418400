// SentencePiece BPE: vocabularies trained on the fly with spm_train, encoded by libsentencepiece
// and by our TokenizerVocab (GGUF-style) route; the ids must agree exactly.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "tokenizer/tokenizer.h"

#ifdef MERLIN_HAVE_SPM
#include <sentencepiece_processor.h>
#endif

namespace merlin {
namespace {

namespace fs = std::filesystem;

// A corpus with prose, code, numbers, whitespace runs and a little non-Latin text, so the
// trained vocabulary has multi-space pieces, code pieces and byte-fallback gaps.
std::string make_corpus() {
  const char* lines[] = {
      "The quick brown fox jumps over the lazy dog while the cat sleeps.",
      "def add(a, b):\n    return a + b\n",
      "for (int i = 0; i < n; ++i) { sum += values[i] * weights[i]; }",
      "    if x is None:\n        raise ValueError(\"x must be set\")",
      "Tokenizers split text into pieces; merges join frequent pairs of symbols.",
      "import numpy as np\nprint(np.arange(10).reshape(2, 5))",
      "Hello world! Hello there. How are you doing today, my friend?",
      "café naïve résumé — déjà vu, Zürich, São Paulo",
      "Привет мир, как дела? Всё хорошо.",
      "東京 大阪 京都 東京都",
      "1234567890 3.14159 2.71828 42 1,000,000",
      "std::vector<std::string> names = {\"alpha\", \"beta\", \"gamma\"};",
      "// comment: remember to free the buffer\n/* block */",
      "the theory of the thing is that there are three of them there",
  };
  std::mt19937 rng(1234);
  std::string out;
  for (int k = 0; k < 3000; ++k) {
    out += lines[rng() % std::size(lines)];
    out += (rng() % 5 == 0) ? "  " : " ";
    if (k % 3 == 0) out += "\n";
  }
  return out;
}

const std::vector<std::string>& probe_strings() {
  static const std::vector<std::string> v = {
      "",
      "a",
      " ",
      "  ",
      "hello",
      "Hello world",
      " Hello world",
      "   leading spaces",
      "trailing spaces   ",
      "The quick brown fox jumps over the lazy dog.",
      "the theory of the thing",
      "def add(a, b):\n    return a + b\n",
      "for (int i = 0; i < n; ++i) { sum += values[i]; }",
      "    if x is None:\n        raise ValueError(\"x\")",
      "std::vector<std::string> names;",
      "1234567890 3.14159 42",
      "café naïve résumé",
      "Привет мир",
      "東京都 京都",
      "unseen: ∀x∈ℝ ⊕ 🚀🔥 ½ ß Ω",
      "emoji 👍🏽 and control \x01\x02 chars",
      "tabs\tand\nnewlines\r\n",
      "<s> </s> <unk> look like specials",
      "MiXeD CaSe WoRdS and UPPER lower",
      "x=1;y=22;z=333;",
      "a  b   c    d     e",
      "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
      "qwertyuiopasdfghjklzxcvbnm QWERTYUIOPASDFGHJKLZXCVBNM",
  };
  return v;
}

#ifdef MERLIN_HAVE_SPM

class SpmTrained : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    if (std::system("command -v spm_train > /dev/null 2>&1") != 0) {
      skip_reason_ = "spm_train is not installed";
      return;
    }
    dir_ = fs::temp_directory_path() / ("merlin_spm_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    std::ofstream(dir_ / "corpus.txt") << make_corpus();
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Trains (once per parameter set) and returns the model path, or "" on failure.
  std::string train(const std::string& name, const std::string& extra) {
    const fs::path prefix = dir_ / name;
    const std::string cmd = "spm_train --input=" + (dir_ / "corpus.txt").string() +
                            " --model_prefix=" + prefix.string() +
                            " --model_type=bpe --byte_fallback=true --vocab_size=700"
                            " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                            " --character_coverage=0.9995 --num_threads=1 --minloglevel=2 " +
                            extra + " > " + (dir_ / (name + ".log")).string() + " 2>&1";
    if (std::system(cmd.c_str()) != 0) return "";
    return prefix.string() + ".model";
  }

  static inline fs::path dir_;
  static inline std::string skip_reason_;
};

TEST_P(SpmTrained, MatchesLibSentencePiece) {
  if (!skip_reason_.empty()) {
    if (test::no_skip()) FAIL() << skip_reason_ << " and MERLIN_NO_SKIP is set (CI runs every test)";
    GTEST_SKIP() << skip_reason_;
  }
  const std::string extra = GetParam();
  const std::string name = "m" + std::to_string(std::hash<std::string>{}(extra) % 100000);
  const std::string model_path = train(name, extra);
  ASSERT_FALSE(model_path.empty()) << "spm_train failed; see " << (dir_ / (name + ".log"));

  sentencepiece::SentencePieceProcessor sp;
  ASSERT_TRUE(sp.Load(model_path).ok());

  TokenizerVocab v;
  v.model = TokenizerModel::kSentencePieceBpe;
  v.add_space_prefix = true;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    v.tokens.push_back(sp.IdToPiece(i));
    v.scores.push_back(sp.GetScore(i));
    TokenType t = TokenType::kNormal;
    if (sp.IsControl(i)) t = TokenType::kControl;
    else if (sp.IsUnknown(i)) t = TokenType::kUnknown;
    else if (sp.IsByte(i)) t = TokenType::kByte;
    else if (sp.IsUnused(i)) t = TokenType::kUnused;
    v.types.push_back(t);
  }
  if (sp.bos_id() >= 0) v.bos = sp.bos_id();
  if (sp.eos_id() >= 0) v.eos = sp.eos_id();
  if (sp.unk_id() >= 0) v.unk = sp.unk_id();
  v.add_bos = true;
  auto r = Tokenizer::from_vocab(v);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto tok = *r;
  EXPECT_EQ(tok->model(), TokenizerModel::kSentencePieceBpe);
  EXPECT_TRUE(tok->is_eog(*v.eos));

  std::vector<std::string> probes = probe_strings();
  // Plus lines of the training corpus and random slices of it.
  const std::string corpus = make_corpus();
  std::mt19937 rng(7);
  for (int k = 0; k < 200; ++k) {
    size_t a = rng() % corpus.size(), n = rng() % 120;
    std::string s = corpus.substr(a, n);
    s.resize(utf8_complete_prefix(s));
    // Start on a character boundary too.
    while (!s.empty() && (static_cast<uint8_t>(s[0]) & 0xC0) == 0x80) s.erase(0, 1);
    probes.push_back(s);
  }

  int mismatches = 0;
  for (const auto& s : probes) {
    std::vector<int> want_i = sp.EncodeAsIds(s);
    const Ids want(want_i.begin(), want_i.end());
    const Ids got = tok->encode(s, /*parse_special=*/false);
    if (got != want && ++mismatches <= 5) {
      std::string gs, ws;
      for (auto id : got) gs += sp.IdToPiece(id) + "|";
      for (auto id : want) ws += sp.IdToPiece(id) + "|";
      ADD_FAILURE() << "text: [" << s << "]\n got: " << gs << "\nwant: " << ws;
    }
    // Decoding gives back the text (identity normalization keeps it intact).
    EXPECT_EQ(tok->decode(got), s);
    EXPECT_EQ(tok->decode(got), sp.DecodeIds(want_i));
  }
  EXPECT_EQ(mismatches, 0) << "of " << probes.size() << " strings";

  // The vocabulary really merges (guards against a degenerate training run).
  EXPECT_LT(tok->encode("the theory of the thing", false).size(), 12u);

  // The same model as a SentencePiece-style tokenizer.json (the layout HF's converter writes
  // for Llama 2: merges ordered by the merged piece's id, Prepend+Replace normalizer, byte
  // fallback) goes through from_hf_dir and must agree with the library as well.
  {
    nlohmann::json vocab = nlohmann::json::object(), merges = nlohmann::json::array(), added = nlohmann::json::array();
    std::map<std::string, int> ids;
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      vocab[sp.IdToPiece(i)] = i;
      ids[sp.IdToPiece(i)] = i;
      if (sp.IsControl(i) || sp.IsUnknown(i))
        added.push_back({{"id", i}, {"content", sp.IdToPiece(i)}, {"special", true}});
    }
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      if (sp.IsControl(i) || sp.IsUnknown(i) || sp.IsByte(i)) continue;
      const std::string p = sp.IdToPiece(i);
      for (size_t k = 1; k < p.size(); ++k) {
        if ((static_cast<uint8_t>(p[k]) & 0xC0) == 0x80) continue;
        auto a = ids.find(p.substr(0, k)), b = ids.find(p.substr(k));
        if (a != ids.end() && b != ids.end() && !sp.IsByte(a->second) && !sp.IsByte(b->second))
          merges.push_back({a->first, b->first});
      }
    }
    nlohmann::json j = {
        {"added_tokens", added},
        {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
                                                              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
        {"pre_tokenizer", nullptr},
        {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}},
        {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"}, {"vocab", vocab}, {"merges", merges}}},
    };
    auto check_hf = [&](const nlohmann::json& j, const std::string& label) {
      const fs::path hf = dir_ / (name + "_hf_" + label);
      fs::create_directories(hf);
      std::ofstream(hf / "tokenizer.json") << j.dump();
      std::ofstream(hf / "tokenizer_config.json") << R"({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true})";
      auto hr = Tokenizer::from_hf_dir(hf.string());
      ASSERT_TRUE(hr.has_value()) << hr.error().message;
      auto htok = *hr;
      EXPECT_EQ(htok->model(), TokenizerModel::kSentencePieceBpe);
      EXPECT_EQ(htok->bos(), v.bos);
      EXPECT_TRUE(htok->info().add_bos);
      int hmis = 0;
      for (const auto& s : probes) {
        std::vector<int> want_i = sp.EncodeAsIds(s);
        const Ids want(want_i.begin(), want_i.end());
        const Ids got = htok->encode(s, false);
        if (got != want && ++hmis <= 5) {
          std::string gs, ws;
          for (auto id : got) gs += sp.IdToPiece(id) + "|";
          for (auto id : want) ws += sp.IdToPiece(id) + "|";
          ADD_FAILURE() << std::string(label) + " tokenizer.json route, text: [" << s << "]\n got: " << gs << "\nwant: " << ws;
        }
        EXPECT_EQ(htok->decode(got), s);
      }
      EXPECT_EQ(hmis, 0) << std::string(label) + " tokenizer.json route, of " << probes.size() << " strings";
    };
    check_hf(j, "prepend_normalizer");
    // Newer layout: no normalizer, a Metaspace pre-tokenizer that adds the prefix and escapes.
    nlohmann::json j2 = j;
    j2["normalizer"] = nullptr;
    j2["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "always"}, {"split", false}};
    check_hf(j2, "metaspace");
  }

  // BOS handling and incremental detokenization with the space prefix.
  const Ids with_bos = tok->encode("Hello world", false, /*add_bos=*/true);
  ASSERT_FALSE(with_bos.empty());
  EXPECT_EQ(with_bos[0], *v.bos);
  IncrementalDetokenizer d(*tok, /*skip_special=*/true);
  std::string all;
  for (auto id : with_bos) all += d.push(id);
  all += d.flush();
  EXPECT_EQ(all, "Hello world");
}

INSTANTIATE_TEST_SUITE_P(Vocabularies, SpmTrained,
                         ::testing::Values(std::string(""),
                                           std::string("--split_digits=true --allow_whitespace_only_pieces=true"),
                                           std::string("--vocab_size=400 --character_coverage=0.98")));

#else

TEST(SpmTrained, MatchesLibSentencePiece) {
  if (test::no_skip()) FAIL() << "libsentencepiece not found at configure time and MERLIN_NO_SKIP is set";
  GTEST_SKIP() << "libsentencepiece not found at configure time (MERLIN_HAVE_SPM undefined)";
}

#endif

}  // namespace
}  // namespace merlin
