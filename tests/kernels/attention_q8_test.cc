// Attention over a q8_0 KV cache: the AVX-512 path against the scalar reference on the same
// quantized cache, and both against the f32 cache (quantization error only).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/dtype.h"
#include "kernels/ops.h"
#include "kernels/quant.h"

namespace merlin {
namespace {

std::vector<float> rnd(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Quantizes each slot row (n_head_kv * head_dim floats) into q8_0 blocks.
std::vector<uint8_t> to_q8(const std::vector<float>& f, int64_t row) {
  const int64_t n_rows = static_cast<int64_t>(f.size()) / row;
  const size_t rb = row_bytes(DType::Q8_0, row);
  std::vector<uint8_t> out(rb * n_rows);
  for (int64_t r = 0; r < n_rows; ++r) EXPECT_TRUE(quant_quantize_row(DType::Q8_0, f.data() + r * row, out.data() + r * rb, row));
  return out;
}

TEST(AttentionQ8, MatchesReferenceAndF32) {
  for (int d : {64, 128}) {
    const int n_head = 8, n_head_kv = 2, bs = 16;
    const int n_past = 41, n_tokens = 7, total = n_past + n_tokens;
    const int n_blocks = (total + bs - 1) / bs + 2;
    const int64_t row = int64_t{n_head_kv} * d;
    auto k = rnd(static_cast<size_t>(n_blocks * bs * row), 1), v = rnd(k.size(), 2);
    auto q = rnd(static_cast<size_t>(n_tokens * n_head * d), 3);
    auto kq = to_q8(k, row), vq = to_q8(v, row);
    std::vector<int32_t> table;
    for (int i = 0; i < n_blocks; ++i) table.push_back((i * 3 + 1) % n_blocks);
    AttentionArgs a;
    a.q = q.data(); a.n_tokens = n_tokens; a.n_head = n_head; a.n_head_kv = n_head_kv; a.head_dim = d;
    a.n_past = n_past; a.block_table = table.data(); a.block_size = bs; a.scale = 1.0f / std::sqrt(float(d));
    std::vector<float> f32_out(q.size()), ref(q.size()), got(q.size());
    a.k = k.data(); a.v = v.data(); a.kv_type = DType::F32; a.out = f32_out.data();
    attention_ref(a);
    a.k = kq.data(); a.v = vq.data(); a.kv_type = DType::Q8_0; a.out = ref.data();
    attention_ref(a);
    a.out = got.data();
    ThreadPool pool(2);
    attention(pool, a);  // AVX-512 where the CPU has it
    float max_q = 0, max_f = 0;
    for (size_t i = 0; i < q.size(); ++i) {
      max_q = std::max(max_q, std::fabs(got[i] - ref[i]));
      max_f = std::max(max_f, std::fabs(ref[i] - f32_out[i]));
    }
    EXPECT_LT(max_q, 1e-5f) << d;   // same dequantized values, summation order differs
    EXPECT_LT(max_f, 3e-2f) << d;   // q8_0 error of unit-variance keys/values (measured ~1e-2)
    std::printf("  head_dim %d: |simd - ref| %.1e, |q8_0 - f32| %.1e\n", d, max_q, max_f);
  }
}

}  // namespace
}  // namespace merlin
