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
