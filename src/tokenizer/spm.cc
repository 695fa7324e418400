// SentencePiece-style BPE. With scores (GGUF, SentencePiece models) this follows
// llama.cpp's llm_tokenizer_spm / SentencePiece's bpe_model: start from UTF-8 characters,
// repeatedly merge the adjacent pair whose concatenation is the highest-scoring piece
// (leftmost on ties), then emit pieces, falling back to <0xNN> byte tokens for characters
// the vocabulary lacks. With HF merges (tokenizer.json with byte_fallback) the same start
// state is merged by merge rank instead.
#include <queue>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace merlin {

void bpe_merge_ids(const std::unordered_map<uint64_t, std::pair<int32_t, TokenId>>& merges,
                   std::vector<TokenId>& ids);

namespace {

struct Sym {
  int32_t prev, next;
  size_t begin, len;  // byte range in the escaped text; len 0 once merged away
};

struct Bigram {
  int32_t left, right;
  float score;
  size_t size;  // byte length of the merged text, to detect stale entries
  bool operator<(const Bigram& o) const {
    // priority_queue is a max-heap: highest score first, then the leftmost pair.
    return score < o.score || (score == o.score && left > o.left);
  }
};

}  // namespace

void TokenizerImpl::spm_byte_fallback(std::string_view bytes, Ids& out) const {
  for (char c : bytes) {
    const TokenId t = byte_token_[static_cast<uint8_t>(c)];
    if (t >= 0) out.push_back(t);
    else if (info_.unk) out.push_back(*info_.unk);
  }
}

void TokenizerImpl::spm_fragment(std::string_view text, Ids& out) const {
  if (text.empty()) return;
  // Characters; invalid bytes become one-byte symbols (they can only end up as byte tokens).
  std::vector<Sym> syms;
  for (size_t i = 0; i < text.size();) {
    size_t len;
    unicode::utf8_check(text, i, &len);
    if (i + len > text.size()) len = text.size() - i;
    const int32_t idx = static_cast<int32_t>(syms.size());
    syms.push_back({idx - 1, -1, i, len});
    if (idx > 0) syms[idx - 1].next = idx;
    i += len;
  }

  auto mergeable = [&](TokenId id) {
    const TokenType t = types_[id];
    return t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUnused;
  };
  auto lookup = [&](std::string_view s) -> std::optional<TokenId> {
    auto it = text_to_id_.find(std::string(s));
    if (it == text_to_id_.end() || !mergeable(it->second)) return std::nullopt;
    return it->second;
  };

  auto emit_symbol = [&](const Sym& s) {
    const std::string_view piece = text.substr(s.begin, s.len);
    if (auto id = lookup(piece)) {
      out.push_back(*id);
    } else {
      spm_byte_fallback(piece, out);
    }
  };

  if (opt_.spm_use_ranks) {
    // HF BPE with byte fallback: characters map to tokens (or bytes), then merge by rank.
    std::vector<TokenId> ids;
    for (const Sym& s : syms) {
      const std::string_view piece = text.substr(s.begin, s.len);
      if (auto id = lookup(piece)) ids.push_back(*id);
      else spm_byte_fallback(piece, ids);
    }
    bpe_merge_ids(merges_, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }

  std::priority_queue<Bigram> queue;
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    const std::string_view s = text.substr(syms[l].begin, syms[l].len + syms[r].len);
    auto id = lookup(s);
    if (!id) return;
    const float score = static_cast<size_t>(*id) < scores_.size() ? scores_[*id] : 0.0f;
    queue.push({l, r, score, s.size()});
  };
  for (size_t i = 1; i < syms.size(); ++i) try_add(static_cast<int32_t>(i) - 1, static_cast<int32_t>(i));
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Sym& l = syms[b.left];
    Sym& r = syms[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.size || l.next != b.right) continue;
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  // Every surviving symbol is a vocabulary piece (merges only form pieces) or a single
  // character the vocabulary lacks, which falls back to bytes.
  for (int32_t i = 0; i >= 0; i = syms[i].next) emit_symbol(syms[i]);
}

}  // namespace merlin
