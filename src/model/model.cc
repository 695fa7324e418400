#include "model/model.h"

#include <cmath>
#include <numbers>

#include "kernels/ops.h"

namespace merlin {

Model::Model(std::shared_ptr<const ModelWeights> w) : w_(std::move(w)) {
  const auto& c = w_->config;
  const int32_t half = c.head_dim / 2;
  inv_freq_.resize(half);
  for (int32_t i = 0; i < half; ++i) {
    // As transformers computes it in f32: 1 / theta^(2i/d).
    float f = 1.0f / std::pow(c.rope_theta, static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    if (c.rope_scaling == RopeScaling::kLinear) {
      f /= c.rope_factor;
    } else if (c.rope_scaling == RopeScaling::kLlama3) {
      const float low_wavelen = c.rope_orig_max_pos / c.rope_low_freq_factor;
      const float high_wavelen = c.rope_orig_max_pos / c.rope_high_freq_factor;
      const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
      if (wavelen > low_wavelen) {
        f /= c.rope_factor;
      } else if (wavelen >= high_wavelen) {
        float smooth = (c.rope_orig_max_pos / wavelen - c.rope_low_freq_factor) /
                       (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1 - smooth) * f / c.rope_factor + smooth * f;
      }
    }
    if (!c.rope_freq_factors.empty()) f /= c.rope_freq_factors[i];  // loader checked the length
    inv_freq_[i] = f;
  }
}

void Model::rope_table(int32_t pos, float* out) const {
  const size_t half = inv_freq_.size();
  for (size_t i = 0; i < half; ++i) {
    const float ang = static_cast<float>(pos) * inv_freq_[i];  // f32 product, as HF does
    out[i] = std::cos(ang);
    out[half + i] = std::sin(ang);
  }
}

static std::vector<float> to_f32(const Tensor& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  dequantize_row(t.dtype, t.data, v.data(), t.numel());
  return v;
}

Status Model::forward(ThreadPool& pool, const StepBatch& b, KvCache& kv, float* logits,
                      const ForwardOptions& opt) {
  const auto& c = w_->config;
  const int64_t T = static_cast<int64_t>(b.tokens.size());
  if (T == 0) return Status::Ok();
  const int64_t E = c.n_embd, D = c.head_dim, H = c.n_head, Hkv = c.n_head_kv;
  const int64_t QD = H * D, KD = Hkv * D;
  for (auto tok : b.tokens)
    if (tok < 0 || tok >= c.n_vocab) return {Code::kInvalidArgument, fmt::format("token id {} out of range", tok)};
  for (const auto& s : b.seqs) {
    if (s.n_past + s.n_tokens > s.n_blocks * kv.block_size())
      return {Code::kInternal, "block table does not cover the sequence"};
  }

  auto grow = [](std::vector<float>& v, int64_t n) { if (static_cast<int64_t>(v.size()) < n) v.resize(n); };
  grow(x_, T * E); grow(h_, T * E); grow(q_, T * QD); grow(k_, T * KD); grow(v_, T * KD);
  grow(att_, T * QD); grow(gate_, T * c.n_ff); grow(up_, T * c.n_ff); grow(cs_, T * D);

  // Positions and rotary tables, once per step for all layers.
  std::vector<int32_t> pos(T);
  for (const auto& s : b.seqs)
    for (int32_t i = 0; i < s.n_tokens; ++i) pos[s.start + i] = s.n_past + i;
  pool.parallel_for(T, 8, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) rope_table(pos[t], cs_.data() + t * D);
    for (int64_t t = t0; t < t1; ++t) dequantize_row(w_->tok_embd, b.tokens[t], x_.data() + t * E);
  });

  auto mm = [&](const Tensor& w, const float* x, int64_t m, int64_t ldx, float* y, int64_t ldy) {
    MatmulArgs a;
    a.w = &w; a.x = x; a.y = y; a.m = m; a.ldx = ldx; a.ldy = ldy; a.precision = opt.precision;
    matmul(pool, a);
  };
  // Norm weights and biases are small; converted once per call site (cheap relative to matmuls).
  for (int32_t l = 0; l < c.n_layer; ++l) {
    if (opt.abort && opt.abort()) return Status{Code::kCancelled, "forward pass aborted"};
    const LayerWeights& L = w_->layers[l];
    const auto attn_norm = to_f32(L.attn_norm);
    pool.parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) rms_norm(x_.data() + t * E, attn_norm.data(), h_.data() + t * E, E, c.rms_eps);
    });
    mm(L.wq, h_.data(), T, E, q_.data(), QD);
    mm(L.wk, h_.data(), T, E, k_.data(), KD);
    mm(L.wv, h_.data(), T, E, v_.data(), KD);
    if (!L.bq.empty()) {
      const auto bq = to_f32(L.bq), bk = to_f32(L.bk), bv = to_f32(L.bv);
      for (int64_t t = 0; t < T; ++t) {
        add_inplace(q_.data() + t * QD, bq.data(), QD);
        add_inplace(k_.data() + t * KD, bk.data(), KD);
        add_inplace(v_.data() + t * KD, bv.data(), KD);
      }
    }
    // RoPE, then append K and V to each sequence's blocks.
    pool.parallel_for(T, 4, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        rope_rotate_half(q_.data() + t * QD, cs_.data() + t * D, D, H);
        rope_rotate_half(k_.data() + t * KD, cs_.data() + t * D, D, Hkv);
      }
    });
    for (const auto& s : b.seqs) {
      for (int32_t i = 0; i < s.n_tokens; ++i) {
        const int32_t p = s.n_past + i;
        const int32_t blk = s.block_table[p / kv.block_size()], slot = p % kv.block_size();
        kv.write_slot(l, blk, slot, k_.data() + (s.start + i) * KD, v_.data() + (s.start + i) * KD);
      }
    }
    for (const auto& s : b.seqs) {
      AttentionArgs a;
      a.q = q_.data() + s.start * QD;
      a.out = att_.data() + s.start * QD;
      a.n_tokens = s.n_tokens; a.n_head = c.n_head; a.n_head_kv = c.n_head_kv; a.head_dim = c.head_dim;
      a.n_past = s.n_past; a.k = kv.k(l); a.v = kv.v(l); a.kv_type = kv.type(); a.block_table = s.block_table;
      a.block_size = kv.block_size(); a.scale = 1.0f / std::sqrt(static_cast<float>(D));
      attention(pool, a);
    }
    mm(L.wo, att_.data(), T, QD, h_.data(), E);
    add_inplace(x_.data(), h_.data(), T * E);

    const auto ffn_norm = to_f32(L.ffn_norm);
    pool.parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) rms_norm(x_.data() + t * E, ffn_norm.data(), h_.data() + t * E, E, c.rms_eps);
    });
    mm(L.w_gate, h_.data(), T, E, gate_.data(), c.n_ff);
    mm(L.w_up, h_.data(), T, E, up_.data(), c.n_ff);
    pool.parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) swiglu(gate_.data() + t * c.n_ff, up_.data() + t * c.n_ff, c.n_ff);
    });
    mm(L.w_down, gate_.data(), T, c.n_ff, h_.data(), E);
    add_inplace(x_.data(), h_.data(), T * E);
  }

  // Final norm and output head only for the rows whose logits are wanted.
  const int64_t n_out = static_cast<int64_t>(b.logit_rows.size());
  if (n_out == 0) return Status::Ok();
  grow(out_rows_, n_out * E);
  const auto norm = to_f32(w_->norm);
  for (int64_t i = 0; i < n_out; ++i) {
    const int32_t r = b.logit_rows[i];
    if (r < 0 || r >= T) return {Code::kInternal, "logit row out of range"};
    rms_norm(x_.data() + r * E, norm.data(), out_rows_.data() + i * E, E, c.rms_eps);
  }
  mm(w_->output, out_rows_.data(), n_out, E, logits, c.n_vocab);
  return Status::Ok();
}

}  // namespace merlin
