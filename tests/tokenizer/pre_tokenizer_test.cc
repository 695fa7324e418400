// Every tokenizer.ggml.pre name llama.cpp knows: accepted, its regexes compile, and each regex
// family splits tricky text (contractions, digit groups, CJK, whitespace runs, newlines) the way
// its tokenizer.json regex does. The expected pieces are worked out by hand from the regex
// semantics (leftmost alternative that matches, greedy quantifiers, gaps become pieces).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace merlin {
namespace {

std::vector<std::string> split(std::string_view pre, std::string_view text) {
  const BpePreTokenizer* p = find_bpe_pre_tokenizer(pre);
  EXPECT_NE(p, nullptr) << pre;
  if (!p) return {};
  auto s = RegexSplitter::create(p->patterns);
  EXPECT_TRUE(s.has_value()) << pre << ": " << (s ? "" : s.error().message);
  if (!s) return {};
  std::vector<std::string_view> pieces;
  s->split(text, pieces);
  return {pieces.begin(), pieces.end()};
}

using V = std::vector<std::string>;

TEST(PreTokenizers, EveryLlamaCppNameIsAcceptedAndCompiles) {
  // The names the task lists (llama.cpp spellings) plus the whole table.
  std::vector<std::string_view> names = {
      "default", "llama3", "llama-bpe", "deepseek-llm", "deepseek-coder", "falcon", "mpt", "starcoder", "gpt-2",
      "refact", "command-r", "stablelm2", "qwen2", "olmo", "dbrx", "smaug-bpe", "poro-chat", "chatglm-bpe", "glm4",
      "viking", "jais", "tekken", "smollm", "codeshell", "bloom", "gpt3-finnish", "exaone", "chameleon",
      "minerva-7b", "deepseek-v3", "gpt-4o", "superbpe", "trillion", "bailingmoe", "llama4", "pixtral",
      "seed-coder", "hunyuan", "kimi-k2", "grok-2"};
  for (auto n : bpe_pre_tokenizer_names()) names.push_back(n);
  EXPECT_GE(bpe_pre_tokenizer_names().size(), 80u);
  for (auto n : names) {
    const BpePreTokenizer* p = find_bpe_pre_tokenizer(n);
    ASSERT_NE(p, nullptr) << n;
    auto s = RegexSplitter::create(p->patterns);
    EXPECT_TRUE(s.has_value()) << n << ": " << (s ? "" : s.error().message);
    TokenizerVocab v;
    v.tokens = {"a"};
    v.pre = std::string(n);
    auto r = Tokenizer::from_vocab(v);
    EXPECT_TRUE(r.has_value()) << n << ": " << (r ? "" : r.error().message);
  }
}

TEST(PreTokenizers, UnknownNameIsRefusedWithKeyAndValue) {
  TokenizerVocab v;
  v.tokens = {"a"};
  v.pre = "something-new";
  auto r = Tokenizer::from_vocab(v, "x.gguf");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, Code::kUnsupported);
  EXPECT_EQ(r.error().message,
            "x.gguf: tokenizer.ggml.pre 'something-new' is not supported: it is not a pre-tokenizer llama.cpp or "
            "Merlin knows");
  for (const char* raw : {"gemma4", "sarvam-moe", "whitespace", "granite-embed-multi-311m"}) {
    v.pre = raw;
    r = Tokenizer::from_vocab(v, "y.gguf");
    ASSERT_FALSE(r.has_value()) << raw;
    EXPECT_EQ(r.error().message, fmt::format("y.gguf: tokenizer.ggml.pre '{}' is not supported: it needs BPE over raw "
                                             "UTF-8 (not byte-level), which Merlin does not implement",
                                             raw));
  }
  // SentencePiece vocabularies have no pre-tokenizer: the name is not looked at (as llama.cpp).
  v.model = TokenizerModel::kSentencePieceBpe;
  v.pre = "something-new";
  EXPECT_TRUE(Tokenizer::from_vocab(v).has_value());
}

TEST(PreTokenizers, Gpt2Family) {
  for (auto n : {"gpt-2", "mpt", "olmo", "jais", "trillion", "phi-2"})
    EXPECT_EQ(split(n, "Hello world's  42\n\n"), (V{"Hello", " world", "'s", " ", " 42", "\n\n"})) << n;
}

TEST(PreTokenizers, Llama3Family) {
  const V want = {"Hello", " WORLD", "'s", " ", "123", "45", " \n\n", " ", " x"};
  for (auto n : {"llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", "chatglm-bpe", "glm4", "pixtral"})
    EXPECT_EQ(split(n, "Hello WORLD's 12345 \n\n  x"), want) << n;
  EXPECT_EQ(split("llama3", "a.\n\n b"), (V{"a", ".\n\n", " b"}));
  EXPECT_TRUE(find_bpe_pre_tokenizer("llama3")->ignore_merges);
  EXPECT_FALSE(find_bpe_pre_tokenizer("dbrx")->ignore_merges);
}

TEST(PreTokenizers, Qwen2FamilySplitsEveryDigit) {
  for (auto n : {"qwen2", "stablelm2", "hunyuan", "grok-2", "deepseek-r1-qwen", "megrez"})
    EXPECT_EQ(split(n, "Hello WORLD's 12345 \n\n  x"),
              (V{"Hello", " WORLD", "'s", " ", "1", "2", "3", "4", "5", " \n\n", " ", " x"}))
        << n;
  // A combining mark is not \p{L}: qwen2 makes it the prefix of the next word, qwen35 keeps
  // it with its letter.
  EXPECT_EQ(split("qwen2", "e\xCC\x81x"), (V{"e", "\xCC\x81x"}));
  EXPECT_EQ(split("qwen35", "e\xCC\x81x"), (V{"e\xCC\x81x"}));
}

TEST(PreTokenizers, StarcoderFamilyIsolatesDigits) {
  for (auto n : {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"})
    EXPECT_EQ(split(n, "abc 123"), (V{"abc", " ", "1", "2", "3"})) << n;
}

TEST(PreTokenizers, Falcon) {
  EXPECT_EQ(split("falcon", "x=1234!!"), (V{"x", "=", "123", "4", "!!"}));
}

TEST(PreTokenizers, Default) {
  EXPECT_EQ(split("default", "Hi, 12345!"), (V{"Hi", ",", " ", "123", "45", "!"}));
}

TEST(PreTokenizers, DeepseekCoder) {
  EXPECT_EQ(split("deepseek-coder", "a\nb \xE4\xB8\xAD\xE6\x96\x87" "12."),
            (V{"a", "\n", "b", " ", "\xE4\xB8\xAD\xE6\x96\x87", "1", "2", "."}));
}

TEST(PreTokenizers, DeepseekLlm) {
  EXPECT_EQ(split("deepseek-llm", "Hello, \xE4\xB8\x96\xE7\x95\x8C" "123\n"),
            (V{"Hello", ",", " ", "\xE4\xB8\x96\xE7\x95\x8C", "123", "\n"}));
}

TEST(PreTokenizers, Deepseek3Family) {
  // 中文カナ: Han then katakana, one CJK piece.
  const std::string cjk = "\xE4\xB8\xAD\xE6\x96\x87\xE3\x82\xAB\xE3\x83\x8A";
  for (auto n : {"deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"})
    EXPECT_EQ(split(n, "abc12345" + cjk + " def!!"), (V{"abc", "123", "45", cjk, " def", "!!"})) << n;
}

TEST(PreTokenizers, BloomPoroFinnishViking) {
  for (auto n : {"bloom", "poro-chat", "gpt3-finnish"})
    EXPECT_EQ(split(n, "Hello, world! (ok)"), (V{"Hello", ",", " world", "! (", "ok", ")"})) << n;
  EXPECT_EQ(split("viking", "ab12 3"), (V{"ab", "1", "2", " ", "3"}));
}

TEST(PreTokenizers, Gpt4oFamilySplitsCamelCase) {
  for (auto n : {"gpt-4o", "llama4", "minimax-m2"}) {
    EXPECT_EQ(split(n, "HelloWorld iPhone's 12345"), (V{"Hello", "World", " i", "Phone's", " ", "123", "45"})) << n;
    EXPECT_EQ(split(n, "ABCdef"), (V{"ABCdef"})) << n;
  }
}

TEST(PreTokenizers, Tekken) {
  EXPECT_EQ(split("tekken", "iPhone's 12"), (V{"i", "Phone", "'s", " ", "1", "2"}));
  EXPECT_TRUE(find_bpe_pre_tokenizer("tekken")->ignore_merges);
}

TEST(PreTokenizers, SuperbpeGroupsDigitsFromTheRight) {
  EXPECT_EQ(split("superbpe", "x1234567y"), (V{"x", "1", "234", "567", "y"}));
  EXPECT_EQ(split("superbpe", "123"), (V{"123"}));
}

TEST(PreTokenizers, AfmoeAndTinyAyaDigitGroups) {
  EXPECT_EQ(split("afmoe", "ab1234567"), (V{"ab", "1", "234", "567"}));
  EXPECT_EQ(split("tiny_aya", "1234567 x"), (V{"1", "234", "567", " x"}));
  // tokenizer.json's \b: digits followed by a letter are no word boundary, so no grouping there.
  EXPECT_EQ(split("tiny_aya", "12345abc"), (V{"123", "45", "abc"}));
}

TEST(PreTokenizers, KimiK2) {
  const std::string han = "\xE4\xB8\xAD\xE6\x96\x87";
  EXPECT_EQ(split("kimi-k2", han + "abcDef 12345"), (V{han, "abc", "Def", " ", "123", "45"}));
}

TEST(PreTokenizers, BailingmoeAndSeedCoderNewlines) {
  EXPECT_EQ(split("bailingmoe", "a\n\nb 1"), (V{"a", "\n\n", "b", " ", "1"}));
  EXPECT_EQ(split("seed-coder", "a.\n\n b"), (V{"a", ".", "\n\n", " b"}));
}

TEST(PreTokenizers, Chameleon) {
  EXPECT_EQ(split("chameleon", "a\tb"), (V{"a", "\t", "b"}));
  EXPECT_EQ(split("chameleon", "x  y"), (V{"x", "  ", "y"}));
}

TEST(PreTokenizers, Jais2CascadingWhitespace) {
  EXPECT_EQ(split("jais-2", "a          b"), (V{"a", "        ", " ", " b"}));
}

TEST(PreTokenizers, ExaoneMoeKeepsSpacedWords) {
  EXPECT_EQ(split("exaone-moe", "hello world 12"), (V{"hello world", " ", "1", "2"}));
}

TEST(PreTokenizers, LagunaSparkMinicpm5Youtu) {
  EXPECT_EQ(split("laguna", "ab\n\ncd"), (V{"ab", "\n\n", "cd"}));
  EXPECT_EQ(split("spark2_5", "ab\n\ncd"), (V{"ab", "\n", "\n", "cd"}));
  EXPECT_EQ(split("minicpm5", "ab12345"), (V{"ab", "123", "45"}));
  EXPECT_EQ(split("youtu", "\xEA\xB0\x80\xEB\x82\x98" "abc"), (V{"\xEA\xB0\x80\xEB\x82\x98", "abc"}));
}

}  // namespace
}  // namespace merlin
