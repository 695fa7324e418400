#include "model/weights.h"

#include <cstdlib>

#include "kernels/matmul.h"

namespace merlin {

uint8_t* ModelWeights::alloc(size_t nbytes) {
  // Over-allocate to align by hand: unique_ptr<uint8_t[]> must own what new[] returned.
  owned.emplace_back(new uint8_t[nbytes + 64]);
  auto p = reinterpret_cast<uintptr_t>(owned.back().get());
  return reinterpret_cast<uint8_t*>((p + 63) & ~uintptr_t{63});
}

size_t ModelWeights::weight_bytes() const {
  size_t n = output.nbytes();
  for (const auto& l : layers)
    n += l.wq.nbytes() + l.wk.nbytes() + l.wv.nbytes() + l.wo.nbytes() + l.w_gate.nbytes() +
         l.w_up.nbytes() + l.w_down.nbytes();
  return n;
}

Tensor to_f32_owned(ModelWeights& w, const Tensor& t) {
  if (t.dtype == DType::F32) return t;
  Tensor o = t;
  auto* p = reinterpret_cast<float*>(w.alloc(static_cast<size_t>(t.numel()) * 4));
  dequantize_row(t.dtype, t.data, p, t.numel());
  o.data = p;
  o.dtype = DType::F32;
  return o;
}

}  // namespace merlin
