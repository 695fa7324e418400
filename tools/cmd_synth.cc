// merlin synth: write a model folder with random weights and the exact shapes of a well-known
// model, so speed can be measured at realistic sizes without downloading anything.
#include <cstdio>
#include <filesystem>
#include <map>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "core/dtype.h"

namespace merlin::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Preset {
  int hidden, layers, heads, kv_heads, head_dim, ff, vocab, max_pos;
  double theta;
  bool tied, qkv_bias;
  std::string model_type;
  json rope;  // rope_scaling or null
};

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> p = {
      {"llama-3.2-1b", {2048, 16, 32, 8, 64, 8192, 128256, 131072, 500000.0, true, false, "llama",
                        json{{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}},
      {"llama-3.2-3b", {3072, 28, 24, 8, 128, 8192, 128256, 131072, 500000.0, true, false, "llama",
                        json{{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}},
      {"llama-3.1-8b", {4096, 32, 32, 8, 128, 14336, 128256, 131072, 500000.0, false, false, "llama",
                        json{{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}},
      {"qwen2.5-coder-1.5b", {1536, 28, 12, 2, 128, 8960, 151936, 32768, 1000000.0, true, true, "qwen2", json()}},
      {"qwen2.5-coder-7b", {3584, 28, 28, 4, 128, 18944, 152064, 32768, 1000000.0, false, true, "qwen2", json()}},
  };
  return p;
}

// xorshift64*: fast and reproducible; weights ~ N(0, 0.02) by a sum of uniforms.
struct Rng {
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  float normalish() {
    uint64_t r = next();
    float a = static_cast<float>(r & 0xffff) + static_cast<float>((r >> 16) & 0xffff) +
              static_cast<float>((r >> 32) & 0xffff) + static_cast<float>(r >> 48);
    return (a / 65536.0f - 2.0f) * 1.732f;  // ~unit variance
  }
};

int run(const std::string& preset, const std::string& out, const std::string& dtype_name, uint64_t seed) {
  auto it = presets().find(preset);
  if (it == presets().end()) {
    fmt::print(stderr, "error: unknown preset '{}'; known:", preset);
    for (auto& [k, v] : presets()) fmt::print(stderr, " {}", k);
    fmt::print(stderr, "\n");
    return 1;
  }
  const Preset& p = it->second;
  const std::string st_dtype = dtype_name == "f32" ? "F32" : dtype_name == "f16" ? "F16" : "BF16";
  const size_t esz = dtype_name == "f32" ? 4 : 2;
  fs::create_directories(out);
  json cfg{{"architectures", {p.model_type == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
           {"model_type", p.model_type}, {"hidden_size", p.hidden}, {"num_hidden_layers", p.layers},
           {"num_attention_heads", p.heads}, {"num_key_value_heads", p.kv_heads}, {"head_dim", p.head_dim},
           {"intermediate_size", p.ff}, {"vocab_size", p.vocab}, {"max_position_embeddings", p.max_pos},
           {"rms_norm_eps", 1e-5}, {"rope_theta", p.theta}, {"tie_word_embeddings", p.tied},
           {"hidden_act", "silu"}, {"torch_dtype", dtype_name == "f32" ? "float32" : dtype_name == "f16" ? "float16" : "bfloat16"}};
  if (!p.rope.is_null()) cfg["rope_scaling"] = p.rope;
  std::FILE* f = std::fopen((fs::path(out) / "config.json").c_str(), "w");
  if (!f) {
    fmt::print(stderr, "error: cannot write {}\n", (fs::path(out) / "config.json").string());
    return 1;
  }
  std::fputs(cfg.dump(2).c_str(), f);
  std::fclose(f);
  // The tokenizer of the shipped model (its ids are a subset of the preset's vocabulary).
  const fs::path tok_src = fs::path(default_model_path());
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    std::error_code ec;
    fs::copy_file(tok_src / name, fs::path(out) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) {
      fmt::print(stderr, "error: cannot copy {}: {}\n", (tok_src / name).string(), ec.message());
      return 1;
    }
  }

  struct T {
    std::string name;
    std::vector<int64_t> shape;
    bool ones;  // norms
  };
  std::vector<T> ts;
  const int64_t E = p.hidden, QD = int64_t{p.heads} * p.head_dim, KD = int64_t{p.kv_heads} * p.head_dim;
  ts.push_back({"model.embed_tokens.weight", {p.vocab, E}, false});
  for (int l = 0; l < p.layers; ++l) {
    auto pre = fmt::format("model.layers.{}.", l);
    ts.push_back({pre + "input_layernorm.weight", {E}, true});
    ts.push_back({pre + "self_attn.q_proj.weight", {QD, E}, false});
    ts.push_back({pre + "self_attn.k_proj.weight", {KD, E}, false});
    ts.push_back({pre + "self_attn.v_proj.weight", {KD, E}, false});
    if (p.qkv_bias) {
      ts.push_back({pre + "self_attn.q_proj.bias", {QD}, false});
      ts.push_back({pre + "self_attn.k_proj.bias", {KD}, false});
      ts.push_back({pre + "self_attn.v_proj.bias", {KD}, false});
    }
    ts.push_back({pre + "self_attn.o_proj.weight", {E, QD}, false});
    ts.push_back({pre + "post_attention_layernorm.weight", {E}, true});
    ts.push_back({pre + "mlp.gate_proj.weight", {p.ff, E}, false});
    ts.push_back({pre + "mlp.up_proj.weight", {p.ff, E}, false});
    ts.push_back({pre + "mlp.down_proj.weight", {E, p.ff}, false});
  }
  ts.push_back({"model.norm.weight", {E}, true});
  if (!p.tied) ts.push_back({"lm_head.weight", {p.vocab, E}, false});

  json header = json::object();
  uint64_t off = 0;
  for (auto& t : ts) {
    uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<uint64_t>(d);
    header[t.name] = {{"dtype", st_dtype}, {"shape", t.shape}, {"data_offsets", {off, off + n * esz}}};
    off += n * esz;
  }
  header["__metadata__"] = {{"format", "pt"}, {"merlin_synth", preset}};
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h += ' ';
  const auto path = fs::path(out) / "model.safetensors";
  f = std::fopen(path.c_str(), "wb");
  if (!f) {
    fmt::print(stderr, "error: cannot write {}\n", path.string());
    return 1;
  }
  uint64_t hl = h.size();
  std::fwrite(&hl, 8, 1, f);
  std::fwrite(h.data(), 1, h.size(), f);
  Rng rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<uint8_t> buf;
  uint64_t written = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    auto& t = ts[i];
    uint64_t n = 1;
    for (auto d : t.shape) n *= static_cast<uint64_t>(d);
    const uint64_t chunk = 1 << 22;
    for (uint64_t s = 0; s < n; s += chunk) {
      const uint64_t m = std::min(chunk, n - s);
      buf.resize(m * esz);
      for (uint64_t j = 0; j < m; ++j) {
        const float v = t.ones ? 1.0f : rng.normalish() * 0.02f;
        if (esz == 4) std::memcpy(buf.data() + j * 4, &v, 4);
        else {
          const uint16_t b = dtype_name == "f16" ? f32_to_f16(v) : f32_to_bf16(v);
          std::memcpy(buf.data() + j * 2, &b, 2);
        }
      }
      if (std::fwrite(buf.data(), 1, buf.size(), f) != buf.size()) {
        fmt::print(stderr, "\nerror: write failed on {} (disk full?)\n", path.string());
        std::fclose(f);
        return 1;
      }
      written += buf.size();
    }
    fmt::print(stderr, "\rwriting {}: tensor {}/{}, {:.0f} / {:.0f} MB", path.string(), i + 1, ts.size(), written / 1e6, off / 1e6);
  }
  std::fclose(f);
  fmt::print(stderr, "\nwrote {} ({} preset, {}, {:.2f} B parameters)\n", out, preset, dtype_name, off / esz / 1e9);
  return 0;
}

CommandRegistrar reg("synth", "Write a model folder with random weights and the shapes of a known model", [](CLI::App& app) {
  struct Args {
    std::string preset, out, dtype = "bf16";
    uint64_t seed = 1;
  };
  auto a = std::make_shared<Args>();
  std::string names;
  for (auto& [k, v] : presets()) names += (names.empty() ? "" : ", ") + k;
  app.add_option("--preset", a->preset, "Shape preset: " + names)->required();
  app.add_option("-o,--out", a->out, "Output folder")->required();
  app.add_option("--dtype", a->dtype, "Weight dtype: bf16, f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}))->capture_default_str();
  app.add_option("--seed", a->seed, "Random seed")->capture_default_str();
  return [a] { return run(a->preset, a->out, a->dtype, a->seed); };
});

}  // namespace
}  // namespace merlin::cli
