// GGUF route of load_model(): hyperparameters and tokenizer from metadata, weights zero-copy from
// the mapping except norms (converted to f32) and Q/K of `llama` files (rows un-permuted).
#include <filesystem>

#include "kernels/matmul.h"
#include "model/gguf.h"
#include "model/model.h"

namespace merlin {

namespace {

// Integer metadata in [lo, hi]; absent -> fallback (or error when required).
Status get_i32(const GgufFile& g, const std::string& key, int32_t& out, bool required, int64_t lo = 0,
               int64_t hi = INT32_MAX) {
  auto* v = g.find(key);
  if (!v) {
    if (required) return {Code::kCorrupt, fmt::format("{}: missing metadata '{}'", g.name, key)};
    return Status::Ok();
  }
  auto i = v->is_int() ? v->as_int() : std::nullopt;
  if (!i || *i < lo || *i > hi)
    return {Code::kCorrupt, fmt::format("{}: metadata '{}' must be an integer in [{}, {}]", g.name, key, lo, hi)};
  out = static_cast<int32_t>(*i);
  return Status::Ok();
}

Status get_f32(const GgufFile& g, const std::string& key, float& out) {
  auto* v = g.find(key);
  if (!v) return Status::Ok();
  auto d = v->as_double();
  if (!d || v->type == GgufType::kBool)
    return {Code::kCorrupt, fmt::format("{}: metadata '{}' must be a number", g.name, key)};
  out = static_cast<float>(*d);
  return Status::Ok();
}

std::optional<TokenId> token_id(const GgufFile& g, const std::string& key, size_t n_vocab) {
  auto* v = g.find(key);
  if (!v || !v->is_int()) return std::nullopt;
  auto i = v->as_int();
  // Files in the wild use -1 / UINT32_MAX for "none"; ids outside the vocabulary are dropped.
  if (!i || *i < 0 || static_cast<size_t>(*i) >= n_vocab) return std::nullopt;
  return static_cast<TokenId>(*i);
}

Tensor to_f32_owned(ModelWeights& w, const Tensor& t) {
  if (t.dtype == DType::F32) return t;
  Tensor o = t;
  auto* p = reinterpret_cast<float*>(w.alloc(static_cast<size_t>(t.numel()) * 4));
  dequantize_row(t.dtype, t.data, p, t.numel());
  o.data = p;
  o.dtype = DType::F32;
  return o;
}

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

std::vector<int64_t> gguf_qk_row_order(int64_t n_rows, int64_t head_dim, bool to_gguf) {
  std::vector<int64_t> order(static_cast<size_t>(n_rows));
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t head = r / head_dim, in = r % head_dim;
    if (to_gguf) {
      // destination GGUF row in = 2*i + h comes from HF row h*half + i
      order[r] = head * head_dim + (in % 2) * half + in / 2;
    } else {
      // destination HF row in = h*half + i comes from GGUF row 2*i + h
      order[r] = head * head_dim + 2 * (in % half) + in / half;
    }
  }
  return order;
}

Result<ModelConfig> gguf_model_config(const GgufFile& g) {
  auto arch = g.get_string("general.architecture");
  if (!arch) return Errf(Code::kCorrupt, "{}: missing metadata 'general.architecture'", g.name);
  if (*arch != "llama" && *arch != "mistral" && *arch != "qwen2")
    return Errf(Code::kUnsupported, "{}: unsupported architecture '{}' (supported: llama, mistral, qwen2)",
                g.name, *arch);
  ModelConfig c;
  c.arch = *arch;
  const std::string p = *arch + ".";
  auto chk = [](Status s) -> Result<void> {
    if (!s.ok()) return std::unexpected(s);
    return {};
  };
  MERLIN_CHECK_OK(chk(get_i32(g, p + "embedding_length", c.n_embd, true, 1, 1 << 16)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "block_count", c.n_layer, true, 1, 1024)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "feed_forward_length", c.n_ff, true, 1, 1 << 20)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.head_count", c.n_head, true, 1, 1024)));
  c.n_head_kv = c.n_head;
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.head_count_kv", c.n_head_kv, false, 1, 1024)));
  c.head_dim = c.n_embd / c.n_head;
  MERLIN_CHECK_OK(chk(get_i32(g, p + "attention.key_length", c.head_dim, false, 1, 1024)));
  MERLIN_CHECK_OK(chk(get_i32(g, p + "context_length", c.max_pos, false, 1)));
  MERLIN_CHECK_OK(chk(get_f32(g, p + "attention.layer_norm_rms_epsilon", c.rms_eps)));
  MERLIN_CHECK_OK(chk(get_f32(g, p + "rope.freq_base", c.rope_theta)));
  if (auto st = g.get_string(p + "rope.scaling.type")) {
    if (*st == "linear") {
      c.rope_scaling = RopeScaling::kLinear;
      MERLIN_CHECK_OK(chk(get_f32(g, p + "rope.scaling.factor", c.rope_factor)));
      if (!(c.rope_factor > 0))
        return Errf(Code::kCorrupt, "{}: rope.scaling.factor must be positive", g.name);
    } else if (*st != "none") {
      return Errf(Code::kUnsupported, "{}: rope scaling type '{}' is not supported", g.name, *st);
    }
  }
  // Vocabulary size: the token list is authoritative, then <arch>.vocab_size, then token_embd.
  if (auto* toks = g.find("tokenizer.ggml.tokens"); toks && toks->type == GgufType::kArray) {
    c.n_vocab = static_cast<int32_t>(std::min<size_t>(toks->arr.size(), INT32_MAX));
  } else {
    MERLIN_CHECK_OK(chk(get_i32(g, p + "vocab_size", c.n_vocab, false, 1)));
    if (c.n_vocab == 0)
      if (auto* te = g.find_tensor("token_embd.weight"); te && te->ne.size() == 2)
        c.n_vocab = static_cast<int32_t>(std::min<int64_t>(te->ne[1], INT32_MAX));
  }
  c.qkv_bias = g.find_tensor("blk.0.attn_q.bias") != nullptr;
  c.tie_embeddings = g.find_tensor("output.weight") == nullptr;
  if (auto sw = g.get_int(p + "attention.sliding_window"); sw && *sw > 0 && *sw < INT32_MAX)
    c.sliding_window = static_cast<int32_t>(*sw);
  if (auto st = c.validate(); !st.ok()) return Errf(st.code, "{}: {}", g.name, st.message);
  return c;
}

Result<TokenizerVocab> gguf_tokenizer_vocab(const GgufFile& g) {
  TokenizerVocab v;
  auto model = g.get_string("tokenizer.ggml.model");
  if (!model) return Errf(Code::kCorrupt, "{}: missing metadata 'tokenizer.ggml.model'", g.name);
  if (*model == "gpt2") v.model = TokenizerModel::kByteLevelBpe;
  else if (*model == "llama") v.model = TokenizerModel::kSentencePieceBpe;
  else return Errf(Code::kUnsupported, "{}: tokenizer model '{}' is not supported (gpt2, llama)", g.name, *model);

  auto* toks = g.find("tokenizer.ggml.tokens");
  if (!toks || toks->type != GgufType::kArray || toks->elem != GgufType::kString || toks->arr.empty())
    return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.tokens' must be a non-empty array of strings", g.name);
  const size_t n = toks->arr.size();
  if (n > (1u << 24)) return Errf(Code::kCorrupt, "{}: {} tokens is too many", g.name, n);
  v.tokens.reserve(n);
  for (auto& t : toks->arr) v.tokens.push_back(t.str);

  if (auto* s = g.find("tokenizer.ggml.scores")) {
    if (s->type != GgufType::kArray || s->arr.size() != n || (s->elem != GgufType::kF32 && s->elem != GgufType::kF64))
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.scores' must be {} floats", g.name, n);
    v.scores.reserve(n);
    for (auto& e : s->arr) v.scores.push_back(static_cast<float>(e.f));
  }
  if (auto* s = g.find("tokenizer.ggml.token_type")) {
    if (s->type != GgufType::kArray || s->arr.size() != n || !(s->arr.empty() || s->arr[0].is_int()))
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.token_type' must be {} integers", g.name, n);
    v.types.reserve(n);
    for (auto& e : s->arr) {
      auto t = e.as_int().value_or(1);
      if (t < 1 || t > 6) t = 1;  // unknown attribute values are treated as normal tokens
      v.types.push_back(static_cast<TokenType>(t));
    }
  }
  if (auto* s = g.find("tokenizer.ggml.merges")) {
    if (s->type != GgufType::kArray || s->elem != GgufType::kString)
      return Errf(Code::kCorrupt, "{}: 'tokenizer.ggml.merges' must be an array of strings", g.name);
    v.merges.reserve(s->arr.size());
    for (auto& e : s->arr) v.merges.push_back(e.str);
  }
  v.pre = g.get_string("tokenizer.ggml.pre").value_or("default");
  v.bos = token_id(g, "tokenizer.ggml.bos_token_id", n);
  v.eos = token_id(g, "tokenizer.ggml.eos_token_id", n);
  v.eot = token_id(g, "tokenizer.ggml.eot_token_id", n);
  v.pad = token_id(g, "tokenizer.ggml.padding_token_id", n);
  v.unk = token_id(g, "tokenizer.ggml.unknown_token_id", n);
  auto fim = [&](const char* now, const char* old) {
    auto r = token_id(g, std::string("tokenizer.ggml.") + now, n);
    return r ? r : (old ? token_id(g, std::string("tokenizer.ggml.") + old, n) : std::nullopt);
  };
  v.fim_pre = fim("fim_pre_token_id", "prefix_token_id");
  v.fim_suf = fim("fim_suf_token_id", "suffix_token_id");
  v.fim_mid = fim("fim_mid_token_id", "middle_token_id");
  v.fim_pad = fim("fim_pad_token_id", nullptr);
  v.fim_rep = fim("fim_rep_token_id", nullptr);
  v.fim_sep = fim("fim_sep_token_id", nullptr);
  // Files converted without FIM ids (llama.cpp writes none for most models): find the tokens by
  // their text, as llama.cpp's vocab loader does.
  auto by_text = [&](std::optional<TokenId>& slot, std::initializer_list<const char*> names) {
    if (slot) return;
    for (const char* nm : names)
      for (size_t id = 0; id < n; ++id)
        if (v.tokens[id] == nm) {
          slot = static_cast<TokenId>(id);
          return;
        }
  };
  by_text(v.fim_pre, {"<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>"});
  by_text(v.fim_suf, {"<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>"});
  by_text(v.fim_mid, {"<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>"});
  by_text(v.fim_pad, {"<|fim_pad|>", "<fim-pad>", "<fim_pad>"});
  by_text(v.fim_rep, {"<|fim_repo|>", "<fim-repo>", "<reponame>", "<REPO>"});
  by_text(v.fim_sep, {"<|file_sep|>", "<file_sep>", "<file-sep>"});
  // llama.cpp's defaults when the flag is absent: SentencePiece adds BOS, byte-level BPE does not.
  v.add_bos = g.get_bool("tokenizer.ggml.add_bos_token").value_or(v.model == TokenizerModel::kSentencePieceBpe);
  v.add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").value_or(v.model == TokenizerModel::kSentencePieceBpe);
  v.chat_template = g.get_string("tokenizer.chat_template").value_or("");
  return v;
}

Result<LoadedModel> load_gguf_model(const std::string& path) {
  MERLIN_TRY(g, open_gguf(path));
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
  if (g.find_tensor("rope_freqs.weight"))
    return Errf(Code::kUnsupported, "{}: per-dimension rope factors (rope_freqs.weight, Llama 3.1 scaling) are not supported yet", path);

  // f32/f16/bf16 matrices are repacked for the matmul kernels, as for HF folders.
  pack_weights(*w);

  MERLIN_TRY(vocab, gguf_tokenizer_vocab(g));
  MERLIN_TRY(tok, Tokenizer::from_vocab(std::move(vocab)));
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
