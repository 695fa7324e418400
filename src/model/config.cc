#include "model/config.h"

#include <algorithm>
#include <climits>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace merlin {

using nlohmann::json;

namespace {
// Reads an optional numeric field; a present field of the wrong type is an error.
template <class T>
Status get_num(const json& j, const char* key, T& out, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) return Status{Code::kCorrupt, fmt::format("{}: field '{}' must be a number", path, key)};
  out = it->get<T>();
  return Status::Ok();
}
}  // namespace

Status ModelConfig::validate() const {
  auto bad = [](std::string m) { return Status{Code::kCorrupt, std::move(m)}; };
  if (n_vocab <= 0 || n_vocab > (1 << 24)) return bad(fmt::format("vocab_size {} out of range", n_vocab));
  if (n_embd <= 0 || n_embd > (1 << 16)) return bad(fmt::format("hidden_size {} out of range", n_embd));
  if (n_layer <= 0 || n_layer > 1024) return bad(fmt::format("num_hidden_layers {} out of range", n_layer));
  if (n_head <= 0 || n_head > 1024) return bad(fmt::format("num_attention_heads {} out of range", n_head));
  if (n_head_kv <= 0 || n_head % n_head_kv != 0)
    return bad(fmt::format("num_key_value_heads {} must divide num_attention_heads {}", n_head_kv, n_head));
  if (head_dim <= 0 || head_dim % 2 != 0 || head_dim > 1024) return bad(fmt::format("head_dim {} invalid", head_dim));
  if (n_ff <= 0 || n_ff > (1 << 20)) return bad(fmt::format("intermediate_size {} out of range", n_ff));
  if (!(rms_eps > 0) || !(rope_theta > 0)) return bad("rms_norm_eps and rope_theta must be positive");
  if (max_pos <= 0) return bad("max_position_embeddings must be positive");
  if (sliding_window < 0) return bad(fmt::format("sliding_window {} is negative", sliding_window));
  return Status::Ok();
}

int32_t ModelConfig::max_context() const {
  return sliding_window > 0 ? std::min(max_pos, sliding_window) : max_pos;
}

Result<int32_t> context_size(const ModelConfig& c, int32_t requested) {
  if (requested > 0) {
    if (c.sliding_window > 0 && requested > c.sliding_window)
      return Errf(Code::kInvalidArgument,
                  "a context of {} tokens is longer than the model's sliding attention window ({} tokens); "
                  "Merlin computes full attention, which matches this model only within the window: "
                  "use a context of at most {}",
                  requested, c.sliding_window, c.sliding_window);
    return requested;
  }
  if (c.max_context() < c.max_pos)
    spdlog::warn("the model attends over a sliding window of {} tokens; Merlin computes full attention, "
                 "so the context is capped at {} tokens (max_position_embeddings is {})",
                 c.sliding_window, c.max_context(), c.max_pos);
  return c.max_context();
}

Result<ModelConfig> parse_hf_config(const std::string& text, const std::string& path) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Errf(Code::kCorrupt, "{}: not a JSON object", path);
  ModelConfig c;
  std::string mt = j.value("model_type", std::string());
  if (mt != "llama" && mt != "mistral" && mt != "qwen2")
    return Errf(Code::kUnsupported, "{}: unsupported architecture model_type='{}' (supported: llama, mistral, qwen2)", path, mt);
  c.arch = mt;
  for (auto [key, dst] : {std::pair{"vocab_size", &c.n_vocab}, {"hidden_size", &c.n_embd},
                          {"num_hidden_layers", &c.n_layer}, {"num_attention_heads", &c.n_head},
                          {"num_key_value_heads", &c.n_head_kv}, {"head_dim", &c.head_dim},
                          {"intermediate_size", &c.n_ff}, {"max_position_embeddings", &c.max_pos}}) {
    auto st = get_num(j, key, *dst, path);
    if (!st.ok()) return std::unexpected(st);
  }
  if (c.n_head_kv == 0) c.n_head_kv = c.n_head;
  if (c.head_dim == 0 && c.n_head > 0) c.head_dim = c.n_embd / c.n_head;
  if (auto st = get_num(j, "rms_norm_eps", c.rms_eps, path); !st.ok()) return std::unexpected(st);
  if (auto st = get_num(j, "rope_theta", c.rope_theta, path); !st.ok()) return std::unexpected(st);
  c.tie_embeddings = j.value("tie_word_embeddings", mt == "qwen2" ? false : false);
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_boolean())
    return Errf(Code::kCorrupt, "{}: tie_word_embeddings must be a boolean", path);
  c.qkv_bias = mt == "qwen2" || (j.contains("attention_bias") && j["attention_bias"].is_boolean() &&
                                 j["attention_bias"].get<bool>());
  // sliding_window: null or absent means none; Qwen2 configs often carry one that
  // use_sliding_window: false turns off.
  if (j.contains("sliding_window") && j["sliding_window"].is_number()) {
    const double w = j["sliding_window"].get<double>();
    if (!(w >= 0 && w <= INT32_MAX)) return Errf(Code::kCorrupt, "{}: sliding_window {} out of range", path, w);
    c.sliding_window = static_cast<int32_t>(w);
  }
  if (j.contains("use_sliding_window") && j["use_sliding_window"].is_boolean() && !j["use_sliding_window"].get<bool>())
    c.sliding_window = 0;

  // Rope parameters: transformers >= 4.5x writes `rope_parameters` (with rope_theta inside);
  // older configs write `rope_scaling` and a top-level rope_theta.
  const json* rp = nullptr;
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) rp = &j["rope_parameters"];
  else if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) rp = &j["rope_scaling"];
  if (rp) {
    if (auto st = get_num(*rp, "rope_theta", c.rope_theta, path); !st.ok()) return std::unexpected(st);
    std::string type = rp->value("rope_type", rp->value("type", std::string("default")));
    if (type == "default" || type.empty()) {
      c.rope_scaling = RopeScaling::kNone;
    } else if (type == "linear") {
      c.rope_scaling = RopeScaling::kLinear;
      if (auto st = get_num(*rp, "factor", c.rope_factor, path); !st.ok()) return std::unexpected(st);
    } else if (type == "llama3") {
      c.rope_scaling = RopeScaling::kLlama3;
      for (auto [key, dst] : {std::pair{"factor", &c.rope_factor}, {"low_freq_factor", &c.rope_low_freq_factor},
                              {"high_freq_factor", &c.rope_high_freq_factor}}) {
        if (auto st = get_num(*rp, key, *dst, path); !st.ok()) return std::unexpected(st);
      }
      if (auto st = get_num(*rp, "original_max_position_embeddings", c.rope_orig_max_pos, path); !st.ok())
        return std::unexpected(st);
    } else {
      return Errf(Code::kUnsupported, "{}: unsupported rope scaling type '{}' (supported: linear, llama3)", path, type);
    }
    if (!(c.rope_factor > 0)) return Errf(Code::kCorrupt, "{}: rope scaling factor must be positive", path);
  }
  if (auto st = c.validate(); !st.ok()) {
    st.message = path + ": " + st.message;
    return std::unexpected(st);
  }
  return c;
}

}  // namespace merlin
