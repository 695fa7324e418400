// libFuzzer target: the safetensors header parser (src/model/safetensors.h).
#include <cstddef>
#include <cstdint>

#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto st = merlin::parse_safetensors(data, size, "fuzz.safetensors");
  if (!st) return 0;
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : st->tensors) {
    const size_t n = t.nbytes();
    if (n == 0) continue;
    auto* p = static_cast<const uint8_t*>(t.data);
    sink = sink + p[0] + p[n - 1];
  }
  return 0;
}
