// AVX-512 (F/BW/VL/DQ + BF16) matmul kernels. Only called when cpu_level() == kAvx512.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/matmul.h"

namespace merlin::detail {
namespace {

// 16 weights converted to f32. BF16 -> f32 is exact (a shift), F16 via VCVTPH2PS.
template <DType T>
inline __m512 load16(const void* p, int64_t i) {
  if constexpr (T == DType::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else if constexpr (T == DType::BF16) {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    return _mm512_cvtph_ps(h);
  }
}

template <DType T>
inline float load1(const void* p, int64_t i) {
  if constexpr (T == DType::F32) return static_cast<const float*>(p)[i];
  else if constexpr (T == DType::BF16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  else return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
}

// R weight rows against M activation rows at once: R*M independent accumulators hide the FMA
// latency and every weight byte is read once per step (decode is memory-bound).
template <DType T, int R, int M>
void gemv_block(const MatmulArgs& a, int64_t j) {
  const Tensor& w = *a.w;
  const int64_t k = w.cols();
  const void* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = w.row(j + r);
  __m512 acc[R][M];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < M; ++i) acc[r][i] = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 16 <= k; t += 16) {
    __m512 xv[M];
    for (int i = 0; i < M; ++i) xv[i] = _mm512_loadu_ps(a.x + i * a.ldx + t);
    for (int r = 0; r < R; ++r) {
      __m512 wv = load16<T>(rows[r], t);
      for (int i = 0; i < M; ++i) acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < M; ++i) {
      float s = _mm512_reduce_add_ps(acc[r][i]);
      for (int64_t u = t; u < k; ++u) s += load1<T>(rows[r], u) * a.x[i * a.ldx + u];
      a.y[i * a.ldy + j + r] = s;
    }
  }
}

template <DType T, int M>
void gemv_rows(const MatmulArgs& a, int64_t n0, int64_t n1) {
  constexpr int R = M <= 1 ? 4 : (M <= 3 ? 2 : 1);
  int64_t j = n0;
  for (; j + R <= n1; j += R) gemv_block<T, R, M>(a, j);
  for (; j < n1; ++j) gemv_block<T, 1, M>(a, j);
}

template <DType T>
void gemv_t(const MatmulArgs& a, int64_t n0, int64_t n1) {
  switch (a.m) {
    case 1: return gemv_rows<T, 1>(a, n0, n1);
    case 2: return gemv_rows<T, 2>(a, n0, n1);
    case 3: return gemv_rows<T, 3>(a, n0, n1);
    case 4: return gemv_rows<T, 4>(a, n0, n1);
    case 5: return gemv_rows<T, 5>(a, n0, n1);
    case 6: return gemv_rows<T, 6>(a, n0, n1);
    default: return gemv_rows<T, 7>(a, n0, n1);
  }
}

constexpr int kNR = 32;   // output columns per packed panel (two zmm)
constexpr int kMR = 6;    // activation rows per micro-kernel call
constexpr int kKC = 256;  // k-block: a 32 KB f32 panel stays in L1/L2

// f32 micro-kernel: acc[MR x 32] += x[MR, kb] * P[kb, 32].
template <int MR>
void micro_f32(const float* x, int64_t ldx, const float* p, int kb, float* y, int64_t ldy,
               int nb, bool accumulate) {
  __m512 acc[MR][2];
  const __mmask16 m0 = nb >= 16 ? 0xffff : static_cast<__mmask16>((1u << nb) - 1);
  const __mmask16 m1 = nb >= 32 ? 0xffff : (nb <= 16 ? 0 : static_cast<__mmask16>((1u << (nb - 16)) - 1));
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc[r][0] = _mm512_maskz_loadu_ps(m0, y + r * ldy);
      acc[r][1] = _mm512_maskz_loadu_ps(m1, y + r * ldy + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
  for (int t = 0; t < kb; ++t) {
    __m512 w0 = _mm512_load_ps(p + t * kNR);
    __m512 w1 = _mm512_load_ps(p + t * kNR + 16);
    for (int r = 0; r < MR; ++r) {
      __m512 xb = _mm512_set1_ps(x[r * ldx + t]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
}

// bf16 micro-kernel: pairs of k interleaved, VDPBF16PS does two multiply-adds per lane.
template <int MR>
void micro_bf16(const uint16_t* x, int64_t ldx, const uint16_t* p, int kb, float* y, int64_t ldy,
                int nb, bool accumulate) {
  __m512 acc[MR][2];
  const __mmask16 m0 = nb >= 16 ? 0xffff : static_cast<__mmask16>((1u << nb) - 1);
  const __mmask16 m1 = nb >= 32 ? 0xffff : (nb <= 16 ? 0 : static_cast<__mmask16>((1u << (nb - 16)) - 1));
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc[r][0] = _mm512_maskz_loadu_ps(m0, y + r * ldy);
      acc[r][1] = _mm512_maskz_loadu_ps(m1, y + r * ldy + 16);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
  for (int t = 0; t < kb; t += 2) {
    __m512bh w0 = (__m512bh)_mm512_load_si512(p + t * kNR);
    __m512bh w1 = (__m512bh)_mm512_load_si512(p + t * kNR + 32);
    for (int r = 0; r < MR; ++r) {
      uint32_t pair;
      std::memcpy(&pair, x + r * ldx + t, 4);
      __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, w1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, m0, acc[r][0]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, m1, acc[r][1]);
  }
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

template <DType T>
void gemm_t(const MatmulArgs& a, int64_t n0, int64_t n1, const uint16_t* xb) {
  const Tensor& w = *a.w;
  const int64_t k = w.cols();
  const bool bf16 = xb != nullptr && k % 2 == 0;
  alignas(64) float pf[kKC * kNR];
  alignas(64) uint16_t pb[kKC * kNR];
  for (int64_t jn = n0; jn < n1; jn += kNR) {
    const int nb = static_cast<int>(std::min<int64_t>(kNR, n1 - jn));
    for (int64_t kk = 0; kk < k; kk += kKC) {
      const int kb = static_cast<int>(std::min<int64_t>(kKC, k - kk));
      if (bf16) {
        // Pack as [kb/2][32 columns][2]: lane c of a zmm holds (W[c][t], W[c][t+1]).
        for (int c = 0; c < kNR; ++c) {
          if (c < nb) {
            const uint8_t* row = w.row(jn + c);
            if constexpr (T == DType::BF16) {
              const uint16_t* src = reinterpret_cast<const uint16_t*>(row) + kk;
              for (int t = 0; t < kb; t += 2) {
                pb[t * kNR + 2 * c] = src[t];
                pb[t * kNR + 2 * c + 1] = src[t + 1];
              }
            } else {
              for (int t = 0; t < kb; t += 2) {
                pb[t * kNR + 2 * c] = f32_to_bf16(load1<T>(row, kk + t));
                pb[t * kNR + 2 * c + 1] = f32_to_bf16(load1<T>(row, kk + t + 1));
              }
            }
          } else {
            for (int t = 0; t < kb; t += 2) pb[t * kNR + 2 * c] = pb[t * kNR + 2 * c + 1] = 0;
          }
        }
      } else {
        for (int c = 0; c < kNR; ++c) {
          if (c < nb) {
            const uint8_t* row = w.row(jn + c);
            int t = 0;
            for (; t + 16 <= kb; t += 16) {
              alignas(64) float tmp[16];
              _mm512_store_ps(tmp, load16<T>(row, kk + t));
              for (int u = 0; u < 16; ++u) pf[(t + u) * kNR + c] = tmp[u];
            }
            for (; t < kb; ++t) pf[t * kNR + c] = load1<T>(row, kk + t);
          } else {
            for (int t = 0; t < kb; ++t) pf[t * kNR + c] = 0.0f;
          }
        }
      }
      for (int64_t i = 0; i < a.m; i += kMR) {
        const int mb = static_cast<int>(std::min<int64_t>(kMR, a.m - i));
        float* y = a.y + i * a.ldy + jn;
        if (bf16) {
          const uint16_t* x = xb + i * k + kk;
          for_mr(mb, [&]<int MR>() { micro_bf16<MR>(x, k, pb, kb, y, a.ldy, nb, kk > 0); });
        } else {
          const float* x = a.x + i * a.ldx + kk;
          for_mr(mb, [&]<int MR>() { micro_f32<MR>(x, a.ldx, pf, kb, y, a.ldy, nb, kk > 0); });
        }
      }
    }
  }
}

}  // namespace

void gemv_avx512(const MatmulArgs& a, int64_t n0, int64_t n1) {
  switch (a.w->dtype) {
    case DType::F32: return gemv_t<DType::F32>(a, n0, n1);
    case DType::BF16: return gemv_t<DType::BF16>(a, n0, n1);
    case DType::F16: return gemv_t<DType::F16>(a, n0, n1);
    default: return gemm_portable(a, n0, n1);
  }
}

void gemm_avx512(const MatmulArgs& a, int64_t n0, int64_t n1, const uint16_t* xb) {
  switch (a.w->dtype) {
    case DType::F32: return gemm_t<DType::F32>(a, n0, n1, xb);
    case DType::BF16: return gemm_t<DType::BF16>(a, n0, n1, xb);
    case DType::F16: return gemm_t<DType::F16>(a, n0, n1, xb);
    default: return gemm_portable(a, n0, n1);
  }
}

}  // namespace merlin::detail
