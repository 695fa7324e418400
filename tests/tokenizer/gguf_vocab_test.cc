// The GGUF route against llama.cpp's published tokenizer vectors (tests/data/vocab-tests): a
// minimal GGUF metadata reader, for these tests only, fills a TokenizerVocab and every .inp
// string must encode to its .out ids. The engine's real GGUF reader lives
// elsewhere; this keeps the tokenizer's own checks independent of it.
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tokenizer/tokenizer.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

class MiniGguf {
 public:
  explicit MiniGguf(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    buf_ = ss.str();
  }

  // Returns false on malformed input.
  bool read(TokenizerVocab& v) {
    if (buf_.size() < 24 || buf_.compare(0, 4, "GGUF") != 0) return false;
    pos_ = 4;
    u32();
    u64();
    const uint64_t n_kv = u64();
    for (uint64_t k = 0; k < n_kv && ok_; ++k) {
      const std::string key = str();
      const uint32_t type = u32();
      if (key == "tokenizer.ggml.model") {
        v.model = str() == "llama" ? TokenizerModel::kSentencePieceBpe : TokenizerModel::kByteLevelBpe;
      } else if (key == "tokenizer.ggml.pre") {
        v.pre = str();
      } else if (key == "tokenizer.ggml.tokens" || key == "tokenizer.ggml.merges") {
        auto& out = key == "tokenizer.ggml.tokens" ? v.tokens : v.merges;
        u32();
        const uint64_t n = u64();
        for (uint64_t i = 0; i < n && ok_; ++i) out.push_back(str());
      } else if (key == "tokenizer.ggml.scores") {
        u32();
        const uint64_t n = u64();
        for (uint64_t i = 0; i < n && ok_; ++i) v.scores.push_back(f32());
      } else if (key == "tokenizer.ggml.token_type") {
        u32();
        const uint64_t n = u64();
        for (uint64_t i = 0; i < n && ok_; ++i) v.types.push_back(static_cast<TokenType>(static_cast<int32_t>(u32())));
      } else if (key == "tokenizer.ggml.bos_token_id") {
        v.bos = static_cast<TokenId>(scalar(type));
      } else if (key == "tokenizer.ggml.eos_token_id") {
        v.eos = static_cast<TokenId>(scalar(type));
      } else if (key == "tokenizer.ggml.unknown_token_id") {
        v.unk = static_cast<TokenId>(scalar(type));
      } else if (key == "tokenizer.ggml.add_space_prefix") {
        v.add_space_prefix = scalar(type) != 0;
      } else if (key == "tokenizer.ggml.add_bos_token") {
        v.add_bos = scalar(type) != 0;
      } else {
        skip(type);
      }
    }
    return ok_;
  }

 private:
  template <class T>
  T get() {
    T x{};
    if (pos_ + sizeof(T) > buf_.size()) {
      ok_ = false;
      return x;
    }
    std::memcpy(&x, buf_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return x;
  }
  uint32_t u32() { return get<uint32_t>(); }
  uint64_t u64() { return get<uint64_t>(); }
  float f32() { return get<float>(); }
  std::string str() {
    const uint64_t n = u64();
    if (!ok_ || n > buf_.size() - pos_) {
      ok_ = false;
      return {};
    }
    std::string s = buf_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  static size_t scalar_size(uint32_t t) {
    switch (t) {
      case 0: case 1: case 7: return 1;
      case 2: case 3: return 2;
      case 4: case 5: case 6: return 4;
      case 10: case 11: case 12: return 8;
      default: return 0;
    }
  }
  int64_t scalar(uint32_t t) {
    const size_t n = scalar_size(t);
    if (n == 0 || pos_ + n > buf_.size()) {
      ok_ = false;
      return 0;
    }
    int64_t x = 0;
    std::memcpy(&x, buf_.data() + pos_, n);  // little-endian, ids are non-negative
    pos_ += n;
    return x;
  }
  void skip(uint32_t t) {
    if (t == 8) {
      str();
    } else if (t == 9) {
      const uint32_t et = u32();
      const uint64_t n = u64();
      for (uint64_t i = 0; i < n && ok_; ++i) skip(et);
    } else if (scalar_size(t)) {
      scalar(t);
    } else {
      ok_ = false;
    }
  }

  std::string buf_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// The vectors ship with the sources, so a fresh clone runs every case: missing data fails.
fs::path vocab_dir() { return fs::path(MERLIN_SOURCE_DIR) / "tests/data/vocab-tests"; }

class GgufVocab : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufVocab, MatchesLlamaCppVectors) {
  const fs::path dir = vocab_dir();
  const fs::path gguf = dir / ("ggml-vocab-" + GetParam() + ".gguf");
  ASSERT_TRUE(fs::exists(gguf)) << gguf << " is missing";

  TokenizerVocab v;
  ASSERT_TRUE(MiniGguf(gguf.string()).read(v)) << "cannot parse " << gguf;
  auto r = Tokenizer::from_vocab(v, gguf.string());
  ASSERT_TRUE(r.has_value()) << r.error().message;
  auto tok = *r;

  std::ifstream fi(gguf.string() + ".inp", std::ios::binary), fo(gguf.string() + ".out");
  std::stringstream si;
  si << fi.rdbuf();
  const std::string inp = si.str();
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    size_t e = inp.find(sep, pos);
    if (e == std::string::npos) break;
    texts.push_back(inp.substr(pos, e - pos));
    pos = e + sep.size();
  }
  std::vector<Ids> outs;
  for (std::string line; std::getline(fo, line);) {
    std::istringstream ls(line);
    Ids ids;
    for (TokenId id; ls >> id;) ids.push_back(id);
    outs.push_back(ids);
  }
  ASSERT_EQ(texts.size(), outs.size());
  int bad = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const Ids got = tok->encode(texts[i], /*parse_special=*/false);
    if (got != outs[i]) {
      ++bad;
      std::string gs, ws;
      for (auto id : got) gs += std::to_string(id) + "(" + tok->token_text(id) + ") ";
      for (auto id : outs[i]) ws += std::to_string(id) + "(" + tok->token_text(id) + ") ";
      ADD_FAILURE() << GetParam() << " case " << i << " [" << texts[i] << "]\n got: " << gs << "\nwant: " << ws;
    }
  }
  EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(LlamaCpp, GgufVocab,
                         ::testing::Values("gpt-2", "starcoder", "deepseek-coder", "falcon", "llama-spm", "phi-3"));

}  // namespace
}  // namespace merlin
