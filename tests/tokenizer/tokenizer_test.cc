// Byte-level BPE against what Hugging Face tokenizers computed for tiny-coder
// (tests/data/reference.json), plus decoding, incremental detokenization and bad input.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kModelDir = std::string(MERLIN_SOURCE_DIR) + "/models/tiny-coder-target";

const json& reference() {
  static const json j = [] {
    std::ifstream f(std::string(MERLIN_SOURCE_DIR) + "/tests/data/reference.json");
    return json::parse(f);
  }();
  return j;
}

std::shared_ptr<const Tokenizer> tiny() {
  static const std::shared_ptr<const Tokenizer> t = [] {
    auto r = Tokenizer::from_hf_dir(kModelDir);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? *r : nullptr;
  }();
  return t;
}

std::string ids_str(const Ids& ids) {
  std::string s;
  for (auto id : ids) s += std::to_string(id) + " ";
  return s;
}

TEST(TokenizerHf, LoadsTinyCoder) {
  auto t = tiny();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->model(), TokenizerModel::kByteLevelBpe);
  EXPECT_EQ(t->n_vocab(), 16384);
  EXPECT_EQ(t->eos(), 0);
  EXPECT_FALSE(t->info().add_bos);
  EXPECT_EQ(t->info().fim_pre, 1);
  EXPECT_EQ(t->info().fim_mid, 2);
  EXPECT_EQ(t->info().fim_suf, 3);
  EXPECT_EQ(t->info().fim_pad, 4);
  EXPECT_EQ(t->info().fim_sep, 5);
  EXPECT_TRUE(t->is_eog(0));
  EXPECT_TRUE(t->is_eog(7));  // <|im_end|>
  EXPECT_FALSE(t->is_eog(1));
  EXPECT_TRUE(t->is_special(1));
  EXPECT_FALSE(t->is_special(100));
  EXPECT_NE(t->info().chat_template.find("<|im_start|>"), std::string::npos);
  EXPECT_EQ(t->find_token("<fim_prefix>"), 1);
  EXPECT_EQ(t->token_text(228), "\xC4\xA0");  // "Ġ"
  EXPECT_EQ(t->token_bytes(228), " ");
  EXPECT_EQ(t->token_bytes(-1), "");
  EXPECT_EQ(t->token_bytes(1 << 20), "");
}

TEST(TokenizerHf, ReferenceCases) {
  auto t = tiny();
  ASSERT_TRUE(t);
  for (const auto& c : reference()["tokenizer"]["cases"]) {
    const std::string text = c["text"];
    const Ids want = c["ids"].get<Ids>();
    const Ids got = t->encode(text);
    EXPECT_EQ(got, want) << "text: " << json(text).dump() << "\n got: " << ids_str(got)
                         << "\nwant: " << ids_str(want);
    EXPECT_EQ(t->decode(want), text) << json(text).dump();
  }
}

TEST(TokenizerHf, HeldoutExactAndFast) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const std::string text = reference()["tokenizer"]["heldout_text"];
  const Ids want = reference()["tokenizer"]["heldout_ids"].get<Ids>();
  const auto t0 = std::chrono::steady_clock::now();
  const Ids got = t->encode(text);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(got.size(), want.size());
  size_t first_diff = got.size();
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i]) { first_diff = i; break; }
  EXPECT_EQ(first_diff, got.size()) << "first mismatch at index " << first_diff;
  EXPECT_EQ(t->decode(want), text);
  EXPECT_LT(secs, 0.5) << "encoding " << text.size() << " bytes took " << secs << " s";
}

TEST(TokenizerHf, ConcurrentEncodeIsConsistent) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const std::string text = reference()["tokenizer"]["heldout_text"];
  const Ids want = reference()["tokenizer"]["heldout_ids"].get<Ids>();
  std::vector<Ids> got(4);
  std::vector<std::thread> th;
  for (int k = 0; k < 4; ++k) th.emplace_back([&, k] { got[k] = t->encode(text); });
  for (auto& x : th) x.join();
  for (const auto& g : got) EXPECT_TRUE(g == want);
}

TEST(TokenizerHf, ParseSpecialOff) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const Ids ids = t->encode("<|endoftext|>", /*parse_special=*/false);
  EXPECT_GT(ids.size(), 1u);
  for (auto id : ids) EXPECT_FALSE(t->is_special(id));
  EXPECT_EQ(t->decode(ids), "<|endoftext|>");
  // skip_special drops special tokens from the text.
  EXPECT_EQ(t->decode(t->encode("a<|im_end|>b"), /*skip_special=*/true), "ab");
}

TEST(TokenizerHf, AddBosWhenModelHasNone) {
  auto t = tiny();
  ASSERT_TRUE(t);
  EXPECT_EQ(t->encode("hi", true, /*add_bos=*/true), t->encode("hi"));  // bos_token is null
}

TEST(TokenizerHf, IncrementalDetokenizerHeldout) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const std::string text = reference()["tokenizer"]["heldout_text"];
  const Ids ids = reference()["tokenizer"]["heldout_ids"].get<Ids>();
  IncrementalDetokenizer d(*t);
  std::string all;
  for (auto id : ids) {
    const std::string piece = d.push(id);
    ASSERT_TRUE(utf8_valid(piece));
    all += piece;
  }
  all += d.flush();
  EXPECT_EQ(all, text);
}

TEST(TokenizerHf, IncrementalDetokenizerSplitEmoji) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const std::string emoji = "\xF0\x9F\x9A\x80";  // 🚀, 4 bytes
  const Ids ids = t->encode("a" + emoji + "b");
  // The emoji must span several tokens for this test to mean anything.
  ASSERT_GE(ids.size(), 3u);
  IncrementalDetokenizer d(*t);
  std::vector<std::string> pieces;
  for (auto id : ids) pieces.push_back(d.push(id));
  pieces.push_back(d.flush());
  std::string all;
  for (const auto& p : pieces) {
    EXPECT_TRUE(utf8_valid(p)) << json(p).dump();
    // Never a fragment of the emoji: either it is whole in a piece or absent.
    if (p.find('\xF0') != std::string::npos) {
      EXPECT_NE(p.find(emoji), std::string::npos);
    }
    all += p;
  }
  EXPECT_EQ(all, "a" + emoji + "b");
}

TEST(TokenizerHf, DetokenizerFlushReplacesDanglingBytes) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const Ids ids = t->encode("\xF0\x9F\x9A\x80");
  ASSERT_GE(ids.size(), 2u);
  IncrementalDetokenizer d(*t);
  EXPECT_EQ(d.push(ids[0]), "");
  EXPECT_EQ(d.flush(), "\xEF\xBF\xBD");
}

TEST(TokenizerHf, InvalidUtf8DoesNotCrashAndRoundTrips) {
  auto t = tiny();
  ASSERT_TRUE(t);
  const std::vector<std::string> bad = {
      std::string("\xFF\xFE abc \xC3", 8), "abc\x80\x80" "def", "\xE2\x82", "caf\xC3\xA9\xC3",
      std::string("a\0b", 3), "\xED\xA0\x80 surrogate", "\xF4\x90\x80\x80", "'s\xC0\xAF'll \n\xF5 x",
  };
  for (const auto& s : bad) {
    const Ids ids = t->encode(s);
    EXPECT_EQ(t->decode(ids), s) << json(s).dump(-1, ' ', false, json::error_handler_t::replace);
    IncrementalDetokenizer d(*t);
    for (auto id : ids) EXPECT_TRUE(utf8_valid(d.push(id)));
    EXPECT_TRUE(utf8_valid(d.flush()));
  }
}

TEST(Utf8, Helpers) {
  EXPECT_TRUE(utf8_valid(""));
  EXPECT_TRUE(utf8_valid("h\xC3\xA9llo \xF0\x9F\x9A\x80"));
  EXPECT_FALSE(utf8_valid("\xC3"));
  EXPECT_FALSE(utf8_valid("\xC0\xAF"));          // overlong
  EXPECT_FALSE(utf8_valid("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(utf8_valid("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_EQ(utf8_complete_prefix("ab\xF0\x9F\x9A"), 2u);
  EXPECT_EQ(utf8_complete_prefix("ab\xF0\x9F\x9A\x80"), 6u);
}

TEST(Pretokenize, WhitespaceRewriteMatchesPythonRegex) {
  // U+0085 is White_Space for Python `regex` and Oniguruma but not for PCRE2's \s.
  // Python: regex.findall(GPT2, "x!\x85\x85 y") == ['x', '!', '\x85\x85', ' y'].
  auto sp = RegexSplitter::create({kGpt2Pattern});
  ASSERT_TRUE(sp.has_value());
  std::vector<std::string_view> out;
  sp->split("x!\xC2\x85\xC2\x85 y", out);
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[1], "!");
  EXPECT_EQ(out[2], "\xC2\x85\xC2\x85");
  EXPECT_EQ(out[3], " y");
  EXPECT_EQ(rewrite_whitespace_classes(R"([^\s\p{L}])"), R"([^\t-\r\x{20}\x{85}\p{Z}\p{L}])");
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: every error names the file.

class CorruptTokenizerJson : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("merlin_tok_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& body) {
    std::ofstream(dir_ / name) << body;
  }
  void expect_error_naming(const std::string& file) {
    auto r = Tokenizer::from_hf_dir(dir_.string());
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message.find(file), std::string::npos) << r.error().message;
  }
  fs::path dir_;
};

TEST_F(CorruptTokenizerJson, MissingFile) {
  auto r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Code::kNotFound);
  EXPECT_NE(r.error().message.find("tokenizer.json"), std::string::npos);
}

TEST_F(CorruptTokenizerJson, NotJson) {
  write("tokenizer.json", "{ this is not json");
  expect_error_naming("tokenizer.json");
}

TEST_F(CorruptTokenizerJson, MissingModel) {
  write("tokenizer.json", R"({"version": "1.0", "added_tokens": []})");
  expect_error_naming("tokenizer.json");
}

TEST_F(CorruptTokenizerJson, MergesWrongType) {
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": 7}})");
  expect_error_naming("tokenizer.json");
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [[1, 2]]}})");
  expect_error_naming("tokenizer.json");
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["ab"]}})");
  expect_error_naming("tokenizer.json");
}

TEST_F(CorruptTokenizerJson, VocabWrongTypes) {
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})");
  expect_error_naming("tokenizer.json");
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": [1, 2], "merges": []}})");
  expect_error_naming("tokenizer.json");
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})");
  expect_error_naming("tokenizer.json");
}

TEST_F(CorruptTokenizerJson, BadConfig) {
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]}})");
  write("tokenizer_config.json", "[not json");
  expect_error_naming("tokenizer_config.json");
}

TEST_F(CorruptTokenizerJson, MinimalPairMergesWork) {
  // Merges as [a, b] pairs, no pre-tokenizer, config with chat_template list and object tokens.
  write("tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3},
      "merges": [["a", "b"]]}, "added_tokens": [{"id": 3, "content": "<s>", "special": true}],
      "pre_tokenizer": {"type": "ByteLevel", "use_regex": false}})");
  write("tokenizer_config.json", R"({"bos_token": {"content": "<s>"}, "add_bos_token": true,
      "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  auto r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ((*r)->encode("abab<s>a", true, true), (Ids{3, 2, 2, 3, 0}));
  EXPECT_EQ((*r)->info().chat_template, "D");
  EXPECT_EQ((*r)->bos(), 3);
}

TEST(TokenizerVocabRoute, RejectsInconsistentVocab) {
  TokenizerVocab v;
  EXPECT_FALSE(Tokenizer::from_vocab(v).has_value());  // empty
  v.tokens = {"a", "b"};
  v.types = {TokenType::kNormal};
  EXPECT_FALSE(Tokenizer::from_vocab(v).has_value());  // types size
  v.types.clear();
  v.eos = 5;
  EXPECT_FALSE(Tokenizer::from_vocab(v).has_value());  // id out of range
  v.eos.reset();
  v.merges = {"ab"};
  EXPECT_FALSE(Tokenizer::from_vocab(v).has_value());  // malformed merge
}

// The GGUF route with a byte-level vocabulary built from tiny-coder's tokenizer.json must agree
// with the HF route (llama-bpe pre-tokenizer = the Llama-3 regex).
TEST(TokenizerVocabRoute, ByteLevelFromVocabMatchesReference) {
  auto t = tiny();
  ASSERT_TRUE(t);
  std::ifstream f(kModelDir + "/tokenizer.json");
  const json j = json::parse(f);
  TokenizerVocab v;
  v.model = TokenizerModel::kByteLevelBpe;
  v.pre = "llama-bpe";
  v.tokens.resize(t->n_vocab());
  v.types.assign(t->n_vocab(), TokenType::kNormal);
  for (int32_t i = 0; i < t->n_vocab(); ++i) {
    v.tokens[i] = t->token_text(i);
    if (t->is_special(i)) v.types[i] = TokenType::kControl;
  }
  for (const auto& m : j["model"]["merges"]) v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  v.eos = 0;
  auto r = Tokenizer::from_vocab(v);
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto g = *r;
  for (const auto& c : reference()["tokenizer"]["cases"])
    EXPECT_EQ(g->encode(c["text"].get<std::string>()), c["ids"].get<Ids>()) << c["text"];
  EXPECT_EQ(g->encode(reference()["tokenizer"]["heldout_text"].get<std::string>()),
            reference()["tokenizer"]["heldout_ids"].get<Ids>());
  EXPECT_EQ(g->info().fim_pre, 1);
  EXPECT_TRUE(g->is_eog(0));
}

TEST(TokenizerVocabRoute, PreTokenizerNamesExist) {
  TokenizerVocab v;
  v.tokens = {"a"};
  for (const char* pre : {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "gpt-2", "default", "qwen2",
                          "starcoder", "deepseek-coder", "falcon"}) {
    v.pre = pre;
    auto r = Tokenizer::from_vocab(v);
    EXPECT_TRUE(r.has_value()) << pre << ": " << (r ? "" : r.error().message);
  }
  v.pre = "something-new";  // refused, never tokenized with a guessed regex (pre_tokenizer_test.cc)
  EXPECT_FALSE(Tokenizer::from_vocab(v).has_value());
}

// ---------------------------------------------------------------------------------------------
// HF normalizers: applied when Merlin implements them, refused (naming file, normalizer) otherwise.

// A byte-level vocabulary whose every byte is a token, so ids spell out the normalized bytes.
std::string byte_vocab_json(const std::string& normalizer) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s(1, static_cast<char>(b));
    vocab[json(unicode::bytes_to_byte_level(s)).get<std::string>()] = b;
  }
  json j = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"use_regex", false}}},
            {"normalizer", json::parse(normalizer)}};
  return j.dump();
}

std::string ids_to_bytes(const Ids& ids) {
  std::string s;
  for (auto id : ids) s += static_cast<char>(id);
  return s;
}

TEST_F(CorruptTokenizerJson, NfcAndNfkcNormalizersAreApplied) {
  write("tokenizer.json", byte_vocab_json(R"({"type": "NFC"})"));
  auto r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(ids_to_bytes((*r)->encode("Caf" "e\xCC\x81")), "Caf\xC3\xA9");        // -> U+00E9
  EXPECT_EQ(ids_to_bytes((*r)->encode("\xEF\xAC\x81")), "\xEF\xAC\x81");        // NFC keeps the ﬁ ligature
  EXPECT_EQ(ids_to_bytes((*r)->encode("a\xFF" "b")), "a\xFF" "b");                     // invalid bytes pass through

  write("tokenizer.json", byte_vocab_json(R"({"type": "Sequence", "normalizers": [{"type": "NFKC"}]})"));
  r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(ids_to_bytes((*r)->encode("\xEF\xAC\x81" "1\xE2\x81\x84" "2")), "fi1\xE2\x81\x84" "2");  // ﬁ -> fi
  EXPECT_EQ(ids_to_bytes((*r)->encode("\xEF\xBC\xA1")), "A");                     // fullwidth A

  write("tokenizer.json", byte_vocab_json(R"({"type": "NFD"})"));
  r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(ids_to_bytes((*r)->encode("\xC3\xA9")), "e\xCC\x81");
}

TEST_F(CorruptTokenizerJson, SimpleNormalizersInSequence) {
  write("tokenizer.json", byte_vocab_json(R"({"type": "Sequence", "normalizers": [
      {"type": "Strip", "strip_left": true, "strip_right": true}, {"type": "Lowercase"},
      {"type": "Replace", "pattern": {"String": "b"}, "content": "xy"}, {"type": "Prepend", "prepend": "_"}]})"));
  auto r = Tokenizer::from_hf_dir(dir_.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  EXPECT_EQ(ids_to_bytes((*r)->encode("  AbC\xC3\x89 \n")), "_axyc\xC3\xA9");
  EXPECT_EQ(ids_to_bytes((*r)->encode("\xC4\xB0")), "_i\xCC\x87");  // İ lowercases to i + U+0307, as Rust
}

TEST_F(CorruptTokenizerJson, UnsupportedNormalizersAreRefused) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"type": "BertNormalizer", "lowercase": true})", "normalizer BertNormalizer is not supported"},
      {R"({"type": "Precompiled", "precompiled_charsmap": "AAAA"})", "normalizer Precompiled is not supported"},
      {R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "StripAccents"}]})",
       "normalizer StripAccents is not supported"},
      {R"({"type": "NMT"})", "normalizer NMT is not supported"},
      {R"({"type": "Replace", "pattern": {"Regex": " +"}, "content": " "})",
       "normalizer Replace with pattern {\"Regex\":\" +\"} is not supported (only String patterns)"},
  };
  for (const auto& [norm, msg] : cases) {
    write("tokenizer.json", byte_vocab_json(norm));
    auto r = Tokenizer::from_hf_dir(dir_.string());
    ASSERT_FALSE(r.has_value()) << norm;
    EXPECT_EQ(r.error().code, Code::kUnsupported);
    EXPECT_EQ(r.error().message.rfind((dir_ / "tokenizer.json").string() + ": " + msg, 0), 0u) << r.error().message;
  }
}

TEST_F(CorruptTokenizerJson, NonBpeModelsAreRefused) {
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    write("tokenizer.json", fmt::format(R"({{"model": {{"type": "{}", "vocab": {{"a": 0}}}}}})", type));
    auto r = Tokenizer::from_hf_dir(dir_.string());
    ASSERT_FALSE(r.has_value()) << type;
    EXPECT_EQ(r.error().message,
              fmt::format("{}: model type {} is not supported (only BPE)", (dir_ / "tokenizer.json").string(), type));
  }
}

}  // namespace
}  // namespace merlin
