// Paged KV storage: per layer, n_blocks blocks of block_size token slots, each slot holding the
// rotated keys and the values of every kv head, f32. Which sequence owns which block is decided
// by the engine's block manager (engine/block_pool.h); the model only reads and writes slots
// through a sequence's block table.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "model/config.h"

namespace merlin {

class KvCache {
 public:
  KvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size);
  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  int64_t row_floats() const { return row_; }   // n_head_kv * head_dim
  float* k(int32_t layer) { return k_[layer].get(); }
  float* v(int32_t layer) { return v_[layer].get(); }
  float* k_slot(int32_t layer, int32_t block, int32_t slot) {
    return k_[layer].get() + (static_cast<int64_t>(block) * block_size_ + slot) * row_;
  }
  float* v_slot(int32_t layer, int32_t block, int32_t slot) {
    return v_[layer].get() + (static_cast<int64_t>(block) * block_size_ + slot) * row_;
  }
  size_t bytes() const;
  static size_t bytes_per_token(const ModelConfig& c) {
    return static_cast<size_t>(c.n_layer) * c.n_head_kv * c.head_dim * 2 * sizeof(float);
  }

 private:
  int32_t n_blocks_, block_size_;
  int64_t row_;
  std::vector<std::unique_ptr<float[]>> k_, v_;
};

}  // namespace merlin
