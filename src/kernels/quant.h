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

}  // namespace merlin
