// Placeholder until the quantized formats land: reports every block type as unsupported.
#include "kernels/quant.h"

namespace merlin {
bool quant_is_supported(DType) { return false; }
void quant_dequantize_row(DType, const void*, float*, int64_t) {}
bool quant_quantize_row(DType, const float*, void*, int64_t) { return false; }
bool quant_matmul(const MatmulArgs&, int64_t, int64_t) { return false; }
}  // namespace merlin
