// AVX512-VNNI quantized dot products (called only when cpu_level() == kAvx512). The kernels
// use 256-bit vectors (AVX512VL): rows are short (k of a few hundred to a few thousand) and
// vpdpbusd replaces the maddubs+madd pair, which is where the gain is.
#include "core/cpu.h"

#define MERLIN_QUANT_VNNI 1
#define MERLIN_QUANT_NS avx512
#include "kernels/quant_simd.inc"

namespace merlin::quant {
VecDotFn vec_dot_avx512(DType t) {
  // AVX-512 level does not imply VNNI on every CPU (Skylake-X has none): fall back to AVX2.
  if (!cpu_features().avx512_vnni) return nullptr;
  return avx512::lookup(t);
}
}  // namespace merlin::quant

// ------------------------------------------------------------------ two-block VNNI gemv
// Q8_0 / Q4_0 weights with 512-bit vectors, two blocks per step. The activation row is
// quantized to Q8_0 once and laid out per block pair in the order the weight bytes unpack to,
// with its scales as lane vectors and the offset correction folded into the accumulator's
// start value, so the weight side is load -> (unpack) -> vpdpbusd -> cvt -> 2 multiplies:
//   Q8_0: w + 128 is unsigned, sum((w+128)*y) - 128*sum(y) = sum(w*y)
//   Q4_0: nibble q is unsigned, sum(q*y) - 8*sum(y) = sum((q-8)*y)
#include <immintrin.h>

#include <vector>

#include "kernels/matmul.h"
#include "kernels/quant.h"

namespace merlin::quant {

namespace {
struct alignas(64) XPair {
  int8_t q[64];
  float s[16];     // activation scale of each int32 lane's block
  int32_t c[16];   // -offset * (sum of the lane's 4 activations)
};

void prepare_pairs(DType t, const BlockQ8_0* xq, int64_t np, XPair* out) {
  const int off = t == DType::Q8_0 ? 128 : 8;
  for (int64_t p = 0; p < np; ++p) {
    const BlockQ8_0& A = xq[2 * p];
    const BlockQ8_0& B = xq[2 * p + 1];
    const float da = h2f(A.d), db = h2f(B.d);
    XPair& o = out[p];
    if (t == DType::Q8_0) {
      std::memcpy(o.q, A.qs, 32);
      std::memcpy(o.q + 32, B.qs, 32);
      for (int l = 0; l < 16; ++l) o.s[l] = l < 8 ? da : db;
    } else {
      std::memcpy(o.q, A.qs, 16);
      std::memcpy(o.q + 16, B.qs, 16);
      std::memcpy(o.q + 32, A.qs + 16, 16);
      std::memcpy(o.q + 48, B.qs + 16, 16);
      for (int l = 0; l < 16; ++l) o.s[l] = (l / 4) % 2 == 0 ? da : db;
    }
    for (int l = 0; l < 16; ++l) o.c[l] = -off * (o.q[4 * l] + o.q[4 * l + 1] + o.q[4 * l + 2] + o.q[4 * l + 3]);
  }
}

float row_q8_0(const BlockQ8_0* b, const XPair* x, int64_t np) {
  __m512 acc = _mm512_setzero_ps();
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t p = 0; p < np; ++p) {
    const BlockQ8_0& A = b[2 * p];
    const BlockQ8_0& B = b[2 * p + 1];
    __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(A.qs))),
                                   _mm256_loadu_si256(reinterpret_cast<const __m256i*>(B.qs)), 1);
    w = _mm512_xor_si512(w, bias);
    const __m512i d = _mm512_dpbusd_epi32(_mm512_load_si512(x[p].c), w, _mm512_load_si512(x[p].q));
    const __m512 sw = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(_cvtsh_ss(A.d))), _mm256_set1_ps(_cvtsh_ss(B.d)), 1);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_load_ps(x[p].s)), sw, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

float row_q4_0(const BlockQ4_0* b, const XPair* x, int64_t np) {
  __m512 acc = _mm512_setzero_ps();
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t p = 0; p < np; ++p) {
    const BlockQ4_0& A = b[2 * p];
    const BlockQ4_0& B = b[2 * p + 1];
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(A.qs))),
                                              _mm_loadu_si128(reinterpret_cast<const __m128i*>(B.qs)), 1);
    const __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, m4)),
                                         _mm256_and_si256(_mm256_srli_epi16(v, 4), m4), 1);
    const __m512i d = _mm512_dpbusd_epi32(_mm512_load_si512(x[p].c), z, _mm512_load_si512(x[p].q));
    const __m512 sw = _mm512_broadcast_f32x8(_mm256_setr_m128(_mm_set1_ps(_cvtsh_ss(A.d)), _mm_set1_ps(_cvtsh_ss(B.d))));
    acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_load_ps(x[p].s)), sw, acc);
  }
  return _mm512_reduce_add_ps(acc);
}
}  // namespace

bool matmul_pairs_vnni(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const Tensor& w = *a.w;
  const DType t = w.dtype;
  const int64_t k = w.cols();
  if ((t != DType::Q8_0 && t != DType::Q4_0) || k % 64 != 0) return false;
  const int64_t nb = k / QK, np = nb / 2;
  thread_local std::vector<BlockQ8_0> xq;
  thread_local std::vector<XPair> prep;
  xq.resize(static_cast<size_t>(nb));
  if (prep.size() < static_cast<size_t>(a.m * np)) prep.resize(static_cast<size_t>(a.m * np));
  for (int64_t i = 0; i < a.m; ++i) {
    quant_quantize_row(DType::Q8_0, a.x + i * a.ldx, xq.data(), k);
    prepare_pairs(t, xq.data(), np, prep.data() + i * np);
  }
  for (int64_t j = n0; j < n1; ++j) {
    const uint8_t* wr = w.row(j);
    for (int64_t i = 0; i < a.m; ++i) {
      const XPair* x = prep.data() + i * np;
      a.y[i * a.ldy + j] = t == DType::Q8_0 ? row_q8_0(reinterpret_cast<const BlockQ8_0*>(wr), x, np)
                                            : row_q4_0(reinterpret_cast<const BlockQ4_0*>(wr), x, np);
    }
  }
  return true;
}

}  // namespace merlin::quant
