// Rank-based BPE merging (Hugging Face semantics): repeatedly merge the adjacent pair with the
// lowest merge rank, leftmost first on ties. A min-heap over candidate pairs with lazy
// invalidation keeps a word of n symbols at O(n log n).
#include <queue>

#include "tokenizer/tokenizer_impl.h"

namespace merlin {

namespace {

struct Sym {
  TokenId id;
  int32_t prev, next;  // -1 at the ends
};

struct Cand {
  int32_t rank;
  int32_t left;  // symbol index of the left half
  TokenId left_id, right_id;
  bool operator>(const Cand& o) const {
    return rank != o.rank ? rank > o.rank : left > o.left;
  }
};

}  // namespace

void bpe_merge_ids(const std::unordered_map<uint64_t, std::pair<int32_t, TokenId>>& merges,
                   std::vector<TokenId>& ids) {
  if (ids.size() < 2 || merges.empty()) return;
  const int32_t n = static_cast<int32_t>(ids.size());
  std::vector<Sym> syms(n);
  for (int32_t i = 0; i < n; ++i) syms[i] = {ids[i], i - 1, i + 1 < n ? i + 1 : -1};
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = syms[l].next;
    if (r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(syms[l].id)) << 32) |
                         static_cast<uint32_t>(syms[r].id);
    auto it = merges.find(key);
    if (it != merges.end()) heap.push({it->second.first, l, syms[l].id, syms[r].id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = syms[c.left];
    if (l.id != c.left_id || l.next < 0) continue;  // stale: left changed or was absorbed
    Sym& r = syms[l.next];
    if (r.id != c.right_id) continue;
    // A dead symbol has id -2, so a stale entry for it fails the id checks above.
    l.id = merges.at((static_cast<uint64_t>(static_cast<uint32_t>(c.left_id)) << 32) |
                     static_cast<uint32_t>(c.right_id)).second;
    const int32_t rn = r.next;
    r.id = -2;
    l.next = rn;
    if (rn >= 0) syms[rn].prev = c.left;
    consider(l.prev);
    consider(c.left);
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = syms[i].next) ids.push_back(syms[i].id);
}

void TokenizerImpl::bpe_word(std::string_view bytes, Ids& out) const {
  if (bytes.empty()) return;
  if (opt_.ignore_merges) {
    auto it = bytes_to_id_.find(std::string(bytes));
    if (it != bytes_to_id_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<TokenId> ids;
  ids.reserve(bytes.size());
  for (char c : bytes) {
    const TokenId t = byte_token_[static_cast<uint8_t>(c)];
    // A vocabulary without this byte cannot represent it; HF would emit nothing for it too.
    if (t >= 0) ids.push_back(t);
  }
  bpe_merge_ids(merges_, ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

}  // namespace merlin
