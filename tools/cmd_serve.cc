// `merlin serve`: OpenAI- and Anthropic-compatible HTTP server (src/server).
#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fmt/core.h>

#include "command.h"
#include "common.h"
#include "core/log.h"
#include "engine/engine.h"
#include "server/api_keys.h"
#include "server/server.h"

namespace merlin::cli {
namespace {

struct ServeArgs {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;       // --api-key: visible in ps, kept for compatibility
  std::string api_key_file;  // --api-key-file
  bool log_requests = false;
  int parallel = 16;
  int ctx = 0;
  int threads = 0;
  size_t max_body_bytes = 8u << 20;
  int http_threads = 0;
  bool no_prefix_cache = false;
  double fim_time_budget_ms = 1000;
  bool fim_spm = false;
  bool no_priority_lane = false;
  std::string kv_type = "f32";
  std::string draft;
  std::string precision = "f32";
  bool lookup = false;
  int max_draft = 16;
  float draft_p_min = SpecOptions{}.draft_p_min;
  int draft_max_batch = SpecOptions{}.draft_max_batch;
  int max_queue = 0;
  double lane_max_pause_ms = 500;
  double request_timeout_s = 0;
};

int run_serve(const ServeArgs& a) {
  // Signals are taken synchronously by this thread (sigwait), so every thread created from
  // here on, the engine's and httplib's, must have them blocked.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server

  // API keys: MERLIN_API_KEY, --api-key-file (one per line), and --api-key (visible in ps).
  std::vector<std::string> keys;
  if (const char* env = std::getenv("MERLIN_API_KEY")) {
    auto k = server::parse_api_key_lines(env);
    if (k.size() > 1) {
      fmt::print(stderr, "error: MERLIN_API_KEY holds more than one line; use --api-key-file for several keys\n");
      return 1;
    }
    keys.insert(keys.end(), k.begin(), k.end());
  }
  if (!a.api_key_file.empty()) {
    auto k = server::read_api_key_file(a.api_key_file);
    if (!k) {
      fmt::print(stderr, "error: {}\n", k.error().message);
      return 1;
    }
    keys.insert(keys.end(), k->begin(), k->end());
  }
  if (!a.api_key.empty()) {
    fmt::print(stderr,
               "warning: --api-key is visible to every user of this machine (ps, /proc/PID/cmdline); "
               "use MERLIN_API_KEY or --api-key-file instead\n");
    keys.push_back(a.api_key);
  }

  if (keys.empty() && a.host != "127.0.0.1" && a.host != "localhost" && a.host != "::1")
    fmt::print(stderr, "warning: serving on {} without an API key: anyone who can reach it can use it\n", a.host);

  auto model = load_or_report(a.model.empty() ? default_model_path() : a.model);
  if (!model) return 1;
  EngineOptions eo;
  eo.n_threads = a.threads;
  eo.max_running = a.parallel;
  eo.ctx_size = a.ctx;
  eo.prefix_cache = !a.no_prefix_cache;
  eo.max_queue = a.max_queue;
  auto kvt = kv_type_or_report(a.kv_type, model->weights->config);
  if (!kvt) return 1;
  eo.kv_type = *kvt;
  eo.lane_max_pause_ms = a.lane_max_pause_ms;
  if (!a.draft.empty()) {
    auto d = load_or_report(a.draft);
    if (!d) return 1;
    eo.draft = d->weights;
  }
  // Speculation is on by default when a draft is configured; requests may turn it off (or on,
  // for prompt lookup) with the "speculative" extension field.
  eo.precision = a.precision == "bf16" ? Precision::kBF16 : Precision::kF32;
  eo.spec_default.use_draft = !a.draft.empty();
  eo.spec_default.use_lookup = a.lookup;
  eo.spec_default.max_draft = a.max_draft;
  eo.spec_default.draft_p_min = a.draft_p_min;
  eo.spec_default.draft_max_batch = a.draft_max_batch;
  auto engine = Engine::create(std::move(*model), eo);
  if (!engine) {
    fmt::print(stderr, "error: {}\n", engine.error().message);
    return 1;
  }
  server::ServerOptions so;
  so.host = a.host;
  so.port = a.port;
  so.api_keys = keys;
  so.log_requests = a.log_requests;
  so.max_body_bytes = a.max_body_bytes;
  so.http_threads = a.http_threads > 0 ? a.http_threads : std::max(64, 4 * a.parallel);
  so.fim.default_time_budget_ms = a.fim_time_budget_ms;
  so.fim.order = a.fim_spm ? server::FimOrder::kSpm : server::FimOrder::kPsm;
  so.fim.priority_lane = !a.no_priority_lane;
  so.request_timeout_s = a.request_timeout_s;
  auto srv = server::HttpServer::create(**engine, so);
  if (!srv) {
    fmt::print(stderr, "error: {}\n", srv.error().message);
    return 1;
  }
  auto port = (*srv)->bind();
  if (!port) {
    fmt::print(stderr, "error: {}\n", port.error().message);
    return 1;
  }
  std::thread http([&] { (*srv)->serve(); });
  if ((*srv)->chat_template() == server::kChatMlFallback)
    fmt::print(stderr, "warning: model {} has no chat template; chat endpoints use ChatML (fallback)\n",
               (*engine)->model().name);
  fmt::print(stderr, "merlin serve: model {} listening on http://{}:{} (ctx {}, parallel {}, chat template: {}{})\n",
             (*engine)->model().name, a.host, *port, (*engine)->ctx_size(), a.parallel, (*srv)->chat_template(),
             keys.empty() ? "" : fmt::format(", API key required ({} key{})", keys.size(), keys.size() == 1 ? "" : "s"));
  std::fflush(stderr);

  int sig = 0;
  sigwait(&sigs, &sig);
  fmt::print(stderr, "merlin serve: {} received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  (*srv)->stop();
  http.join();
  srv->reset();
  engine->reset();
  fmt::print(stderr, "merlin serve: stopped\n");
  return 0;
}

const CommandRegistrar reg("serve", "OpenAI- and Anthropic-compatible HTTP server", [](CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  app.add_option("-m,--model", a->model, "Model folder or .gguf (default: shipped tiny-coder-target)");
  app.add_option("--host", a->host, "Address to bind (default loopback)");
  app.add_option("--port", a->port, "Port (0: any free port)")->check(CLI::Range(0, 65535));
  app.add_option("--api-key", a->api_key,
                 "Require this key (Authorization: Bearer or x-api-key). Visible in ps: prefer MERLIN_API_KEY "
                 "or --api-key-file");
  app.add_option("--api-key-file", a->api_key_file,
                 "Require one of the keys in FILE (one per line; blank lines and # comments ignored). The "
                 "MERLIN_API_KEY environment variable adds one more");
  app.add_flag("--log-requests", a->log_requests,
               "Log every request's method, path, status and body (prompt text); keys are never logged");
  app.add_option("--parallel", a->parallel, "Sequences decoded together")->check(CLI::Range(1, 4096));
  app.add_option("--ctx", a->ctx, "Context size per sequence (0: model's)")->check(CLI::Range(0, 1 << 24));
  app.add_option("--threads", a->threads, "Compute threads (0: all cores)")->check(CLI::Range(0, 4096));
  add_kv_type_option(app, a->kv_type, "KV cache storage");
  app.add_option("--max-body-bytes", a->max_body_bytes, "Largest request body accepted (413 beyond)");
  app.add_option("--http-threads", a->http_threads, "HTTP worker threads (0: max(64, 4 x parallel))");
  app.add_flag("--no-prefix-cache", a->no_prefix_cache, "Disable prefix caching");
  app.add_option("--lane-max-pause-ms", a->lane_max_pause_ms,
                 "While completion (FIM) requests keep arriving, chat and batch sequences wait at most this long "
                 "before one step runs every lane together")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  app.add_option("--max-queue", a->max_queue,
                 "Requests waiting for a slot, per priority lane, beyond which new ones get 429 (Anthropic: 529) "
                 "with Retry-After (0: unbounded)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--request-timeout", a->request_timeout_s,
                 "Seconds a request may take from arrival, queueing included; past it: 504, or an error event "
                 "ending the stream (0: none)")
      ->check(CLI::Range(0.0, 1e7))
      ->capture_default_str();
  app.add_option("--draft", a->draft, "Draft model for speculative decoding (same vocabulary; on by default for every request)");
  app.add_option("--precision", a->precision, "Matmul precision: f32 (exact) or bf16 (about 2x faster prompt processing)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  app.add_flag("--lookup", a->lookup, "Prompt-lookup (n-gram) speculation by default for every request");
  app.add_option("--max-draft", a->max_draft, "Longest speculative proposal")->check(CLI::Range(1, 64));
  app.add_option("--draft-max-batch", a->draft_max_batch,
                 "The draft proposes only while fewer sequences than this decode together (prompt lookup is not limited)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--draft-p-min", a->draft_p_min, "The draft ends a proposal at a token it gives less than this probability")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--fim-time-budget-ms", a->fim_time_budget_ms,
                 "FIM: stop a suggestion this long after its first token unless the request says (0: off)");
  app.add_flag("--fim-spm", a->fim_spm, "FIM: suffix-prefix-middle order (models trained on SPM)");
  app.add_flag("--no-priority-lane", a->no_priority_lane, "FIM requests run as chat (benchmark baseline)");
  return [a] { return run_serve(*a); };
});

}  // namespace
}  // namespace merlin::cli
