// merlin bench: prompt-processing (pp) and generation (tg) throughput, like llama-bench, with two
// baselines measured in the same run: the machine's memory read bandwidth (tg reads every weight
// once per token) and OpenBLAS sgemm on the model's own matmul shapes (pp is matmul-bound).
// OpenBLAS is loaded with dlopen when the baseline is measured, so the merlin binary (which is
// also the server) does not link it; without it the baseline says "OpenBLAS not found".
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "core/cpu.h"
#include "core/memory.h"
#include "engine/engine.h"

namespace merlin::cli {
namespace {

using Clock = std::chrono::steady_clock;
double now_s() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct Args {
  std::string model = default_model_path(), precision = "f32", draft, kv_type = "f32";
  int32_t pp = 512, tg = 128, threads = 0, reps = 5;
  bool json = false, lookup = false;
  std::string spec_task = "code";
  int32_t spec_concurrency = 1;
  int32_t max_draft = 16;
  float draft_p_min = SpecOptions{}.draft_p_min;
  int32_t draft_max_batch = SpecOptions{}.draft_max_batch;
};

// Code continuation prompts (the reference prompts of tests/data/reference.json).
std::vector<std::string> code_prompts() {
  return {"def fibonacci(n):\n    ",
          "#include <stdio.h>\n\nint main(int argc, char **argv) {\n",
          "import numpy as np\nimport torch\n\nclass Model(torch.nn.Module):\n    def __init__(self",
          "func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {\n\t",
          "fn main() {\n    let mut v = Vec::new();\n",
          "public class HashMap<K, V> extends AbstractMap<K, V> {\n    ",
          "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY",
          "<fim_prefix>def add(a, b):\n    <fim_suffix>\n    return result\n<fim_middle>"};
}

// Code-edit prompts: existing code, then the start of a copy with a small change (a renamed
// class or function, a changed type), the way an editor or agent has a model rewrite code. The
// natural continuation repeats most of the original.
std::vector<std::string> edit_prompts() {
  const std::string stack =
      "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
      "        self.items.append(item)\n\n    def pop(self):\n        if not self.items:\n"
      "            raise IndexError(\"pop from empty stack\")\n        return self.items.pop()\n\n"
      "    def peek(self):\n        if not self.items:\n            raise IndexError(\"peek from empty stack\")\n"
      "        return self.items[-1]\n\n    def size(self):\n        return len(self.items)\n\n\n";
  const std::string parse =
      "def parse_config(path):\n    with open(path) as f:\n        lines = f.read().splitlines()\n"
      "    config = {}\n    for line in lines:\n        line = line.strip()\n        if not line or line.startswith('#'):\n"
      "            continue\n        key, value = line.split('=', 1)\n        config[key.strip()] = value.strip()\n"
      "    return config\n\n\n";
  const std::string csum =
      "int sum_positive(const int *values, int count) {\n    int total = 0;\n    for (int i = 0; i < count; i++) {\n"
      "        if (values[i] > 0) {\n            total += values[i];\n        }\n    }\n    return total;\n}\n\n";
  return {stack + "class LoggingStack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
          parse + "def parse_config_file(path):\n    with open(path) as f:\n",
          csum + "long sum_positive_long(const long *values, int count) {\n    long total = 0;\n"};
}

// The model's matmuls for a pp batch of m tokens: (n, k) per layer, times n_layer, plus the
// output head for the last row only (as pp computes it).
struct Shape {
  int64_t n, k, count;
};

// The few OpenBLAS entry points the baseline calls, resolved at run time. Debian's
// libopenblas0-openmp is looked for first (its own directory, so the BLAS alternatives cannot
// swap in another implementation), then any libopenblas.so.0; MERLIN_OPENBLAS names the library
// to use instead.
struct OpenBlas {
  // cblas_sgemm with CBLAS's enum values as ints (32-bit blasint, as Debian's libopenblas0).
  using Sgemm = void (*)(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a,
                         int lda, const float* b, int ldb, float beta, float* c, int ldc);
  static constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
  Sgemm sgemm = nullptr;
  void (*set_num_threads)(int) = nullptr;
  void (*omp_set_num_threads)(int) = nullptr;  // the OpenMP runtime OpenBLAS brought in, if any
  std::string path;
};

const OpenBlas* open_blas() {
  static const std::optional<OpenBlas> lib = []() -> std::optional<OpenBlas> {
    std::vector<std::string> paths;
    if (const char* env = std::getenv("MERLIN_OPENBLAS"); env && *env) paths = {env};
    else paths = {"/usr/lib/x86_64-linux-gnu/openblas-openmp/libopenblas.so.0", "libopenblas.so.0", "libopenblas.so"};
    for (const auto& p : paths) {
      void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) continue;
      OpenBlas b;
      b.sgemm = reinterpret_cast<OpenBlas::Sgemm>(dlsym(h, "cblas_sgemm"));
      b.set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(h, "openblas_set_num_threads"));
      b.omp_set_num_threads = reinterpret_cast<void (*)(int)>(dlsym(h, "omp_set_num_threads"));
      if (!b.sgemm || !b.set_num_threads) {
        dlclose(h);
        continue;
      }
      b.path = p;
      return b;
    }
    return std::nullopt;
  }();
  return lib ? &*lib : nullptr;
}

double blas_seconds(const OpenBlas& blas, const std::vector<Shape>& shapes, int64_t m, int threads) {
  blas.set_num_threads(threads);
  if (blas.omp_set_num_threads) blas.omp_set_num_threads(threads);
  double total = 0;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const auto& s : shapes) {
    std::vector<float> a(static_cast<size_t>(m * s.k)), b(static_cast<size_t>(s.n * s.k)), c(static_cast<size_t>(m * s.n));
    for (auto& x : a) x = u(rng);
    for (auto& x : b) x = u(rng);
    std::vector<double> runs;
    for (int r = 0; r < 3; ++r) {
      double t0 = now_s();
      blas.sgemm(OpenBlas::kRowMajor, OpenBlas::kNoTrans, OpenBlas::kTrans, static_cast<int>(m), static_cast<int>(s.n),
                 static_cast<int>(s.k), 1.0f, a.data(), static_cast<int>(s.k), b.data(), static_cast<int>(s.k), 0.0f,
                 c.data(), static_cast<int>(s.n));
      runs.push_back(now_s() - t0);
    }
    total += median(runs) * s.count;
  }
  return total;
}

int run(const Args& a) {
  auto m = load_or_report(a.model);
  if (!m) return 1;
  const auto& c = m->weights->config;
  const int threads = a.threads > 0 ? a.threads : default_thread_count();
  ThreadPool pool(threads);
  Model model(m->weights);
  const int32_t bs = 16, V = c.n_vocab;
  const int32_t ctx = a.pp + a.tg + 16;
  if (auto st = context_size(c, ctx); !st) {  // a sliding attention window shorter than pp + tg
    fmt::print(stderr, "error: -p + -n: {}\n", st.error().message);
    return 1;
  }
  const auto kv_type = kv_type_or_report(a.kv_type, c);
  if (!kv_type) return 1;
  KvCache kv(c, (ctx + bs - 1) / bs, bs, *kv_type);
  std::vector<int32_t> table(kv.n_blocks());
  for (int32_t i = 0; i < kv.n_blocks(); ++i) table[i] = i;
  ForwardOptions fo;
  fo.precision = a.precision == "bf16" ? Precision::kBF16 : Precision::kF32;
  std::vector<float> logits(V);
  std::mt19937 rng(42);
  auto rand_tokens = [&](int n) {
    Ids t(n);
    for (auto& x : t) x = static_cast<TokenId>(rng() % std::min<uint32_t>(V, m->tokenizer->n_vocab()));
    return t;
  };

  fmt::print(stderr, "bench: {} threads, CPU level {}, precision {}\n", threads, cpu_level_name(cpu_level()), a.precision);
  // pp: the whole prompt in one batch from an empty cache.
  std::vector<double> pp_runs, tg_runs;
  for (int r = 0; r < a.reps + 1; ++r) {
    StepBatch b;
    b.tokens = rand_tokens(a.pp);
    b.seqs.push_back({0, a.pp, 0, table.data(), kv.n_blocks()});
    b.logit_rows = {a.pp - 1};
    double t0 = now_s();
    if (auto st = model.forward(pool, b, kv, logits.data(), fo); !st.ok()) {
      fmt::print(stderr, "error: {}\n", st.message);
      return 1;
    }
    if (r > 0) pp_runs.push_back(now_s() - t0);  // first run warms caches and page-ins
    fmt::print(stderr, "\rpp{} run {}/{}", a.pp, r + 1, a.reps + 1);
  }
  fmt::print(stderr, "\n");
  // tg: one token at a time from an empty cache, as llama-bench's tg test, with a bandwidth
  // probe before each run and after the last.
  BandwidthProbe probe;
  std::vector<double> probes{probe.measure(pool)};
  for (int r = 0; r < a.reps; ++r) {
    Ids toks = rand_tokens(a.tg);
    double t0 = now_s();
    for (int i = 0; i < a.tg; ++i) {
      StepBatch b;
      b.tokens = {toks[i]};
      b.seqs.push_back({0, 1, i, table.data(), kv.n_blocks()});
      b.logit_rows = {0};
      (void)model.forward(pool, b, kv, logits.data(), fo);
    }
    tg_runs.push_back(now_s() - t0);
    probes.push_back(probe.measure(pool));
    fmt::print(stderr, "\rtg{} run {}/{}", a.tg, r + 1, a.reps);
  }
  fmt::print(stderr, "\n");
  const double pp_t = median(pp_runs), tg_t = median(tg_runs);
  const double pp_tps = a.pp / pp_t, tg_tps = a.tg / tg_t;

  // Each run against the higher of the two probes around it (the conservative reading); the
  // median of those fractions is reported.
  const double wbytes = static_cast<double>(m->weights->weight_bytes());
  std::vector<double> fractions;
  for (size_t r = 0; r < tg_runs.size(); ++r)
    fractions.push_back(wbytes * a.tg / tg_runs[r] / std::max(probes[r], probes[r + 1]));
  const double bw = median(probes), tg_bw_fraction = median(fractions);

  // Matmul FLOPs of one pp run and OpenBLAS on the same shapes (f32 sgemm).
  const int64_t E = c.n_embd, QD = int64_t{c.n_head} * c.head_dim, KD = int64_t{c.n_head_kv} * c.head_dim;
  std::vector<Shape> shapes = {{QD, E, c.n_layer}, {KD, E, 2 * c.n_layer}, {E, QD, c.n_layer},
                               {c.n_ff, E, 2 * c.n_layer}, {E, c.n_ff, c.n_layer}};
  double flops = 0;
  for (auto& s : shapes) flops += 2.0 * a.pp * s.n * s.k * s.count;
  const double our_gflops = flops / pp_t / 1e9;
  std::optional<double> blas_gflops, pp_blas_fraction;  // empty without OpenBLAS
  if (const OpenBlas* blas = open_blas()) {
    fmt::print(stderr, "measuring OpenBLAS sgemm ({}) on the same shapes ...\n", blas->path);
    blas_gflops = flops / blas_seconds(*blas, shapes, a.pp, threads) / 1e9;
    pp_blas_fraction = our_gflops / *blas_gflops;
  } else {
    fmt::print(stderr, "OpenBLAS not found (install libopenblas0-openmp, or set MERLIN_OPENBLAS): no pp baseline\n");
  }

  // Speculative decoding: the same greedy requests through the engine with and without
  // proposals, in one run. "code": the reference prompts continued for tg tokens; "edit": the
  // prompt holds a function and asks for it back with a small change (as editors and agents do).
  nlohmann::json spec_j;
  if (!a.draft.empty() || a.lookup) {
    EngineOptions eo;
    eo.n_threads = threads;
    eo.max_running = std::max(1, a.spec_concurrency);
    eo.ctx_size = std::min<int32_t>(c.max_context(), 4096);
    if (!a.draft.empty()) {
      auto d = load_or_report(a.draft);
      if (!d) return 1;
      eo.draft = d->weights;
    }
    auto e = Engine::create(*m, eo);
    if (!e) {
      fmt::print(stderr, "error: {}\n", e.error().message);
      return 1;
    }
    const auto prompts = a.spec_task == "edit" ? edit_prompts() : code_prompts();
    // One group of requests (spec_concurrency of them) decoded together; its decode time runs
    // from the group's first first-token to its last token.
    auto run_group = [&](size_t i, bool speculate, double& decode_s, int64_t& n_tokens, std::vector<Ids>& outs) {
      std::vector<std::unique_ptr<RequestStream>> ss;
      for (size_t j = i; j < std::min(prompts.size(), i + std::max(1, a.spec_concurrency)); ++j) {
        GenerationRequest req;
        req.prompt = m->tokenizer->encode(prompts[j], true);
        req.max_tokens = a.tg;
        req.ignore_eos = true;
        SpecOptions so;
        so.use_draft = speculate && !a.draft.empty();
        so.use_lookup = speculate && a.lookup;
        so.max_draft = a.max_draft;
        so.draft_p_min = a.draft_p_min;
        so.draft_max_batch = a.draft_max_batch;
        req.spec = so;
        ss.push_back(std::move(*(*e)->submit(req)));
      }
      double first = 1e30, last = 0;
      const double t0 = now_s();
      for (auto& s : ss) {
        StreamEvent ev;
        Ids toks;
        for (;;) {
          if (!s->next(ev)) continue;
          toks.insert(toks.end(), ev.tokens.begin(), ev.tokens.end());
          if (ev.done) break;
        }
        first = std::min(first, t0 + ev.ttft_ms / 1000.0);
        last = std::max(last, t0 + ev.e2e_ms / 1000.0);
        n_tokens += static_cast<int64_t>(toks.size()) - 1;  // the first token is prefill's
        outs.push_back(std::move(toks));
      }
      decode_s += last - first;
    };
    double base_s = 0, spec_s = 0;
    int64_t base_n = 0, spec_n = 0;
    std::vector<Ids> base_out, spec_out;
    auto& mt = (*e)->metrics();
    const uint64_t p0 = mt.spec_proposed, a0 = mt.spec_accepted, v0 = mt.spec_target_passes;
    fmt::print(stderr, "speculative bench ({} task, {} prompts, concurrency {}, {} reps), alternating without/with ...\n",
               a.spec_task, prompts.size(), std::max(1, a.spec_concurrency), a.reps);
    // Without and with alternate group by group, so a change in machine load hits both alike.
    for (int r = 0; r < std::max(1, a.reps); ++r) {
      for (size_t i = 0; i < prompts.size(); i += std::max(1, a.spec_concurrency)) {
        std::vector<Ids> bo, so;
        run_group(i, false, base_s, base_n, bo);
        run_group(i, true, spec_s, spec_n, so);
        if (r == 0) {
          base_out.insert(base_out.end(), bo.begin(), bo.end());
          spec_out.insert(spec_out.end(), so.begin(), so.end());
        }
      }
    }
    const double proposed = static_cast<double>(mt.spec_proposed - p0), accepted = static_cast<double>(mt.spec_accepted - a0);
    const double passes = static_cast<double>(mt.spec_target_passes - v0);
    spec_j = {{"task", a.spec_task},
              {"concurrency", std::max(1, a.spec_concurrency)},
              {"proposer", a.draft.empty() ? "lookup" : (a.lookup ? "draft+lookup" : "draft")},
              {"base_tps", base_n / base_s},
              {"spec_tps", spec_n / spec_s},
              {"speedup", (spec_n / spec_s) / (base_n / base_s)},
              {"acceptance_rate", proposed > 0 ? accepted / proposed : 0.0},
              {"mean_accepted_per_pass", passes > 0 ? accepted / passes : 0.0},
              {"identical_output", base_out == spec_out}};
  }

  if (a.json) {
    nlohmann::json j{{"model", m->name},
                     {"threads", threads},
                     {"precision", a.precision},
                     {"pp", a.pp},
                     {"tg", a.tg},
                     {"pp_tps", pp_tps},
                     {"tg_tps", tg_tps},
                     {"weight_bytes", wbytes},
                     {"read_bw_gbs", bw / 1e9},
                     {"read_bw_probes_gbs", [&] {
                        std::vector<double> g;
                        for (double p : probes) g.push_back(p / 1e9);
                        return g;
                      }()},
                     {"tg_bw_fraction", tg_bw_fraction},
                     // Per tg run: tokens/s and its fraction (probes r and r+1 are around run r).
                     {"tg_runs_tps", [&] {
                        std::vector<double> v;
                        for (double t : tg_runs) v.push_back(a.tg / t);
                        return v;
                      }()},
                     {"tg_runs_bw_fraction", fractions},
                     {"pp_gflops", our_gflops},
                     {"blas_gflops", blas_gflops ? nlohmann::json(*blas_gflops) : nlohmann::json()},
                     {"pp_blas_fraction", pp_blas_fraction ? nlohmann::json(*pp_blas_fraction) : nlohmann::json()}};
    if (!spec_j.is_null()) j["speculative"] = spec_j;
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("| model | threads | test | tokens/s | baseline |\n|---|---|---|---|---|\n");
    if (blas_gflops)
      fmt::print("| {} | {} | pp{} ({}) | {:.1f} | {:.1f} GFLOP/s = {:.0f}% of OpenBLAS sgemm ({:.1f} GFLOP/s) |\n", m->name,
                 threads, a.pp, a.precision, pp_tps, our_gflops, 100 * *pp_blas_fraction, *blas_gflops);
    else
      fmt::print("| {} | {} | pp{} ({}) | {:.1f} | {:.1f} GFLOP/s; OpenBLAS not found |\n", m->name, threads, a.pp,
                 a.precision, pp_tps, our_gflops);
    fmt::print("| {} | {} | tg{} | {:.1f} | {:.2f} GB/s of weights = {:.0f}% of the read bandwidth probed around each run ({:.1f} GB/s, range {:.1f}-{:.1f}) |\n",
               m->name, threads, a.tg, tg_tps, wbytes * tg_tps / 1e9, 100 * tg_bw_fraction, bw / 1e9,
               *std::min_element(probes.begin(), probes.end()) / 1e9, *std::max_element(probes.begin(), probes.end()) / 1e9);
    if (!spec_j.is_null())
      fmt::print("| {} | {} | tg{} {} task, {} speculation, concurrency {} | {:.1f} vs {:.1f} without = {:.2f}x | acceptance {:.0f}%, {:.2f} accepted per target pass, output identical: {} |\n",
                 m->name, threads, a.tg, a.spec_task, spec_j["proposer"].get<std::string>(), spec_j["concurrency"].get<int>(),
                 spec_j["spec_tps"].get<double>(), spec_j["base_tps"].get<double>(), spec_j["speedup"].get<double>(),
                 100 * spec_j["acceptance_rate"].get<double>(), spec_j["mean_accepted_per_pass"].get<double>(),
                 spec_j["identical_output"].get<bool>() ? "yes" : "NO");
  }
  return 0;
}

CommandRegistrar reg("bench", "Benchmark prompt processing and generation against bandwidth and OpenBLAS baselines",
                     [](CLI::App& app) {
  auto a = std::make_shared<Args>();
  app.add_option("-m,--model", a->model, "Model folder or .gguf file");
  app.add_option("-p,--n-prompt", a->pp, "Prompt tokens for the pp test")->capture_default_str();
  app.add_option("-n,--n-gen", a->tg, "Generated tokens for the tg test")->capture_default_str();
  app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)");
  app.add_option("-r,--reps", a->reps, "Repetitions (the median is reported)")->capture_default_str();
  app.add_option("--precision", a->precision, "Matmul precision for pp: f32 (exact) or bf16")
      ->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  app.add_option("--draft", a->draft, "Also measure speculative generation with this draft model");
  add_kv_type_option(app, a->kv_type, "KV cache storage for pp/tg");
  app.add_flag("--lookup", a->lookup, "Also measure speculative generation with prompt lookup");
  app.add_option("--spec-task", a->spec_task, "Speculation workload: code (continue code prompts) or edit (rewrite a function with a small change)")
      ->check(CLI::IsMember({"code", "edit"}))->capture_default_str();
  app.add_option("--max-draft", a->max_draft, "Longest speculative proposal")->capture_default_str();
  app.add_option("--draft-p-min", a->draft_p_min,
                 "The draft ends a proposal at a token it gives less than this probability")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--draft-max-batch", a->draft_max_batch,
                 "The draft proposes only while fewer sequences than this decode together")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--spec-concurrency", a->spec_concurrency, "Speculation workload: requests decoded together")->capture_default_str();
  app.add_flag("--json", a->json, "Print one JSON object (pp_tps, tg_tps, tg_bw_fraction, pp_blas_fraction, ...)");
  return [a] { return run(*a); };
});

}  // namespace
}  // namespace merlin::cli
