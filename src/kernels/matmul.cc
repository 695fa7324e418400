#include "kernels/matmul.h"

#include <algorithm>
#include <cassert>
#include <cmath>
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

// Element (r, t) of a packed matrix.
static float packed_at(const Tensor& w, int64_t r, int64_t t) {
  const int64_t k = w.cols(), p = r / 32, c = r % 32;
  if (w.dtype == DType::BF16) {
    auto* base = static_cast<const uint16_t*>(w.data) + p * 32 * k;
    return bf16_to_f32(base[(t / 2) * 64 + c * 2 + (t % 2)]);
  }
  auto* base = static_cast<const float*>(w.data) + p * 32 * k;
  return base[t * 32 + c];
}

void dequantize_row(const Tensor& w, int64_t r, float* out) {
  if (w.layout == Layout::kInterleave16) {
    thread_local std::vector<uint8_t> blocks;
    blocks.resize(row_bytes(w.dtype, w.cols()));
    interleaved_row_blocks(w, r, blocks.data());
    quant_dequantize_row(w.dtype, blocks.data(), out, w.cols());
    return;
  }
  if (w.layout == Layout::kPanel32) {
    for (int64_t t = 0; t < w.cols(); ++t) out[t] = packed_at(w, r, t);
    return;
  }
  dequantize_row(w.dtype, w.row(r), out, w.cols());
}

bool can_pack(const Tensor& w) {
  return w.layout == Layout::kRowMajor && w.shape.size() == 2 && w.cols() % 2 == 0 &&
         (w.dtype == DType::F32 || w.dtype == DType::BF16 || w.dtype == DType::F16);
}

size_t packed_bytes(const Tensor& w) {
  const size_t rows = static_cast<size_t>((w.rows() + 31) / 32 * 32);
  return rows * static_cast<size_t>(w.cols()) * (w.dtype == DType::BF16 ? 2 : 4);
}

Tensor pack_matrix(ThreadPool& pool, const Tensor& w, void* dst) {
  Tensor o = w;
  o.layout = Layout::kPanel32;
  o.dtype = w.dtype == DType::BF16 ? DType::BF16 : DType::F32;
  o.data = dst;
  const int64_t n = w.rows(), k = w.cols(), n_panels = (n + 31) / 32;
  pool.parallel_for(n_panels, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t c = 0; c < 32; ++c) {
        const int64_t r = p * 32 + c;
        if (w.dtype == DType::BF16) {
          auto* out = static_cast<uint16_t*>(dst) + p * 32 * k;
          const auto* src = reinterpret_cast<const uint16_t*>(r < n ? w.row(r) : nullptr);
          for (int64_t t = 0; t < k; ++t) out[(t / 2) * 64 + c * 2 + (t % 2)] = src ? src[t] : 0;
        } else {
          auto* out = static_cast<float*>(dst) + p * 32 * k;
          if (r < n) dequantize_row(w.dtype, w.row(r), row.data(), k);
          for (int64_t t = 0; t < k; ++t) out[t * 32 + c] = r < n ? row[t] : 0.0f;
        }
      }
    }
  });
  return o;
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
      double s = 0;
      for (int64_t t = 0; t < k; ++t) s += static_cast<double>(x[t]) * row[t];
      a.y[i * a.ldy + j] = static_cast<float>(s);
    }
  }
}

namespace detail {
// Portable row-major path: dequantize a row at a time, then dot products.
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

// Portable packed path: one sequential chain per output (same order as the AVX-512 kernel,
// without its fused multiply-adds).
void gemm_panel_portable(const MatmulArgs& a, int64_t p0, int64_t p1) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows(), k = w.cols();
  float acc[32];
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t nb = std::min<int64_t>(32, n - p * 32);
    for (int64_t i = 0; i < a.m; ++i) {
      const float* x = a.x + i * a.ldx;
      std::fill(acc, acc + 32, 0.0f);
      if (w.dtype == DType::BF16) {
        auto* base = static_cast<const uint16_t*>(w.data) + p * 32 * k;
        for (int64_t t = 0; t < k; t += 2) {
          const uint16_t* q = base + (t / 2) * 64;
          for (int c = 0; c < 32; ++c) acc[c] += x[t] * bf16_to_f32(q[2 * c]);
          for (int c = 0; c < 32; ++c) acc[c] += x[t + 1] * bf16_to_f32(q[2 * c + 1]);
        }
      } else {
        auto* base = static_cast<const float*>(w.data) + p * 32 * k;
        for (int64_t t = 0; t < k; ++t)
          for (int c = 0; c < 32; ++c) acc[c] += x[t] * base[t * 32 + c];
      }
      for (int64_t c = 0; c < nb; ++c) a.y[i * a.ldy + p * 32 + c] = acc[c];
    }
  }
}
}  // namespace detail

void matmul(ThreadPool& pool, const MatmulArgs& a) {
  const Tensor& w = *a.w;
  const int64_t n = w.rows();
  const bool avx512 = cpu_level() == CpuLevel::kAvx512;
  MatmulArgs args = a;
  if (!avx512 || w.dtype != DType::BF16) args.precision = Precision::kF32;

  if (w.layout == Layout::kPanel32) {
    const int64_t n_panels = (n + 31) / 32;
    std::vector<uint16_t> xb;
    if (args.precision == Precision::kBF16) {
      // Activations rounded to bf16 once per call.
      const int64_t k = w.cols();
      xb.resize(static_cast<size_t>(args.m * k));
      for (int64_t i = 0; i < args.m; ++i)
        for (int64_t t = 0; t < k; ++t) xb[i * k + t] = f32_to_bf16(args.x[i * args.ldx + t]);
    }
    auto work = [&](int64_t p0, int64_t p1) {
      if (avx512) detail::gemm_panel_avx512(args, p0, p1, xb.empty() ? nullptr : xb.data());
      else detail::gemm_panel_portable(args, p0, p1);
    };
    // Below ~128K multiply-adds (a draft model's 192-wide layers) waking the other threads
    // costs more than the work: run it here. The split never changes any output's value.
    if (args.m * n * w.cols() < (int64_t{1} << 17)) work(0, n_panels);
    else pool.parallel_for(n_panels, 1, work);
    return;
  }
  if (w.layout == Layout::kInterleave16) {
    quant_matmul_x16(pool, args);
    return;
  }
  // Row-major: quantized weights (their kernels quantize activations themselves) and
  // unpacked plain matrices.
  pool.parallel_for(n, 16, [&](int64_t n0, int64_t n1) {
    if (!quant_matmul(args, n0, n1)) detail::gemm_portable(args, n0, n1);
  });
}

}  // namespace merlin
