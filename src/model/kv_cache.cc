#include "model/kv_cache.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/quant.h"

namespace merlin {

Status KvCache::supported_type(const ModelConfig& c, DType type) {
  if (type == DType::F32) return Status::Ok();
  if (type == DType::Q8_0) {
    if (c.head_dim % 32 != 0)
      return {Code::kUnsupported, fmt::format("q8_0 KV cache needs head_dim to be a multiple of 32 (it is {})", c.head_dim)};
    return Status::Ok();
  }
  return {Code::kUnsupported, fmt::format("KV cache type {} is not supported ({})", dtype_name(type), kv_type_names())};
}

namespace {
DType checked_type(const ModelConfig& c, DType type) {
  if (auto st = KvCache::supported_type(c, type); !st.ok()) {
    std::fprintf(stderr, "KvCache: %s (callers must check KvCache::supported_type)\n", st.message.c_str());
    std::abort();
  }
  return type;
}
}  // namespace

KvCache::KvCache(const ModelConfig& c, int32_t n_blocks, int32_t block_size, DType type)
    : n_blocks_(n_blocks),
      block_size_(block_size),
      type_(checked_type(c, type)),
      row_(static_cast<int64_t>(c.n_head_kv) * c.head_dim),
      slot_bytes_(row_bytes(type_, row_)) {
  const size_t n = static_cast<size_t>(n_blocks) * block_size * slot_bytes_;
  for (int32_t l = 0; l < c.n_layer; ++l) {
    // Zero-filled so a bug that reads an unwritten slot gives a deterministic result (zero
    // bytes are 0.0f in f32 and a zero-scale block in q8_0).
    k_.emplace_back(new uint8_t[n]());
    v_.emplace_back(new uint8_t[n]());
  }
}

void KvCache::write_slot(int32_t layer, int32_t block, int32_t slot, const float* k, const float* v) {
  uint8_t* kd = slot_ptr(k_, layer, block, slot);
  uint8_t* vd = slot_ptr(v_, layer, block, slot);
  if (type_ == DType::F32) {
    std::memcpy(kd, k, slot_bytes_);
    std::memcpy(vd, v, slot_bytes_);
  } else {
    quant_quantize_row(type_, k, kd, row_);
    quant_quantize_row(type_, v, vd, row_);
  }
}

size_t KvCache::bytes() const {
  return k_.size() * 2 * static_cast<size_t>(n_blocks_) * block_size_ * slot_bytes_;
}

std::optional<DType> kv_type_from_name(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "q8_0") return DType::Q8_0;
  return std::nullopt;
}

const char* kv_type_names() { return "f32, q8_0"; }

}  // namespace merlin
