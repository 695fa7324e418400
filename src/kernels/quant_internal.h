// llama.cpp block layouts (ggml-common.h) and helpers shared by quant*.cc. Internal header.
#pragma once
#include <cstdint>
#include <cstring>

#include "core/dtype.h"

namespace merlin::quant {

constexpr int QK = 32;     // legacy block size
constexpr int QK_K = 256;  // K-quant super-block size

struct BlockQ4_0 { uint16_t d; uint8_t qs[16]; };
struct BlockQ4_1 { uint16_t d, m; uint8_t qs[16]; };
struct BlockQ5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ5_1 { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; };
struct BlockQ8_0 { uint16_t d; int8_t qs[32]; };
struct BlockQ2_K { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; };
struct BlockQ3_K { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; };
struct BlockQ4_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct BlockQ5_K { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; };
struct BlockQ6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
struct BlockQ8_K { float d; int8_t qs[256]; int16_t bsums[16]; };

static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24 && sizeof(BlockQ8_0) == 34 && sizeof(BlockQ2_K) == 84 &&
              sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 &&
              sizeof(BlockQ6_K) == 210 && sizeof(BlockQ8_K) == 292, "ggml block layouts");

inline float bits_to_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// Exact IEEE half -> float without branches on the common path (hot in dequantization).
inline float h2f(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t r = sign | (two_w < (1u << 27) ? f32_to_bits(denormalized) : f32_to_bits(normalized));
  return bits_to_f32(r);
}
inline uint16_t f2h(float f) { return f32_to_f16(f); }

// ggml's nearest_int: round half to even via the 1.5*2^23 trick (|x| < 2^22).
inline int nearest_int(float fval) {
  float val = fval + 12582912.f;
  int i;
  std::memcpy(&i, &val, 4);
  return (i & 0x007fffff) - 0x00400000;
}

// 6-bit scale and min j (0..7) of a Q4_K / Q5_K block.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& d, uint8_t& m) {
  if (j < 4) {
    d = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

// Signature of a row dot product: n weights (a multiple of the block) against the activation
// row already quantized to Q8_0 (legacy types) or Q8_K (K-quants).
using VecDotFn = float (*)(const void* w, const void* xq, int64_t n);

// SIMD kernels (nullptr where a type has none). Defined in quant_avx2.cc / quant_avx512.cc.
VecDotFn vec_dot_avx2(DType t);
VecDotFn vec_dot_avx512(DType t);

}  // namespace merlin::quant

namespace merlin { struct MatmulArgs; }

namespace merlin::quant {
// Scalar reference dot for weight type t (nullptr when t has none).
VecDotFn vec_dot_scalar(DType t);
// The dot for t at the current cpu_level() (SIMD when available, else scalar).
VecDotFn vec_dot_best(DType t);
// Activation block type a weight type is multiplied with: Q8_K for K-quants, else Q8_0.
DType vec_dot_act_type(DType t);
}  // namespace merlin::quant

namespace merlin::quant {
// Where block position b of a 16-row group lives in Layout::kInterleave16 (see quant.h). Each
// block has a head (the rows' fp16 super-scales: 32 or 64 bytes) and a body (a multiple of 64
// bytes). 32-byte heads are stored in pairs, [head b | head b+1] then body b, body b+1, so that
// every body starts on a 64-byte boundary and no vector load is split across cache lines.
struct X16Geom {
  int64_t head = 0, body = 0;
  static constexpr X16Geom of(DType t) {
    switch (t) {
      case DType::Q4_0: return {32, 4 * 64};                   // d | 4 quant chunks
      case DType::Q8_0: return {32, 8 * 64};                   // d | 8 quant chunks
      case DType::Q4_K: return {64, 128 + 128 + 32 * 64};      // d, dmin | scales, mins, 32 chunks
      case DType::Q6_K: return {32, 256 + 32 * 64 + 16 * 64};  // d | 16 scales, 32 ql, 16 qh chunks
      default: return {};
    }
  }
  constexpr bool paired() const { return head == 32; }
  constexpr int64_t offset(int64_t b) const {  // start of block b's pair (paired) or block
    return paired() ? (b / 2) * (64 + 2 * body) : b * (head + body);
  }
  constexpr int64_t head_at(int64_t b) const { return offset(b) + (paired() ? 32 * (b % 2) : 0); }
  constexpr int64_t body_at(int64_t b) const { return paired() ? offset(b) + 64 + (b % 2) * body : offset(b) + head; }
  constexpr int64_t group_bytes(int64_t nb) const {
    return paired() ? (nb / 2) * (64 + 2 * body) + (nb % 2) * (64 + body) : nb * (head + body);
  }
};

// Q6_K body after its 256 scale bytes: per 128-weight half, 24 chunks in the order the
// gemv streams them, column j = 0..7 of the half: ql(j) qh(j) ql(8 + j). One pass reads every
// line once, front to back; with ql and qh as two separate regions a DRAM-bound gemv ran at a
// third of its speed. c counts 4-byte columns of the block (ql: 32, qh: 16).
constexpr int q6k_ql_chunk(int c) {
  const int n = c / 16, cc = c % 16;
  return 24 * n + (cc < 8 ? 3 * cc : 3 * (cc - 8) + 2);
}
constexpr int q6k_qh_chunk(int c) { return 24 * (c / 8) + 3 * (c % 8) + 1; }
}  // namespace merlin::quant
