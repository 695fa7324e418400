#include "core/dtype.h"

#include <cmath>
#include <string>

namespace merlin {

DTypeInfo dtype_info(DType t) {
  switch (t) {
    case DType::F32: return {"f32", 1, 4, true};
    case DType::F16: return {"f16", 1, 2, true};
    case DType::BF16: return {"bf16", 1, 2, true};
    case DType::F64: return {"f64", 1, 8, true};
    case DType::I8: return {"i8", 1, 1, true};
    case DType::I16: return {"i16", 1, 2, true};
    case DType::I32: return {"i32", 1, 4, true};
    case DType::I64: return {"i64", 1, 8, true};
    case DType::Q4_0: return {"q4_0", 32, 18, true};
    case DType::Q4_1: return {"q4_1", 32, 20, true};
    case DType::Q5_0: return {"q5_0", 32, 22, true};
    case DType::Q5_1: return {"q5_1", 32, 24, true};
    case DType::Q8_0: return {"q8_0", 32, 34, true};
    case DType::Q8_1: return {"q8_1", 32, 36, true};
    case DType::Q2_K: return {"q2_k", 256, 84, true};
    case DType::Q3_K: return {"q3_k", 256, 110, true};
    case DType::Q4_K: return {"q4_k", 256, 144, true};
    case DType::Q5_K: return {"q5_k", 256, 176, true};
    case DType::Q6_K: return {"q6_k", 256, 210, true};
    case DType::Q8_K: return {"q8_k", 256, 292, true};
    default: return {"unknown", 1, 0, false};
  }
}

DType dtype_from_name(std::string_view name) {
  std::string n(name);
  for (auto& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (uint32_t v = 0; v <= 30; ++v) {
    auto t = static_cast<DType>(v);
    auto i = dtype_info(t);
    if (i.known && n == i.name) return t;
  }
  return DType::kInvalid;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0) v = std::ldexp(static_cast<float>(man), -24);
  else if (exp == 31) v = man ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  uint32_t man = x & 0x7fffff;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (man ? 0x200 : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    man |= 0x800000;
    uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;
  return static_cast<uint16_t>(half);
}

}  // namespace merlin
