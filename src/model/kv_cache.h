// Paged KV storage: per layer, n_blocks blocks of block_size token slots, each slot holding the
// rotated keys and the values of every kv head, as f32 (default) or q8_0 blocks (llama.cpp's
// layout: 32 values share one f16 scale; about 3.8x smaller). Which sequence owns which block
// is decided by the engine's block manager (engine/block_pool.h); the model only reads and
// writes slots through a sequence's block table.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/status.h"
#include "model/config.h"

namespace merlin {

class KvCache {
 public:
  // `type` F32 or Q8_0; Q8_0 needs head_dim % 32 == 0 (each head starts a block). Callers check
  // supported_type() first and report its message (Engine::create, the CLI's --kv-type): an
  // unsupported type is refused, never replaced by f32, so constructing with one is a bug and
  // aborts.
  KvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size, DType type = DType::F32);
  static Status supported_type(const ModelConfig& c, DType type);

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  DType type() const { return type_; }
  int64_t row_floats() const { return row_; }   // n_head_kv * head_dim
  size_t slot_bytes() const { return slot_bytes_; }
  // A layer's storage, [n_blocks][block_size][slot_bytes]: floats for F32, BlockQ8_0 for Q8_0.
  const void* k(int32_t layer) const { return k_[layer].get(); }
  const void* v(int32_t layer) const { return v_[layer].get(); }
  // F32 caches only (nullptr otherwise): direct access to one slot's row_floats() values.
  float* k_slot(int32_t layer, int32_t block, int32_t slot) {
    return type_ == DType::F32 ? reinterpret_cast<float*>(slot_ptr(k_, layer, block, slot)) : nullptr;
  }
  float* v_slot(int32_t layer, int32_t block, int32_t slot) {
    return type_ == DType::F32 ? reinterpret_cast<float*>(slot_ptr(v_, layer, block, slot)) : nullptr;
  }
  // Stores one token's keys and values (row_floats() each), quantizing for Q8_0.
  void write_slot(int32_t layer, int32_t block, int32_t slot, const float* k, const float* v);
  size_t bytes() const;
  static size_t bytes_per_token(const ModelConfig& c, DType type = DType::F32) {
    const int64_t row = static_cast<int64_t>(c.n_head_kv) * c.head_dim;
    const bool q8 = type == DType::Q8_0 && supported_type(c, type).ok();
    return static_cast<size_t>(c.n_layer) * 2 * (q8 ? row_bytes(DType::Q8_0, row) : row * sizeof(float));
  }

 private:
  uint8_t* slot_ptr(std::vector<std::unique_ptr<uint8_t[]>>& s, int32_t layer, int32_t block, int32_t slot) {
    return s[layer].get() + (static_cast<size_t>(block) * block_size_ + slot) * slot_bytes_;
  }

  int32_t n_blocks_, block_size_;
  DType type_;
  int64_t row_;
  size_t slot_bytes_;
  std::vector<std::unique_ptr<uint8_t[]>> k_, v_;
};

// Parses "f32" / "q8_0" (the --kv-type flag); nullopt otherwise.
std::optional<DType> kv_type_from_name(const std::string& name);
// The names kv_type_from_name accepts, for messages: "f32, q8_0".
const char* kv_type_names();

}  // namespace merlin
