// `merlin bench-fim`: editor replay for the code-completion lane. A source file is retyped key by
// key; every --every'th key (an editor's debounce) sends a streaming /infill request with about
// --prefix-tokens of prefix and --suffix-tokens of suffix around the cursor, X-Client-Id set (so
// the next request supersedes an unfinished one), while another client streams a long chat
// generation. Reports time to first token and to the full suggestion (p50/p95) for each server
// configuration: prefix cache on/off x priority lane on/off. The server runs in-process.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"
#include "common.h"
#include "core/log.h"
#include "engine/engine.h"
#include "server/server.h"

namespace merlin::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct BenchFimArgs {
  std::string model;
  std::string file = std::string(MERLIN_SOURCE_DIR) + "/bench/data/editor_replay.cc";
  int keys = 150;            // keystrokes replayed
  int every = 3;             // a request every n-th key
  double key_ms = 100;       // typing speed (10 keys/s)
  int prefix_tokens = 1500;
  int suffix_tokens = 500;
  int max_tokens = 32;
  int chat_max_tokens = 3000;
  bool no_chat = false;
  int threads = 0;
  bool bf16 = false;
  double time_budget_ms = 0;  // server --fim-time-budget-ms (0: none, so the full 32 tokens are timed)
  bool spm = false;
  std::string configs = "lane+cache,lane+nocache,nolane+cache,nolane+nocache";
  bool json_out = false;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::min<double>(v.size() - 1, std::ceil(p / 100.0 * v.size()) - 1));
  return v[i];
}

struct Sample {
  double ttft_ms = -1, full_ms = -1;
  std::string stop_type;
  int cached = 0, evaluated = 0;
  // Where the time went, from the server's timings: waiting for the engine, prompt processing
  // (arrival to first token, less the queue), generating the rest, and everything else the
  // client saw (HTTP, JSON, tokenizing, detokenizing, thread hand-offs).
  double queue_ms = 0, prefill_ms = 0, decode_ms = 0, other_ms = 0;
};

// The replayed document: lines of the file, the cursor retyping from the start of `cur_line0`.
struct Replay {
  std::string text;
  std::vector<size_t> line_start;  // offsets
  size_t p0 = 0;                   // where typing starts
  size_t region_end = 0;           // typed region: [p0, region_end)
  size_t suffix_end = 0;
  int n_prefix_lines = 0;

  int line_of(size_t off) const {
    return static_cast<int>(std::upper_bound(line_start.begin(), line_start.end(), off) - line_start.begin()) - 1;
  }
  // The prefix window starts n_prefix_lines above the cursor's line, on a 16-line grid: like an
  // editor plugin sending whole lines, but moving in steps so that consecutive requests share
  // their beginning (and the engine's prefix cache can serve it).
  std::pair<std::string, std::string> at(int k) const {
    size_t cur = p0 + static_cast<size_t>(k);
    int l = line_of(cur);
    int start = std::max(0, l - n_prefix_lines);
    start -= start % 16;
    return {text.substr(line_start[start], cur - line_start[start]), text.substr(region_end, suffix_end - region_end)};
  }
};

std::optional<Replay> make_replay(const Tokenizer& tok, const BenchFimArgs& a) {
  std::ifstream in(a.file);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  Replay r;
  r.text = ss.str();
  std::vector<int> ntok;
  for (size_t p = 0; p < r.text.size();) {
    size_t nl = r.text.find('\n', p);
    size_t e = nl == std::string::npos ? r.text.size() : nl + 1;
    r.line_start.push_back(p);
    ntok.push_back(static_cast<int>(tok.encode(r.text.substr(p, e - p), false, false).size()));
    p = e;
  }
  // The first line with enough tokens above it (plus the 16-line grid's slack).
  int acc = 0, cur = 0;
  while (cur < static_cast<int>(ntok.size()) && acc < a.prefix_tokens) acc += ntok[cur++];
  r.n_prefix_lines = cur;
  cur += 16;
  if (cur >= static_cast<int>(ntok.size())) return std::nullopt;
  r.p0 = r.line_start[cur];
  r.region_end = std::min(r.text.size(), r.p0 + static_cast<size_t>(a.keys));
  int l = r.line_of(r.region_end);
  acc = 0;
  while (l < static_cast<int>(ntok.size()) && acc < a.suffix_tokens) acc += ntok[l++];
  r.suffix_end = l < static_cast<int>(ntok.size()) ? r.line_start[l] : r.text.size();
  return r;
}

struct ConfigResult {
  std::string name;
  std::vector<Sample> samples;
  double chat_tokens_per_s = 0;
  double wall_s = 0;
};

ConfigResult run_config(const BenchFimArgs& a, const std::string& name, const Replay& rp, const LoadedModel& lm) {
  ConfigResult out;
  out.name = name;
  const bool lane = name.find("nolane") == std::string::npos;
  const bool cache = name.find("nocache") == std::string::npos;
  EngineOptions eo;
  eo.n_threads = a.threads;
  eo.max_running = 4;
  eo.ctx_size = 4096;
  eo.prefix_cache = cache;
  eo.precision = a.bf16 ? Precision::kBF16 : Precision::kF32;
  auto engine = Engine::create(lm, eo);
  if (!engine) {
    fmt::print(stderr, "error: {}\n", engine.error().message);
    return out;
  }
  server::ServerOptions so;
  so.port = 0;
  so.fim.priority_lane = lane;
  so.fim.default_time_budget_ms = a.time_budget_ms;
  so.fim.order = a.spm ? server::FimOrder::kSpm : server::FimOrder::kPsm;
  auto srv = server::HttpServer::create(**engine, so);
  if (!srv) return out;
  auto port = (*srv)->bind();
  if (!port) return out;
  std::thread http([&] { (*srv)->serve(); });

  // The background chat generation, restarted whenever it ends.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> chat_chunks{0};
  std::atomic<bool> chat_started{false};
  std::thread chat([&] {
    if (a.no_chat) return;
    while (!stop.load()) {
      httplib::Client c("127.0.0.1", *port);
      c.set_read_timeout(600, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = "/v1/chat/completions";
      req.headers = {{"Content-Type", "application/json"}};
      req.body = json{{"messages", {{{"role", "user"}, {"content", "Write a long C++ tutorial about hash maps."}}}},
                      {"max_tokens", a.chat_max_tokens},
                      {"ignore_eos", true},
                      {"stream", true},
                      {"temperature", 0}}
                     .dump();
      req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        std::string_view s(d, n);
        for (size_t p = 0; (p = s.find("\"content\":", p)) != std::string_view::npos; ++p) chat_chunks++;
        chat_started = true;
        return !stop.load();
      };
      (void)c.send(req);
    }
  });
  if (!a.no_chat)
    while (!chat_started.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));

  // The file was open before typing starts: one unmeasured request fills the prefix cache.
  {
    auto [prefix, suffix] = rp.at(0);
    httplib::Client c("127.0.0.1", *port);
    c.set_read_timeout(600, 0);
    (void)c.Post("/infill", json{{"input_prefix", prefix}, {"input_suffix", suffix}, {"n_predict", 1}}.dump(),
                 "application/json");
  }
  std::mutex mu;
  std::vector<std::thread> reqs;
  auto t0 = Clock::now();
  const int64_t chat0 = chat_chunks.load();
  for (int k = 1; k <= a.keys; ++k) {
    auto due = t0 + std::chrono::microseconds(static_cast<int64_t>(k * a.key_ms * 1000));
    std::this_thread::sleep_until(due);
    if (k % a.every != 0) continue;
    auto [prefix, suffix] = rp.at(k);
    reqs.emplace_back([&, prefix = std::move(prefix), suffix = std::move(suffix)] {
      httplib::Client c("127.0.0.1", *port);
      c.set_read_timeout(600, 0);
      httplib::Request req;
      req.method = "POST";
      req.path = "/infill";
      req.headers = {{"Content-Type", "application/json"}, {"X-Client-Id", "editor-1"}};
      req.body = json{{"input_prefix", prefix}, {"input_suffix", suffix}, {"n_predict", a.max_tokens},
                      {"temperature", 0}, {"stream", true}}
                     .dump();
      Sample s;
      std::string buf;
      const auto start = Clock::now();
      req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        buf.append(d, n);
        size_t e;
        while ((e = buf.find("\n\n")) != std::string::npos) {
          std::string ev = buf.substr(0, e);
          buf.erase(0, e + 2);
          if (ev.rfind("data: ", 0) != 0) continue;
          auto j = json::parse(ev.substr(6), nullptr, false);
          if (j.is_discarded()) continue;
          double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
          if (j.value("stop", false)) {
            s.full_ms = ms;
            s.stop_type = j.value("stop_type", "");
            s.cached = j.value("tokens_cached", 0);
            s.evaluated = j.value("tokens_evaluated", 0);
            if (j.contains("timings") && j["timings"].is_object()) {
              const auto& t = j["timings"];
              const double prompt = t.value("prompt_ms", 0.0), pred = t.value("predicted_ms", 0.0);
              s.queue_ms = t.value("queue_ms", 0.0);
              s.prefill_ms = std::max(0.0, prompt - s.queue_ms);
              s.decode_ms = pred;
              s.other_ms = std::max(0.0, ms - prompt - pred);
            }
          } else if (s.ttft_ms < 0) {
            s.ttft_ms = ms;
          }
        }
        return true;
      };
      (void)c.send(req);
      // A suggestion that was all whitespace has no content event: its first token is its end.
      if (s.ttft_ms < 0) s.ttft_ms = s.full_ms;
      std::lock_guard lk(mu);
      out.samples.push_back(s);
    });
  }
  for (auto& t : reqs) t.join();
  out.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  out.chat_tokens_per_s = static_cast<double>(chat_chunks.load() - chat0) / out.wall_s;
  stop = true;
  (*srv)->stop();
  http.join();
  chat.join();
  return out;
}

int run_bench_fim(const BenchFimArgs& a) {
  auto model = load_or_report(a.model.empty() ? default_model_path() : a.model);
  if (!model) return 1;
  auto rp = make_replay(*model->tokenizer, a);
  if (!rp) {
    fmt::print(stderr, "error: cannot use {} (missing, or too short for the prefix and suffix asked)\n", a.file);
    return 1;
  }
  auto [p1, s1] = rp->at(a.every);
  fmt::print(stderr,
             "editor replay: {} keys at {} ms, a request every {} keys; prefix ~{} tokens ({} lines), suffix {} tokens; "
             "max {} new tokens; chat load: {}\n",
             a.keys, a.key_ms, a.every, model->tokenizer->encode(p1, false).size(), rp->n_prefix_lines,
             model->tokenizer->encode(s1, false).size(), a.max_tokens, a.no_chat ? "none" : "streaming");
  json all = json::array();
  fmt::print("{:<16} {:>5} {:>5} {:>5} | {:>9} {:>9} | {:>9} {:>9} | {:>7} {:>9}\n", "config", "reqs", "done", "canc",
             "ttft p50", "ttft p95", "full p50", "full p95", "cached%", "chat tok/s");
  std::stringstream cfgs(a.configs);
  std::string name;
  while (std::getline(cfgs, name, ',')) {
    auto r = run_config(a, name, *rp, *model);
    std::vector<double> ttft, full, queue, prefill, decode, other;
    int canc = 0;
    double cached = 0, evald = 0;
    for (const auto& s : r.samples) {
      if (s.stop_type == "cancelled") {
        ++canc;
        continue;
      }
      if (s.full_ms < 0) continue;
      ttft.push_back(s.ttft_ms);
      full.push_back(s.full_ms);
      queue.push_back(s.queue_ms);
      prefill.push_back(s.prefill_ms);
      decode.push_back(s.decode_ms);
      other.push_back(s.other_ms);
      cached += s.cached;
      evald += s.evaluated;
    }
    double cpct = evald > 0 ? 100.0 * cached / evald : 0;
    fmt::print("{:<16} {:>5} {:>5} {:>5} | {:>9.1f} {:>9.1f} | {:>9.1f} {:>9.1f} | {:>7.1f} {:>9.1f}\n", name,
               r.samples.size(), full.size(), canc, pct(ttft, 50), pct(ttft, 95), pct(full, 50), pct(full, 95), cpct,
               r.chat_tokens_per_s);
    auto mean = [](const std::vector<double>& v) {
      double t = 0;
      for (double x : v) t += x;
      return v.empty() ? 0.0 : t / static_cast<double>(v.size());
    };
    fmt::print("{:<16} where a completed request's time went, mean (p95) ms: queue {:.1f} ({:.1f}), prefill {:.1f} "
               "({:.1f}), decode {:.1f} ({:.1f}), other {:.1f} ({:.1f})\n",
               "", mean(queue), pct(queue, 95), mean(prefill), pct(prefill, 95), mean(decode), pct(decode, 95),
               mean(other), pct(other, 95));
    std::fflush(stdout);
    all.push_back({{"queue_ms_mean", mean(queue)}, {"prefill_ms_mean", mean(prefill)},
                   {"decode_ms_mean", mean(decode)}, {"other_ms_mean", mean(other)},{"config", name}, {"requests", r.samples.size()}, {"completed", full.size()}, {"cancelled", canc},
                   {"ttft_p50_ms", pct(ttft, 50)}, {"ttft_p95_ms", pct(ttft, 95)}, {"full_p50_ms", pct(full, 50)},
                   {"full_p95_ms", pct(full, 95)}, {"cached_pct", cpct}, {"chat_tok_s", r.chat_tokens_per_s}});
  }
  if (a.json_out) fmt::print("{}\n", all.dump());
  return 0;
}

const CommandRegistrar reg("bench-fim", "Editor replay: FIM latency under chat load (in-process server)",
                           [](CLI::App& app) {
  auto a = std::make_shared<BenchFimArgs>();
  app.add_option("-m,--model", a->model, "Model folder or .gguf (default: shipped tiny-coder-target)");
  app.add_option("--file", a->file, "Source file to retype");
  app.add_option("--keys", a->keys, "Keystrokes to replay")->check(CLI::Range(3, 100000));
  app.add_option("--every", a->every, "Send a request every n-th key (debounce)")->check(CLI::Range(1, 1000));
  app.add_option("--key-ms", a->key_ms, "Milliseconds between keys");
  app.add_option("--prefix-tokens", a->prefix_tokens, "Prefix size around the cursor (tokens, whole lines)");
  app.add_option("--suffix-tokens", a->suffix_tokens, "Suffix size (tokens, whole lines)");
  app.add_option("--max-tokens", a->max_tokens, "New tokens per suggestion at most");
  app.add_option("--chat-max-tokens", a->chat_max_tokens, "max_tokens of the background chat generation");
  app.add_flag("--no-chat", a->no_chat, "No background chat load");
  app.add_option("--threads", a->threads, "Engine threads (0: all cores)");
  app.add_flag("--bf16", a->bf16, "bf16 matmul precision (faster prompt processing, bf16 accuracy)");
  app.add_option("--time-budget-ms", a->time_budget_ms, "Server's default FIM time budget (0: none)");
  app.add_flag("--spm", a->spm, "Suffix-prefix-middle prompt order");
  app.add_option("--configs", a->configs, "Comma-separated: lane+cache, lane+nocache, nolane+cache, nolane+nocache");
  app.add_flag("--json", a->json_out, "Also print the results as JSON");
  return [a] { return run_bench_fim(*a); };
});

}  // namespace
}  // namespace merlin::cli
