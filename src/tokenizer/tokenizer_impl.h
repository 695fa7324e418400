// The one concrete Tokenizer: shared vocabulary tables and special-token splitting, with the
// model-specific merge loops in bpe.cc (rank-based, byte-level or character-level) and spm.cc
// (score-based, llama.cpp / SentencePiece BPE).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/tokenizer.h"

namespace merlin {

struct TokenizerOptions {
  Normalizer normalizer;               // HF normalizer steps not done by the model path itself
  std::vector<std::string> patterns;   // byte-level pre-tokenizer regexes (in sequence)
  bool ignore_merges = false;          // HF BPE: a word that is a token is emitted whole
  bool add_prefix_space = false;       // HF ByteLevel(add_prefix_space): " " before the text
  // SPM model: merge by HF merge ranks (tokenizer.json) instead of by scores (GGUF).
  bool spm_use_ranks = false;
  // SPM model: add the space prefix only at the very start of the text, not after special
  // tokens (HF Metaspace with prepend_scheme "first").
  bool prefix_only_at_start = false;
  // SPM model: merge within words that each start at a "▁" (HF Metaspace with split true).
  bool split_on_space = false;
  std::string source;                  // for error messages ("…/tokenizer.json", "vocab")
};

class TokenizerImpl final : public Tokenizer {
 public:
  // `vocab.types` must be filled (one per token). Merges are "a b" strings of token texts.
  static Result<std::shared_ptr<const Tokenizer>> build(TokenizerVocab vocab, TokenizerOptions opt);

  Ids encode(std::string_view text, bool parse_special, bool add_bos) const override;
  std::string decode(std::span<const TokenId> ids, bool skip_special) const override;
  std::string token_bytes(TokenId id) const override;
  std::string token_text(TokenId id) const override;
  std::optional<TokenId> find_token(std::string_view text) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(texts_.size()); }
  bool is_special(TokenId id) const override;
  TokenizerModel model() const override { return info_.model; }

 private:
  Status init(TokenizerVocab vocab, TokenizerOptions opt);
  void discover_special_ids();

  // Encodes text that holds no special tokens. `first` is true for the first text fragment
  // or one right after a special token (SentencePiece adds its space prefix there).
  void encode_fragment(std::string_view text, bool first, bool at_start, Ids& out) const;
  void bpe_word(std::string_view bytes, Ids& out) const;         // bpe.cc
  void spm_fragment(std::string_view text, Ids& out) const;      // spm.cc
  void spm_byte_fallback(std::string_view bytes, Ids& out) const;

  std::vector<std::string> texts_;     // id -> vocabulary text
  std::vector<std::string> bytes_;     // id -> raw bytes it decodes to
  std::vector<TokenType> types_;
  std::vector<float> scores_;
  std::unordered_map<std::string, TokenId> text_to_id_;
  std::unordered_map<std::string, TokenId> bytes_to_id_;  // normal tokens only (BPE words)
  std::array<TokenId, 256> byte_token_{};                   // byte -> its single-byte token or -1

  // (left << 32 | right) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, TokenId>> merges_;

  struct Added {
    std::string text;
    TokenId id;
    bool special;  // matched only with parse_special
  };
  std::vector<Added> added_;                             // longest first
  std::array<std::vector<uint32_t>, 256> added_by_byte_;  // first byte -> indexes into added_

  RegexSplitter splitter_;
  TokenizerOptions opt_;
};

}  // namespace merlin
