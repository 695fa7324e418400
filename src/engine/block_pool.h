// KV block manager: reference-counted fixed-size blocks and the prefix cache. A full block is
// identified by the hash of its tokens chained with its predecessor's hash (vLLM's automatic
// prefix caching): a new sequence whose prompt starts with the same full blocks takes them
// instead of computing them. Blocks nobody holds keep their content and hash until reused,
// least recently released first. Engine thread only.
#pragma once
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace merlin {

class BlockPool {
 public:
  BlockPool(int32_t n_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t n_blocks() const { return n_blocks_; }
  // Blocks that allocate() can hand out (free + cached-but-unreferenced).
  int32_t n_available() const { return static_cast<int32_t>(free_.size() + evictable_.size()); }
  int32_t n_cached_free() const { return static_cast<int32_t>(evictable_.size()); }
  int32_t n_used() const { return n_blocks_ - n_available(); }

  // A block with refcount 1, or nullopt when none is left. Evicts the least recently released
  // cached block if there is no plain free one.
  std::optional<int32_t> allocate();
  void release(int32_t block);  // refcount - 1; at 0 the block becomes free or evictable

  // Hash of a full block of tokens following a block with hash `parent` (0 for the first).
  static uint64_t chain_hash(uint64_t parent, std::span<const TokenId> tokens);
  // The cached block with this hash (refcount incremented), or nullopt.
  std::optional<int32_t> lookup(uint64_t hash);
  // Records that `block` (full, its content final) has this hash.
  void publish(int32_t block, uint64_t hash);

 private:
  int32_t n_blocks_, block_size_;
  std::vector<int32_t> ref_;
  std::vector<uint64_t> hash_;                    // 0 = not published
  std::vector<int32_t> free_;                     // refcount 0, no hash
  std::list<int32_t> evictable_;                  // refcount 0, with hash; front = oldest
  std::vector<std::list<int32_t>::iterator> evict_pos_;
  std::vector<bool> in_evictable_;
  std::unordered_map<uint64_t, int32_t> by_hash_;
};

}  // namespace merlin
