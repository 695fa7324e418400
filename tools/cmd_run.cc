// merlin run: generate text from a prompt, streaming it to stdout.
#include <cstdio>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "core/thread_pool.h"
#include "engine/engine.h"

namespace merlin::cli {
namespace {

struct RunArgs {
  std::string model, prompt, draft, precision = "f32", kv_type = "f32";
  int32_t n = 128, top_k = 40, threads = 0, ctx = 0, max_draft = 16;
  float draft_p_min = SpecOptions{}.draft_p_min;
  float temp = 0.8f, top_p = 0.95f, min_p = 0.05f, repeat_penalty = 1.0f, presence = 0, frequency = 0;
  int64_t seed = -1;
  bool ignore_eos = false, json = false, lookup = false, no_spec = false, raw = false;
  std::vector<std::string> stop;
};

int run(const RunArgs& a) {
  auto m = load_or_report(a.model);
  if (!m) return 1;
  EngineOptions eo;
  eo.n_threads = a.threads;
  eo.max_running = 1;
  eo.precision = a.precision == "bf16" ? Precision::kBF16 : Precision::kF32;
  auto kv_type = kv_type_or_report(a.kv_type, m->weights->config);
  if (!kv_type) return 1;
  eo.kv_type = *kv_type;
  std::shared_ptr<const Tokenizer> tok = m->tokenizer;
  Ids prompt = tok->encode(a.prompt, true, tok->info().add_bos);
  if (prompt.empty()) {
    fmt::print(stderr, "error: the prompt is empty\n");
    return 1;
  }
  // The model's limit: max_pos, or a sliding attention window (capped with a warning; a --ctx
  // beyond it is refused).
  auto limit = context_size(m->weights->config, a.ctx);
  if (!limit) {
    fmt::print(stderr, "error: {}\n", limit.error().message);
    return 1;
  }
  eo.ctx_size = a.ctx > 0 ? a.ctx : std::min<int32_t>(*limit, std::max<int32_t>(4096, static_cast<int32_t>(prompt.size()) + a.n + 1));
  if (!a.draft.empty()) {
    auto d = load_or_report(a.draft);
    if (!d) return 1;
    eo.draft = d->weights;
  }
  eo.spec_default.use_draft = !a.draft.empty() && !a.no_spec;
  eo.spec_default.use_lookup = a.lookup && !a.no_spec;
  eo.spec_default.max_draft = a.max_draft;
  eo.spec_default.draft_p_min = a.draft_p_min;
  auto engine = Engine::create(std::move(*m), eo);
  if (!engine) {
    fmt::print(stderr, "error: {}\n", engine.error().message);
    return 1;
  }
  GenerationRequest req;
  req.prompt = prompt;
  req.max_tokens = a.n;
  req.ignore_eos = a.ignore_eos;
  req.stop = a.stop;
  req.sampling.temperature = a.temp;
  req.sampling.top_k = a.top_k;
  req.sampling.top_p = a.top_p;
  req.sampling.min_p = a.min_p;
  req.sampling.repetition_penalty = a.repeat_penalty;
  req.sampling.presence_penalty = a.presence;
  req.sampling.frequency_penalty = a.frequency;
  if (a.seed >= 0) req.sampling.seed = static_cast<uint64_t>(a.seed);
  auto stream = (*engine)->submit(req);
  if (!stream) {
    fmt::print(stderr, "error: {}\n", stream.error().message);
    return 1;
  }
  std::string text;
  Ids tokens;
  StreamEvent ev;
  if (!a.json && !a.raw) {
    std::fputs(a.prompt.c_str(), stdout);
    std::fflush(stdout);
  }
  for (;;) {
    if (!(*stream)->next(ev)) continue;
    text += ev.text;
    tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    if (!a.json) {
      std::fwrite(ev.text.data(), 1, ev.text.size(), stdout);
      std::fflush(stdout);
    }
    if (ev.done) break;
  }
  if (ev.finish == FinishReason::kError) {
    fmt::print(stderr, "\nerror: {}\n", ev.error);
    return 1;
  }
  const double ttft = ev.ttft_ms, e2e = ev.e2e_ms;
  const int n_gen = ev.usage.completion_tokens;
  const double prompt_tps = ttft > 0 ? ev.usage.prompt_tokens / (ttft / 1000.0) : 0;
  const double gen_tps = n_gen > 1 && e2e > ttft ? (n_gen - 1) / ((e2e - ttft) / 1000.0) : 0;
  auto& met = (*engine)->metrics();
  if (a.json) {
    nlohmann::json j;
    j["text"] = text;
    j["tokens"] = tokens;
    j["prompt_tokens"] = ev.usage.prompt_tokens;
    j["ttft_ms"] = ttft;
    j["prompt_tps"] = prompt_tps;
    j["gen_tps"] = gen_tps;
    j["finish_reason"] = finish_reason_name(ev.finish);
    if (met.spec_target_passes > 0) {
      j["spec_proposed"] = met.spec_proposed.load();
      j["spec_accepted"] = met.spec_accepted.load();
      j["spec_target_passes"] = met.spec_target_passes.load();
    }
    std::puts(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    fmt::print(stderr, "\n\nprompt tokens: {}   time to first token: {:.1f} ms   prompt: {:.1f} tok/s   generation: {} tokens, {:.1f} tok/s ({})\n",
               ev.usage.prompt_tokens, ttft, prompt_tps, n_gen, gen_tps, finish_reason_name(ev.finish));
    if (met.spec_target_passes > 0)
      fmt::print(stderr, "speculation: {} proposed, {} accepted ({:.0f}%), {:.2f} tokens per target pass\n",
                 met.spec_proposed.load(), met.spec_accepted.load(),
                 100.0 * met.spec_accepted.load() / std::max<uint64_t>(1, met.spec_proposed.load()),
                 static_cast<double>(n_gen) / std::max<uint64_t>(1, met.spec_target_passes.load()));
  }
  return 0;
}

CommandRegistrar reg("run", "Generate text from a prompt (streams to stdout, then prints timings)", [](CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  a->model = default_model_path();
  app.add_option("-m,--model", a->model, "Model folder (config.json, *.safetensors, tokenizer.json) or .gguf file (default: shipped tiny-coder-target)");
  app.add_option("-p,--prompt", a->prompt, "Prompt text")->required();
  app.add_option("-n,--n-predict", a->n, "Tokens to generate at most")->capture_default_str();
  app.add_option("--temp", a->temp, "Temperature; 0 = greedy")->capture_default_str();
  app.add_option("--top-k", a->top_k, "Top-k (0 = off)")->capture_default_str();
  app.add_option("--top-p", a->top_p, "Top-p / nucleus")->capture_default_str();
  app.add_option("--min-p", a->min_p, "Min-p (0 = off)")->capture_default_str();
  app.add_option("--repeat-penalty", a->repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
  app.add_option("--presence-penalty", a->presence, "Presence penalty")->capture_default_str();
  app.add_option("--frequency-penalty", a->frequency, "Frequency penalty")->capture_default_str();
  app.add_option("--seed", a->seed, "Random seed (-1 = random); same seed, same text")->capture_default_str();
  app.add_option("--stop", a->stop, "Stop string (repeatable)");
  app.add_flag("--ignore-eos", a->ignore_eos, "Keep generating after end-of-text tokens");
  app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
  app.add_option("-c,--ctx", a->ctx, "Context size in tokens (0 = enough for prompt + n, at least 4096)");
  app.add_option("--precision", a->precision, "Matmul precision for prompt batches: f32 (exact) or bf16 (faster)")
      ->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  add_kv_type_option(app, a->kv_type, "KV cache storage: f32 is exact, q8_0 3.8x smaller");
  app.add_option("--draft", a->draft, "Draft model for speculative decoding (same vocabulary)");
  app.add_flag("--lookup", a->lookup, "Prompt-lookup (n-gram) speculative decoding");
  app.add_option("--max-draft", a->max_draft, "Longest speculative proposal")->capture_default_str();
  app.add_option("--draft-p-min", a->draft_p_min, "The draft ends a proposal at a token it gives less than this probability")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_flag("--no-spec", a->no_spec, "Load the draft but do not speculate");
  app.add_flag("--raw", a->raw, "Do not echo the prompt before the generated text");
  app.add_flag("--json", a->json, "Print one JSON object {text, tokens, prompt_tokens, ttft_ms, prompt_tps, gen_tps}");
  return [a] { return run(*a); };
});

}  // namespace
}  // namespace merlin::cli
