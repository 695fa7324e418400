// `merlin convert HF_DIR OUT.gguf [--type T]`: writes a Hugging Face Llama-family folder as a GGUF
// file llama.cpp loads (its key names, tensor names, Q/K row permutation, tokenizer metadata).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "core/mmap_file.h"
#include "core/thread_pool.h"
#include "model/gguf.h"
#include "model/model.h"

namespace merlin::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Llama 3's pre-tokenizer regex (tokenizer.ggml.pre = "llama-bpe") and Qwen2's ("qwen2").
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

struct ConvertArgs {
  std::string in, out, type = "bf16", name;
  int threads = 0;
};

Result<json> read_json(const std::string& path, bool required) {
  if (!fs::exists(path)) {
    if (required) return Errf(Code::kNotFound, "{}: not found", path);
    return json::object();
  }
  MERLIN_TRY(text, read_file(path));
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Errf(Code::kCorrupt, "{}: not a JSON object", path);
  return j;
}

// Collects the regexes of Split pre-tokenizers and whether a ByteLevel one uses GPT-2's regex.
void scan_pre(const json& p, std::vector<std::string>& regexes, bool& bytelevel_regex) {
  if (!p.is_object()) return;
  auto type = p.value("type", std::string());
  if (type == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (auto& e : p["pretokenizers"]) scan_pre(e, regexes, bytelevel_regex);
  } else if (type == "Split" && p.contains("pattern") && p["pattern"].is_object() &&
             p["pattern"].contains("Regex") && p["pattern"]["Regex"].is_string()) {
    regexes.push_back(p["pattern"]["Regex"].get<std::string>());
  } else if (type == "ByteLevel") {
    bytelevel_regex |= p.value("use_regex", true);
  }
}

// The tokenizer.* metadata of convert_hf_to_gguf's byte-level BPE path (get_vocab_base).
Status add_tokenizer(GgufWriter& w, const std::string& dir, int32_t n_vocab_cfg) {
  auto fail = [](Result<json>& r) { return r.error(); };
  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  auto tj = read_json(tok_path, true);
  if (!tj) return fail(tj);
  auto cj = read_json((fs::path(dir) / "tokenizer_config.json").string(), false);
  if (!cj) return fail(cj);
  auto mj = read_json((fs::path(dir) / "config.json").string(), false);
  if (!mj) return fail(mj);
  const json& t = *tj;
  if (!t.contains("model") || !t["model"].is_object() || t["model"].value("type", "") != "BPE" ||
      !t["model"].contains("vocab") || !t["model"]["vocab"].is_object())
    return {Code::kUnsupported, fmt::format("{}: only BPE tokenizers can be converted", tok_path)};
  const json& model = t["model"];
  std::vector<std::string> regexes;
  bool bl_regex = false;
  if (t.contains("pre_tokenizer")) scan_pre(t["pre_tokenizer"], regexes, bl_regex);
  const bool byte_level = bl_regex || !regexes.empty() ||
                          (t.contains("decoder") && t["decoder"].is_object() && t["decoder"].value("type", "") == "ByteLevel");
  if (!byte_level || model.value("byte_fallback", false))
    return {Code::kUnsupported,
            fmt::format("{}: SentencePiece-style tokenizers need tokenizer.model scores; only byte-level BPE is converted", tok_path)};

  std::map<int64_t, std::string> by_id;
  for (auto& [tok, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 24))
      return {Code::kCorrupt, fmt::format("{}: bad id for token '{}'", tok_path, tok)};
    by_id[id.get<int64_t>()] = tok;
  }
  struct Added {
    bool special;
  };
  std::map<int64_t, Added> added;
  if (t.contains("added_tokens") && t["added_tokens"].is_array())
    for (auto& a : t["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string())
        return {Code::kCorrupt, fmt::format("{}: malformed added_tokens entry", tok_path)};
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id >= (1 << 24)) return {Code::kCorrupt, fmt::format("{}: added token id {} out of range", tok_path, id)};
      by_id[id] = a["content"].get<std::string>();
      added[id] = {a.value("special", false)};
    }
  int64_t n = n_vocab_cfg;
  if (!by_id.empty()) n = std::max<int64_t>(n, by_id.rbegin()->first + 1);
  std::vector<std::string> tokens(static_cast<size_t>(n));
  std::vector<int32_t> types(static_cast<size_t>(n), 1);
  auto looks_special = [](const std::string& s) {
    return s == "<pad>" || s == "<mask>" || (s.starts_with("<|") && s.ends_with("|>")) ||
           s.starts_with("<start_of_") || s.starts_with("<end_of_");
  };
  for (int64_t i = 0; i < n; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      tokens[i] = fmt::format("[PAD{}]", i);
      types[i] = 5;  // unused
      continue;
    }
    tokens[i] = it->second;
    if (auto a = added.find(i); a != added.end()) types[i] = a->second.special || looks_special(it->second) ? 3 : 4;
  }
  std::vector<std::string> merges;
  if (model.contains("merges") && model["merges"].is_array())
    for (auto& m : model["merges"]) {
      if (m.is_string()) merges.push_back(m.get<std::string>());
      else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
        merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      else return {Code::kCorrupt, fmt::format("{}: malformed merge", tok_path)};
    }
  std::string pre = "default";
  for (auto& r : regexes) {
    if (r == kLlama3Regex) pre = "llama-bpe";
    else if (r == kQwen2Regex) pre = "qwen2";
  }
  if (regexes.empty() && bl_regex) pre = "gpt-2";
  if (pre == "default")
    fmt::print(stderr, "warning: {}: pre-tokenizer not recognized, writing tokenizer.ggml.pre='default'\n", tok_path);

  std::map<std::string, int64_t> text_to_id;
  for (int64_t i = 0; i < n; ++i) text_to_id.emplace(tokens[i], i);
  // Special ids: tokenizer_config.json token strings first, then config.json ids (SpecialVocab).
  auto special = [&](const char* tok_key, const char* cfg_key) -> std::optional<int64_t> {
    if (cj->contains(tok_key)) {
      const json& v = (*cj)[tok_key];
      std::string s;
      if (v.is_string()) s = v.get<std::string>();
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) s = v["content"].get<std::string>();
      if (!s.empty())
        if (auto it = text_to_id.find(s); it != text_to_id.end()) return it->second;
    }
    if (cfg_key && mj->contains(cfg_key)) {
      json v = (*mj)[cfg_key];
      if (v.is_array() && !v.empty()) v = v[0];
      if (v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < n) return v.get<int64_t>();
    }
    return std::nullopt;
  };

  w.set("tokenizer.ggml.model", GgufValue::Str("gpt2"));
  w.set("tokenizer.ggml.pre", GgufValue::Str(pre));
  w.set("tokenizer.ggml.tokens", GgufValue::StrArray(tokens));
  w.set("tokenizer.ggml.token_type", GgufValue::I32Array(types));
  w.set("tokenizer.ggml.merges", GgufValue::StrArray(merges));
  if (auto id = special("eos_token", "eos_token_id")) w.set("tokenizer.ggml.eos_token_id", GgufValue::U32(static_cast<uint32_t>(*id)));
  if (auto id = special("pad_token", "pad_token_id")) w.set("tokenizer.ggml.padding_token_id", GgufValue::U32(static_cast<uint32_t>(*id)));
  if (auto id = special("bos_token", "bos_token_id")) w.set("tokenizer.ggml.bos_token_id", GgufValue::U32(static_cast<uint32_t>(*id)));
  if (auto id = special("unk_token", nullptr)) w.set("tokenizer.ggml.unknown_token_id", GgufValue::U32(static_cast<uint32_t>(*id)));
  for (auto [k, gk] : {std::pair{"add_bos_token", "tokenizer.ggml.add_bos_token"}, {"add_eos_token", "tokenizer.ggml.add_eos_token"}})
    if (cj->contains(k) && (*cj)[k].is_boolean()) w.set(gk, GgufValue::Bool((*cj)[k].get<bool>()));
  if (cj->contains("chat_template") && (*cj)["chat_template"].is_string())
    w.set("tokenizer.chat_template", GgufValue::Str((*cj)["chat_template"].get<std::string>()));
  return Status::Ok();
}

// "[ 12/ 93] blk.1.attn_q.weight q5_0 | 12.3 MB" on one rewritten stderr line.
GgufWriter::Progress progress_bar() {
  auto t0 = std::make_shared<std::chrono::steady_clock::time_point>(std::chrono::steady_clock::now());
  return [t0](size_t i, size_t n, uint64_t bytes, const std::string& name) {
    const int width = 30;
    const int done = n ? static_cast<int>(width * i / n) : width;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - *t0).count();
    // Redraw at most every 0.1 s (and always for the last tensor) to keep logs readable.
    static double last = -1;
    if (i != n && s - last < 0.1) return;
    last = s;
    fmt::print(stderr, "\r[{}{}] {:>4}/{} tensors, {:8.1f} MB written, {:5.1f} s  {:<32.32}", std::string(done, '#'),
               std::string(width - done, '.'), i, n, bytes / 1e6, s, name);
    if (i == n) fmt::print(stderr, "\n");
    std::fflush(stderr);
  };
}

int run_convert(const ConvertArgs& a) {
  auto ft = gguf_file_type_from_name(a.type);
  if (!ft) {
    fmt::print(stderr, "error: unknown --type '{}' (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k_m, q5_k_m, q6_k)\n", a.type);
    return 2;
  }
  auto wr = load_hf_weights(a.in, /*pack=*/false);  // read once: no packed copy in RAM
  if (!wr) {
    fmt::print(stderr, "error: {}\n", wr.error().message);
    return 1;
  }
  std::shared_ptr<ModelWeights> wp = *wr;
  const ModelConfig& c = wp->config;
  // llama.cpp converts mistral checkpoints with the llama architecture.
  const std::string arch = c.arch == "qwen2" ? "qwen2" : "llama";
  const bool permute = arch == "llama";
  GgufWriter w(32);
  std::string name = a.name;
  if (name.empty()) name = fs::path(a.in).lexically_normal().filename().string();
  if (name.empty()) name = fs::path(a.in).lexically_normal().parent_path().filename().string();
  const std::string p = arch + ".";
  w.set("general.architecture", GgufValue::Str(arch));
  w.set("general.type", GgufValue::Str("model"));
  w.set("general.name", GgufValue::Str(name));
  w.set(p + "block_count", GgufValue::U32(c.n_layer));
  w.set(p + "context_length", GgufValue::U32(c.max_pos));
  w.set(p + "embedding_length", GgufValue::U32(c.n_embd));
  w.set(p + "feed_forward_length", GgufValue::U32(c.n_ff));
  w.set(p + "attention.head_count", GgufValue::U32(c.n_head));
  w.set(p + "attention.head_count_kv", GgufValue::U32(c.n_head_kv));
  w.set(p + "rope.freq_base", GgufValue::F32(c.rope_theta));
  w.set(p + "attention.layer_norm_rms_epsilon", GgufValue::F32(c.rms_eps));
  w.set(p + "attention.key_length", GgufValue::U32(c.head_dim));
  w.set(p + "attention.value_length", GgufValue::U32(c.head_dim));
  w.set("general.file_type", GgufValue::U32(static_cast<uint32_t>(*ft)));
  w.set(p + "vocab_size", GgufValue::U32(c.n_vocab));
  w.set(p + "rope.dimension_count", GgufValue::U32(c.head_dim));
  if (c.rope_scaling == RopeScaling::kLinear) {
    w.set(p + "rope.scaling.type", GgufValue::Str("linear"));
    w.set(p + "rope.scaling.factor", GgufValue::F32(c.rope_factor));
  }
  w.set("general.quantization_version", GgufValue::U32(2));
  if (auto st = add_tokenizer(w, a.in, c.n_vocab); !st.ok()) {
    fmt::print(stderr, "error: {}\n", st.message);
    return 1;
  }

  auto pool = std::make_shared<ThreadPool>(a.threads > 0 ? a.threads : default_thread_count());
  auto add = [&](const std::string& gname, const Tensor& src, const std::vector<int64_t>* order) {
    GgufTensorContext ctx{gname, src.shape, c.n_layer, c.n_head, c.n_head_kv, !c.tie_embeddings};
    const DType dt = gguf_choose_tensor_type(*ft, ctx);
    auto ord = order ? std::make_shared<std::vector<int64_t>>(*order) : nullptr;
    Tensor s = src;
    s.name = gname;
    w.add_tensor(gname, dt, src.shape, [s, dt, ord, pool, wp]() { return gguf_convert_tensor(s, dt, ord.get(), pool.get()); });
  };
  // Llama 3 rope scaling goes in as llama.cpp writes it: no scaling keys, a rope_freqs.weight
  // tensor of per-frequency divisors, first in the file (convert_hf_to_gguf's extra tensors).
  if (auto rf = gguf_llama3_rope_freq_factors(c); !rf.empty()) {
    const int64_t n = static_cast<int64_t>(rf.size());
    w.add_tensor("rope_freqs.weight", DType::F32, {n}, [rf]() {
      auto* p = reinterpret_cast<const uint8_t*>(rf.data());
      return Result<std::vector<uint8_t>>(std::vector<uint8_t>(p, p + rf.size() * sizeof(float)));
    });
  }
  add("token_embd.weight", wp->tok_embd, nullptr);
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const auto& L = wp->layers[i];
    const std::string b = fmt::format("blk.{}.", i);
    auto q_order = gguf_qk_row_order(L.wq.shape[0], c.head_dim, true);
    auto k_order = gguf_qk_row_order(L.wk.shape[0], c.head_dim, true);
    add(b + "attn_norm.weight", L.attn_norm, nullptr);
    add(b + "attn_q.weight", L.wq, permute ? &q_order : nullptr);
    add(b + "attn_k.weight", L.wk, permute ? &k_order : nullptr);
    add(b + "attn_v.weight", L.wv, nullptr);
    if (c.qkv_bias) {
      add(b + "attn_q.bias", L.bq, permute ? &q_order : nullptr);
      add(b + "attn_k.bias", L.bk, permute ? &k_order : nullptr);
      add(b + "attn_v.bias", L.bv, nullptr);
    }
    add(b + "attn_output.weight", L.wo, nullptr);
    add(b + "ffn_norm.weight", L.ffn_norm, nullptr);
    add(b + "ffn_gate.weight", L.w_gate, nullptr);
    add(b + "ffn_up.weight", L.w_up, nullptr);
    add(b + "ffn_down.weight", L.w_down, nullptr);
  }
  add("output_norm.weight", wp->norm, nullptr);
  if (!c.tie_embeddings) add("output.weight", wp->output, nullptr);

  fmt::print(stderr, "converting {} -> {} ({}, {} layers)\n", a.in, a.out, gguf_file_type_name(*ft), c.n_layer);
  if (auto st = w.write(a.out, progress_bar()); !st.ok()) {
    fmt::print(stderr, "\nerror: {}\n", st.message);
    return 1;
  }
  return 0;
}

CommandRegistrar reg("convert", "Convert a Hugging Face model folder to a GGUF file llama.cpp can load",
                     [](CLI::App& app) -> std::function<int()> {
                       auto a = std::make_shared<ConvertArgs>();
                       app.add_option("input", a->in, "Hugging Face model folder (config.json, *.safetensors, tokenizer.json)")
                           ->required();
                       app.add_option("output", a->out, "Output .gguf file")->required();
                       app.add_option("-t,--type", a->type,
                                      "Tensor type: f32, f16, bf16 (default), q8_0, q4_0, q4_1, q5_0, q5_1, "
                                      "q4_k_m, q5_k_m, q6_k (mixed per-tensor types follow llama.cpp's recipes)");
                       app.add_option("--name", a->name, "general.name to record (default: the folder name)");
                       app.add_option("--threads", a->threads, "Threads for quantization (default: physical cores)");
                       return [a] { return run_convert(*a); };
                     });

}  // namespace
}  // namespace merlin::cli
