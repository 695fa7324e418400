// Small element-wise and attention kernels of the Llama forward pass. Each has a plain version;
// attention also has an AVX-512 version (attention_avx512.cc) tested against it.
#pragma once
#include <cstdint>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace merlin {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]  (HF LlamaRMSNorm, f32 throughout)
void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps);
// HF rotate-half RoPE (not GPT-J interleaved): pairs (i, i + d/2) rotated by pos * inv_freq[i].
// cs holds cos then sin for each of the d/2 frequencies of this token's position.
void rope_rotate_half(float* v, const float* cos_sin, int64_t head_dim, int64_t n_heads);
// gate[i] = silu(gate[i]) * up[i]
void swiglu(float* gate, const float* up, int64_t n);
void add_inplace(float* y, const float* x, int64_t n);
// Index of the first largest element (std::max_element's answer; NaNs are skipped, 0 when all
// are NaN). AVX2 when available (argmax_avx2.cc), tested against the plain loop.
int64_t argmax(const float* x, int64_t n);
int64_t argmax_ref(const float* x, int64_t n);

// Causal attention of one sequence's new tokens over its paged KV cache.
struct AttentionArgs {
  const float* q = nullptr;         // [n_tokens, n_head, head_dim]
  float* out = nullptr;             // [n_tokens, n_head, head_dim]
  int32_t n_tokens = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int32_t n_past = 0;               // token t is at position n_past + t and sees keys 0..n_past+t
  // Layer's key storage: [n_blocks][block_size][n_head_kv][head_dim] as f32, or for kv_type
  // Q8_0 the same rows as BlockQ8_0 (head_dim a multiple of 32, so each head owns its blocks).
  const void* k = nullptr;
  const void* v = nullptr;          // same layout for values
  DType kv_type = DType::F32;
  const int32_t* block_table = nullptr;
  int32_t block_size = 0;
  float scale = 0;                  // 1/sqrt(head_dim)
};
void attention(ThreadPool& pool, const AttentionArgs& a);
void attention_ref(const AttentionArgs& a);
namespace detail {
// Keys/values of token slot j (position j of the sequence) for kv head kvh, as f32: a pointer
// into the cache for F32, else dequantized into buf (head_dim floats).
const float* kv_row(const AttentionArgs& a, const void* base, int64_t j, int32_t kvh, float* buf);
// Cache slot of the sequence's token j (its block from the block table).
inline int64_t kv_slot(const AttentionArgs& a, int64_t j) {
  return static_cast<int64_t>(a.block_table[j / a.block_size]) * a.block_size + j % a.block_size;
}
int64_t argmax_avx2(const float* x, int64_t n);
void attention_avx512(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores);
// Tokens per tile of the multi-token AVX-512 kernel (prompt chunks, verification rows).
constexpr int32_t kAttentionTile = 8;
// Tokens t0..t0+nt-1 (nt <= kAttentionTile) for kv head kvh, bitwise the same as nt calls of
// attention_avx512; scores holds nt * group * (n_past + t0 + nt + 16) floats. False when the
// shape has no tiled version (the caller then goes token by token).
bool attention_avx512_tile(const AttentionArgs& a, int64_t t0, int32_t nt, int32_t kvh, float* scores);
}

}  // namespace merlin
