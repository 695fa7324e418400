// merlin perplexity: mean negative log-likelihood over independent windows of a text file.
#include <chrono>
#include <cmath>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "core/mmap_file.h"

namespace merlin::cli {
namespace {

struct Args {
  std::string model = default_model_path(), file, precision = "f32", kv_type = "f32";
  int32_t ctx = 512, threads = 0;
  int64_t limit = 0;
  bool json = false;
};

int run(const Args& a) {
  auto text = read_file(a.file);
  if (!text) {
    fmt::print(stderr, "error: {}\n", text.error().message);
    return 1;
  }
  auto m = load_or_report(a.model);
  if (!m) return 1;
  if (a.ctx < 2) {
    fmt::print(stderr, "error: --ctx must be at least 2\n");
    return 1;
  }
  Ids ids = m->tokenizer->encode(*text, false, false);  // no BOS, as the reference does
  if (a.limit > 0 && static_cast<int64_t>(ids.size()) > a.limit) ids.resize(static_cast<size_t>(a.limit));
  const int64_t n_windows = static_cast<int64_t>(ids.size()) / a.ctx;
  if (n_windows == 0) {
    fmt::print(stderr, "error: the text has {} tokens, fewer than one window of {}\n", ids.size(), a.ctx);
    return 1;
  }
  Model model(m->weights);
  const int32_t V = model.config().n_vocab, bs = 16;
  const auto kvt = kv_type_or_report(a.kv_type, model.config());
  if (!kvt) return 1;
  const DType kv_type = *kvt;
  KvCache kv(model.config(), (a.ctx + bs - 1) / bs, bs, kv_type);
  std::vector<int32_t> table(kv.n_blocks());
  for (int32_t i = 0; i < kv.n_blocks(); ++i) table[i] = i;
  ThreadPool pool(a.threads > 0 ? a.threads : default_thread_count());
  std::vector<float> logits(static_cast<size_t>(a.ctx) * V);
  ForwardOptions fo;
  fo.precision = a.precision == "bf16" ? Precision::kBF16 : Precision::kF32;
  double nll = 0;
  int64_t n_scored = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t w = 0; w < n_windows; ++w) {
    StepBatch b;
    b.tokens.assign(ids.begin() + w * a.ctx, ids.begin() + (w + 1) * a.ctx);
    b.seqs.push_back({0, a.ctx, 0, table.data(), kv.n_blocks()});
    for (int32_t i = 0; i < a.ctx - 1; ++i) b.logit_rows.push_back(i);
    if (auto st = model.forward(pool, b, kv, logits.data(), fo); !st.ok()) {
      fmt::print(stderr, "error: {}\n", st.message);
      return 1;
    }
    // Row i predicts token i+1: tokens 2..N of the window are scored.
    for (int32_t i = 0; i < a.ctx - 1; ++i) {
      const float* lg = logits.data() + static_cast<size_t>(i) * V;
      float mx = lg[0];
      for (int32_t v = 1; v < V; ++v) mx = std::max(mx, lg[v]);
      double sum = 0;
      for (int32_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(lg[v] - mx));
      nll += (mx + std::log(sum)) - lg[b.tokens[i + 1]];
      ++n_scored;
    }
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    fmt::print(stderr, "\rwindow {}/{}  ppl so far {:.4f}  ({:.0f} tok/s)", w + 1, n_windows, std::exp(nll / n_scored),
               (w + 1) * a.ctx / el);
  }
  fmt::print(stderr, "\n");
  const double mean = nll / static_cast<double>(n_scored);
  if (a.json) {
    nlohmann::json j{{"mean_nll", mean}, {"ppl", std::exp(mean)}, {"n_tokens", n_scored}, {"n_windows", n_windows}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("mean NLL {:.6f}  perplexity {:.4f}  over {} tokens in {} windows of {}\n", mean, std::exp(mean), n_scored,
               n_windows, a.ctx);
  }
  return 0;
}

CommandRegistrar reg("perplexity", "Perplexity of a model over a text file (independent windows)", [](CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("-m,--model", a->model, "Model folder or .gguf file");
  app.add_option("-f,--file", a->file, "Text file")->required();
  app.add_option("-c,--ctx", a->ctx, "Window length in tokens; each window scores its tokens 2..N")->capture_default_str();
  app.add_option("--limit-tokens", a->limit, "Use only the first N tokens of the text (0 = all)");
  app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)");
  app.add_option("--precision", a->precision, "Matmul precision: f32 or bf16")->check(CLI::IsMember({"f32", "bf16"}));
  add_kv_type_option(app, a->kv_type, "KV cache storage");
  app.add_flag("--json", a->json, "Print {\"mean_nll\",\"ppl\",\"n_tokens\"}");
  return [a] { return run(*a); };
});

}  // namespace
}  // namespace merlin::cli
