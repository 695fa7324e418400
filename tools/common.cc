#include "common.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <fmt/core.h>

#include "model/kv_cache.h"

namespace merlin::cli {

std::string default_model_path() {
  namespace fs = std::filesystem;
  // Next to the binary's source tree when run from a build folder, else relative to cwd.
  for (const std::string& p : {std::string(MERLIN_SOURCE_DIR) + "/models/tiny-coder-target",
                              std::string("models/tiny-coder-target")})
    if (fs::exists(p)) return p;
  return "models/tiny-coder-target";
}

std::optional<LoadedModel> load_or_report(const std::string& path) {
  auto t0 = std::chrono::steady_clock::now();
  fmt::print(stderr, "loading {} ...\n", path);
  auto m = load_model(path);
  if (!m) {
    fmt::print(stderr, "error: {}\n", m.error().message);
    return std::nullopt;
  }
  const auto& c = m->weights->config;
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  fmt::print(stderr,
             "loaded {} ({}: {} layers, hidden {}, heads {}/{}, vocab {}, {:.1f} MB of weights) in {:.0f} ms\n",
             m->name, c.arch, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_vocab,
             m->weights->weight_bytes() / 1e6, ms);
  return std::move(*m);
}

CLI::Option* add_kv_type_option(CLI::App& app, std::string& value, const std::string& help) {
  return app.add_option("--kv-type", value, fmt::format("{} ({})", help, kv_type_names()))
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (kv_type_from_name(v)) return "";
            return fmt::format("'{}' is not a KV cache type Merlin supports ({})", v, kv_type_names());
          },
          "KV_TYPE", "kv_type"))
      ->capture_default_str();
}

std::optional<DType> kv_type_or_report(const std::string& name, const ModelConfig& c) {
  auto t = kv_type_from_name(name);
  if (!t) {
    fmt::print(stderr, "error: --kv-type '{}' is not a KV cache type Merlin supports ({})\n", name, kv_type_names());
    return std::nullopt;
  }
  if (auto st = KvCache::supported_type(c, *t); !st.ok()) {
    fmt::print(stderr, "error: --kv-type {}: {}\n", name, st.message);
    return std::nullopt;
  }
  return t;
}

}  // namespace merlin::cli
