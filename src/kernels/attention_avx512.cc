// AVX-512 attention for one token and one kv head: the query heads of the GQA group share each
// key and value load. head_dim must be a multiple of 16.
#include <immintrin.h>

#include <cmath>

#include "kernels/ops.h"

namespace merlin::detail {

void attention_avx512(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  const int32_t d = a.head_dim, group = a.n_head / a.n_head_kv, nv = d / 16;
  const int64_t n_keys = a.n_past + t + 1;
  const int64_t row = static_cast<int64_t>(a.n_head_kv) * d;
  constexpr int kMaxGroup = 16, kMaxVec = 16;  // head_dim <= 256
  static_assert(kMaxVec * 16 == 256);  // the caller checks group <= 16, head_dim <= 256
  float* sc[kMaxGroup];
  float mx[kMaxGroup];
  for (int g = 0; g < group; ++g) {
    sc[g] = scores + g * n_keys;
    mx[g] = -INFINITY;
  }
  const float* qh = a.q + (t * a.n_head + kvh * group) * d;
  for (int64_t j = 0; j < n_keys; ++j) {
    const float* k = a.k + (static_cast<int64_t>(a.block_table[j / a.block_size]) * a.block_size +
                            j % a.block_size) * row + kvh * d;
    for (int g = 0; g < group; ++g) {
      const float* q = qh + g * d;
      __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
      for (int i = 1; i < nv; ++i)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * i), _mm512_loadu_ps(k + 16 * i), acc);
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
      const float* v = a.v + (static_cast<int64_t>(a.block_table[j / a.block_size]) * a.block_size +
                              j % a.block_size) * row + kvh * d + 16 * i0;
      __m512 vv[4];
      for (int i = 0; i < nvs; ++i) vv[i] = _mm512_loadu_ps(v + 16 * i);
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

}  // namespace merlin::detail
