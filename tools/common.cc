#include "common.h"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include <fmt/core.h>

namespace merlin::cli {

std::string default_model_path() {
  namespace fs = std::filesystem;
  // Next to the binary's source tree when run from a build folder, else relative to cwd.
  for (const std::string p : {std::string(MERLIN_SOURCE_DIR) + "/models/tiny-coder-target",
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

}  // namespace merlin::cli
