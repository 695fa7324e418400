// The weights of a loaded Llama-family model. Tensors point into memory-mapped files (zero copy)
// or into buffers owned here (converted or re-ordered tensors). Immutable after loading.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "core/tensor.h"
#include "model/config.h"

namespace merlin {

struct LayerWeights {
  Tensor attn_norm;            // [n_embd]
  Tensor wq, wk, wv;           // [n_head*head_dim, n_embd], [n_head_kv*head_dim, n_embd] x2
  Tensor bq, bk, bv;           // optional biases (Qwen2), f32/bf16 vectors
  Tensor wo;                   // [n_embd, n_head*head_dim]
  Tensor ffn_norm;             // [n_embd]
  Tensor w_gate, w_up;         // [n_ff, n_embd]
  Tensor w_down;               // [n_embd, n_ff]
};

struct ModelWeights {
  ModelConfig config;
  Tensor tok_embd;             // [n_vocab, n_embd]
  std::vector<LayerWeights> layers;
  Tensor norm;                 // [n_embd]
  Tensor output;               // [n_vocab, n_embd]; == tok_embd when tied
  std::vector<std::shared_ptr<MappedFile>> files;       // keeps the mappings alive
  struct FreeDeleter {
    void operator()(uint8_t* p) const;
  };
  std::vector<std::unique_ptr<uint8_t, FreeDeleter>> owned;  // buffers for converted tensors

  // Allocates a buffer owned by this struct (64-byte aligned) and returns it. Buffers of 4 MiB
  // and more (repacked matrices) are 2 MiB-aligned and advised as transparent huge pages.
  uint8_t* alloc(size_t nbytes);
  size_t weight_bytes() const;  // bytes of all matrices read per token (for bandwidth figures)
};

// Small vectors (norms, biases) are converted to f32 once at load so kernels need not care:
// returns t itself when already f32, else a copy in a buffer owned by w.
Tensor to_f32_owned(ModelWeights& w, const Tensor& t);

}  // namespace merlin
