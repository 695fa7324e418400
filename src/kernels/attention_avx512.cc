// AVX-512 attention for one token and one kv head: the query heads of the GQA group share each
// key and value load. head_dim must be a multiple of 16. A q8_0 cache is dequantized 16 values
// at a time in registers (int8 -> f32 times the block's scale, exactly as the scalar path).
#include <immintrin.h>

#include <cmath>

#include "kernels/ops.h"
#include "kernels/quant_internal.h"

namespace merlin::detail {

namespace {

// Elements e..e+15 (e % 16 == 0) of a q8_0 row.
inline __m512 q8_vec(const quant::BlockQ8_0* row, int e) {
  const quant::BlockQ8_0& b = row[e / 32];
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + (e % 32)));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(quant::h2f(b.d)));
}

template <bool kQ8>
struct KvRows {
  const void* base;
  int64_t row_stride;  // bytes per slot
  int64_t head_off;    // bytes to this kv head
  const float* f32(int64_t slot) const {
    return reinterpret_cast<const float*>(static_cast<const uint8_t*>(base) + slot * row_stride + head_off);
  }
  const quant::BlockQ8_0* q8(int64_t slot) const {
    return reinterpret_cast<const quant::BlockQ8_0*>(static_cast<const uint8_t*>(base) + slot * row_stride + head_off);
  }
  __m512 load(int64_t slot, int e) const {
    if constexpr (kQ8) return q8_vec(q8(slot), e);
    else return _mm512_loadu_ps(f32(slot) + e);
  }
};

template <bool kQ8>
void attention_impl(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  const int32_t d = a.head_dim, group = a.n_head / a.n_head_kv, nv = d / 16;
  const int64_t n_keys = a.n_past + t + 1;
  const int64_t row = static_cast<int64_t>(a.n_head_kv) * d;
  const int64_t stride = static_cast<int64_t>(row_bytes(a.kv_type, row));
  const int64_t head_off = static_cast<int64_t>(row_bytes(a.kv_type, static_cast<int64_t>(kvh) * d));
  const KvRows<kQ8> K{a.k, stride, head_off}, V{a.v, stride, head_off};
  auto slot_of = [&](int64_t j) {
    return static_cast<int64_t>(a.block_table[j / a.block_size]) * a.block_size + j % a.block_size;
  };
  constexpr int kMaxGroup = 16, kMaxVec = 16;  // head_dim <= 256
  static_assert(kMaxVec * 16 == 256);  // the caller checks group <= 16, head_dim <= 256
  float* sc[kMaxGroup];
  float mx[kMaxGroup];
  for (int g = 0; g < group; ++g) {
    sc[g] = scores + g * n_keys;
    mx[g] = -INFINITY;
  }
  const float* qh = a.q + (t * a.n_head + kvh * group) * d;
  __m512 kv[kMaxVec];
  for (int64_t j = 0; j < n_keys; ++j) {
    const int64_t slot = slot_of(j);
    for (int i = 0; i < nv; ++i) kv[i] = K.load(slot, 16 * i);
    for (int g = 0; g < group; ++g) {
      const float* q = qh + g * d;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), kv[0]);
      for (int i = 1; i < nv; ++i) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * i), kv[i], acc);
      float s = _mm512_reduce_add_ps(acc) * a.scale;
      sc[g][j] = s;
      mx[g] = s > mx[g] ? s : mx[g];
    }
  }
  float inv[kMaxGroup];
  for (int g = 0; g < group; ++g) {
    float sum = 0;
    for (int64_t j = 0; j < n_keys; ++j) {
      sc[g][j] = std::exp(sc[g][j] - mx[g]);
      sum += sc[g][j];
    }
    inv[g] = 1.0f / sum;
  }
  __m512 o[kMaxGroup][4];
  // Up to 64 floats per head kept in registers; larger heads loop over 64-wide slices.
  for (int i0 = 0; i0 < nv; i0 += 4) {
    const int nvs = nv - i0 < 4 ? nv - i0 : 4;
    for (int g = 0; g < group; ++g)
      for (int i = 0; i < nvs; ++i) o[g][i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n_keys; ++j) {
      const int64_t slot = slot_of(j);
      __m512 vv[4];
      for (int i = 0; i < nvs; ++i) vv[i] = V.load(slot, 16 * (i0 + i));
      for (int g = 0; g < group; ++g) {
        __m512 p = _mm512_set1_ps(sc[g][j] * inv[g]);
        for (int i = 0; i < nvs; ++i) o[g][i] = _mm512_fmadd_ps(p, vv[i], o[g][i]);
      }
    }
    for (int g = 0; g < group; ++g) {
      float* out = a.out + (t * a.n_head + kvh * group + g) * d + 16 * i0;
      for (int i = 0; i < nvs; ++i) _mm512_storeu_ps(out + 16 * i, o[g][i]);
    }
  }
}

}  // namespace

void attention_avx512(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  if (a.kv_type == DType::Q8_0) attention_impl<true>(a, t, kvh, scores);
  else attention_impl<false>(a, t, kvh, scores);
}

}  // namespace merlin::detail
