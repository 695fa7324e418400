// Quantized weight formats (llama.cpp block layouts): dequantization, quantization and fast dot
// products with activations quantized on the fly. Implemented in quant*.cc.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/tensor.h"
#include "core/thread_pool.h"

namespace merlin {

struct MatmulArgs;

// True when `t` is a block-quantized type Merlin can dequantize.
bool quant_is_supported(DType t);
// Dequantizes n elements (a multiple of the block size) from src.
void quant_dequantize_row(DType t, const void* src, float* out, int64_t n);
// Quantizes n floats into dst (row_bytes(t, n) bytes). Returns false for unsupported types.
bool quant_quantize_row(DType t, const float* src, void* dst, int64_t n);
// y = x W^T for quantized W, columns n0..n1 only; called from matmul() per thread.
// Returns false when no kernel exists for the type (the caller then dequantizes).
bool quant_matmul(const MatmulArgs& a, int64_t n0, int64_t n1);

// Layout::kInterleave16, for Q4_0, Q8_0, Q4_K and Q6_K: groups of 16 rows, and within a group,
// block position by block position: the 16 rows' scales as vectors (fp16 d / dmin; K-quant
// sub-block scales decoded to one byte per row), then the quants in 64-byte chunks that each
// hold 4 consecutive quant bytes of every row (row l at bytes 4l..4l+3). One load then feeds
// vpdpbusd with 4 weights of 16 output columns, and the scales of 16 rows convert in one
// instruction: the gemv does no per-block shuffling (llama.cpp's CPU "repack" types do the same,
// 8 rows wide). Q8_0 quants are stored +128 (unsigned, for vpdpbusd). Every row's file bytes
// can be recovered exactly (interleaved_row_blocks).
bool can_interleave(const Tensor& w);        // Q4_0/Q8_0/Q4_K/Q6_K row-major matrix
bool interleave_pays();                      // the CPU has the kernel (AVX512-VNNI)
size_t interleaved_bytes(const Tensor& w);
Tensor interleave_matrix(ThreadPool& pool, const Tensor& w, void* dst);  // dst: 64-byte aligned
// The original blocks of row r (row_bytes(dtype, cols) bytes, exactly as in the file).
void interleaved_row_blocks(const Tensor& w, int64_t r, void* dst);
// y = x W^T for an interleaved W (all columns; multi-threaded). Called by matmul().
void quant_matmul_x16(ThreadPool& pool, const MatmulArgs& a);

}  // namespace merlin
