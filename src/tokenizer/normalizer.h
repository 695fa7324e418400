// The Hugging Face tokenizer.json normalizers Merlin applies: NFC, NFD, NFKC, NFKD (utf8proc),
// Lowercase, Strip, Prepend, Replace with a String pattern, and Sequences of these. Any other
// normalizer (BertNormalizer, Precompiled, NMT, StripAccents, Replace with a Regex, ...) is
// refused at load, so that no text is ever tokenized without a normalization it needs.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace merlin {

class Normalizer {
 public:
  enum class Kind { kNfc, kNfd, kNfkc, kNfkd, kLowercase, kStrip, kPrepend, kReplace };
  struct Step {
    Kind kind;
    std::string a, b;                       // Prepend: a; Replace: a -> b
    bool left = true, right = true;         // Strip
  };

  // `j` is tokenizer.json's "normalizer" value (null: no normalization). Errors are messages
  // without the file name.
  static Result<Normalizer> parse(const nlohmann::json& j);

  bool empty() const { return steps_.empty(); }
  const std::vector<Step>& steps() const { return steps_; }
  void remove_if_matches(Kind kind, std::string_view a, std::string_view b = {});

  // Bytes that are not valid UTF-8 are passed through untouched.
  std::string apply(std::string_view text) const;

 private:
  std::vector<Step> steps_;
};

}  // namespace merlin
