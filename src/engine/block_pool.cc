#include "engine/block_pool.h"

#include <xxhash.h>

namespace merlin {

BlockPool::BlockPool(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size), ref_(n_blocks, 0), hash_(n_blocks, 0),
      evict_pos_(n_blocks), in_evictable_(n_blocks, false) {
  for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);
}

std::optional<int32_t> BlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!evictable_.empty()) {
    b = evictable_.front();
    evictable_.pop_front();
    in_evictable_[b] = false;
    by_hash_.erase(hash_[b]);
    hash_[b] = 0;
  } else {
    return std::nullopt;
  }
  ref_[b] = 1;
  return b;
}

void BlockPool::release(int32_t b) {
  if (--ref_[b] > 0) return;
  if (hash_[b] != 0) {
    evictable_.push_back(b);
    evict_pos_[b] = std::prev(evictable_.end());
    in_evictable_[b] = true;
  } else {
    free_.push_back(b);
  }
}

uint64_t BlockPool::chain_hash(uint64_t parent, std::span<const TokenId> tokens) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset_withSeed(st, parent);
  XXH3_64bits_update(st, tokens.data(), tokens.size_bytes());
  uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h == 0 ? 1 : h;  // 0 means "no hash"
}

std::optional<int32_t> BlockPool::lookup(uint64_t hash) {
  auto it = by_hash_.find(hash);
  if (it == by_hash_.end()) return std::nullopt;
  const int32_t b = it->second;
  if (in_evictable_[b]) {
    evictable_.erase(evict_pos_[b]);
    in_evictable_[b] = false;
  }
  ref_[b]++;
  return b;
}

void BlockPool::publish(int32_t b, uint64_t hash) {
  if (hash_[b] != 0) return;
  if (by_hash_.count(hash)) return;  // an identical block is already cached; keep that one
  hash_[b] = hash;
  by_hash_[hash] = b;
}

}  // namespace merlin
