#include "kernels/matmul.h"

#include <algorithm>
#include <cassert>
#include <vector>

#include "core/cpu.h"
#include "kernels/quant.h"

namespace merlin {

bool matmul_supported(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || quant_is_supported(t);
}

void dequantize_row(DType t, const void* src, float* out, int64_t n) {
  switch (t) {
    case DType::F32:
      std::copy_n(static_cast<const float*>(src), n, out);
      return;
    case DType::BF16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(s[i]);
      return;
    }
    case DType::F16: {
      auto* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(s[i]);
      return;
    }
    default:
      quant_dequantize_row(t, src, out, n);
  }
}

void dequantize_row(const Tensor& w, int64_t r, float* out) {
  dequantize_row(w.dtype, w.row(r), out, w.cols());
}

void matmul_ref(const MatmulArgs& a) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows(), k = w.cols();
  std::vector<float> row(static_cast<size_t>(k));
  std::vector<float> xr(static_cast<size_t>(k));
  for (int64_t j = 0; j < n; ++j) {
    dequantize_row(w, j, row.data());
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      if (a.precision == Precision::kBF16) {
        for (int64_t t = 0; t < k; ++t) xr[t] = bf16_to_f32(f32_to_bf16(x[t]));
        x = xr.data();
      }
      float s = 0;
      for (int64_t t = 0; t < k; ++t) s += x[t] * row[t];
      a.y[i * a.ldy + j] = s;
    }
  }
}

namespace detail {
// Portable path: dequantize a row at a time, then plain dot products the compiler vectorizes.
void gemm_portable(const MatmulArgs& a, int64_t n0, int64_t n1) {
  const Tensor& w = *a.w;
  const int64_t k = w.cols();
  std::vector<float> row(static_cast<size_t>(k));
  for (int64_t j = n0; j < n1; ++j) {
    dequantize_row(w, j, row.data());
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t t = 0;
      for (; t + 4 <= k; t += 4) {
        s0 += x[t] * row[t];
        s1 += x[t + 1] * row[t + 1];
        s2 += x[t + 2] * row[t + 2];
        s3 += x[t + 3] * row[t + 3];
      }
      for (; t < k; ++t) s0 += x[t] * row[t];
      a.y[i * a.ldy + j] = (s0 + s1) + (s2 + s3);
    }
  }
}
}  // namespace detail

void matmul(ThreadPool& pool, const MatmulArgs& a) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows();
  const bool avx512 = cpu_level() == CpuLevel::kAvx512;
  const bool plain = w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F16;
  MatmulArgs args = a;
  if (!avx512 && args.precision == Precision::kBF16) args.precision = Precision::kF32;

  if (!plain) {
    // Quantized weights: the quant kernels quantize activations themselves.
    pool.parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
      if (!quant_matmul(args, n0, n1)) detail::gemm_portable(args, n0, n1);
    });
    return;
  }
  if (!avx512) {
    pool.parallel_for(n, 16, [&](int64_t n0, int64_t n1) { detail::gemm_portable(args, n0, n1); });
    return;
  }
  if (args.m < 8) {
    pool.parallel_for(n, 16, [&](int64_t n0, int64_t n1) { detail::gemv_avx512(args, n0, n1); });
    return;
  }
  // GEMM: activations converted to bf16 once when that precision is asked for.
  std::vector<uint16_t> xb;
  if (args.precision == Precision::kBF16) {
    const int64_t k = w.cols();
    xb.resize(static_cast<size_t>(args.m * k));
    pool.parallel_for(args.m, 1, [&](int64_t m0, int64_t m1) {
      for (int64_t i = m0; i < m1; ++i)
        for (int64_t t = 0; t < k; ++t) xb[i * k + t] = f32_to_bf16(args.x[i * args.ldx + t]);
    });
  }
  pool.parallel_for(n, 32, [&](int64_t n0, int64_t n1) {
    detail::gemm_avx512(args, n0, n1, xb.empty() ? nullptr : xb.data());
  });
}

}  // namespace merlin
