// `merlin bench-serve`: load generator for an OpenAI-compatible server, in the spirit of vLLM's
// benchmark_serving: closed-loop (--concurrency) or open-loop Poisson arrivals (--rate),
// streaming, measuring TTFT, time per output token, inter-token latency and end-to-end latency
// percentiles plus request and token throughput.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"

namespace merlin::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct BenchArgs {
  std::string url = "http://127.0.0.1:8080";
  int concurrency = 0;     // 0: unbounded with --rate, else 8
  double rate = 0;         // requests per second, Poisson; 0: all at once
  int num = 64;
  int prompt_len = 256;
  int gen_len = 128;
  std::string dataset;
  bool stream = false;
  std::string api = "completions";
  bool json_out = false;
  std::string api_key;
  std::string model;
  uint64_t seed = 0;
  double timeout_s = 600;
};

struct Prompt {
  json prompt;             // completions: token ids or text; chat: text
  int prompt_tokens = 0;   // as built (exact with token ids)
  int max_tokens = 0;
};

struct Outcome {
  bool ok = false;
  std::string error;
  double ttft_ms = 0, e2e_ms = 0;
  std::vector<double> itl_ms;
  int prompt_tokens = 0, output_tokens = 0;
};

// Random code-like text: identifiers, keywords, operators and line structure, so that
// tokenization resembles real source rather than a repeated word.
std::string code_like_text(std::mt19937_64& rng, size_t approx_chars) {
  static const char* kw[] = {"def", "return", "for", "in", "if", "else", "while", "import", "from", "class",
                             "self", "None", "True", "False", "lambda", "yield", "with", "as", "try", "except"};
  static const char* ops[] = {" = ", " + ", " - ", " * ", " / ", " == ", " < ", ", ", ".", "(", ")", "[", "]", ": "};
  static const char* syll[] = {"data", "value", "index", "count", "item", "node", "buf", "size", "key", "list",
                               "map", "get", "set", "load", "parse", "tmp", "result", "user", "line", "token"};
  std::string s;
  int indent = 0;
  while (s.size() < approx_chars) {
    s.append(static_cast<size_t>(indent) * 4, ' ');
    int words = 3 + static_cast<int>(rng() % 8);
    for (int w = 0; w < words; ++w) {
      switch (rng() % 4) {
        case 0: s += kw[rng() % std::size(kw)]; s += ' '; break;
        case 1: s += syll[rng() % std::size(syll)]; s += '_'; s += syll[rng() % std::size(syll)]; break;
        case 2: s += ops[rng() % std::size(ops)]; break;
        default: s += std::to_string(rng() % 1000); break;
      }
    }
    s += rng() % 3 == 0 ? ":\n" : "\n";
    indent = std::clamp(indent + static_cast<int>(rng() % 3) - 1, 0, 3);
  }
  return s;
}

httplib::Headers auth_headers(const BenchArgs& a) {
  httplib::Headers h;
  if (!a.api_key.empty()) h.emplace("Authorization", "Bearer " + a.api_key);
  return h;
}

// Exactly L tokens through the server's /tokenize (text -> ids, cut to L); when the server has
// no /tokenize, text of about 4 characters per token.
std::vector<Prompt> synthetic_prompts(const BenchArgs& a, bool& exact) {
  std::mt19937_64 rng(a.seed);
  httplib::Client cli(a.url);
  cli.set_read_timeout(60, 0);
  std::vector<Prompt> out;
  exact = true;
  for (int i = 0; i < a.num; ++i) {
    std::string text = code_like_text(rng, static_cast<size_t>(a.prompt_len) * 6 + 64);
    Prompt p;
    p.max_tokens = a.gen_len;
    auto res = exact ? cli.Post("/tokenize", auth_headers(a), json{{"content", text}}.dump(), "application/json")
                     : httplib::Result{nullptr, httplib::Error::Unknown};
    json toks;
    if (res && res->status == 200) {
      toks = json::parse(res->body, nullptr, false);
      if (toks.is_discarded() || !toks.contains("tokens") || !toks["tokens"].is_array()) toks = nullptr;
    }
    if (toks.is_null() || toks["tokens"].size() < static_cast<size_t>(a.prompt_len)) {
      exact = false;
      p.prompt = text.substr(0, static_cast<size_t>(a.prompt_len) * 4);
      p.prompt_tokens = a.prompt_len;
    } else {
      json ids = json::array();
      for (int k = 0; k < a.prompt_len; ++k) ids.push_back(toks["tokens"][k]);
      if (a.api == "completions") {
        p.prompt = ids;
      } else {
        auto d = cli.Post("/detokenize", auth_headers(a), json{{"tokens", ids}}.dump(), "application/json");
        json dj = d && d->status == 200 ? json::parse(d->body, nullptr, false) : json();
        p.prompt = dj.is_object() && dj.contains("content") ? dj["content"] : json(text.substr(0, a.prompt_len * 4));
        exact = false;  // the chat template adds tokens around it
      }
      p.prompt_tokens = a.prompt_len;
    }
    out.push_back(std::move(p));
  }
  return out;
}

// --dataset: JSON lines or a JSON array; each entry a string prompt or an object with
// "prompt" (or "text") and optionally "max_tokens" / "output_len".
std::optional<std::vector<Prompt>> dataset_prompts(const BenchArgs& a) {
  std::ifstream in(a.dataset);
  if (!in) {
    fmt::print(stderr, "error: cannot open {}\n", a.dataset);
    return std::nullopt;
  }
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<json> entries;
  json whole = json::parse(all, nullptr, false);
  if (!whole.is_discarded() && whole.is_array()) {
    entries.assign(whole.begin(), whole.end());
  } else {
    size_t pos = 0;
    while (pos < all.size()) {
      size_t nl = all.find('\n', pos);
      std::string line = all.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      pos = nl == std::string::npos ? all.size() : nl + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j = json::parse(line, nullptr, false);
      if (j.is_discarded()) {
        fmt::print(stderr, "error: {}: a line is not JSON: {}\n", a.dataset, line.substr(0, 80));
        return std::nullopt;
      }
      entries.push_back(std::move(j));
    }
  }
  std::vector<Prompt> out;
  for (const auto& e : entries) {
    Prompt p;
    p.max_tokens = a.gen_len;
    if (e.is_string()) {
      p.prompt = e;
    } else if (e.is_object() && (e.contains("prompt") || e.contains("text"))) {
      p.prompt = e.contains("prompt") ? e["prompt"] : e["text"];
      for (const char* k : {"max_tokens", "output_len"})
        if (e.contains(k) && e[k].is_number_integer()) p.max_tokens = e[k].get<int>();
    } else {
      continue;
    }
    if (!p.prompt.is_string()) continue;
    out.push_back(std::move(p));
    if (static_cast<int>(out.size()) >= a.num) break;
  }
  if (out.empty()) {
    fmt::print(stderr, "error: {} holds no prompts\n", a.dataset);
    return std::nullopt;
  }
  // Fewer entries than --num: cycle through them.
  for (size_t i = 0; static_cast<int>(out.size()) < a.num; ++i) out.push_back(out[i]);
  return out;
}

Outcome run_one(const BenchArgs& a, const Prompt& p) {
  Outcome o;
  httplib::Client cli(a.url);
  cli.set_read_timeout(static_cast<time_t>(a.timeout_s), 0);
  cli.set_write_timeout(60, 0);
  cli.set_connection_timeout(10, 0);
  json body = {{"max_tokens", p.max_tokens}, {"temperature", 0}, {"ignore_eos", true}};
  if (!a.model.empty()) body["model"] = a.model;
  std::string path;
  if (a.api == "chat") {
    path = "/v1/chat/completions";
    body["messages"] = json::array({{{"role", "user"}, {"content", p.prompt}}});
  } else {
    path = "/v1/completions";
    body["prompt"] = p.prompt;
  }
  if (a.stream) {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
  }
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.headers = auth_headers(a);
  req.headers.emplace("Content-Type", "application/json");
  req.body = body.dump();

  auto t0 = Clock::now();
  auto last = t0;
  bool first = true;
  std::string buf, whole;
  int chunks = 0;
  auto ms_since = [](Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  };
  auto on_line = [&](const std::string& line) {
    if (line.rfind("data: ", 0) != 0) return;
    std::string payload = line.substr(6);
    if (payload == "[DONE]") return;
    json j = json::parse(payload, nullptr, false);
    if (j.is_discarded()) return;
    if (j.contains("error")) {
      o.error = j["error"].value("message", "stream error");
      return;
    }
    if (j.contains("usage") && j["usage"].is_object()) {
      o.output_tokens = j["usage"].value("completion_tokens", 0);
      o.prompt_tokens = j["usage"].value("prompt_tokens", 0);
    }
    if (!j.contains("choices") || j["choices"].empty()) return;
    const json& c = j["choices"][0];
    std::string text = a.api == "chat" ? (c.contains("delta") && c["delta"].contains("content") &&
                                                  c["delta"]["content"].is_string()
                                              ? c["delta"]["content"].get<std::string>()
                                              : std::string())
                                       : c.value("text", std::string());
    if (text.empty()) return;
    auto now = Clock::now();
    if (first) {
      o.ttft_ms = ms_since(t0);
      first = false;
    } else {
      o.itl_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
    }
    last = now;
    ++chunks;
  };
  req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
    if (!a.stream) {
      whole.append(data, len);
      return true;
    }
    buf.append(data, len);
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      buf.erase(0, nl + 1);
      if (!line.empty()) on_line(line);
    }
    return true;
  };
  auto res = cli.send(req);
  o.e2e_ms = ms_since(t0);
  if (!res) {
    o.error = httplib::to_string(res.error());
    return o;
  }
  if (res->status != 200) {
    std::string b = a.stream ? buf : whole;
    o.error = fmt::format("HTTP {}: {}", res->status, b.substr(0, 200));
    return o;
  }
  if (!a.stream) {
    json j = json::parse(whole, nullptr, false);
    if (j.is_discarded() || !j.contains("usage")) {
      o.error = "bad response body";
      return o;
    }
    o.output_tokens = j["usage"].value("completion_tokens", 0);
    o.prompt_tokens = j["usage"].value("prompt_tokens", 0);
    o.ttft_ms = o.e2e_ms;
  } else if (o.output_tokens == 0) {
    o.output_tokens = chunks;  // server without usage in streams
  }
  o.ok = o.error.empty();
  return o;
}

double pct(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}
double mean(const std::vector<double>& v) {
  return v.empty() ? 0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

json stats(const std::vector<double>& v) {
  return {{"mean", mean(v)}, {"p50", pct(v, 50)}, {"p95", pct(v, 95)}, {"p99", pct(v, 99)}, {"max", v.empty() ? 0 : *std::max_element(v.begin(), v.end())}};
}

int run_bench(BenchArgs a) {
  if (a.api != "chat" && a.api != "completions") {
    fmt::print(stderr, "error: --api must be chat or completions\n");
    return 2;
  }
  while (!a.url.empty() && a.url.back() == '/') a.url.pop_back();
  {
    httplib::Client cli(a.url);
    cli.set_connection_timeout(5, 0);
    auto h = cli.Get("/v1/models", auth_headers(a));
    if (!h) {
      fmt::print(stderr, "error: cannot reach {}: {}\n", a.url, httplib::to_string(h.error()));
      return 1;
    }
  }
  bool exact = false;
  std::vector<Prompt> prompts;
  if (!a.dataset.empty()) {
    auto d = dataset_prompts(a);
    if (!d) return 1;
    prompts = std::move(*d);
  } else {
    prompts = synthetic_prompts(a, exact);
  }
  const int n = static_cast<int>(prompts.size());
  int conc = a.concurrency > 0 ? a.concurrency : (a.rate > 0 ? n : 8);
  conc = std::min(conc, n);

  // Arrival times: Poisson process at --rate, or all at once.
  std::vector<double> arrival(n, 0.0);
  if (a.rate > 0) {
    std::mt19937_64 rng(a.seed + 1);
    std::exponential_distribution<double> gap(a.rate);
    double t = 0;
    for (int i = 0; i < n; ++i) {
      arrival[i] = t;
      t += gap(rng);
    }
  }
  std::vector<Outcome> outs(n);
  std::atomic<int> next{0};
  auto t0 = Clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < conc; ++w)
    workers.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < n;) {
        std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrival[i])));
        outs[i] = run_one(a, prompts[i]);
      }
    });
  for (auto& t : workers) t.join();
  double dur = std::chrono::duration<double>(Clock::now() - t0).count();

  std::vector<double> ttft, tpot, itl, e2e;
  int ok = 0;
  int64_t in_tok = 0, out_tok = 0;
  std::vector<std::string> errors;
  for (auto& o : outs) {
    if (!o.ok) {
      if (errors.size() < 5) errors.push_back(o.error);
      continue;
    }
    ++ok;
    in_tok += o.prompt_tokens;
    out_tok += o.output_tokens;
    e2e.push_back(o.e2e_ms);
    if (a.stream) {
      ttft.push_back(o.ttft_ms);
      itl.insert(itl.end(), o.itl_ms.begin(), o.itl_ms.end());
      if (o.output_tokens > 1) tpot.push_back((o.e2e_ms - o.ttft_ms) / (o.output_tokens - 1));
    }
  }
  json r = {{"url", a.url},
            {"api", a.api},
            {"stream", a.stream},
            {"num_requests", n},
            {"concurrency", conc},
            {"request_rate", a.rate > 0 ? json(a.rate) : json("inf")},
            {"prompt_len", a.dataset.empty() ? json(a.prompt_len) : json(nullptr)},
            {"prompt_len_exact", exact},
            {"gen_len", a.gen_len},
            {"completed", ok},
            {"failed", n - ok},
            {"duration_s", dur},
            {"total_input_tokens", in_tok},
            {"total_output_tokens", out_tok},
            {"request_throughput", ok / dur},
            {"output_token_throughput", static_cast<double>(out_tok) / dur},
            {"total_token_throughput", static_cast<double>(in_tok + out_tok) / dur},
            {"e2e_ms", stats(e2e)}};
  if (a.stream) {
    r["ttft_ms"] = stats(ttft);
    r["tpot_ms"] = stats(tpot);
    r["itl_ms"] = stats(itl);
  }
  if (!errors.empty()) r["errors"] = errors;
  if (a.json_out) {
    fmt::print("{}\n", r.dump());
    return ok == n ? 0 : 1;
  }
  fmt::print("============ Serving benchmark ============\n");
  fmt::print("{:<34}{}\n", "Endpoint:", a.url + (a.api == "chat" ? "/v1/chat/completions" : "/v1/completions"));
  fmt::print("{:<34}{} (concurrency {}, rate {})\n", "Requests:", n, conc,
             a.rate > 0 ? fmt::format("{:.2f}/s", a.rate) : std::string("inf"));
  fmt::print("{:<34}{}\n", "Successful / failed:", fmt::format("{} / {}", ok, n - ok));
  fmt::print("{:<34}{:.2f}\n", "Duration (s):", dur);
  fmt::print("{:<34}{}\n", "Total input tokens:", in_tok);
  fmt::print("{:<34}{}\n", "Total output tokens:", out_tok);
  fmt::print("{:<34}{:.2f}\n", "Request throughput (req/s):", ok / dur);
  fmt::print("{:<34}{:.2f}\n", "Output token throughput (tok/s):", out_tok / dur);
  fmt::print("{:<34}{:.2f}\n", "Total token throughput (tok/s):", (in_tok + out_tok) / dur);
  auto section = [&](const char* title, const char* key) {
    const json& s = r[key];
    fmt::print("---------------- {} ----------------\n", title);
    fmt::print("{:<34}{:10.2f}\n", "Mean (ms):", s["mean"].get<double>());
    fmt::print("{:<34}{:10.2f}\n", "P50 (ms):", s["p50"].get<double>());
    fmt::print("{:<34}{:10.2f}\n", "P95 (ms):", s["p95"].get<double>());
    fmt::print("{:<34}{:10.2f}\n", "P99 (ms):", s["p99"].get<double>());
  };
  if (a.stream) {
    section("Time to first token", "ttft_ms");
    section("Time per output token (excl. 1st)", "tpot_ms");
    section("Inter-token latency", "itl_ms");
  }
  section("End-to-end latency", "e2e_ms");
  for (auto& e : errors) fmt::print("error: {}\n", e);
  fmt::print("===========================================\n");
  return ok == n ? 0 : 1;
}

const CommandRegistrar reg("bench-serve", "Load generator for an OpenAI-compatible server (TTFT, ITL, throughput)",
                           [](CLI::App& app) {
  auto a = std::make_shared<BenchArgs>();
  app.add_option("--url", a->url, "Server base URL");
  app.add_option("--concurrency", a->concurrency, "Requests in flight at most (default 8; unbounded with --rate)")
      ->check(CLI::Range(0, 100000));
  app.add_option("--rate", a->rate, "Poisson arrival rate, requests/s (default: all at once)")
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--num", a->num, "Number of requests")->check(CLI::Range(1, 10000000));
  app.add_option("--prompt-len", a->prompt_len, "Synthetic prompt length in tokens")->check(CLI::Range(1, 1 << 24));
  app.add_option("--gen-len", a->gen_len, "Tokens to generate per request (ignore_eos)")->check(CLI::Range(1, 1 << 24));
  app.add_option("--dataset", a->dataset, "JSONL/JSON file of prompts instead of synthetic ones");
  app.add_flag("--stream", a->stream, "Stream responses (needed for TTFT/ITL)");
  app.add_option("--api", a->api, "chat or completions")->check(CLI::IsMember({"chat", "completions"}));
  app.add_flag("--json", a->json_out, "Print one JSON object");
  app.add_option("--api-key", a->api_key, "Bearer key");
  app.add_option("--model", a->model, "Model id to send (default: none, the server's)");
  app.add_option("--seed", a->seed, "Seed of the synthetic prompts and arrivals");
  app.add_option("--timeout", a->timeout_s, "Per-request read timeout in seconds");
  return [a] { return run_bench(*a); };
});

}  // namespace
}  // namespace merlin::cli
