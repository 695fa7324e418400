// AVX2 + FMA quantized dot products (called only when cpu_level() >= kAvx2).
#define MERLIN_QUANT_VNNI 0
#define MERLIN_QUANT_NS avx2
#include "kernels/quant_simd.inc"

namespace merlin::quant {
VecDotFn vec_dot_avx2(DType t) { return avx2::lookup(t); }
}  // namespace merlin::quant
