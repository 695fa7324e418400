// AVX512-VNNI gemv/gemm over Layout::kInterleave16 weights (layout in quant.h): Q4_0, Q8_0,
// Q4_K, Q6_K. Called only when interleave_pays(). Per 32 weights of a 16-row group: the quant
// bytes come in 4-byte-per-row chunks, so each vpdpbusd multiplies 4 weights of all 16 rows by
// 4 broadcast activation bytes, and its 16 int32 lanes are the 16 output columns' partial sums.
// Scales of 16 rows are one vector. Per activation row and 32 weights: 8 vpdpbusd, then one
// multiply-add for the activation scale and offset and one for the row scales.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace merlin::quant {

namespace {

// 32 activations quantized to int8 with scale d (exact f32, not rounded to fp16), and d times
// the sum of the quants of each 16-half (for the unsigned-offset and min corrections).
struct XBlock {
  float d, dsum, dsum_lo, dsum_hi;
  int32_t q4[8];  // 32 int8, read 4 at a time as broadcast dwords
};

void quantize_activations(const float* x, int64_t nb, XBlock* out) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + b * 32), v1 = _mm512_loadu_ps(x + b * 32 + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    const float d = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));  // nearest-even
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
    XBlock& o = out[b];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o.q4), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(o.q4 + 4), _mm512_cvtsepi32_epi8(q1));
    o.d = d;
    o.dsum_lo = d * static_cast<float>(_mm512_reduce_add_epi32(q0));
    o.dsum_hi = d * static_cast<float>(_mm512_reduce_add_epi32(q1));
    o.dsum = o.dsum_lo + o.dsum_hi;
  }
}

// Software prefetch into L2, kDist bytes ahead of a weight stream, each line once. Only the
// Q6_K decode kernel uses it: in the machine's fast-bandwidth phase it lifts that gemv from
// ~60 % to ~70 % of the read probe; Q4_0 and Q8_0 lose 20-25 % with it (the hardware
// prefetcher already keeps up), and every type loses 5-10 % in the slow phase.
struct Prefetch {
  static constexpr int kDist = 8192;
  const uint8_t* next = nullptr;
  void upto(const uint8_t* p) {
    p += kDist;
    while (next < p) {
      _mm_prefetch(reinterpret_cast<const char*>(next), _MM_HINT_T1);
      next += 64;
    }
  }
};

inline __m512i bc(int32_t v) { return _mm512_set1_epi32(v); }
inline __m512i ld(const uint8_t* p) { return _mm512_loadu_si512(p); }

// Sums over chunks 0-3 and 4-7 kept apart (Q4_0's low / high nibbles, Q6_K's two 16-weight
// scale groups); dot8 is their sum.
inline void dot4x2(const __m512i (&w)[8], const int32_t* q, __m512i& a, __m512i& b) {
  a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bc(q[0]));
  b = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[4], bc(q[4]));
  a = _mm512_dpbusd_epi32(a, w[1], bc(q[1]));
  b = _mm512_dpbusd_epi32(b, w[5], bc(q[5]));
  a = _mm512_dpbusd_epi32(a, w[2], bc(q[2]));
  b = _mm512_dpbusd_epi32(b, w[6], bc(q[6]));
  a = _mm512_dpbusd_epi32(a, w[3], bc(q[3]));
  b = _mm512_dpbusd_epi32(b, w[7], bc(q[7]));
}

// Sum over all 8 chunks (32 weights); integer sums are exact in any order.
inline __m512i dot8(const __m512i (&w)[8], const int32_t* q) {
  __m512i a, b;
  dot4x2(w, q, a, b);
  return _mm512_add_epi32(a, b);
}

// 16-byte row vector of u8 / i8 scales -> f32 lanes times the fp16 super-block scale.
inline __m512 scale_u8(const uint8_t* p, __m512 d) {
  return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
}
inline __m512 scale_i8x16(__m128i v, __m512 d) { return _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v))); }
inline __m512 scale_i8(const uint8_t* p, __m512 d) {
  return scale_i8x16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), d);
}
// 16-byte lane i of v; i must fold to a constant.
inline __m128i extract16(__m512i v, int i) {
  switch (i) {
    case 0: return _mm512_castsi512_si128(v);
    case 1: return _mm512_extracti32x4_epi32(v, 1);
    case 2: return _mm512_extracti32x4_epi32(v, 2);
    default: return _mm512_extracti32x4_epi32(v, 3);
  }
}
inline __m512 f16x16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

template <int MR>
struct Acc {
  __m512 v[MR];
  Acc() {
    for (int r = 0; r < MR; ++r) v[r] = _mm512_setzero_ps();
  }
  void store(float* y, int64_t ldy, int cols) {
    const __mmask16 mask = cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
    for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + r * ldy, mask, v[r]);
  }
};

// Q4_0 (offset 8) and Q8_0 (+128): one 32-weight block per step.
template <int MR, bool kQ4>
void rows_q4_0_q8_0(const uint8_t* grp, int64_t nb, const XBlock* const* x, float* y, int64_t ldy, int cols) {
  constexpr X16Geom kGeom = X16Geom::of(kQ4 ? DType::Q4_0 : DType::Q8_0);
  constexpr float kOffset = kQ4 ? 8.0f : 128.0f;
  Acc<MR> acc;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* body = grp + kGeom.body_at(b);
    const __m512 sw = f16x16(grp + kGeom.head_at(b));
    __m512i w[8];
    if constexpr (kQ4) {
      // High nibbles stay in place (16 * q): their partial sum is shifted down once per row
      // below instead of shifting every chunk (exact: each product is a multiple of 16).
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512i z = ld(body + 64 * c);
        w[c] = _mm512_and_si512(z, m4);
        w[4 + c] = _mm512_andnot_si512(m4, z);
      }
    } else {
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) w[c] = ld(body + 64 * c);
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const XBlock& xb = x[r][b];
      __m512i isum;
      if constexpr (kQ4) {
        __m512i lo, hi;
        dot4x2(w, xb.q4, lo, hi);
        isum = _mm512_add_epi32(lo, _mm512_srai_epi32(hi, 4));
      } else {
        isum = dot8(w, xb.q4);
      }
      const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(xb.d), _mm512_set1_ps(-kOffset * xb.dsum));
      acc.v[r] = _mm512_fmadd_ps(sw, t, acc.v[r]);
    }
  }
  acc.store(y, ldy, cols);
}

// Q4_K: w = d*sc*q - dmin*m per 32-weight sub-block; the nibbles of one byte belong to
// sub-blocks 2j (low) and 2j+1 (high) of 64-weight chunk j.
template <int MR>
void rows_q4_k(const uint8_t* grp, int64_t nsb, const XBlock* const* x, float* y, int64_t ldy, int cols) {
  constexpr X16Geom kGeom = X16Geom::of(DType::Q4_K);
  Acc<MR> acc;
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* head = grp + kGeom.head_at(sb);  // d, dmin
    const uint8_t* blk = grp + kGeom.body_at(sb);   // scales, mins, quants
    const __m512 d = f16x16(head), dmin = f16x16(head + 32);
    const uint8_t* qs = blk + 256;
    for (int s = 0; s < 8; ++s) {
      const uint8_t* ch = qs + 64 * 8 * (s / 2);
      __m512i w[8];
      if (s % 2 == 0) {
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) w[c] = _mm512_and_si512(ld(ch + 64 * c), m4);
      } else {
        // High nibbles in place (16 * q); the sum is shifted back once per row (exact).
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) w[c] = _mm512_andnot_si512(m4, ld(ch + 64 * c));
      }
      const __m512 sc = scale_u8(blk + 16 * s, d), mn = scale_u8(blk + 128 + 16 * s, dmin);
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const XBlock& xb = x[r][sb * 8 + s];
        __m512i isum = dot8(w, xb.q4);
        if (s % 2 == 1) isum = _mm512_srai_epi32(isum, 4);
        const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(xb.d));
        acc.v[r] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(xb.dsum), _mm512_fmadd_ps(sc, t, acc.v[r]));
      }
    }
  }
  acc.store(y, ldy, cols);
}

// Q4_K, one activation row (decode): every quant line is loaded once and feeds both of its
// sub-blocks (low nibbles: 2j, high: 2j+1), so the weights stream front to back.
void rows_q4_k_1(const uint8_t* grp, int64_t nsb, const XBlock* x, float* y, int cols) {
  constexpr X16Geom kGeom = X16Geom::of(DType::Q4_K);
  __m512 acc = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* head = grp + kGeom.head_at(sb);
    const uint8_t* blk = grp + kGeom.body_at(sb);
    const __m512 d = f16x16(head), dmin = f16x16(head + 32);
    const uint8_t* qs = blk + 256;
    const XBlock* xs = x + sb * 8;
    // Scales and mins before the quants, in address order: reading them after the quant lines
    // cost 20 % of the DRAM throughput.
    __m512 sc[8], mn[8];
#pragma GCC unroll 8
    for (int s = 0; s < 8; ++s) sc[s] = scale_u8(blk + 16 * s, d), mn[s] = scale_u8(blk + 128 + 16 * s, dmin);
    __m512i lo[4], hi[4];
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) lo[j] = hi[j] = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
#pragma GCC unroll 8
      for (int c = 0; c < 8; ++c) {
        const __m512i z = ld(qs + 512 * j + 64 * c);
        lo[j] = _mm512_dpbusd_epi32(lo[j], _mm512_and_si512(z, m4), bc(xs[2 * j].q4[c]));
        hi[j] = _mm512_dpbusd_epi32(hi[j], _mm512_andnot_si512(m4, z), bc(xs[2 * j + 1].q4[c]));
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      for (int h = 0; h < 2; ++h) {
        const int s = 2 * j + h;
        // High nibbles were multiplied in place (16 * q): shift the sum back (exact).
        const __m512i isum = h ? _mm512_srai_epi32(hi[j], 4) : lo[j];
        const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(xs[s].d));
        acc = _mm512_fnmadd_ps(mn[s], _mm512_set1_ps(xs[s].dsum), _mm512_fmadd_ps(sc[s], t, acc));
      }
    }
  }
  Acc<1> out;
  out.v[0] = acc;
  out.store(y, 0, cols);
}

// Q6_K: w = d*sc16*(q - 32), q = 4 low bits (ql) | 2 high bits (qh) << 4. In each 128-weight
// half, ql byte l holds weights l (low nibble) and l+64 (high), ql byte l+32 weights l+32 and
// l+96, and qh byte l the high bits of l, l+32, l+64, l+96 (bit pairs 0, 2, 4, 6).
template <int MR>
void rows_q6_k(const uint8_t* grp, int64_t nsb, const XBlock* const* x, float* y, int64_t ldy, int cols) {
  constexpr X16Geom kGeom = X16Geom::of(DType::Q6_K);
  Acc<MR> acc;
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk = grp + kGeom.body_at(sb);  // scales, then the ql/qh chunks
    const __m512 d = f16x16(grp + kGeom.head_at(sb));
    for (int n = 0; n < 2; ++n) {
      const uint8_t* q = blk + 256;
      for (int t = 0; t < 4; ++t) {  // weights 32t..32t+31 of this half
        // Chunks of columns lc..lc+7 (ql) and hc..hc+7 (qh) are evenly spaced in the layout.
        const int lc = 16 * n + (t % 2) * 8, hc = 8 * n;
        const uint8_t* lp = q + 64 * q6k_ql_chunk(lc);
        const uint8_t* hp = q + 64 * q6k_qh_chunk(hc);
        const int64_t lstep = 64 * (q6k_ql_chunk(lc + 1) - q6k_ql_chunk(lc));
        const int64_t hstep = 64 * (q6k_qh_chunk(hc + 1) - q6k_qh_chunk(hc));
        __m512i w[8];
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
          const __m512i l = ld(lp + lstep * c);
          const __m512i h = ld(hp + hstep * c);
          const __m512i lo = t < 2 ? _mm512_and_si512(l, m4) : _mm512_and_si512(_mm512_srli_epi16(l, 4), m4);
          __m512i hi;
          switch (t) {
            case 0: hi = _mm512_slli_epi16(h, 4); break;
            case 1: hi = _mm512_slli_epi16(h, 2); break;
            case 2: hi = h; break;
            default: hi = _mm512_srli_epi16(h, 2); break;
          }
          w[c] = _mm512_or_si512(lo, _mm512_and_si512(hi, m30));
        }
        const __m512 sc_lo = scale_i8(blk + 16 * (8 * n + 2 * t), d);
        const __m512 sc_hi = scale_i8(blk + 16 * (8 * n + 2 * t + 1), d);
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
          const XBlock& xb = x[r][sb * 8 + 4 * n + t];
          __m512i s0, s1;
          dot4x2(w, xb.q4, s0, s1);
          const __m512 vd = _mm512_set1_ps(xb.d);
          const __m512 t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), vd, _mm512_set1_ps(-32.0f * xb.dsum_lo));
          const __m512 t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s1), vd, _mm512_set1_ps(-32.0f * xb.dsum_hi));
          acc.v[r] = _mm512_fmadd_ps(sc_hi, t1, _mm512_fmadd_ps(sc_lo, t0, acc.v[r]));
        }
      }
    }
  }
  acc.store(y, ldy, cols);
}

// Q6_K, one activation row (decode): column j of a half loads ql(j), qh(j), ql(8 + j) once,
// in layout order, and builds the 4 weights it holds for each of the half's 4 sub-blocks t
// (ql low/high nibble, qh bit pair t). s[t] / s[4 + t]: the two 16-weight scale groups.
void rows_q6_k_1(const uint8_t* grp, Prefetch& pf, int64_t nsb, const XBlock* x, float* y, int cols) {
  constexpr X16Geom kGeom = X16Geom::of(DType::Q6_K);
  __m512 acc = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const uint8_t* blk = grp + kGeom.body_at(sb);
    const __m512 d = f16x16(grp + kGeom.head_at(sb));
    for (int n = 0; n < 2; ++n) {
      const uint8_t* q = blk + 256 + 64 * 24 * n;
      pf.upto(q + 64 * 24);
      const XBlock* xs = x + sb * 8 + 4 * n;
      // The half's 8 scale vectors (16 bytes each) first, in address order (see rows_q4_k_1).
      const __m512i sraw[2] = {ld(blk + 128 * n), ld(blk + 128 * n + 64)};
      __m512i s[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) s[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        const __m512i l0 = ld(q + 64 * (3 * j)), h = ld(q + 64 * (3 * j + 1)), l1 = ld(q + 64 * (3 * j + 2));
        const int g = j < 4 ? 0 : 4;
        const __m512i w0 = _mm512_or_si512(_mm512_and_si512(l0, m4), _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
        const __m512i w1 = _mm512_or_si512(_mm512_and_si512(l1, m4), _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
        const __m512i w2 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l0, 4), m4), _mm512_and_si512(h, m30));
        const __m512i w3 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l1, 4), m4), _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
        s[g + 0] = _mm512_dpbusd_epi32(s[g + 0], w0, bc(xs[0].q4[j]));
        s[g + 1] = _mm512_dpbusd_epi32(s[g + 1], w1, bc(xs[1].q4[j]));
        s[g + 2] = _mm512_dpbusd_epi32(s[g + 2], w2, bc(xs[2].q4[j]));
        s[g + 3] = _mm512_dpbusd_epi32(s[g + 3], w3, bc(xs[3].q4[j]));
      }
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) {
        const __m512 vd = _mm512_set1_ps(xs[t].d);
        const __m512 t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), vd, _mm512_set1_ps(-32.0f * xs[t].dsum_lo));
        const __m512 t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[4 + t]), vd, _mm512_set1_ps(-32.0f * xs[t].dsum_hi));
        const __m512 sc_lo = scale_i8x16(extract16(sraw[t / 2], 2 * (t % 2)), d);
        const __m512 sc_hi = scale_i8x16(extract16(sraw[t / 2], 2 * (t % 2) + 1), d);
        acc = _mm512_fmadd_ps(sc_hi, t1, _mm512_fmadd_ps(sc_lo, t0, acc));
      }
    }
  }
  Acc<1> out;
  out.v[0] = acc;
  out.store(y, 0, cols);
}

template <int MR>
void rows(DType t, const uint8_t* grp, Prefetch& pf, int64_t nb, const XBlock* const* x, float* y, int64_t ldy, int cols) {
  switch (t) {
    case DType::Q4_0: rows_q4_0_q8_0<MR, true>(grp, nb, x, y, ldy, cols); break;
    case DType::Q8_0: rows_q4_0_q8_0<MR, false>(grp, nb, x, y, ldy, cols); break;
    case DType::Q4_K:
      if constexpr (MR == 1) rows_q4_k_1(grp, nb, x[0], y, cols);
      else rows_q4_k<MR>(grp, nb, x, y, ldy, cols);
      break;
    case DType::Q6_K:
      if constexpr (MR == 1) rows_q6_k_1(grp, pf, nb, x[0], y, cols);
      else rows_q6_k<MR>(grp, nb, x, y, ldy, cols);
      break;
    default: break;
  }
}

}  // namespace

void matmul_x16_vnni(ThreadPool& pool, const MatmulArgs& a) {
  const Tensor& w = *a.w;
  const DType t = w.dtype;
  const int64_t k = w.cols(), n = w.rows(), n_groups = (n + 15) / 16;
  const int64_t nb = k / dtype_info(t).block_elems;  // block positions per row
  const int64_t nx = k / 32;                          // activation blocks per row
  const int64_t group_bytes = X16Geom::of(t).group_bytes(nb);
  // The activations are quantized once per call and shared by the threads.
  thread_local std::vector<XBlock> xbuf;  // the calling thread's; the workers read it via xq
  xbuf.resize(static_cast<size_t>(a.m * nx));
  XBlock* const xq = xbuf.data();
  for (int64_t i = 0; i < a.m; ++i) quantize_activations(a.x + i * a.ldx, nx, xq + i * nx);
  pool.parallel_for(n_groups, 1, [&](int64_t g0, int64_t g1) {
    Prefetch pf{static_cast<const uint8_t*>(w.data) + g0 * group_bytes};
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* grp = static_cast<const uint8_t*>(w.data) + g * group_bytes;
      const int cols = static_cast<int>(std::min<int64_t>(16, n - g * 16));
      for (int64_t i = 0; i < a.m; i += 4) {
        const XBlock* x[4];
        const int mr = static_cast<int>(std::min<int64_t>(4, a.m - i));
        for (int r = 0; r < mr; ++r) x[r] = xq + (i + r) * nx;
        float* y = a.y + i * a.ldy + g * 16;
        switch (mr) {
          case 4: rows<4>(t, grp, pf, nb, x, y, a.ldy, cols); break;
          case 3: rows<3>(t, grp, pf, nb, x, y, a.ldy, cols); break;
          case 2: rows<2>(t, grp, pf, nb, x, y, a.ldy, cols); break;
          default: rows<1>(t, grp, pf, nb, x, y, a.ldy, cols); break;
        }
      }
    }
  });
}

}  // namespace merlin::quant
