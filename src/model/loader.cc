#include "model/model.h"

#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/matmul.h"
#include "kernels/quant.h"
#include "model/safetensors.h"

namespace merlin {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct TensorSource {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> file_of;  // tensor -> file, for messages
};

Status expect_shape(const Tensor& t, std::vector<int64_t> want, const std::string& file) {
  if (t.shape != want) {
    auto fmt_shape = [](const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); };
    return {Code::kCorrupt, fmt::format("{}: tensor '{}' has shape {} but the config needs {}", file, t.name,
                                        fmt_shape(t.shape), fmt_shape(want))};
  }
  if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
    return {Code::kUnsupported, fmt::format("{}: tensor '{}' has dtype {}, expected f32/f16/bf16", file, t.name, dtype_name(t.dtype))};
  return Status::Ok();
}


}  // namespace

void pack_weights(ModelWeights& w) {
  ThreadPool pool(default_thread_count());
  const bool interleave = interleave_pays();
  auto pack = [&](Tensor& t) {
    if (interleave && can_interleave(t)) {
      t = interleave_matrix(pool, t, w.alloc(interleaved_bytes(t)));
      return;
    }
    if (!can_pack(t)) return;
    t = pack_matrix(pool, t, w.alloc(packed_bytes(t)));
  };
  for (auto& L : w.layers)
    for (Tensor* t : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) pack(*t);
  // A tied output head gets its own packed copy and the embedding stays row-major for lookups;
  // an interleaved quantized head is shared with the embedding (rows are read back exactly).
  if (interleave && w.output.data == w.tok_embd.data && can_interleave(w.tok_embd)) {
    pack(w.tok_embd);
    w.output = w.tok_embd;
    return;
  }
  pack(w.output);
}

Result<std::shared_ptr<ModelWeights>> load_hf_weights(const std::string& dir, bool pack) {
  auto w = std::make_shared<ModelWeights>();
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  MERLIN_TRY(cfg_text, read_file(cfg_path));
  MERLIN_TRY(cfg, parse_hf_config(cfg_text, cfg_path));
  w->config = cfg;

  // Single file or shards listed in model.safetensors.index.json.
  std::vector<std::string> files;
  const auto index_path = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    MERLIN_TRY(idx_text, read_file(index_path.string()));
    json idx = json::parse(idx_text, nullptr, false);
    if (idx.is_discarded() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      return Errf(Code::kCorrupt, "{}: missing or malformed weight_map", index_path.string());
    std::set<std::string> uniq;
    for (auto& [k, v] : idx["weight_map"].items()) {
      if (!v.is_string()) return Errf(Code::kCorrupt, "{}: weight_map['{}'] is not a string", index_path.string(), k);
      auto f = v.get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        return Errf(Code::kCorrupt, "{}: shard name '{}' escapes the model folder", index_path.string(), f);
      uniq.insert(f);
    }
    for (auto& f : uniq) files.push_back((fs::path(dir) / f).string());
  } else if (fs::exists(fs::path(dir) / "model.safetensors")) {
    files.push_back((fs::path(dir) / "model.safetensors").string());
  } else {
    return Errf(Code::kNotFound, "{}: no model.safetensors or model.safetensors.index.json", dir);
  }

  TensorSource src;
  for (const auto& f : files) {
    MERLIN_TRY(st, open_safetensors(f));
    w->files.push_back(st.file);
    for (auto& [name, t] : st.tensors) {
      if (src.tensors.count(name))
        return Errf(Code::kCorrupt, "{}: tensor '{}' also appears in {}", f, name, src.file_of[name]);
      src.tensors[name] = t;
      src.file_of[name] = f;
    }
  }

  const auto& c = w->config;
  const int64_t E = c.n_embd, D = c.head_dim;
  auto get = [&](const std::string& name, std::vector<int64_t> shape, Tensor& out) -> Status {
    auto it = src.tensors.find(name);
    if (it == src.tensors.end())
      return {Code::kCorrupt, fmt::format("{}: missing tensor '{}'", files.size() == 1 ? files[0] : dir, name)};
    auto st = expect_shape(it->second, shape, src.file_of[name]);
    if (!st.ok()) return st;
    out = it->second;
    return Status::Ok();
  };
#define GET(name, shape, out)                 \
  if (auto st_ = get(name, shape, out); !st_.ok()) return std::unexpected(st_)

  GET("model.embed_tokens.weight", (std::vector<int64_t>{c.n_vocab, E}), w->tok_embd);
  GET("model.norm.weight", (std::vector<int64_t>{E}), w->norm);
  w->norm = to_f32_owned(*w, w->norm);
  if (src.tensors.count("lm_head.weight") && !c.tie_embeddings) {
    GET("lm_head.weight", (std::vector<int64_t>{c.n_vocab, E}), w->output);
  } else if (c.tie_embeddings) {
    w->output = w->tok_embd;
  } else {
    return Errf(Code::kCorrupt, "{}: missing tensor 'lm_head.weight' (tie_word_embeddings is false)", dir);
  }
  w->layers.resize(c.n_layer);
  for (int32_t i = 0; i < c.n_layer; ++i) {
    auto p = fmt::format("model.layers.{}.", i);
    auto& L = w->layers[i];
    GET(p + "input_layernorm.weight", (std::vector<int64_t>{E}), L.attn_norm);
    GET(p + "post_attention_layernorm.weight", (std::vector<int64_t>{E}), L.ffn_norm);
    L.attn_norm = to_f32_owned(*w, L.attn_norm);
    L.ffn_norm = to_f32_owned(*w, L.ffn_norm);
    GET(p + "self_attn.q_proj.weight", (std::vector<int64_t>{c.n_head * D, E}), L.wq);
    GET(p + "self_attn.k_proj.weight", (std::vector<int64_t>{c.n_head_kv * D, E}), L.wk);
    GET(p + "self_attn.v_proj.weight", (std::vector<int64_t>{c.n_head_kv * D, E}), L.wv);
    GET(p + "self_attn.o_proj.weight", (std::vector<int64_t>{E, c.n_head * D}), L.wo);
    if (c.qkv_bias) {
      GET(p + "self_attn.q_proj.bias", (std::vector<int64_t>{c.n_head * D}), L.bq);
      GET(p + "self_attn.k_proj.bias", (std::vector<int64_t>{c.n_head_kv * D}), L.bk);
      GET(p + "self_attn.v_proj.bias", (std::vector<int64_t>{c.n_head_kv * D}), L.bv);
      L.bq = to_f32_owned(*w, L.bq);
      L.bk = to_f32_owned(*w, L.bk);
      L.bv = to_f32_owned(*w, L.bv);
    }
    GET(p + "mlp.gate_proj.weight", (std::vector<int64_t>{c.n_ff, E}), L.w_gate);
    GET(p + "mlp.up_proj.weight", (std::vector<int64_t>{c.n_ff, E}), L.w_up);
    GET(p + "mlp.down_proj.weight", (std::vector<int64_t>{E, c.n_ff}), L.w_down);
  }
#undef GET
  if (pack) pack_weights(*w);
  return w;
}

}  // namespace merlin
