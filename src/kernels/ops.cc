#include "kernels/ops.h"

#include <cmath>
#include <vector>

#include "core/cpu.h"
#include "kernels/quant.h"

namespace merlin {

void rms_norm(const float* x, const float* w, float* out, int64_t n, float eps) {
  float ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * r);
}

void rope_rotate_half(float* v, const float* cs, int64_t d, int64_t n_heads) {
  const int64_t h = d / 2;
  const float* c = cs;
  const float* s = cs + h;
  for (int64_t hd = 0; hd < n_heads; ++hd) {
    float* p = v + hd * d;
    for (int64_t i = 0; i < h; ++i) {
      float x0 = p[i], x1 = p[i + h];
      p[i] = x0 * c[i] - x1 * s[i];
      p[i + h] = x1 * c[i] + x0 * s[i];
    }
  }
}

int64_t argmax_ref(const float* x, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i)
    if (x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
  return best < 0 ? 0 : best;
}

int64_t argmax(const float* x, int64_t n) {
  if (n <= 0) return 0;
  if (cpu_level() >= CpuLevel::kAvx2) return detail::argmax_avx2(x, n);
  return argmax_ref(x, n);
}

void swiglu(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void add_inplace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

namespace detail {
const float* kv_row(const AttentionArgs& a, const void* base, int64_t j, int32_t kvh, float* buf) {
  const int64_t slot = kv_slot(a, j);
  const int64_t row = static_cast<int64_t>(a.n_head_kv) * a.head_dim;
  if (a.kv_type == DType::F32) return static_cast<const float*>(base) + slot * row + kvh * a.head_dim;
  const auto* p = static_cast<const uint8_t*>(base) + slot * row_bytes(a.kv_type, row) +
                  row_bytes(a.kv_type, static_cast<int64_t>(kvh) * a.head_dim);
  quant_dequantize_row(a.kv_type, p, buf, a.head_dim);
  return buf;
}
}  // namespace detail

// Plain attention for one token and one kv head group, used by both attention_ref and the
// portable path of attention().
static void attend_one(const AttentionArgs& a, int64_t t, int32_t kvh, float* scores) {
  const int32_t d = a.head_dim, group = a.n_head / a.n_head_kv;
  const int64_t n_keys = a.n_past + t + 1;
  std::vector<float> buf(a.kv_type == DType::F32 ? 0 : d);  // dequantized row of a q8_0 cache
  for (int32_t g = 0; g < group; ++g) {
    const int32_t h = kvh * group + g;
    const float* q = a.q + (t * a.n_head + h) * d;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* k = detail::kv_row(a, a.k, j, kvh, buf.data());
      float s = 0;
      for (int32_t i = 0; i < d; ++i) s += q[i] * k[i];
      s *= a.scale;
      scores[j] = s;
      mx = std::max(mx, s);
    }
    float sum = 0;
    for (int64_t j = 0; j < n_keys; ++j) {
      scores[j] = std::exp(scores[j] - mx);
      sum += scores[j];
    }
    float* o = a.out + (t * a.n_head + h) * d;
    for (int32_t i = 0; i < d; ++i) o[i] = 0;
    for (int64_t j = 0; j < n_keys; ++j) {
      const float* v = detail::kv_row(a, a.v, j, kvh, buf.data());
      const float p = scores[j] / sum;
      for (int32_t i = 0; i < d; ++i) o[i] += p * v[i];
    }
  }
}

void attention_ref(const AttentionArgs& a) {
  std::vector<float> scores(static_cast<size_t>(a.n_past + a.n_tokens));
  for (int64_t t = 0; t < a.n_tokens; ++t)
    for (int32_t kvh = 0; kvh < a.n_head_kv; ++kvh) attend_one(a, t, kvh, scores.data());
}

void attention(ThreadPool& pool, const AttentionArgs& a) {
  const bool avx512 = cpu_level() == CpuLevel::kAvx512 && a.head_dim % 16 == 0 &&
                      a.head_dim <= 256 && a.n_head / a.n_head_kv <= 16;
  const int32_t group = a.n_head / a.n_head_kv;
  if (avx512 && a.n_tokens > 1) {
    // Prompt chunks: tiles of tokens share each key and value load (bitwise the same results).
    const int64_t n_tiles = (a.n_tokens + detail::kAttentionTile - 1) / detail::kAttentionTile;
    const size_t n_scores = static_cast<size_t>(detail::kAttentionTile) * group *
                            static_cast<size_t>(a.n_past + a.n_tokens + 16);
    pool.parallel_for(n_tiles * a.n_head_kv, 1, [&](int64_t w0, int64_t w1) {
      std::vector<float> scores(n_scores);
      // Later tiles attend to more keys: hand them out first so the last claims are short.
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t tile = n_tiles - 1 - w / a.n_head_kv;
        const int32_t kvh = static_cast<int32_t>(w % a.n_head_kv);
        const int64_t t0 = tile * detail::kAttentionTile;
        const int32_t nt = static_cast<int32_t>(std::min<int64_t>(detail::kAttentionTile, a.n_tokens - t0));
        if (!detail::attention_avx512_tile(a, t0, nt, kvh, scores.data())) {
          for (int32_t t = 0; t < nt; ++t) detail::attention_avx512(a, t0 + t, kvh, scores.data());
        }
      }
    });
    return;
  }
  const int64_t n_work = static_cast<int64_t>(a.n_tokens) * a.n_head_kv;
  // Rounded up to 16 per head: the AVX-512 kernel writes scores 16 keys at a time.
  const size_t n_scores = static_cast<size_t>(a.n_past + a.n_tokens + 16) * group;
  // Work items of (token, kv head) claimed dynamically: later tokens attend to more keys.
  pool.parallel_for(n_work, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> scores(n_scores);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t t = w / a.n_head_kv;
      const int32_t kvh = static_cast<int32_t>(w % a.n_head_kv);
      if (avx512) detail::attention_avx512(a, t, kvh, scores.data());
      else attend_one(a, t, kvh, scores.data());
    }
  });
}

}  // namespace merlin
