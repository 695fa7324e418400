#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace merlin {

namespace {
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
}

std::string IncrementalDetokenizer::push(TokenId id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  std::string piece = tok_.token_bytes(id);
  if (!started_ && !tok_.is_special(id)) {
    started_ = true;
    // Mirror Tokenizer::decode: SentencePiece drops the space prefix it added.
    if (tok_.model() == TokenizerModel::kSentencePieceBpe && tok_.info().add_space_prefix &&
        !piece.empty() && piece[0] == ' ')
      piece.erase(0, 1);
  }
  pending_ += piece;
  // Emit every complete character; replace bytes that can never start one; hold back only a
  // trailing sequence that may still complete.
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t len;
    const auto st = unicode::utf8_check(pending_, i, &len);
    if (st == unicode::Utf8Status::kIncomplete) break;
    if (st == unicode::Utf8Status::kComplete) out.append(pending_, i, len);
    else out.append(kReplacement);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

std::string IncrementalDetokenizer::flush() {
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    size_t len;
    const auto st = unicode::utf8_check(pending_, i, &len);
    if (st == unicode::Utf8Status::kComplete) {
      out.append(pending_, i, len);
      i += len;
    } else {
      // An incomplete tail is invalid now that no more bytes will come: skip its lead byte
      // and continuation bytes as one replacement, like most decoders do.
      out.append(kReplacement);
      ++i;
      while (st == unicode::Utf8Status::kIncomplete && i < pending_.size() &&
             (static_cast<uint8_t>(pending_[i]) & 0xC0) == 0x80)
        ++i;
    }
  }
  pending_.clear();
  return out;
}

}  // namespace merlin
