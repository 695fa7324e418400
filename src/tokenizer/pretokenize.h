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

class RegexSplitter {
 public:
  RegexSplitter() = default;
  // Compiles with PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF and JIT. \s and \S are
  // rewritten to the Unicode White_Space set so that they agree with Python `regex` and
  // Oniguruma (PCRE2's own \s leaves out U+0085).
  static Result<RegexSplitter> create(const std::vector<std::string>& patterns);

  bool empty() const { return patterns_.empty(); }
  // Appends the pieces of `text` to `out` in order; their concatenation is `text`. Bytes that
  // are not valid UTF-8 never match and so end up in gap pieces.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Compiled;
  std::vector<std::shared_ptr<const Compiled>> patterns_;
};

// Exposed for tests.
std::string rewrite_whitespace_classes(std::string_view pattern);

}  // namespace merlin
