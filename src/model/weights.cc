#include "model/weights.h"

#include <cstdlib>

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

}  // namespace merlin
