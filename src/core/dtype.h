// Element types of tensors, including llama.cpp's quantized block types. A quantization format
// is a dtype of a tensor, not a property of a model. Enum values equal ggml's type ids so GGUF
// tensor infos map directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace merlin {

enum class DType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, BF16 = 30,
  kInvalid = 0xffffffff,
};

struct DTypeInfo {
  const char* name;
  int block_elems;    // elements per block (1 for plain types)
  int block_bytes;    // bytes per block
  bool known;
};

// Layout table for every type Merlin understands; .known=false for the rest.
DTypeInfo dtype_info(DType t);
inline const char* dtype_name(DType t) { return dtype_info(t).name; }
// Bytes needed for a row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
  auto i = dtype_info(t);
  return static_cast<size_t>(n / i.block_elems) * i.block_bytes;
}
DType dtype_from_name(std::string_view name);  // "f32", "bf16", "q4_k"... ; kInvalid if unknown

// ---- scalar conversions (exact reference versions) ----
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest even, NaN kept quiet (matches torch / ggml).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace merlin
