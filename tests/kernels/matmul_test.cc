// Optimized matmul and attention kernels against the plain reference kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/cpu.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"

namespace merlin {
namespace {

struct Mat {
  std::vector<uint8_t> buf;
  Tensor t;
};

Mat random_matrix(DType dt, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 1);
  Mat m;
  m.buf.resize(static_cast<size_t>(n * k) * (dt == DType::F32 ? 4 : 2));
  for (int64_t i = 0; i < n * k; ++i) {
    float v = nd(rng);
    if (dt == DType::F32) reinterpret_cast<float*>(m.buf.data())[i] = v;
    else if (dt == DType::BF16) reinterpret_cast<uint16_t*>(m.buf.data())[i] = f32_to_bf16(v);
    else reinterpret_cast<uint16_t*>(m.buf.data())[i] = f32_to_f16(v);
  }
  m.t.data = m.buf.data();
  m.t.dtype = dt;
  m.t.shape = {n, k};
  return m;
}

std::vector<float> random_vec(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

struct Case {
  DType dt;
  int64_t n, k, m;
};

class MatmulTest : public ::testing::TestWithParam<std::tuple<DType, int64_t, int64_t, int64_t, CpuLevel>> {};

TEST_P(MatmulTest, PackedKernelMatchesReference) {
  auto [dt, n, k, m, level] = GetParam();
  set_cpu_level_cap(level);
  Mat w = random_matrix(dt, n, k, 1);
  std::vector<uint8_t> packed_buf(packed_bytes(w.t) + 64);
  void* dst = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(packed_buf.data()) + 63) & ~uintptr_t{63});
  ThreadPool pool(2);
  ASSERT_TRUE(can_pack(w.t));
  Tensor p = pack_matrix(pool, w.t, dst);
  auto x = random_vec(static_cast<size_t>(m * k), 2);
  std::vector<float> want(static_cast<size_t>(m * n)), got(static_cast<size_t>(m * n));
  for (Precision prec : {Precision::kF32, Precision::kBF16}) {
    // matmul() uses bf16 activations only for bf16 weights on AVX512_BF16 CPUs.
    const Precision eff = (level == CpuLevel::kAvx512 && dt == DType::BF16) ? prec : Precision::kF32;
    MatmulArgs a{&w.t, x.data(), want.data(), m, k, n, eff};
    matmul_ref(a);
    MatmulArgs b{&p, x.data(), got.data(), m, k, n, prec};
    matmul(pool, b);
    // Tolerance: f32 accumulation over k terms of unit-variance products (reference in f64).
    // bf16 activations: the reference rounds them the same way; dpbf16 accumulates pairs.
    const double tol = (prec == Precision::kF32 ? 2e-6 : 2e-4) * std::sqrt(static_cast<double>(k)) * 4;
    for (int64_t i = 0; i < m * n; ++i) ASSERT_NEAR(got[i], want[i], tol) << "i=" << i << " prec=" << int(prec);
  }
  set_cpu_level_cap(CpuLevel::kAvx512);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulTest,
    ::testing::Combine(::testing::Values(DType::BF16, DType::F32, DType::F16), ::testing::Values(int64_t{1}, int64_t{45}, int64_t{96}),
                       ::testing::Values(int64_t{64}, int64_t{1030}), ::testing::Values(int64_t{1}, int64_t{3}, int64_t{7}, int64_t{13}),
                       ::testing::Values(CpuLevel::kScalar, CpuLevel::kAvx512)));

// A row's result must not depend on how many rows are computed with it (continuous batching
// and speculative verification rely on bitwise equality).
TEST(Matmul, BatchInvariantBitwise) {
  if (cpu_level() != CpuLevel::kAvx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  const int64_t n = 100, k = 384;
  Mat w = random_matrix(DType::BF16, n, k, 3);
  std::vector<uint8_t> buf(packed_bytes(w.t) + 64);
  void* dst = reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  ThreadPool pool(2);
  Tensor p = pack_matrix(pool, w.t, dst);
  auto x = random_vec(static_cast<size_t>(20 * k), 4);
  std::vector<float> big(20 * n), one(n);
  MatmulArgs a{&p, x.data(), big.data(), 20, k, n, Precision::kF32};
  matmul(pool, a);
  for (int64_t i = 0; i < 20; ++i) {
    MatmulArgs b{&p, x.data() + i * k, one.data(), 1, k, n, Precision::kF32};
    matmul(pool, b);
    for (int64_t j = 0; j < n; ++j) ASSERT_EQ(one[j], big[i * n + j]) << i << "," << j;
  }
}

TEST(Attention, Avx512MatchesReference) {
  const int n_head = 6, n_head_kv = 2, d = 64, bs = 16;
  const int n_past = 37, n_tokens = 9, total = n_past + n_tokens;
  const int n_blocks = (total + bs - 1) / bs + 2;
  auto k = random_vec(static_cast<size_t>(n_blocks * bs * n_head_kv * d), 5);
  auto v = random_vec(k.size(), 6);
  auto q = random_vec(static_cast<size_t>(n_tokens * n_head * d), 7);
  // Non-contiguous block table, as the paged cache hands out.
  std::vector<int32_t> table;
  for (int i = 0; i < n_blocks; ++i) table.push_back((i * 3 + 1) % n_blocks);
  std::vector<float> want(q.size()), got(q.size());
  AttentionArgs a;
  a.q = q.data(); a.n_tokens = n_tokens; a.n_head = n_head; a.n_head_kv = n_head_kv; a.head_dim = d;
  a.n_past = n_past; a.k = k.data(); a.v = v.data(); a.block_table = table.data(); a.block_size = bs;
  a.scale = 0.125f;
  a.out = want.data();
  attention_ref(a);
  a.out = got.data();
  ThreadPool pool(2);
  attention(pool, a);
  for (size_t i = 0; i < q.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << i;
}

TEST(Dtype, Bf16AndF16RoundTrip) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);  // ties to even
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f})
    EXPECT_EQ(f16_to_f32(f32_to_f16(f)), f) << f;
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
}

}  // namespace
}  // namespace merlin
