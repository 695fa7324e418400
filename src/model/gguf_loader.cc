// GGUF route of load_model(): hyperparameters and tokenizer from metadata, weights zero-copy from
// the mapping except norms (converted to f32) and Q/K of `llama` files (rows un-permuted).
#include <cmath>
#include <cstring>
#include <filesystem>

#include "kernels/matmul.h"
#include "model/gguf.h"
#include "model/model.h"

namespace merlin {

namespace {


// Copies `t` into an owned buffer with rows (or elements, for 1-D biases) reordered.
Tensor unpermute_owned(ModelWeights& w, const Tensor& t, int64_t head_dim) {
  const bool vec = t.shape.size() == 1;
  const int64_t rows = vec ? t.numel() : t.rows();
  const size_t rb = vec ? row_bytes(t.dtype, 1) : t.row_stride_bytes();
  auto order = gguf_qk_row_order(rows, head_dim, /*to_gguf=*/false);
  uint8_t* dst = w.alloc(rb * static_cast<size_t>(rows));
  auto* src = static_cast<const uint8_t*>(t.data);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * rb, src + order[r] * rb, rb);
  Tensor o = t;
  o.data = dst;
  return o;
}

}  // namespace

Result<LoadedModel> load_gguf_model(const std::string& path) {
  MERLIN_TRY(g, open_gguf(path));
  // The tokenizer first: a vocabulary Merlin cannot tokenize is refused before any weight work.
  MERLIN_TRY(vocab, gguf_tokenizer_vocab(g));
  MERLIN_TRY(tok, Tokenizer::from_vocab(std::move(vocab), path));
  MERLIN_TRY(cfg, gguf_model_config(g));
  auto w = std::make_shared<ModelWeights>();
  w->config = cfg;
  w->files.push_back(g.file);
  const auto& c = w->config;
  const int64_t E = c.n_embd, D = c.head_dim;
  // llama.cpp permutes Q/K only for the `llama` architecture (mistral files use it too).
  const bool permuted = c.arch == "llama" || c.arch == "mistral";

  auto get = [&](const std::string& name, std::vector<int64_t> shape, Tensor& out, bool matrix) -> Status {
    auto* ti = g.find_tensor(name);
    if (!ti) return {Code::kCorrupt, fmt::format("{}: missing tensor '{}'", path, name)};
    Tensor t = ti->tensor();
    if (t.shape != shape)
      return {Code::kCorrupt, fmt::format("{}: tensor '{}' has shape [{}] but the metadata needs [{}]", path, name,
                                          fmt::join(t.shape, ", "), fmt::join(shape, ", "))};
    if (!matmul_supported(t.dtype) || (!matrix && dtype_info(t.dtype).block_elems != 1))
      return {Code::kUnsupported, fmt::format("{}: tensor '{}' has unsupported type {}", path, name, dtype_name(t.dtype))};
    out = t;
    return Status::Ok();
  };
#define GET(name, shape, out, matrix) \
  if (auto st_ = get(name, shape, out, matrix); !st_.ok()) return std::unexpected(st_)
  using S = std::vector<int64_t>;

  GET("token_embd.weight", (S{c.n_vocab, E}), w->tok_embd, true);
  GET("output_norm.weight", (S{E}), w->norm, false);
  w->norm = to_f32_owned(*w, w->norm);
  if (g.find_tensor("output.weight")) {
    GET("output.weight", (S{c.n_vocab, E}), w->output, true);
  } else {
    w->output = w->tok_embd;
  }
  w->layers.resize(c.n_layer);
  for (int32_t i = 0; i < c.n_layer; ++i) {
    auto p = fmt::format("blk.{}.", i);
    auto& L = w->layers[i];
    GET(p + "attn_norm.weight", (S{E}), L.attn_norm, false);
    GET(p + "ffn_norm.weight", (S{E}), L.ffn_norm, false);
    L.attn_norm = to_f32_owned(*w, L.attn_norm);
    L.ffn_norm = to_f32_owned(*w, L.ffn_norm);
    GET(p + "attn_q.weight", (S{c.n_head * D, E}), L.wq, true);
    GET(p + "attn_k.weight", (S{c.n_head_kv * D, E}), L.wk, true);
    GET(p + "attn_v.weight", (S{c.n_head_kv * D, E}), L.wv, true);
    GET(p + "attn_output.weight", (S{E, c.n_head * D}), L.wo, true);
    if (c.qkv_bias) {
      GET(p + "attn_q.bias", (S{c.n_head * D}), L.bq, false);
      GET(p + "attn_k.bias", (S{c.n_head_kv * D}), L.bk, false);
      GET(p + "attn_v.bias", (S{c.n_head_kv * D}), L.bv, false);
    }
    if (permuted) {
      L.wq = unpermute_owned(*w, L.wq, D);
      L.wk = unpermute_owned(*w, L.wk, D);
      if (c.qkv_bias) {
        L.bq = unpermute_owned(*w, L.bq, D);
        L.bk = unpermute_owned(*w, L.bk, D);
      }
    }
    if (c.qkv_bias) {
      L.bq = to_f32_owned(*w, L.bq);
      L.bk = to_f32_owned(*w, L.bk);
      L.bv = to_f32_owned(*w, L.bv);
    }
    GET(p + "ffn_gate.weight", (S{c.n_ff, E}), L.w_gate, true);
    GET(p + "ffn_up.weight", (S{c.n_ff, E}), L.w_up, true);
    GET(p + "ffn_down.weight", (S{E, c.n_ff}), L.w_down, true);
  }
#undef GET
  // Llama 3 rope scaling: llama.cpp stores the per-frequency divisors, not the formula's inputs.
  if (auto* rf = g.find_tensor("rope_freqs.weight")) {
    Tensor t = rf->tensor();
    if (t.dtype != DType::F32 || t.shape != std::vector<int64_t>{D / 2})
      return Errf(Code::kCorrupt, "{}: rope_freqs.weight must be f32 [{}], not {} [{}]", path, D / 2,
                  dtype_name(t.dtype), fmt::join(t.shape, ", "));
    auto* f = static_cast<const float*>(t.data);
    for (int64_t i = 0; i < D / 2; ++i)
      if (!(f[i] > 0) || !std::isfinite(f[i]))
        return Errf(Code::kCorrupt, "{}: rope_freqs.weight[{}] = {} is not a positive number", path, i, f[i]);
    w->config.rope_freq_factors.assign(f, f + D / 2);
  }

  // f32/f16/bf16 matrices are repacked for the matmul kernels, as for HF folders.
  pack_weights(*w);

  if (tok->n_vocab() > c.n_vocab)
    return Errf(Code::kCorrupt, "{}: tokenizer has {} tokens but token_embd has {} rows", path, tok->n_vocab(), c.n_vocab);

  LoadedModel m;
  m.weights = w;
  m.tokenizer = tok;
  m.path = path;
  m.name = std::filesystem::path(path).filename().string();
  if (m.name.size() > 5 && m.name.ends_with(".gguf")) m.name.resize(m.name.size() - 5);
  return m;
}

}  // namespace merlin
