// libFuzzer target: the GGUF parser and the metadata interpretation built on it (model config,
// tokenizer vocabulary) must refuse or accept any byte string without crashing or reading out of
// bounds (ASan), and every accepted tensor must lie inside the buffer.
#include <cstddef>
#include <cstdint>

#include "model/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto g = merlin::parse_gguf(data, size, "fuzz.gguf");
  if (!g) return 0;
  volatile uint8_t sink = 0;
  for (const auto& t : g->tensors) {
    if (t.nbytes == 0) continue;
    // Touch the first and last byte: ASan flags a tensor that the parser let escape the buffer.
    sink = sink + t.data[0] + t.data[t.nbytes - 1];
    (void)t.tensor();
  }
  (void)merlin::gguf_model_config(*g);
  (void)merlin::gguf_tokenizer_vocab(*g);
  return 0;
}
