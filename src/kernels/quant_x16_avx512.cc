// AVX512-VNNI gemv/gemm over Layout::kInterleave16 Q4_0 / Q8_0 weights (layout in quant.h).
// Called only when interleave_pays(). Per block position of a 16-row group: one vcvtph2ps for
// the 16 row scales, 4 (Q4_0) or 8 (Q8_0) 64-byte loads, and per activation row 8 vpdpbusd
// whose 16 int32 lanes are the 16 rows' partial sums; then one multiply-add applies the
// activation scale and the unsigned-offset correction and one more the row scales.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "kernels/quant_internal.h"

namespace merlin::quant {

namespace {

// One activation block, quantized to int8 with scale d (exact f32, not rounded to fp16).
// negc = -offset * d * sum(q): the correction for the weights' unsigned encoding
// (Q4_0: nibble = w + 8; Q8_0 interleaved: byte = w + 128).
struct XBlock {
  float d, negc;
  int32_t q4[8];  // 32 int8, read 4 at a time as broadcast dwords
};

void quantize_activations(const float* x, int64_t nb, float offset, XBlock* out) {
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
    const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    o.d = d;
    o.negc = -offset * d * static_cast<float>(sum);
  }
}

template <int MR, bool kQ4>
void group_rows(const uint8_t* grp, int64_t nb, const XBlock* const* x, float* y, int64_t ldy, int cols) {
  constexpr int kChunks = kQ4 ? 4 : 8;
  constexpr int64_t kBlockBytes = kQ4 ? 16 * 18 : 16 * 34;
  __m512 acc[MR];
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = grp + b * kBlockBytes;
    const __m512 sw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk)));
    __m512i w[8];
    if constexpr (kQ4) {
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512i z = _mm512_loadu_si512(blk + 32 + 64 * c);
        w[c] = _mm512_and_si512(z, m4);
        w[4 + c] = _mm512_and_si512(_mm512_srli_epi16(z, 4), m4);
      }
    } else {
#pragma GCC unroll 8
      for (int c = 0; c < kChunks; ++c) w[c] = _mm512_loadu_si512(blk + 32 + 64 * c);
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      const XBlock& xb = x[r][b];
      __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], _mm512_set1_epi32(xb.q4[0]));
      __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], _mm512_set1_epi32(xb.q4[1]));
      s0 = _mm512_dpbusd_epi32(s0, w[2], _mm512_set1_epi32(xb.q4[2]));
      s1 = _mm512_dpbusd_epi32(s1, w[3], _mm512_set1_epi32(xb.q4[3]));
      s0 = _mm512_dpbusd_epi32(s0, w[4], _mm512_set1_epi32(xb.q4[4]));
      s1 = _mm512_dpbusd_epi32(s1, w[5], _mm512_set1_epi32(xb.q4[5]));
      s0 = _mm512_dpbusd_epi32(s0, w[6], _mm512_set1_epi32(xb.q4[6]));
      s1 = _mm512_dpbusd_epi32(s1, w[7], _mm512_set1_epi32(xb.q4[7]));
      const __m512 t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), _mm512_set1_ps(xb.d),
                                       _mm512_set1_ps(xb.negc));
      acc[r] = _mm512_fmadd_ps(sw, t, acc[r]);
    }
  }
  const __mmask16 mask = cols >= 16 ? 0xffff : static_cast<__mmask16>((1u << cols) - 1);
#pragma GCC unroll 4
  for (int r = 0; r < MR; ++r) _mm512_mask_storeu_ps(y + r * ldy, mask, acc[r]);
}

template <bool kQ4>
void groups(const MatmulArgs& a, const std::vector<XBlock>& xq, int64_t g0, int64_t g1) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows(), nb = w.cols() / 32;
  const int64_t group_bytes = nb * (kQ4 ? 16 * 18 : 16 * 34);
  for (int64_t g = g0; g < g1; ++g) {
    const uint8_t* grp = static_cast<const uint8_t*>(w.data) + g * group_bytes;
    const int cols = static_cast<int>(std::min<int64_t>(16, n - g * 16));
    for (int64_t i = 0; i < a.m; i += 4) {
      const XBlock* x[4];
      const int mr = static_cast<int>(std::min<int64_t>(4, a.m - i));
      for (int r = 0; r < mr; ++r) x[r] = xq.data() + (i + r) * nb;
      float* y = a.y + i * a.ldy + g * 16;
      switch (mr) {
        case 4: group_rows<4, kQ4>(grp, nb, x, y, a.ldy, cols); break;
        case 3: group_rows<3, kQ4>(grp, nb, x, y, a.ldy, cols); break;
        case 2: group_rows<2, kQ4>(grp, nb, x, y, a.ldy, cols); break;
        default: group_rows<1, kQ4>(grp, nb, x, y, a.ldy, cols); break;
      }
    }
  }
}

}  // namespace

void matmul_x16_vnni(ThreadPool& pool, const MatmulArgs& a) {
  const Tensor& w = *a.w;
  const bool q4 = w.dtype == DType::Q4_0;
  const int64_t nb = w.cols() / 32, n_groups = (w.rows() + 15) / 16;
  // The activations are quantized once per call and shared by the threads.
  std::vector<XBlock> xq(static_cast<size_t>(a.m * nb));
  for (int64_t i = 0; i < a.m; ++i) quantize_activations(a.x + i * a.ldx, nb, q4 ? 8.0f : 128.0f, xq.data() + i * nb);
  pool.parallel_for(n_groups, 1, [&](int64_t g0, int64_t g1) {
    if (q4) groups<true>(a, xq, g0, g1);
    else groups<false>(a, xq, g0, g1);
  });
}

}  // namespace merlin::quant
