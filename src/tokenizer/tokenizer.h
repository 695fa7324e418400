// Tokenizer: byte-level BPE (GPT-2 / Llama 3 / Qwen / StarCoder / tiny-coder) and
// SentencePiece-style BPE (Llama 2, Phi-3: scores + byte fallback), loaded from a Hugging Face
// tokenizer.json (+ tokenizer_config.json) or from a TokenizerVocab filled from GGUF metadata.
// Immutable after construction: every method is const and safe to call from any thread.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace merlin {

using TokenId = int32_t;
using Ids = std::vector<TokenId>;

enum class TokenizerModel { kByteLevelBpe, kSentencePieceBpe };

// Token attribute, following GGUF's tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6,
};

// Everything needed to build a tokenizer without a tokenizer.json (the GGUF route).
struct TokenizerVocab {
  TokenizerModel model = TokenizerModel::kByteLevelBpe;
  std::vector<std::string> tokens;       // id -> token text (byte-level: GPT-2 byte alphabet)
  std::vector<float> scores;             // SentencePiece scores (empty for byte-level BPE)
  std::vector<TokenType> types;          // empty means all normal
  std::vector<std::string> merges;       // "a b" pairs in rank order (byte-level BPE)
  std::string pre = "default";           // tokenizer.ggml.pre: "llama-bpe", "gpt-2", "qwen2", ...
  std::optional<TokenId> bos, eos, eot, pad, unk;
  std::optional<TokenId> fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep;
  bool add_bos = false;
  bool add_space_prefix = true;          // SentencePiece: prepend "▁" to the text
  std::string chat_template;
  // Where chat_template came from: "tokenizer_config.json", "chat_template.jinja", "gguf", or ""
  // when the model has none (the server then falls back to ChatML and should say so).
  std::string chat_template_source;
};

class Tokenizer {
 public:
  // dir holds tokenizer.json and optionally tokenizer_config.json (chat_template, bos/eos,
  // add_bos_token). Errors name the file and the problem.
  static Result<std::shared_ptr<const Tokenizer>> from_hf_dir(const std::string& dir);
  // Byte-level BPE needs a `pre` that find_bpe_pre_tokenizer knows; errors start with `source`.
  static Result<std::shared_ptr<const Tokenizer>> from_vocab(TokenizerVocab vocab,
                                                             std::string source = "tokenizer vocabulary");

  virtual ~Tokenizer() = default;

  // Special/added tokens that occur literally in `text` are matched as those tokens when
  // parse_special is true. add_bos prepends BOS when the model has one.
  virtual Ids encode(std::string_view text, bool parse_special = true,
                     bool add_bos = false) const = 0;
  // Concatenated bytes of the tokens (may be invalid UTF-8 at the ends).
  virtual std::string decode(std::span<const TokenId> ids, bool skip_special = false) const = 0;
  // The raw bytes one token stands for ("" for out-of-range ids).
  virtual std::string token_bytes(TokenId id) const = 0;
  // The token's text as written in the vocabulary ("Ġhello", "<fim_prefix>").
  virtual std::string token_text(TokenId id) const = 0;
  virtual std::optional<TokenId> find_token(std::string_view text) const = 0;

  virtual int32_t n_vocab() const = 0;
  virtual bool is_special(TokenId id) const = 0;   // control / added special tokens
  virtual TokenizerModel model() const = 0;

  const TokenizerVocab& info() const { return info_; }  // bos/eos/fim ids, chat template...
  std::optional<TokenId> bos() const { return info_.bos; }
  std::optional<TokenId> eos() const { return info_.eos; }
  // End-of-generation ids: eos, eot and tokens such as <|im_end|> / <|eot_id|> / <|endoftext|>.
  const std::vector<TokenId>& eog_ids() const { return eog_; }
  bool is_eog(TokenId id) const;

 protected:
  TokenizerVocab info_;        // ids of specials, template; `tokens` may be cleared after build
  std::vector<TokenId> eog_;
};

// Turns a stream of token ids into text pieces that are always whole UTF-8 characters: bytes of
// an unfinished character are held back until the character completes. Not thread-safe.
class IncrementalDetokenizer {
 public:
  explicit IncrementalDetokenizer(const Tokenizer& tok, bool skip_special = false)
      : tok_(tok), skip_special_(skip_special) {}
  std::string push(TokenId id);   // returns the newly completed text (possibly empty)
  std::string flush();            // the held bytes, invalid sequences replaced with U+FFFD

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
  bool started_ = false;  // a non-special piece was emitted (SentencePiece prefix handling)
};

// Length of the longest prefix of s that is complete, valid UTF-8.
size_t utf8_complete_prefix(std::string_view s);
bool utf8_valid(std::string_view s);

}  // namespace merlin
