// A non-owning view of a weight tensor: data pointer (usually into a memory-mapped file),
// dtype and shape in row-major order, outermost first (HF order: a linear layer's weight is
// [out_features, in_features]; each of the `out` rows is contiguous).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace merlin {

struct Tensor {
  const void* data = nullptr;
  DType dtype = DType::kInvalid;
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
  size_t nbytes() const { return static_cast<size_t>(rows()) * row_stride_bytes(); }
  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + static_cast<size_t>(r) * row_stride_bytes();
  }
};

}  // namespace merlin
