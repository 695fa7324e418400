// Matrix multiplication of activations by a weight matrix, the hot spot of the model:
//   y[m, n] = sum_k x[m, k] * W[n, k]        x, y: f32 row-major; W: any weight dtype.
// Precision::kF32 converts weights to f32 exactly and accumulates in f32 (matches the HF fp32
// reference within summation-order noise). Precision::kBF16 rounds activations to bf16 and uses
// bf16 dot products (AVX512_BF16), as llama.cpp does for bf16 weights: about twice the
// arithmetic rate, with activation rounding error (~3 significant digits per product).
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "core/thread_pool.h"

namespace merlin {

enum class Precision { kF32, kBF16 };

struct MatmulArgs {
  const Tensor* w = nullptr;   // [n, k]
  const float* x = nullptr;    // [m, k], row stride ldx
  float* y = nullptr;          // [m, n], row stride ldy
  int64_t m = 0, ldx = 0, ldy = 0;
  Precision precision = Precision::kF32;
};

// Picks the fastest kernel for the CPU (src/core/cpu.h) and weight dtype; multi-threaded.
void matmul(ThreadPool& pool, const MatmulArgs& a);

// Plain scalar reference: the oracle every optimized kernel is tested against.
void matmul_ref(const MatmulArgs& a);

// Converts n elements of row r of W to f32 (any supported dtype, quantized included).
void dequantize_row(const Tensor& w, int64_t r, float* out);
void dequantize_row(DType t, const void* src, float* out, int64_t n);

bool matmul_supported(DType t);

// Repacking into Layout::kPanel32 (done once at load for f32/f16/bf16 matrices; f16 becomes
// f32). In a packed matrix every output is one sequential f32 FMA chain over k, whatever the
// number of rows m: results are identical whether a token is computed alone or inside a batch
// (continuous batching and speculative verification rely on that).
bool can_pack(const Tensor& w);
size_t packed_bytes(const Tensor& w);
Tensor pack_matrix(ThreadPool& pool, const Tensor& w, void* dst);  // dst: packed_bytes, 64-aligned

namespace detail {
// `p0..p1`: the slice of 32-column panels to compute.
void gemm_panel_avx512(const MatmulArgs& a, int64_t p0, int64_t p1, const uint16_t* x_bf16);
void gemm_panel_portable(const MatmulArgs& a, int64_t p0, int64_t p1);
void gemm_portable(const MatmulArgs& a, int64_t n0, int64_t n1);
}  // namespace detail

}  // namespace merlin
