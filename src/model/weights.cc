#include "model/weights.h"

#include <cstdlib>
#include <new>

#include "core/memory.h"
#include "kernels/matmul.h"

namespace merlin {

void ModelWeights::FreeDeleter::operator()(uint8_t* p) const { std::free(p); }

uint8_t* ModelWeights::alloc(size_t nbytes) {
  if (nbytes >= size_t{4} << 20) {
    // Weights are streamed once per token: huge pages save a TLB miss per 4 KiB (alloc_huge_pages).
    owned.emplace_back(alloc_huge_pages(nbytes));
    return owned.back().get();
  }
  void* p = std::aligned_alloc(64, (nbytes + 63) / 64 * 64);
  if (!p) throw std::bad_alloc();
  owned.emplace_back(static_cast<uint8_t*>(p));
  return static_cast<uint8_t*>(p);
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
