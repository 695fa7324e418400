// AVX-512 attention for one token and one kv head: the query heads of the GQA group share each
// key and value load. head_dim must be a multiple of 16. A q8_0 cache is dequantized 16 values
// at a time in registers (int8 -> f32 times the block's scale, exactly as the scalar path).
#include <immintrin.h>

#include <algorithm>
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
  // The keys (base = a.k) or values (a.v) of kv head kvh, head_dim d.
  static KvRows of(const AttentionArgs& a, const void* base, int32_t kvh, int32_t d) {
    return {base, static_cast<int64_t>(row_bytes(a.kv_type, static_cast<int64_t>(a.n_head_kv) * d)),
            static_cast<int64_t>(row_bytes(a.kv_type, static_cast<int64_t>(kvh) * d))};
  }
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
  const auto K = KvRows<kQ8>::of(a, a.k, kvh, d), V = KvRows<kQ8>::of(a, a.v, kvh, d);
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
    const int64_t slot = kv_slot(a, j);
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
      const int64_t slot = kv_slot(a, j);
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


// exp(x) for the softmax (x <= 0 after the max is subtracted): range reduction to
// r in [-ln2/2, ln2/2], degree-6 Taylor polynomial (relative error < 2e-7), then 2^n by
// VSCALEFPS. Deterministic, so batch invariance holds.
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Sums of 16 vectors, one per lane: a transpose-and-add tree (15 adds) instead of 16
// horizontal reductions. The tree leaves the sums in a fixed shuffled lane order.
__attribute__((always_inline)) inline __m512 reduce16_tree(const __m512 (&v)[16]) {
  __m512 s8[8], s4[4], s2[2];
  // Unrolled so the partial sums stay in registers (GCC -O2 keeps loop arrays in memory).
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k)
    s8[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                          _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)
    s4[k] = _mm512_add_ps(_mm512_shuffle_f32x4(s8[2 * k], s8[2 * k + 1], 0x88),
                          _mm512_shuffle_f32x4(s8[2 * k], s8[2 * k + 1], 0xDD));
#pragma GCC unroll 2
  for (int k = 0; k < 2; ++k)
    s2[k] = _mm512_add_ps(_mm512_shuffle_ps(s4[2 * k], s4[2 * k + 1], 0x44), _mm512_shuffle_ps(s4[2 * k], s4[2 * k + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(s2[0], s2[1], 0x88), _mm512_shuffle_ps(s2[0], s2[1], 0xDD));
}

// out[k] = sum of the lanes of v[k], in key order.
__attribute__((always_inline)) inline __m512 reduce16(const __m512 (&v)[16]) {
  // Which input ends in which lane: run the tree once on one-hot inputs (powers of two sum
  // exactly) and invert.
  static const __m512i order = [] {
    __m512 hot[16];
    for (int k = 0; k < 16; ++k) hot[k] = _mm512_set1_ps(static_cast<float>(1 << k));
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, reduce16_tree(hot));
    alignas(64) int idx[16];
    for (int l = 0; l < 16; ++l) {
      const int k = __builtin_ctz(static_cast<unsigned>(lanes[l] / 16.0f));
      idx[k] = l;  // the sum of input k sits in lane l
    }
    return _mm512_load_si512(idx);
  }();
  return _mm512_permutexvar_ps(order, reduce16_tree(v));
}

template <bool kQ8, int G, int NV>
void attention_fixed(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  const int32_t d = NV * 16;
  const int64_t n_keys = a.n_past + t + 1;
  const auto K = KvRows<kQ8>::of(a, a.k, kvh, d), V = KvRows<kQ8>::of(a, a.v, kvh, d);
  const int64_t n_pad = (n_keys + 15) / 16 * 16;
  const bool contiguous16 = a.block_size % 16 == 0;
  float* sc[G];
  for (int g = 0; g < G; ++g) sc[g] = scores + g * n_pad;
  const float* qh = a.q + (t * a.n_head + kvh * G) * d;
  __m512 q[G][NV];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i) q[g][i] = _mm512_loadu_ps(qh + g * d + 16 * i);
  const __m512 scale = _mm512_set1_ps(a.scale);
  __m512 mx[G];
  for (int g = 0; g < G; ++g) mx[g] = _mm512_set1_ps(-INFINITY);
  // Scores, 16 keys at a time; lanes past the last key are -inf.
  for (int64_t j0 = 0; j0 < n_keys; j0 += 16) {
    const int nk = static_cast<int>(std::min<int64_t>(16, n_keys - j0));
    int64_t slots[16];
    if (contiguous16) {
      // 16 keys from a 16-aligned start lie in one block: one division per 16 keys.
      const int64_t base = kv_slot(a, j0);
      for (int k = 0; k < 16; ++k) slots[k] = base + k;
    } else {
      for (int k = 0; k < nk; ++k) slots[k] = kv_slot(a, j0 + k);
    }
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      __m512 acc[16];
      if (nk == 16) {
#pragma GCC unroll 16
        for (int k = 0; k < 16; ++k) {
          acc[k] = _mm512_mul_ps(q[g][0], K.load(slots[k], 0));
#pragma GCC unroll 16
          for (int i = 1; i < NV; ++i) acc[k] = _mm512_fmadd_ps(q[g][i], K.load(slots[k], 16 * i), acc[k]);
        }
      } else {
        for (int k = 0; k < 16; ++k) {
          acc[k] = _mm512_setzero_ps();
          if (k >= nk) continue;
#pragma GCC unroll 16
          for (int i = 0; i < NV; ++i) acc[k] = _mm512_fmadd_ps(q[g][i], K.load(slots[k], 16 * i), acc[k]);
        }
      }
      __m512 s = _mm512_mul_ps(reduce16(acc), scale);
      s = _mm512_mask_blend_ps(static_cast<__mmask16>(nk == 16 ? 0xffff : (1u << nk) - 1), _mm512_set1_ps(-INFINITY), s);
      _mm512_storeu_ps(sc[g] + j0, s);
      mx[g] = _mm512_max_ps(mx[g], s);
    }
  }
  float inv[G];
  for (int g = 0; g < G; ++g) {
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx[g]));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j0 = 0; j0 < n_pad; j0 += 16) {
      __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(sc[g] + j0), m));
      _mm512_storeu_ps(sc[g] + j0, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[g] = 1.0f / _mm512_reduce_add_ps(sum);
  }
  __m512 o[G][NV];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < NV; ++i) o[g][i] = _mm512_setzero_ps();
  int64_t slot = 0;
  for (int64_t j = 0; j < n_keys; ++j) {
    slot = (j % 16 == 0 || !contiguous16) ? kv_slot(a, j) : slot + 1;
    __m512 vv[NV];
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) vv[i] = V.load(slot, 16 * i);
#pragma GCC unroll 16
    for (int g = 0; g < G; ++g) {
      const __m512 p = _mm512_set1_ps(sc[g][j]);
#pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) o[g][i] = _mm512_fmadd_ps(p, vv[i], o[g][i]);
    }
  }
  for (int g = 0; g < G; ++g) {
    float* out = a.out + (t * a.n_head + kvh * G + g) * d;
    const __m512 iv = _mm512_set1_ps(inv[g]);
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(o[g][i], iv));
  }
}

// The same computation as attention_fixed for `nt` consecutive tokens t0.. of one sequence and
// one kv head, with each block of keys and values read from memory once for the whole tile
// instead of once per token: a prompt chunk over a long context is bound by moving K and V
// through the caches, not by arithmetic. Every (token, head) output goes through exactly the
// operations of attention_fixed in the same order (scores per 16 keys, the max, exp and sum in
// key order, the value FMA chain in key order), so results are bitwise identical to computing
// the tokens one at a time: batch invariance holds.
template <bool kQ8, int G, int NV>
void attention_tile(const AttentionArgs& a, int64_t t0, int nt, int32_t kvh, float* scores) {
  const int32_t d = NV * 16;
  const auto K = KvRows<kQ8>::of(a, a.k, kvh, d), V = KvRows<kQ8>::of(a, a.v, kvh, d);
  const bool contiguous16 = a.block_size % 16 == 0;
  const int64_t keys_max = a.n_past + t0 + nt;  // the last token's keys
  const int64_t pad_max = (keys_max + 15) / 16 * 16;
  auto n_keys = [&](int t) { return a.n_past + t0 + t + 1; };
  auto sc = [&](int t, int g) { return scores + (static_cast<int64_t>(t) * G + g) * pad_max; };
  const __m512 scale = _mm512_set1_ps(a.scale);
  // 1. Scores, 16 keys at a time; lanes past a token's last key are -inf.
  for (int64_t j0 = 0; j0 < keys_max; j0 += 16) {
    const int nk_max = static_cast<int>(std::min<int64_t>(16, keys_max - j0));
    int64_t slots[16];
    if (contiguous16) {
      const int64_t base = kv_slot(a, j0);
      for (int k = 0; k < 16; ++k) slots[k] = base + k;
    } else {
      for (int k = 0; k < nk_max; ++k) slots[k] = kv_slot(a, j0 + k);
    }
    for (int t = 0; t < nt; ++t) {
      if (j0 >= n_keys(t)) continue;
      const int nk = static_cast<int>(std::min<int64_t>(16, n_keys(t) - j0));
      const float* qh = a.q + ((t0 + t) * a.n_head + kvh * G) * d;
      for (int g = 0; g < G; ++g) {
        // One head's query at a time (NV registers beside the 16 accumulators): holding the
        // whole group's queries spills. The arithmetic is attention_fixed's.
        __m512 q[NV];
        for (int i = 0; i < NV; ++i) q[i] = _mm512_loadu_ps(qh + g * d + 16 * i);
        __m512 acc[16];
        if (nk == 16 && !kQ8 && contiguous16) {
          // 16 consecutive slots: walk one pointer instead of looking up each key's address.
          const float* pk = K.f32(slots[0]);
          const int64_t step = K.row_stride / static_cast<int64_t>(sizeof(float));
#pragma GCC unroll 16
          for (int k = 0; k < 16; ++k, pk += step) {
            acc[k] = _mm512_mul_ps(q[0], _mm512_loadu_ps(pk));
#pragma GCC unroll 16
            for (int i = 1; i < NV; ++i) acc[k] = _mm512_fmadd_ps(q[i], _mm512_loadu_ps(pk + 16 * i), acc[k]);
          }
        } else if (nk == 16) {
#pragma GCC unroll 16
          for (int k = 0; k < 16; ++k) {
            acc[k] = _mm512_mul_ps(q[0], K.load(slots[k], 0));
#pragma GCC unroll 16
            for (int i = 1; i < NV; ++i) acc[k] = _mm512_fmadd_ps(q[i], K.load(slots[k], 16 * i), acc[k]);
          }
        } else {
          for (int k = 0; k < 16; ++k) {
            acc[k] = _mm512_setzero_ps();
            if (k >= nk) continue;
#pragma GCC unroll 16
            for (int i = 0; i < NV; ++i) acc[k] = _mm512_fmadd_ps(q[i], K.load(slots[k], 16 * i), acc[k]);
          }
        }
        __m512 s = _mm512_mul_ps(reduce16(acc), scale);
        s = _mm512_mask_blend_ps(static_cast<__mmask16>(nk == 16 ? 0xffff : (1u << nk) - 1), _mm512_set1_ps(-INFINITY), s);
        _mm512_storeu_ps(sc(t, g) + j0, s);
      }
    }
  }
  // 2. Softmax numerators and sums, per (token, head) as attention_fixed does them.
  float inv[kAttentionTile][G];
  for (int t = 0; t < nt; ++t) {
    const int64_t n_pad = (n_keys(t) + 15) / 16 * 16;
    for (int g = 0; g < G; ++g) {
      float* row = sc(t, g);
      __m512 mx = _mm512_set1_ps(-INFINITY);
      for (int64_t j0 = 0; j0 < n_pad; j0 += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(row + j0));
      const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j0 = 0; j0 < n_pad; j0 += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j0), m));
        _mm512_storeu_ps(row + j0, e);
        sum = _mm512_add_ps(sum, e);
      }
      inv[t][g] = 1.0f / _mm512_reduce_add_ps(sum);
    }
  }
  // 3. Values: 32 keys' rows stay in L1 while every token of the tile takes them, each token's
  // accumulators carried in key order across blocks.
  alignas(64) float obuf[kAttentionTile][G][NV * 16];
  for (int t = 0; t < nt; ++t)
    for (int g = 0; g < G; ++g)
      for (int i = 0; i < NV * 16; ++i) obuf[t][g][i] = 0.0f;
  constexpr int64_t kVBlock = 32;
  for (int64_t jb = 0; jb < keys_max; jb += kVBlock) {
    for (int t = 0; t < nt; ++t) {
      const int64_t jend = std::min<int64_t>(jb + kVBlock, n_keys(t));
      if (jb >= jend) continue;
      __m512 o[G][NV];
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < NV; ++i) o[g][i] = _mm512_load_ps(&obuf[t][g][16 * i]);
      const float* p[G];
      for (int g = 0; g < G; ++g) p[g] = sc(t, g);
      int64_t slot = 0;
      for (int64_t j = jb; j < jend; ++j) {
        slot = (j % 16 == 0 || j == jb || !contiguous16) ? kv_slot(a, j) : slot + 1;
        __m512 vv[NV];
#pragma GCC unroll 16
        for (int i = 0; i < NV; ++i) vv[i] = V.load(slot, 16 * i);
#pragma GCC unroll 16
        for (int g = 0; g < G; ++g) {
          const __m512 pj = _mm512_set1_ps(p[g][j]);
#pragma GCC unroll 16
          for (int i = 0; i < NV; ++i) o[g][i] = _mm512_fmadd_ps(pj, vv[i], o[g][i]);
        }
      }
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < NV; ++i) _mm512_store_ps(&obuf[t][g][16 * i], o[g][i]);
    }
  }
  for (int t = 0; t < nt; ++t)
    for (int g = 0; g < G; ++g) {
      float* out = a.out + ((t0 + t) * a.n_head + kvh * G + g) * d;
      const __m512 iv = _mm512_set1_ps(inv[t][g]);
      for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, _mm512_mul_ps(_mm512_load_ps(&obuf[t][g][16 * i]), iv));
    }
}

template <bool kQ8>
bool attention_dispatch(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  const int g = a.n_head / a.n_head_kv, nv = a.head_dim / 16;
#define MERLIN_ATT(G, NV) \
  if (g == G && nv == NV) { attention_fixed<kQ8, G, NV>(a, t, kvh, scores); return true; }
  MERLIN_ATT(1, 4) MERLIN_ATT(2, 4) MERLIN_ATT(3, 4) MERLIN_ATT(4, 4) MERLIN_ATT(8, 4)
  MERLIN_ATT(1, 8) MERLIN_ATT(2, 8) MERLIN_ATT(4, 8) MERLIN_ATT(6, 8) MERLIN_ATT(7, 8) MERLIN_ATT(8, 8)
#undef MERLIN_ATT
  return false;
}

template <bool kQ8>
bool attention_tile_dispatch(const AttentionArgs& a, int64_t t0, int nt, int32_t kvh, float* scores) {
  const int g = a.n_head / a.n_head_kv, nv = a.head_dim / 16;
#define MERLIN_ATT(G, NV) \
  if (g == G && nv == NV) { attention_tile<kQ8, G, NV>(a, t0, nt, kvh, scores); return true; }
  MERLIN_ATT(1, 4) MERLIN_ATT(2, 4) MERLIN_ATT(3, 4) MERLIN_ATT(4, 4) MERLIN_ATT(8, 4)
  MERLIN_ATT(1, 8) MERLIN_ATT(2, 8) MERLIN_ATT(4, 8) MERLIN_ATT(6, 8) MERLIN_ATT(7, 8) MERLIN_ATT(8, 8)
#undef MERLIN_ATT
  return false;
}

}  // namespace

bool attention_avx512_tile(const AttentionArgs& a, int64_t t0, int32_t nt, int32_t kvh, float* scores) {
  if (nt < 1 || nt > kAttentionTile) return false;
  return a.kv_type == DType::Q8_0 ? attention_tile_dispatch<true>(a, t0, nt, kvh, scores)
                                  : attention_tile_dispatch<false>(a, t0, nt, kvh, scores);
}

void attention_avx512(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  // Common shapes (GQA group, head_dim) get a version with every loop bound known at compile
  // time, so queries, accumulators and outputs live in registers.
  if (a.kv_type == DType::Q8_0 ? attention_dispatch<true>(a, t, kvh, scores) : attention_dispatch<false>(a, t, kvh, scores))
    return;
  if (a.kv_type == DType::Q8_0) attention_impl<true>(a, t, kvh, scores);
  else attention_impl<false>(a, t, kvh, scores);
}

}  // namespace merlin::detail
