// The multi-token (tiled) AVX-512 attention used for prompt chunks gives bitwise the results of
// computing each token alone: batch invariance of prompt processing and speculative
// verification rests on it. Also checked against the plain reference.
#include <gtest/gtest.h>

#include <random>

#include "core/cpu.h"
#include "core/thread_pool.h"
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

struct Case {
  int n_head, n_head_kv, d, bs, n_past, n_tokens;
  bool q8;
};

void check(const Case& c) {
  // Without AVX-512 both sides take the plain path, which must agree too.
  const int total = c.n_past + c.n_tokens;
  const int n_blocks = (total + c.bs - 1) / c.bs + 3;
  const int64_t row = static_cast<int64_t>(c.n_head_kv) * c.d;
  auto kf = rnd(static_cast<size_t>(n_blocks) * c.bs * row, 11);
  auto vf = rnd(kf.size(), 12);
  auto q = rnd(static_cast<size_t>(c.n_tokens) * c.n_head * c.d, 13);
  std::vector<uint8_t> kq, vq;
  if (c.q8) {
    const size_t rb = row_bytes(DType::Q8_0, row);
    kq.resize(rb * n_blocks * c.bs);
    vq.resize(kq.size());
    for (int64_t s = 0; s < static_cast<int64_t>(n_blocks) * c.bs; ++s) {
      quant_quantize_row(DType::Q8_0, kf.data() + s * row, kq.data() + s * rb, row);
      quant_quantize_row(DType::Q8_0, vf.data() + s * row, vq.data() + s * rb, row);
    }
  }
  std::vector<int32_t> table;
  for (int i = 0; i < n_blocks; ++i) table.push_back((i * 5 + 2) % n_blocks);
  AttentionArgs a;
  a.n_head = c.n_head; a.n_head_kv = c.n_head_kv; a.head_dim = c.d;
  a.k = c.q8 ? static_cast<const void*>(kq.data()) : kf.data();
  a.v = c.q8 ? static_cast<const void*>(vq.data()) : vf.data();
  a.kv_type = c.q8 ? DType::Q8_0 : DType::F32;
  a.block_table = table.data(); a.block_size = c.bs;
  a.scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  ThreadPool pool(2);
  // The whole chunk at once (tiled) ...
  std::vector<float> chunk(q.size()), one(q.size()), ref(q.size());
  a.q = q.data(); a.n_tokens = c.n_tokens; a.n_past = c.n_past; a.out = chunk.data();
  attention(pool, a);
  a.out = ref.data();
  attention_ref(a);
  // ... and token by token, each as its own one-token call.
  const int64_t per_tok = static_cast<int64_t>(c.n_head) * c.d;
  for (int t = 0; t < c.n_tokens; ++t) {
    AttentionArgs b = a;
    b.q = q.data() + t * per_tok;
    b.out = one.data() + t * per_tok;
    b.n_tokens = 1;
    b.n_past = c.n_past + t;
    attention(pool, b);
  }
  for (size_t i = 0; i < q.size(); ++i) {
    ASSERT_EQ(chunk[i], one[i]) << "element " << i << " (token " << i / per_tok << ")";
    ASSERT_NEAR(chunk[i], ref[i], c.q8 ? 2e-5 : 1e-5) << i;
  }
}

TEST(AttentionTile, BitwiseSameAsTokenByToken) {
  // tiny-coder's shape (6 heads, 2 kv heads, head_dim 64), partial tiles and partial key blocks.
  check({6, 2, 64, 16, 0, 37, false});
  check({6, 2, 64, 16, 45, 19, false});
  check({6, 2, 64, 16, 300, 64, false});
}

TEST(AttentionTile, OtherShapesAndBlockSizes) {
  check({8, 1, 128, 16, 17, 13, false});   // group 8, head_dim 128
  check({4, 4, 64, 12, 29, 21, false});    // block size not a multiple of 16
  check({6, 2, 64, 32, 70, 9, false});
}

TEST(AttentionTile, Q8Cache) {
  check({6, 2, 64, 16, 33, 27, true});
  check({8, 2, 128, 16, 5, 10, true});
}

}  // namespace
}  // namespace merlin
