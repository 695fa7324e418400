// Regex pre-tokenization (HF Split with behavior "Isolated", applied in sequence): each
// pattern splits every piece produced so far into its matches and the gaps between them.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace merlin {

// Pre-tokenizer patterns used by known vocabularies.
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// How a byte-level BPE vocabulary splits text before merging, per `tokenizer.ggml.pre` value:
// llama.cpp's table (src/llama-vocab.cpp). Where llama.cpp rewrites a tokenizer.json regex
// because std::regex lacks \p{Lu}, (?i:...), possessive quantifiers or class intersection, the
// original regex is used here, since PCRE2 runs it as the reference tokenizer does.
struct BpePreTokenizer {
  std::vector<std::string> patterns;   // applied in sequence (RegexSplitter)
  bool ignore_merges = false;          // a word that is a token is emitted whole
};
// nullptr when llama.cpp does not know the name or when it needs a BPE over raw UTF-8
// (gemma4, sarvam-moe, whitespace), which Merlin does not implement; `why` then says which.
const BpePreTokenizer* find_bpe_pre_tokenizer(std::string_view pre, std::string* why = nullptr);
// Every name find_bpe_pre_tokenizer accepts ("default" included), for tests and messages.
std::vector<std::string_view> bpe_pre_tokenizer_names();

class RegexSplitter {
 public:
  RegexSplitter() = default;
  // Compiles with PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF and JIT. \s and \S are
  // rewritten to the Unicode White_Space set so that they agree with Python `regex` and
  // Oniguruma (PCRE2's own \s leaves out U+0085).
  static Result<RegexSplitter> create(const std::vector<std::string>& patterns);

  bool empty() const { return patterns_.empty(); }
  // Appends the pieces of `text` to `out` in order; their concatenation is `text`. Bytes that
  // are not valid UTF-8 never match and so end up in gap pieces. An empty match (a lookahead
  // such as superbpe's "(?=(\d{3})+(?!\d))") splits the text at its position, as in HF and
  // llama.cpp.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Compiled;
  std::vector<std::shared_ptr<const Compiled>> patterns_;
};

// Exposed for tests.
std::string rewrite_whitespace_classes(std::string_view pattern);

}  // namespace merlin
