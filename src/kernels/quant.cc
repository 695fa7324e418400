// Quantized formats: llama.cpp-compatible dequantization, reference quantizers (same rounding and
// scale searches as ggml-quants.c's *_ref functions) and scalar dot products; quant_matmul picks
// the SIMD dot for the CPU (quant_avx2.cc / quant_avx512.cc).
#include "kernels/quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

#include "core/cpu.h"
#include "kernels/matmul.h"
#include "kernels/quant_internal.h"

namespace merlin {

using namespace quant;

namespace {

// ------------------------------------------------------------------ dequantization

void deq_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < 16; ++j) {
      y[j] = ((b[i].qs[j] & 0x0F) - 8) * d;
      y[j + 16] = ((b[i].qs[j] >> 4) - 8) * d;
    }
  }
}
void deq_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    for (int j = 0; j < 16; ++j) {
      y[j] = (b[i].qs[j] & 0x0F) * d + m;
      y[j + 16] = (b[i].qs[j] >> 4) * d + m;
    }
  }
}
void deq_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK) {
    const float d = h2f(b[i].d);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t h0 = ((qh >> (j + 0)) << 4) & 0x10, h1 = ((qh >> (j + 12))) & 0x10;
      y[j] = (((b[i].qs[j] & 0x0F) | h0) - 16) * d;
      y[j + 16] = (((b[i].qs[j] >> 4) | h1) - 16) * d;
    }
  }
}
void deq_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK) {
    const float d = h2f(b[i].d), m = h2f(b[i].m);
    uint32_t qh;
    std::memcpy(&qh, b[i].qh, 4);
    for (int j = 0; j < 16; ++j) {
      const uint8_t h0 = ((qh >> (j + 0)) << 4) & 0x10, h1 = ((qh >> (j + 12))) & 0x10;
      y[j] = ((b[i].qs[j] & 0x0F) | h0) * d + m;
      y[j + 16] = ((b[i].qs[j] >> 4) | h1) * d + m;
    }
  }
}
void deq_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK) {
    const float d = h2f(b[i].d);
    for (int j = 0; j < QK; ++j) y[j] = b[i].qs[j] * d;
  }
}
void deq_q2_k(const BlockQ2_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), mn = h2f(b[i].dmin);
    const uint8_t* q = b[i].qs;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
      int shift = 0;
      for (int j = 0; j < 4; ++j) {
        uint8_t sc = b[i].scales[is++];
        float dl = d * (sc & 0xF), ml = mn * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l] >> shift) & 3) - ml;
        sc = b[i].scales[is++];
        dl = d * (sc & 0xF), ml = mn * (sc >> 4);
        for (int l = 0; l < 16; ++l) *y++ = dl * ((q[l + 16] >> shift) & 3) - ml;
        shift += 2;
      }
      q += 32;
    }
  }
}
// The 16 6-bit scales of a Q3_K block (stored with a bias of 32), unpacked.
void q3k_scales(const uint8_t* s12, int8_t* out) {
  uint32_t aux[4];
  std::memcpy(aux, s12, 12);
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  std::memcpy(out, aux, 16);
}
void deq_q3_k(const BlockQ3_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d_all = h2f(b[i].d);
    int8_t scales[16];
    q3k_scales(b[i].scales, scales);
    const uint8_t* q = b[i].qs;
    const uint8_t* hm = b[i].hmask;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
      int shift = 0;
      for (int j = 0; j < 4; ++j) {
        float dl = d_all * (scales[is++] - 32);
        for (int l = 0; l < 16; ++l) *y++ = dl * (((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
        dl = d_all * (scales[is++] - 32);
        for (int l = 0; l < 16; ++l) *y++ = dl * (((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
        shift += 2;
        m <<= 1;
      }
      q += 32;
    }
  }
}
void deq_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), mn = h2f(b[i].dmin);
    const uint8_t* q = b[i].qs;
    for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
      uint8_t sc, m;
      scale_min_k4(is, b[i].scales, sc, m);
      const float d1 = d * sc, m1 = mn * m;
      scale_min_k4(is + 1, b[i].scales, sc, m);
      const float d2 = d * sc, m2 = mn * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
    }
  }
}
void deq_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d), mn = h2f(b[i].dmin);
    const uint8_t* ql = b[i].qs;
    const uint8_t* qh = b[i].qh;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
      uint8_t sc, m;
      scale_min_k4(is, b[i].scales, sc, m);
      const float d1 = d * sc, m1 = mn * m;
      scale_min_k4(is + 1, b[i].scales, sc, m);
      const float d2 = d * sc, m2 = mn * m;
      for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
  }
}
void deq_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i) {
    const float d = h2f(b[i].d);
    const uint8_t* ql = b[i].ql;
    const uint8_t* qh = b[i].qh;
    const int8_t* sc = b[i].scales;
    for (int n = 0; n < QK_K; n += 128) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l + 0] = d * sc[is + 0] * q1;
        y[l + 32] = d * sc[is + 2] * q2;
        y[l + 64] = d * sc[is + 4] * q3;
        y[l + 96] = d * sc[is + 6] * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}
void deq_q8_k(const BlockQ8_K* b, float* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, y += QK_K)
    for (int j = 0; j < QK_K; ++j) y[j] = b[i].d * b[i].qs[j];
}

// ------------------------------------------------------------------ reference quantizers

constexpr float kGroupMaxEps = 1e-15f;

void qnt_q4_0(const float* x, BlockQ4_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
    const float d = max / -8, id = d ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    for (int j = 0; j < 16; ++j) {
      const uint8_t a = std::min<int8_t>(15, static_cast<int8_t>(x[j] * id + 8.5f));
      const uint8_t b = std::min<int8_t>(15, static_cast<int8_t>(x[j + 16] * id + 8.5f));
      y[i].qs[j] = a | (b << 4);
    }
  }
}
void qnt_q4_1(const float* x, BlockQ4_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < QK; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
    const float d = (mx - mn) / 15, id = d ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    y[i].m = f2h(mn);
    for (int j = 0; j < 16; ++j) {
      const uint8_t a = std::min<int8_t>(15, static_cast<int8_t>((x[j] - mn) * id + 0.5f));
      const uint8_t b = std::min<int8_t>(15, static_cast<int8_t>((x[j + 16] - mn) * id + 0.5f));
      y[i].qs[j] = a | (b << 4);
    }
  }
}
void qnt_q5_0(const float* x, BlockQ5_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
    const float d = max / -16, id = d ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t a = std::min<int8_t>(31, static_cast<int8_t>(x[j] * id + 16.5f));
      const uint8_t b = std::min<int8_t>(31, static_cast<int8_t>(x[j + 16] * id + 16.5f));
      y[i].qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
      qh |= ((a & 0x10u) >> 4) << (j + 0);
      qh |= ((b & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}
void qnt_q5_1(const float* x, BlockQ5_1* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < QK; ++j) mn = std::min(mn, x[j]), mx = std::max(mx, x[j]);
    const float d = (mx - mn) / 31, id = d ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    y[i].m = f2h(mn);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t a = std::min<uint8_t>(31, static_cast<uint8_t>((x[j] - mn) * id + 0.5f));
      const uint8_t b = std::min<uint8_t>(31, static_cast<uint8_t>((x[j + 16] - mn) * id + 0.5f));
      y[i].qs[j] = (a & 0x0F) | ((b & 0x0F) << 4);
      qh |= ((a & 0x10u) >> 4) << (j + 0);
      qh |= ((b & 0x10u) >> 4) << (j + 16);
    }
    std::memcpy(y[i].qh, &qh, 4);
  }
}
void qnt_q8_0(const float* x, BlockQ8_0* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK) {
    float amax = 0;
    for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    y[i].d = f2h(d);
    for (int j = 0; j < QK; ++j) y[i].qs[j] = static_cast<int8_t>(std::roundf(x[j] * id));
  }
}
void qnt_q8_k(const float* x, BlockQ8_K* y, int64_t nb) {
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float amax = 0, max = 0;
    for (int j = 0; j < QK_K; ++j)
      if (std::fabs(x[j]) > amax) amax = std::fabs(x[j]), max = x[j];
    if (amax == 0) {
      std::memset(&y[i], 0, sizeof(BlockQ8_K));
      continue;
    }
    // -127 (not -128) keeps every value in [-127, 127] so SIMD sign tricks cannot overflow.
    const float iscale = -127.f / max;
    for (int j = 0; j < QK_K; ++j) y[i].qs[j] = static_cast<int8_t>(std::min(127, nearest_int(iscale * x[j])));
    for (int j = 0; j < QK_K / 16; ++j) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += y[i].qs[j * 16 + l];
      y[i].bsums[j] = static_cast<int16_t>(s);
    }
    y[i].d = 1 / iscale;
  }
}

// ggml's make_qkx2_quants: asymmetric nmax-level quantization of n values with weights, a
// grid search over the inverse scale refined by weighted least squares for scale and min.
float make_qkx2_quants(int n, int nmax, const float* x, const float* weights, uint8_t* L, float* the_min,
                       uint8_t* Laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += weights[i];
    sum_x += weights[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::memset(L, 0, n);
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min), scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
    L[i] = static_cast<uint8_t>(l);
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * diff * diff;
  }
  if (nstep < 1) {
    *the_min = -min;
    return scale;
  }
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = static_cast<uint8_t>(l);
      const float w = weights[i];
      sum_l += w * l;
      sum_l2 += w * l * l;
      sum_xl += w * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * Laux[i] + this_min - x[i];
        cur_error += weights[i] * diff * diff;
      }
      if (cur_error < best_error) {
        std::memcpy(L, Laux, n);
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// ggml's make_qx_quants with rmse_type 1 (weights x^2): symmetric levels -nmax..nmax-1 with a
// search over 18 scales around nmax/max.
float make_qx_quants(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < kGroupMaxEps) {
    std::memset(L, 0, n);
    return 0.f;
  }
  float iscale = -nmax / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    L[i] = static_cast<int8_t>(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  float scale = suml2 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(nmax + 0.1f * is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      const float w = x[i] * x[i];
      sumlx += w * x[i] * l;
      suml2 += w * l * l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i)
        L[i] = static_cast<int8_t>(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per-32 scales/mins searched with
// make_qkx2_quants, then both quantized to 6 bits against the block maxima.
template <int kNmax>
void qnt_kx(const float* x, uint8_t* scales12, uint16_t& d_out, uint16_t& dmin_out, uint8_t* L) {
  uint8_t Laux[32];
  float weights[32], mins[8], scales[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(x[32 * j + l]);
    scales[j] = kNmax == 15 ? make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20)
                            : make_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15);
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
  const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
  std::memset(scales12, 0, 12);
  for (int j = 0; j < 8; ++j) {
    const uint8_t ls = static_cast<uint8_t>(std::min(63, nearest_int(inv_scale * scales[j])));
    const uint8_t lm = static_cast<uint8_t>(std::min(63, nearest_int(inv_min * mins[j])));
    if (j < 4) {
      scales12[j] = ls;
      scales12[j + 4] = lm;
    } else {
      scales12[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
      scales12[j - 4] |= ((ls >> 4) << 6);
      scales12[j - 0] |= ((lm >> 4) << 6);
    }
  }
  d_out = f2h(max_scale / 63.f);
  dmin_out = f2h(max_min / 63.f);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    scale_min_k4(j, scales12, sc, m);
    const float d = h2f(d_out) * sc;
    if (!d) continue;
    const float dm = h2f(dmin_out) * m;
    for (int ii = 0; ii < 32; ++ii)
      L[32 * j + ii] = static_cast<uint8_t>(std::clamp(nearest_int((x[32 * j + ii] + dm) / d), 0, kNmax));
  }
}

void qnt_q4_k(const float* x, BlockQ4_K* y, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    qnt_kx<15>(x, y[i].scales, y[i].d, y[i].dmin, L);
    uint8_t* q = y[i].qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
      for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
  }
}
void qnt_q5_k(const float* x, BlockQ5_K* y, int64_t nb) {
  uint8_t L[QK_K];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    qnt_kx<31>(x, y[i].scales, y[i].d, y[i].dmin, L);
    uint8_t* qh = y[i].qh;
    uint8_t* ql = y[i].qs;
    std::memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < QK_K; n += 64, m1 <<= 2, m2 <<= 2, ql += 32) {
      for (int j = 0; j < 32; ++j) {
        int l1 = L[n + j];
        if (l1 > 15) l1 -= 16, qh[j] |= m1;
        int l2 = L[n + j + 32];
        if (l2 > 15) l2 -= 16, qh[j] |= m2;
        ql[j] = static_cast<uint8_t>(l1 | (l2 << 4));
      }
    }
  }
}
void qnt_q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
  int8_t L[QK_K];
  float scales[QK_K / 16];
  for (int64_t i = 0; i < nb; ++i, x += QK_K) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ++ib) {
      const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
      scales[ib] = scale;
      if (std::fabs(scale) > max_abs_scale) max_abs_scale = std::fabs(scale), max_scale = scale;
    }
    if (max_abs_scale < kGroupMaxEps) {
      std::memset(&y[i], 0, sizeof(BlockQ6_K));
      y[i].d = f2h(0.f);
      continue;
    }
    const float iscale = -128.f / max_scale;
    y[i].d = f2h(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ++ib)
      y[i].scales[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
    for (int j = 0; j < QK_K / 16; ++j) {
      const float d = h2f(y[i].d) * y[i].scales[j];
      if (!d) continue;
      for (int ii = 0; ii < 16; ++ii)
        L[16 * j + ii] = static_cast<int8_t>(std::clamp(nearest_int(x[16 * j + ii] / d), -32, 31) + 32);
    }
    uint8_t* ql = y[i].ql;
    uint8_t* qh = y[i].qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t q1 = L[j + l + 0] & 0xF, q2 = L[j + l + 32] & 0xF;
        const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
        ql[l + 0] = q1 | (q3 << 4);
        ql[l + 32] = q2 | (q4 << 4);
        qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                ((L[j + l + 96] >> 4) << 6);
      }
    }
  }
}

// ------------------------------------------------------------------ scalar dot products

int dot32(const int8_t* a, const int8_t* b) {
  int s = 0;
  for (int j = 0; j < 32; ++j) s += a[j] * b[j];
  return s;
}
int sum32(const int8_t* b) {
  int s = 0;
  for (int j = 0; j < 32; ++j) s += b[j];
  return s;
}

float dot_q4_0(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ4_0*>(w);
  auto* y = static_cast<const BlockQ8_0*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK; ++i) {
    int8_t q[32];
    for (int j = 0; j < 16; ++j) q[j] = (b[i].qs[j] & 0xF) - 8, q[j + 16] = (b[i].qs[j] >> 4) - 8;
    s += h2f(b[i].d) * h2f(y[i].d) * dot32(q, y[i].qs);
  }
  return s;
}
float dot_q4_1(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ4_1*>(w);
  auto* y = static_cast<const BlockQ8_0*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK; ++i) {
    int8_t q[32];
    for (int j = 0; j < 16; ++j) q[j] = b[i].qs[j] & 0xF, q[j + 16] = b[i].qs[j] >> 4;
    const float dy = h2f(y[i].d);
    s += h2f(b[i].d) * dy * dot32(q, y[i].qs) + h2f(b[i].m) * dy * sum32(y[i].qs);
  }
  return s;
}
void unpack_q5(const uint8_t* qs, const uint8_t* qh4, int8_t* q, int bias) {
  uint32_t qh;
  std::memcpy(&qh, qh4, 4);
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<int8_t>(((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10)) - bias);
    q[j + 16] = static_cast<int8_t>(((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - bias);
  }
}
float dot_q5_0(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ5_0*>(w);
  auto* y = static_cast<const BlockQ8_0*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK; ++i) {
    int8_t q[32];
    unpack_q5(b[i].qs, b[i].qh, q, 16);
    s += h2f(b[i].d) * h2f(y[i].d) * dot32(q, y[i].qs);
  }
  return s;
}
float dot_q5_1(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ5_1*>(w);
  auto* y = static_cast<const BlockQ8_0*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK; ++i) {
    int8_t q[32];
    unpack_q5(b[i].qs, b[i].qh, q, 0);
    const float dy = h2f(y[i].d);
    s += h2f(b[i].d) * dy * dot32(q, y[i].qs) + h2f(b[i].m) * dy * sum32(y[i].qs);
  }
  return s;
}
float dot_q8_0(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ8_0*>(w);
  auto* y = static_cast<const BlockQ8_0*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK; ++i) s += h2f(b[i].d) * h2f(y[i].d) * dot32(b[i].qs, y[i].qs);
  return s;
}

// K-quants: unpack a super-block to integer levels q[256] plus integer scales and mins per
// group (16 groups of 16 or 8 of 32); value = d*sc*q - dmin*mn.
template <int kGroup>
float dot_k_generic(const int8_t* q, const int* sc, const int* mn, float d, float dmin, const BlockQ8_K& y) {
  int isum = 0, msum = 0;
  for (int g = 0; g < QK_K / kGroup; ++g) {
    int s = 0;
    for (int l = 0; l < kGroup; ++l) s += q[g * kGroup + l] * y.qs[g * kGroup + l];
    isum += sc[g] * s;
    int bs = 0;
    for (int k = 0; k < kGroup / 16; ++k) bs += y.bsums[g * kGroup / 16 + k];
    msum += mn[g] * bs;
  }
  return y.d * (d * isum - dmin * msum);
}

float dot_q2_k(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ2_K*>(w);
  auto* y = static_cast<const BlockQ8_K*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t q[QK_K];
    int sc[16], mn[16];
    for (int g = 0; g < 16; ++g) sc[g] = b[i].scales[g] & 0xF, mn[g] = b[i].scales[g] >> 4;
    int8_t* out = q;
    for (int n128 = 0; n128 < 2; ++n128)
      for (int j = 0; j < 4; ++j)
        for (int half = 0; half < 2; ++half)
          for (int l = 0; l < 16; ++l) *out++ = (b[i].qs[n128 * 32 + half * 16 + l] >> (2 * j)) & 3;
    s += dot_k_generic<16>(q, sc, mn, h2f(b[i].d), h2f(b[i].dmin), y[i]);
  }
  return s;
}
float dot_q3_k(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ3_K*>(w);
  auto* y = static_cast<const BlockQ8_K*>(xq);
  float s = 0;
  static const int kZero[16] = {};
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t q[QK_K], scales[16];
    int sc[16];
    q3k_scales(b[i].scales, scales);
    for (int g = 0; g < 16; ++g) sc[g] = scales[g] - 32;
    int8_t* out = q;
    uint8_t m = 1;
    for (int n128 = 0; n128 < 2; ++n128)
      for (int j = 0; j < 4; ++j, m <<= 1)
        for (int half = 0; half < 2; ++half)
          for (int l = 0; l < 16; ++l) {
            const int k = half * 16 + l;
            *out++ = static_cast<int8_t>(((b[i].qs[n128 * 32 + k] >> (2 * j)) & 3) - ((b[i].hmask[k] & m) ? 0 : 4));
          }
    s += dot_k_generic<16>(q, sc, kZero, h2f(b[i].d), 0.f, y[i]);
  }
  return s;
}
template <bool kFive, class Block>
float dot_q45_k(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const Block*>(w);
  auto* y = static_cast<const BlockQ8_K*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t q[QK_K];
    int sc[8], mn[8];
    for (int g = 0; g < 8; ++g) {
      uint8_t a, c;
      scale_min_k4(g, b[i].scales, a, c);
      sc[g] = a, mn[g] = c;
    }
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l) {
        int lo = b[i].qs[32 * j + l] & 0xF, hi = b[i].qs[32 * j + l] >> 4;
        if constexpr (kFive) {
          auto* qh = reinterpret_cast<const BlockQ5_K*>(&b[i])->qh;
          lo |= ((qh[l] >> (2 * j)) & 1) << 4;
          hi |= ((qh[l] >> (2 * j + 1)) & 1) << 4;
        }
        q[64 * j + l] = static_cast<int8_t>(lo);
        q[64 * j + 32 + l] = static_cast<int8_t>(hi);
      }
    s += dot_k_generic<32>(q, sc, mn, h2f(b[i].d), h2f(b[i].dmin), y[i]);
  }
  return s;
}
float dot_q6_k(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ6_K*>(w);
  auto* y = static_cast<const BlockQ8_K*>(xq);
  float s = 0;
  static const int kZero[16] = {};
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int8_t q[QK_K];
    int sc[16];
    for (int g = 0; g < 16; ++g) sc[g] = b[i].scales[g];
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b[i].ql + 64 * h;
      const uint8_t* qh = b[i].qh + 32 * h;
      int8_t* o = q + 128 * h;
      for (int l = 0; l < 32; ++l) {
        o[l + 0] = static_cast<int8_t>(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
        o[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
        o[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        o[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
    s += dot_k_generic<16>(q, sc, kZero, h2f(b[i].d), 0.f, y[i]);
  }
  return s;
}
float dot_q8_k(const void* w, const void* xq, int64_t n) {
  auto* b = static_cast<const BlockQ8_K*>(w);
  auto* y = static_cast<const BlockQ8_K*>(xq);
  float s = 0;
  for (int64_t i = 0; i < n / QK_K; ++i) {
    int is = 0;
    for (int j = 0; j < QK_K; ++j) is += b[i].qs[j] * y[i].qs[j];
    s += b[i].d * y[i].d * is;
  }
  return s;
}

bool is_k_quant(DType t) {
  switch (t) {
    case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: case DType::Q8_K:
      return true;
    default:
      return false;
  }
}

}  // namespace

namespace quant {

VecDotFn vec_dot_scalar(DType t) {
  switch (t) {
    case DType::Q4_0: return dot_q4_0;
    case DType::Q4_1: return dot_q4_1;
    case DType::Q5_0: return dot_q5_0;
    case DType::Q5_1: return dot_q5_1;
    case DType::Q8_0: return dot_q8_0;
    case DType::Q2_K: return dot_q2_k;
    case DType::Q3_K: return dot_q3_k;
    case DType::Q4_K: return dot_q45_k<false, BlockQ4_K>;
    case DType::Q5_K: return dot_q45_k<true, BlockQ5_K>;
    case DType::Q6_K: return dot_q6_k;
    case DType::Q8_K: return dot_q8_k;
    default: return nullptr;
  }
}

VecDotFn vec_dot_best(DType t) {
  VecDotFn f = nullptr;
  const auto lvl = cpu_level();
  if (lvl == CpuLevel::kAvx512) f = vec_dot_avx512(t);
  if (!f && lvl >= CpuLevel::kAvx2) f = vec_dot_avx2(t);
  return f ? f : vec_dot_scalar(t);
}

DType vec_dot_act_type(DType t) { return is_k_quant(t) ? DType::Q8_K : DType::Q8_0; }

}  // namespace quant

bool quant_is_supported(DType t) { return vec_dot_scalar(t) != nullptr; }

void quant_dequantize_row(DType t, const void* src, float* out, int64_t n) {
  const int64_t nb = n / dtype_info(t).block_elems;
  switch (t) {
    case DType::Q4_0: return deq_q4_0(static_cast<const BlockQ4_0*>(src), out, nb);
    case DType::Q4_1: return deq_q4_1(static_cast<const BlockQ4_1*>(src), out, nb);
    case DType::Q5_0: return deq_q5_0(static_cast<const BlockQ5_0*>(src), out, nb);
    case DType::Q5_1: return deq_q5_1(static_cast<const BlockQ5_1*>(src), out, nb);
    case DType::Q8_0: return deq_q8_0(static_cast<const BlockQ8_0*>(src), out, nb);
    case DType::Q2_K: return deq_q2_k(static_cast<const BlockQ2_K*>(src), out, nb);
    case DType::Q3_K: return deq_q3_k(static_cast<const BlockQ3_K*>(src), out, nb);
    case DType::Q4_K: return deq_q4_k(static_cast<const BlockQ4_K*>(src), out, nb);
    case DType::Q5_K: return deq_q5_k(static_cast<const BlockQ5_K*>(src), out, nb);
    case DType::Q6_K: return deq_q6_k(static_cast<const BlockQ6_K*>(src), out, nb);
    case DType::Q8_K: return deq_q8_k(static_cast<const BlockQ8_K*>(src), out, nb);
    default:
      // Unsupported types produce zeros rather than garbage (callers check quant_is_supported).
      std::fill_n(out, n, 0.f);
  }
}

bool quant_quantize_row(DType t, const float* src, void* dst, int64_t n) {
  const auto info = dtype_info(t);
  if (!info.known || info.block_elems <= 1 || n % info.block_elems != 0) return false;
  const int64_t nb = n / info.block_elems;
  switch (t) {
    case DType::Q4_0: qnt_q4_0(src, static_cast<BlockQ4_0*>(dst), nb); return true;
    case DType::Q4_1: qnt_q4_1(src, static_cast<BlockQ4_1*>(dst), nb); return true;
    case DType::Q5_0: qnt_q5_0(src, static_cast<BlockQ5_0*>(dst), nb); return true;
    case DType::Q5_1: qnt_q5_1(src, static_cast<BlockQ5_1*>(dst), nb); return true;
    case DType::Q8_0: qnt_q8_0(src, static_cast<BlockQ8_0*>(dst), nb); return true;
    case DType::Q4_K: qnt_q4_k(src, static_cast<BlockQ4_K*>(dst), nb); return true;
    case DType::Q5_K: qnt_q5_k(src, static_cast<BlockQ5_K*>(dst), nb); return true;
    case DType::Q6_K: qnt_q6_k(src, static_cast<BlockQ6_K*>(dst), nb); return true;
    case DType::Q8_K: qnt_q8_k(src, static_cast<BlockQ8_K*>(dst), nb); return true;
    default: return false;
  }
}

bool quant_matmul(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const Tensor& w = *a.w;
  const VecDotFn dot = vec_dot_best(w.dtype);
  if (!dot) return false;
  const int64_t k = w.cols();
  const DType act = vec_dot_act_type(w.dtype);
  if (k % dtype_info(act).block_elems != 0) return false;
  // Each thread quantizes the activations itself: m is small when decoding, and this avoids a
  // shared buffer and a barrier; the cost is O(m*k) against O(m*k*(n1-n0)) for the dots.
  const size_t xrb = row_bytes(act, k);
  thread_local std::vector<uint8_t> xq;
  if (xq.size() < static_cast<size_t>(a.m) * xrb) xq.resize(static_cast<size_t>(a.m) * xrb);
  for (int64_t i = 0; i < a.m; ++i) quant_quantize_row(act, a.x + i * a.ldx, xq.data() + i * xrb, k);
  for (int64_t j = n0; j < n1; ++j) {
    const uint8_t* wr = w.row(j);
    for (int64_t i = 0; i < a.m; ++i) a.y[i * a.ldy + j] = dot(wr, xq.data() + i * xrb, k);
  }
  return true;
}

}  // namespace merlin
