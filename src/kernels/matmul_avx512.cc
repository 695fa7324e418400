// AVX-512 (F/BW/VL/DQ + BF16) matmul over packed weights (Layout::kPanel32). Only called when
// cpu_level() == kAvx512. Each output column is one sequential FMA chain over k, so a row's
// result does not depend on how many rows are computed together.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/matmul.h"

namespace merlin::detail {
namespace {

constexpr int kMR = 6;    // activation rows per micro-kernel call (12 accumulators)
constexpr int kKC = 512;
// Software prefetch distance (bytes ahead in the panel stream) for MR >= 3. With three or more
// rows the FMAs keep the core busy enough that the hardware prefetcher alone falls behind the
// DRAM stream: measured on a 100 MB bf16 stream (2 threads, Zen 4), f32 activations, m = 4:
// 518 -> 412 us, m = 6: 697 -> 462 us; m = 1 and 2 are unchanged without it and slower with it.
constexpr int kPrefetch = 8192;
constexpr int kPrefetchMinRows = 3;  // k-block: a bf16 panel block of 32 KB stays in L1/L2

inline __mmask16 mask_lo(int nb) { return nb >= 16 ? 0xffff : static_cast<__mmask16>((1u << nb) - 1); }
inline __mmask16 mask_hi(int nb) {
  return nb >= 32 ? 0xffff : (nb <= 16 ? 0 : static_cast<__mmask16>((1u << (nb - 16)) - 1));
}

template <int MR>
inline void load_acc(__m512 (&acc)[MR][2], float* y, int64_t ldy, int nb, bool accumulate) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc[r][0] = _mm512_maskz_loadu_ps(mask_lo(nb), y + r * ldy);
      acc[r][1] = _mm512_maskz_loadu_ps(mask_hi(nb), y + r * ldy + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
}

template <int MR>
inline void store_acc(__m512 (&acc)[MR][2], float* y, int64_t ldy, int nb) {
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, mask_lo(nb), acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, mask_hi(nb), acc[r][1]);
  }
}

// bf16 panel, f32 activations: each 64-byte load holds (k, k+1) pairs of 16 columns; the even
// halves shifted up and the odd halves masked are exact f32 weights.
template <int MR>
void micro_bf16w(const float* x, int64_t ldx, const uint16_t* p, int kb, float* y, int64_t ldy, int nb,
                 bool accumulate, bool prefetch) {
  // Two chains per output, even k and odd k, summed at the end of the k-block: twice the FMAs
  // in flight for a single row (decode), and the same fixed order for every row count.
  __m512 acc[MR][2], odd[MR][2];
  load_acc<MR>(acc, y, ldy, nb, accumulate);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) odd[r][0] = odd[r][1] = _mm512_setzero_ps();
  const __m512i hi = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int t = 0; t < kb; t += 2) {
    if (MR >= kPrefetchMinRows && prefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(p + t * 32) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + t * 32) + kPrefetch + 64, _MM_HINT_T0);
    }
    __m512i a = _mm512_load_si512(p + t * 32);
    __m512i b = _mm512_load_si512(p + t * 32 + 32);
    __m512 w0e = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
    __m512 w1e = _mm512_castsi512_ps(_mm512_slli_epi32(b, 16));
    __m512 w0o = _mm512_castsi512_ps(_mm512_and_si512(a, hi));
    __m512 w1o = _mm512_castsi512_ps(_mm512_and_si512(b, hi));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m512 xe = _mm512_set1_ps(x[r * ldx + t]);
      __m512 xo = _mm512_set1_ps(x[r * ldx + t + 1]);
      acc[r][0] = _mm512_fmadd_ps(xe, w0e, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xe, w1e, acc[r][1]);
      odd[r][0] = _mm512_fmadd_ps(xo, w0o, odd[r][0]);
      odd[r][1] = _mm512_fmadd_ps(xo, w1o, odd[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm512_add_ps(acc[r][0], odd[r][0]);
    acc[r][1] = _mm512_add_ps(acc[r][1], odd[r][1]);
  }
  store_acc<MR>(acc, y, ldy, nb);
}

// bf16 panel, bf16 activations: VDPBF16PS, two multiply-adds per lane per instruction.
template <int MR>
void micro_bf16x(const uint16_t* x, int64_t ldx, const uint16_t* p, int kb, float* y, int64_t ldy, int nb,
                 bool accumulate) {
  __m512 acc[MR][2];
  load_acc<MR>(acc, y, ldy, nb, accumulate);
  for (int t = 0; t < kb; t += 2) {
    __m512bh w0 = (__m512bh)_mm512_load_si512(p + t * 32);
    __m512bh w1 = (__m512bh)_mm512_load_si512(p + t * 32 + 32);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, x + r * ldx + t, 4);
      __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, w1);
    }
  }
  store_acc<MR>(acc, y, ldy, nb);
}

// f32 panel [k][32].
template <int MR>
void micro_f32w(const float* x, int64_t ldx, const float* p, int kb, float* y, int64_t ldy, int nb,
                bool accumulate, bool prefetch) {
  // Even and odd k in separate chains, as in micro_bf16w (kb is even: k is checked at packing).
  __m512 acc[MR][2], odd[MR][2];
  load_acc<MR>(acc, y, ldy, nb, accumulate);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) odd[r][0] = odd[r][1] = _mm512_setzero_ps();
  for (int t = 0; t < kb; t += 2) {
    if (MR >= kPrefetchMinRows && prefetch) {
      const char* ahead = reinterpret_cast<const char*>(p + t * 32) + kPrefetch;
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
    }
    __m512 w0 = _mm512_load_ps(p + t * 32);
    __m512 w1 = _mm512_load_ps(p + t * 32 + 16);
    __m512 v0 = _mm512_load_ps(p + t * 32 + 32);
    __m512 v1 = _mm512_load_ps(p + t * 32 + 48);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      __m512 xe = _mm512_set1_ps(x[r * ldx + t]);
      __m512 xo = _mm512_set1_ps(x[r * ldx + t + 1]);
      acc[r][0] = _mm512_fmadd_ps(xe, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xe, w1, acc[r][1]);
      odd[r][0] = _mm512_fmadd_ps(xo, v0, odd[r][0]);
      odd[r][1] = _mm512_fmadd_ps(xo, v1, odd[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm512_add_ps(acc[r][0], odd[r][0]);
    acc[r][1] = _mm512_add_ps(acc[r][1], odd[r][1]);
  }
  store_acc<MR>(acc, y, ldy, nb);
}

template <class F>
void for_mr(int mb, F&& f) {
  switch (mb) {
    case 6: f.template operator()<6>(); break;
    case 5: f.template operator()<5>(); break;
    case 4: f.template operator()<4>(); break;
    case 3: f.template operator()<3>(); break;
    case 2: f.template operator()<2>(); break;
    default: f.template operator()<1>(); break;
  }
}

}  // namespace

void gemm_panel_avx512(const MatmulArgs& a, int64_t p0, int64_t p1, const uint16_t* xb) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows(), k = w.cols();
  const bool wbf16 = w.dtype == DType::BF16;
  for (int64_t p = p0; p < p1; ++p) {
    const int nb = static_cast<int>(std::min<int64_t>(32, n - p * 32));
    for (int64_t kk = 0; kk < k; kk += kKC) {
      const int kb = static_cast<int>(std::min<int64_t>(kKC, k - kk));
      for (int64_t i = 0; i < a.m; i += kMR) {
        const int mb = static_cast<int>(std::min<int64_t>(kMR, a.m - i));
        float* y = a.y + i * a.ldy + p * 32;
        if (wbf16) {
          const uint16_t* panel = static_cast<const uint16_t*>(w.data) + p * 32 * k + kk * 32;
          if (xb) {
            const uint16_t* x = xb + i * k + kk;
            for_mr(mb, [&]<int MR>() { micro_bf16x<MR>(x, k, panel, kb, y, a.ldy, nb, kk > 0); });
          } else {
            const float* x = a.x + i * a.ldx + kk;
            for_mr(mb, [&]<int MR>() { micro_bf16w<MR>(x, a.ldx, panel, kb, y, a.ldy, nb, kk > 0, i == 0); });
          }
        } else {
          const float* panel = static_cast<const float*>(w.data) + p * 32 * k + kk * 32;
          const float* x = a.x + i * a.ldx + kk;
          for_mr(mb, [&]<int MR>() { micro_f32w<MR>(x, a.ldx, panel, kb, y, a.ldy, nb, kk > 0, i == 0); });
        }
      }
    }
  }
}

}  // namespace merlin::detail
