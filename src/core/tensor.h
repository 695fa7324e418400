// A non-owning view of a weight tensor: data pointer (usually into a memory-mapped file),
// dtype and shape in row-major order, outermost first (HF order: a linear layer's weight is
// [out_features, in_features]; each of the `out` rows is contiguous).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace merlin {

// kPanel32: a matrix repacked for the matmul kernels (kernels/matmul.h): output columns in
// panels of 32, each panel stored k-major so one cache line feeds 16 or 32 outputs. bf16 panels
// interleave pairs of k ([k/2][32][2]) for VDPBF16PS; f32 panels are [k][32]. Rows are padded
// to a multiple of 32 with zeros.
// kInterleave16: quantized blocks of 16 rows interleaved (kernels/quant.h), rows padded to a
// multiple of 16. nbytes() reports the file's (row-major) size; Q4_K stores 64 more bytes per
// 16 rows x 256 columns in memory (its packed 6-bit scales are decoded to bytes).
enum class Layout : uint8_t { kRowMajor, kPanel32, kInterleave16 };

struct Tensor {
  const void* data = nullptr;
  DType dtype = DType::kInvalid;
  Layout layout = Layout::kRowMajor;
  std::vector<int64_t> shape;  // outermost first
  std::string name;

  bool empty() const { return data == nullptr; }
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return shape.empty() ? 0 : n;
  }
  int64_t rows() const { return shape.size() >= 2 ? numel() / shape.back() : 1; }
  int64_t cols() const { return shape.empty() ? 0 : shape.back(); }
  size_t row_stride_bytes() const { return row_bytes(dtype, cols()); }
  int64_t stored_rows() const {
    if (layout == Layout::kPanel32) return (rows() + 31) / 32 * 32;
    if (layout == Layout::kInterleave16) return (rows() + 15) / 16 * 16;
    return rows();
  }
  size_t nbytes() const { return static_cast<size_t>(stored_rows()) * row_stride_bytes(); }
  // Row r of a row-major tensor (not meaningful for kPanel32; use dequantize_row).
  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_stride_bytes();
  }
};

}  // namespace merlin
