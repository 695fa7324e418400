#include "model/kv_cache.h"

namespace merlin {

KvCache::KvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size), row_(static_cast<int64_t>(c.n_head_kv) * c.head_dim) {
  const size_t n = static_cast<size_t>(n_blocks) * block_size * row_;
  for (int32_t l = 0; l < c.n_layer; ++l) {
    // Zero-filled so a bug that reads an unwritten slot gives a deterministic result.
    k_.emplace_back(new float[n]());
    v_.emplace_back(new float[n]());
  }
}

size_t KvCache::bytes() const {
  return k_.size() * 2 * static_cast<size_t>(n_blocks_) * block_size_ * row_ * sizeof(float);
}

}  // namespace merlin
