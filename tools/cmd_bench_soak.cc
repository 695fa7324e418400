// `merlin bench-soak`: the soak run's load generator. It talks to an already running `merlin
// serve` on loopback for a long time (60 minutes by default) with mixed traffic, each kind on its
// own threads:
//   chat        N clients streaming /v1/chat/completions in a loop (varied coding prompts, 200-400
//               tokens, greedy or temperature 0.7), each stream checked for a finish_reason and
//               [DONE];
//   fim         one editor typing a real source file: a keystroke every --fim-interval-ms, each
//               keystroke a FIM request (/infill, /v1/completions + suffix, /v1/fim/completions in
//               turn) with one client id, so that each request supersedes the previous unfinished
//               one; a superseded request is expected, the latency of the others is measured;
//   disconnect  every few seconds a request (chat, completions, messages, infill; streamed or
//               not) whose socket is closed (FIN or RST) after a short random delay;
//   malformed   invalid requests (bad JSON, wrong types, unknown model, oversized max_tokens,
//               invalid UTF-8, empty messages, a prompt beyond the context, ...), each of which
//               must get a 4xx with a JSON error body.
// A 5xx, a hang (timeouts), a dropped connection or a malformed response is an unexpected error;
// 429/529 answers are counted as overload rejections. Per window (--window-min) it prints a
// progress line to stderr: counts by kind, FIM p50/p95, the server's RSS (/proc/PID/status) and
// its /metrics gauges. At the end: a table, the goals (0 unexpected errors, FIM p95 below
// --fim-p95-goal-ms in every window, RSS growth from the end of the first window to the end of
// the last below --rss-growth-goal-pct), a check that no sequence is left running once the load
// stops, and exit code 1 when a goal is missed.
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "command.h"

namespace merlin::cli {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct SoakArgs {
  std::string url = "http://127.0.0.1:8080";
  double duration_min = 60;
  double window_min = 5;
  int chat_streams = 16;
  int chat_min_tokens = 200, chat_max_tokens = 400;
  double fim_interval_ms = 150;
  double fim_line_pause_ms = 1000;
  int fim_max_tokens = 32;
  int fim_prefix_lines = 96;
  int fim_suffix_lines = 24;
  std::string fim_file = std::string(MERLIN_SOURCE_DIR) + "/src/engine/engine_loop.cc";
  double disconnect_interval_s = 3;
  double malformed_interval_s = 1;
  int server_pid = 0;
  std::string json_file;
  std::string api_key;
  double request_timeout_s = 120;
  double fim_p95_goal_ms = 200;
  double rss_growth_goal_pct = 5;
  uint64_t seed = 1;
};

// ---- results ----------------------------------------------------------------------------------

enum Kind { kChat, kFim, kDisconnect, kMalformed, kNumKinds };
const char* const kKindName[kNumKinds] = {"chat", "fim", "disconnect", "malformed"};

enum class Outcome { kOk, kSuperseded, kDisconnected, kOverload, kUnexpected };

struct Counts {
  int64_t completed = 0, superseded = 0, disconnected = 0, overload = 0, unexpected = 0;
  int64_t expected_failures() const { return superseded + disconnected + overload; }
  void add(Outcome o) {
    switch (o) {
      case Outcome::kOk: ++completed; break;
      case Outcome::kSuperseded: ++superseded; break;
      case Outcome::kDisconnected: ++disconnected; break;
      case Outcome::kOverload: ++overload; break;
      case Outcome::kUnexpected: ++unexpected; break;
    }
  }
  void add(const Counts& c) {
    completed += c.completed, superseded += c.superseded, disconnected += c.disconnected;
    overload += c.overload, unexpected += c.unexpected;
  }
  json to_json() const {
    return {{"completed", completed}, {"superseded", superseded}, {"disconnected", disconnected},
            {"overload", overload}, {"expected_failures", expected_failures()}, {"unexpected", unexpected}};
  }
};

struct Window {
  std::array<Counts, kNumKinds> counts;
  std::vector<double> fim_full_ms, fim_ttft_ms, chat_ttft_ms;
  int64_t fim_sent = 0, chat_tokens = 0;
  double rss_mib = -1;
  json metrics = json::object();
};

double pct(std::vector<double> v, double p) {  // nearest rank, as bench-fim
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(std::min<double>(static_cast<double>(v.size() - 1),
                                                  std::ceil(p / 100.0 * static_cast<double>(v.size())) - 1));
  return v[i];
}

class Recorder {
 public:
  Recorder(Clock::time_point t0, double window_s, int n_windows)
      : t0_(t0), window_s_(window_s), windows_(static_cast<size_t>(n_windows)) {}

  int window_of(Clock::time_point t) const {
    double s = std::chrono::duration<double>(t - t0_).count();
    int w = static_cast<int>(s / window_s_);
    return std::clamp(w, 0, static_cast<int>(windows_.size()) - 1);
  }
  void record(Kind k, Clock::time_point start, Outcome o, const std::string& what = {}) {
    std::lock_guard lk(mu_);
    windows_[window_of(start)].counts[k].add(o);
    if (o == Outcome::kUnexpected) {
      double at = std::chrono::duration<double>(Clock::now() - t0_).count();
      std::string line = fmt::format("[{:.1f} s] {}", at, what.substr(0, 400));
      if (errors_[k].size() < 8) errors_[k].push_back(line);
      fmt::print(stderr, "[soak] unexpected {}: {}\n", kKindName[k], line);
    }
  }
  template <class F>
  void with_window(Clock::time_point start, F&& f) {
    std::lock_guard lk(mu_);
    f(windows_[window_of(start)]);
  }
  template <class F>
  void with_index(int w, F&& f) {
    std::lock_guard lk(mu_);
    f(windows_[static_cast<size_t>(w)]);
  }
  std::vector<Window> windows() const {
    std::lock_guard lk(mu_);
    return windows_;
  }
  std::array<std::vector<std::string>, kNumKinds> errors() const {
    std::lock_guard lk(mu_);
    return errors_;
  }

 private:
  Clock::time_point t0_;
  double window_s_;
  mutable std::mutex mu_;
  std::vector<Window> windows_;
  std::array<std::vector<std::string>, kNumKinds> errors_;
};

// ---- target and small helpers -----------------------------------------------------------------

struct Target {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;
  int ctx = 4096;
  std::string model;
};

std::optional<Target> parse_url(const std::string& url) {
  std::string u = url;
  if (u.rfind("http://", 0) == 0) u = u.substr(7);
  while (!u.empty() && u.back() == '/') u.pop_back();
  size_t colon = u.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  Target t;
  t.host = u.substr(0, colon);
  if (t.host == "localhost") t.host = "127.0.0.1";
  if (t.host != "127.0.0.1") return std::nullopt;  // loopback only
  try {
    t.port = std::stoi(u.substr(colon + 1));
  } catch (...) {
    return std::nullopt;
  }
  if (t.port <= 0 || t.port > 65535) return std::nullopt;
  return t;
}

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

std::optional<double> read_rss_mib(int pid) {
  if (pid <= 0) return std::nullopt;
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  return std::nullopt;
}

// Sum over label sets of one Prometheus sample name.
std::optional<double> metric(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  std::optional<double> sum;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind(name, 0) != 0) continue;
    char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    size_t sp = line.rfind(' ');
    try {
      sum = sum.value_or(0) + std::stod(line.substr(sp + 1));
    } catch (...) {
    }
  }
  return sum;
}

std::optional<std::string> get_metrics(const Target& t) {
  httplib::Client c(t.host, t.port);
  c.set_connection_timeout(5, 0);
  c.set_read_timeout(10, 0);
  httplib::Headers h;
  if (!t.api_key.empty()) h.emplace("Authorization", "Bearer " + t.api_key);
  auto r = c.Get("/metrics", h);
  if (!r || r->status != 200) return std::nullopt;
  return r->body;
}

httplib::Headers json_headers(const Target& t) {
  httplib::Headers h;
  if (!t.api_key.empty()) h.emplace("Authorization", "Bearer " + t.api_key);
  return h;
}

bool is_overload(int status) { return status == 429 || status == 529; }

std::string snippet(std::string_view s, size_t n = 160) {
  std::string out(s.substr(0, n));
  for (char& c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

// Server-sent events: calls on_data(payload) for each `data:` line; comments are skipped.
struct SseLines {
  std::string buf;
  template <class F>
  void feed(const char* d, size_t n, F&& on_data) {
    buf.append(d, n);
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.rfind("data:", 0) == 0) {
        size_t p = 5;
        if (p < line.size() && line[p] == ' ') ++p;
        on_data(line.substr(p));
      }
    }
  }
};

// ---- a raw HTTP/1.1 client: exact bytes out, and a socket we may drop at any moment ----------

struct RawResult {
  int status = 0;
  std::string head, body;  // body decoded when chunked
  bool complete = false;   // the whole response arrived
  bool timed_out = false;  // the deadline passed first
  std::string error;       // connection errors
};

// A chunked body, decoded; nullopt while incomplete; "error" set when it is not chunked encoding.
std::optional<std::string> dechunk(const std::string& raw, std::string& error) {
  std::string out;
  size_t p = 0;
  while (true) {
    size_t e = raw.find("\r\n", p);
    if (e == std::string::npos) return std::nullopt;
    size_t n = 0;
    try {
      n = std::stoul(raw.substr(p, e - p), nullptr, 16);
    } catch (...) {
      error = "bad chunk size";
      return std::nullopt;
    }
    p = e + 2;
    if (n == 0) {
      if (raw.find("\r\n", p) == std::string::npos) return std::nullopt;  // trailers end
      return out;
    }
    if (raw.size() < p + n + 2) return std::nullopt;
    out.append(raw, p, n);
    p += n + 2;
  }
}

class RawSocket {
 public:
  ~RawSocket() { close_now(false); }
  bool connect_to(const Target& t, std::string& err) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd_ < 0) {
      err = "socket() failed";
      return false;
    }
    timeval tv{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(t.port));
    inet_pton(AF_INET, t.host.c_str(), &a.sin_addr);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
      err = fmt::format("connect: {}", std::strerror(errno));
      return false;
    }
    return true;
  }
  bool send_all(std::string_view d, std::string& err) {
    while (!d.empty()) {
      ssize_t n = ::send(fd_, d.data(), d.size(), MSG_NOSIGNAL);
      if (n <= 0) {
        err = fmt::format("send: {}", n < 0 ? std::strerror(errno) : "closed");
        return false;
      }
      d.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until the response is complete or `deadline`.
  void read_response(RawResult& r, Clock::time_point deadline) {
    std::string raw;
    size_t head_end = std::string::npos;
    long content_length = -1;
    bool chunked = false;
    char buf[16384];
    while (true) {
      if (head_end != std::string::npos) {
        std::string rest = raw.substr(head_end + 4);
        if (chunked) {
          std::string err;
          auto b = dechunk(rest, err);
          if (!err.empty()) {
            r.error = err;
            return;
          }
          if (b) {
            r.body = std::move(*b);
            r.complete = true;
            return;
          }
        } else if (content_length >= 0 && rest.size() >= static_cast<size_t>(content_length)) {
          r.body = rest.substr(0, static_cast<size_t>(content_length));
          r.complete = true;
          return;
        }
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) {
        r.timed_out = true;
        return;
      }
      pollfd p{fd_, POLLIN, 0};
      int pr = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (pr < 0 && errno != EINTR) {
        r.error = "poll failed";
        return;
      }
      if (pr <= 0) continue;
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        r.error = fmt::format("recv: {}", std::strerror(errno));
        return;
      }
      if (n == 0) {
        if (head_end != std::string::npos && !chunked && content_length < 0) {  // body until close
          r.body = raw.substr(head_end + 4);
          r.complete = true;
          return;
        }
        r.error = head_end == std::string::npos ? "connection closed before a response"
                                                : "connection closed in the middle of the response";
        return;
      }
      raw.append(buf, static_cast<size_t>(n));
      if (head_end == std::string::npos && (head_end = raw.find("\r\n\r\n")) != std::string::npos) {
        r.head = raw.substr(0, head_end);
        if (r.head.rfind("HTTP/1.", 0) == 0 && r.head.size() > 12) r.status = std::atoi(r.head.c_str() + 9);
        std::string lower = r.head;
        std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
        size_t cl = lower.find("\r\ncontent-length:");
        if (cl != std::string::npos) content_length = std::atol(lower.c_str() + cl + 17);
        chunked = lower.find("\r\ntransfer-encoding: chunked") != std::string::npos;
      }
    }
  }
  // RST instead of FIN when `reset`.
  void close_now(bool reset) {
    if (fd_ < 0) return;
    if (reset) {
      linger l{1, 0};
      setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    }
    ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

std::string http_request(const Target& t, const std::string& method, const std::string& path, std::string_view body,
                         std::optional<size_t> declared_length = std::nullopt) {
  std::string r = fmt::format("{} {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\n"
                              "Content-Length: {}\r\nConnection: close\r\n",
                              method, path, t.host, t.port, declared_length.value_or(body.size()));
  if (!t.api_key.empty()) r += "Authorization: Bearer " + t.api_key + "\r\n";
  r += "\r\n";
  r.append(body);
  return r;
}

// ---- traffic --------------------------------------------------------------------------------

const char* const kTasks[] = {
    "Write a C++ function that parses a CSV line into fields, handling quoted fields.",
    "Implement an LRU cache in Python with get and put in O(1).",
    "Explain the difference between a mutex and a spinlock, with a short C example.",
    "Write a Rust function that merges two sorted vectors.",
    "Write a binary search over a sorted array of ints in C and explain the loop invariant.",
    "Refactor this loop into a std::transform: for (int i = 0; i < n; ++i) out[i] = in[i] * 2;",
    "Write a Go HTTP handler that returns the current time as JSON.",
    "Implement a thread-safe bounded queue in C++ with a condition variable.",
    "Write a Python generator that yields the Fibonacci numbers.",
    "Write a SQL query that returns the top 3 customers by total order value.",
    "Write a bash script that finds the 10 largest files under a directory.",
    "Implement quicksort in JavaScript and explain its worst case.",
    "Write a C function that reverses a singly linked list in place.",
    "Explain what a memory leak is and how to find one with valgrind.",
    "Write a TypeScript interface for a user with an optional email and a list of roles.",
    "Write unit tests with pytest for a function that validates email addresses.",
    "Implement a trie with insert and prefix search in Java.",
    "Write a C++ class that wraps a file descriptor and closes it in the destructor.",
    "Explain big-O notation using three small code examples.",
    "Write a Python function that flattens a nested list of any depth.",
};

struct Traffic {
  const SoakArgs& a;
  Target t;
  Recorder& rec;
  std::atomic<bool>& stop;
  Clock::time_point end;  // no new requests after this
};

// One streamed chat completion; the stream must end with a finish_reason and [DONE].
void chat_once(Traffic& tr, std::mt19937_64& rng, int client) {
  json messages = json::array();
  const char* task = kTasks[rng() % std::size(kTasks)];
  switch (rng() % 3) {
    case 0: messages.push_back({{"role", "user"}, {"content", task}}); break;
    case 1:
      messages.push_back({{"role", "system"}, {"content", "You are a concise senior software engineer."}});
      messages.push_back({{"role", "user"}, {"content", task}});
      break;
    default:
      messages.push_back({{"role", "user"}, {"content", kTasks[rng() % std::size(kTasks)]}});
      messages.push_back({{"role", "assistant"}, {"content", "Here is one way to do it:\n```\n// ...\n```"}});
      messages.push_back({{"role", "user"}, {"content", std::string("Thanks. Now: ") + task}});
  }
  std::uniform_int_distribution<int> len(tr.a.chat_min_tokens, std::max(tr.a.chat_min_tokens, tr.a.chat_max_tokens));
  json body = {{"messages", messages}, {"max_tokens", len(rng)}, {"stream", true},
               {"stream_options", {{"include_usage", true}}}, {"user", fmt::format("soak-chat-{}", client)}};
  if (rng() % 2) {
    body["temperature"] = 0.7;
    body["seed"] = rng() % 100000;
  } else {
    body["temperature"] = 0;
  }
  httplib::Client c(tr.t.host, tr.t.port);
  c.set_connection_timeout(10, 0);
  c.set_read_timeout(static_cast<time_t>(std::min(60.0, tr.a.request_timeout_s)), 0);
  c.set_write_timeout(30, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = json_headers(tr.t);
  req.headers.emplace("Content-Type", "application/json");
  req.body = body.dump();
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(static_cast<int64_t>(tr.a.request_timeout_s * 1000));
  SseLines sse;
  std::string raw;  // for non-200 bodies
  std::string finish, problem;
  bool done = false, after_done = false, timed_out = false;
  double ttft = -1;
  int64_t tokens = 0;
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    if (raw.size() < 4096) raw.append(d, std::min(n, 4096 - raw.size()));
    sse.feed(d, n, [&](const std::string& payload) {
      if (done) {
        after_done = true;
        return;
      }
      if (payload == "[DONE]") {
        done = true;
        return;
      }
      json j = json::parse(payload, nullptr, false);
      if (j.is_discarded()) {
        if (problem.empty()) problem = "a stream chunk is not JSON: " + snippet(payload);
        return;
      }
      if (j.contains("error")) {
        if (problem.empty()) problem = "error chunk: " + snippet(j["error"].dump(), 300);
        return;
      }
      if (j.contains("usage") && j["usage"].is_object()) tokens = j["usage"].value("completion_tokens", 0);
      if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) return;
      const json& ch = j["choices"][0];
      if (ch.contains("delta") && ch["delta"].is_object() && ch["delta"].contains("content") &&
          ch["delta"]["content"].is_string() && !ch["delta"]["content"].get_ref<const std::string&>().empty() &&
          ttft < 0)
        ttft = ms_since(start);
      if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) finish = ch["finish_reason"];
    });
    if (Clock::now() > deadline) {
      timed_out = true;
      return false;
    }
    return true;
  };
  auto res = c.send(req);
  Outcome o = Outcome::kOk;
  std::string what;
  if (timed_out) {
    o = Outcome::kUnexpected, what = fmt::format("chat stream still running after {:.0f} s", tr.a.request_timeout_s);
  } else if (!res) {
    o = Outcome::kUnexpected, what = fmt::format("chat: {} after {:.0f} ms", httplib::to_string(res.error()), ms_since(start));
  } else if (is_overload(res->status)) {
    o = Outcome::kOverload;
  } else if (res->status != 200) {
    o = Outcome::kUnexpected, what = fmt::format("chat: HTTP {}: {}", res->status, snippet(raw, 300));
  } else if (!problem.empty()) {
    o = Outcome::kUnexpected, what = "chat: " + problem;
  } else if (!done) {
    o = Outcome::kUnexpected, what = "chat: stream ended without data: [DONE]";
  } else if (after_done) {
    o = Outcome::kUnexpected, what = "chat: data after [DONE]";
  } else if (finish != "stop" && finish != "length") {
    o = Outcome::kUnexpected, what = fmt::format("chat: finish_reason '{}' (expected stop or length)", finish);
  }
  tr.rec.record(kChat, start, o, what);
  if (o == Outcome::kOk)
    tr.rec.with_window(start, [&](Window& w) {
      if (ttft >= 0) w.chat_ttft_ms.push_back(ttft);
      w.chat_tokens += tokens;
    });
}

void chat_loop(Traffic& tr, int client) {
  std::mt19937_64 rng(tr.a.seed * 1000003 + static_cast<uint64_t>(client));
  // Spread the streams' starts over the first seconds.
  std::this_thread::sleep_for(std::chrono::milliseconds(client * 150));
  while (!tr.stop.load() && Clock::now() < tr.end) chat_once(tr, rng, client);
}

// The document the editor retypes: the cursor walks through it, skipping each line's
// indentation (an editor indents by itself), pausing at line ends.
struct Document {
  std::string text;
  std::vector<size_t> line_start;
  int line_of(size_t off) const {
    return static_cast<int>(std::upper_bound(line_start.begin(), line_start.end(), off) - line_start.begin()) - 1;
  }
};

struct FimShared {
  std::atomic<int64_t> in_flight{0};
};

void fim_request(Traffic& tr, int seq, std::string prefix, std::string suffix) {
  const int api = seq % 3;  // 0 /infill (stream), 1 /v1/completions + suffix, 2 /v1/fim/completions (stream)
  static const char* kClient = "soak-editor";
  httplib::Client c(tr.t.host, tr.t.port);
  c.set_connection_timeout(10, 0);
  c.set_read_timeout(static_cast<time_t>(std::min(60.0, tr.a.request_timeout_s)), 0);
  httplib::Request req;
  req.method = "POST";
  req.headers = json_headers(tr.t);
  req.headers.emplace("Content-Type", "application/json");
  json body;
  if (api == 0) {
    req.path = "/infill";
    req.headers.emplace("X-Client-Id", kClient);
    body = {{"input_prefix", prefix}, {"input_suffix", suffix}, {"n_predict", tr.a.fim_max_tokens},
            {"temperature", 0}, {"stream", true}, {"cache_prompt", true}};
  } else if (api == 1) {
    req.path = "/v1/completions";
    body = {{"prompt", prefix}, {"suffix", suffix}, {"max_tokens", tr.a.fim_max_tokens}, {"temperature", 0},
            {"user", kClient}};
  } else {
    req.path = "/v1/fim/completions";
    body = {{"prompt", prefix}, {"suffix", suffix}, {"max_tokens", tr.a.fim_max_tokens}, {"temperature", 0},
            {"stream", true}, {"user", kClient}};
  }
  req.body = body.dump();
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(static_cast<int64_t>(tr.a.request_timeout_s * 1000));
  SseLines sse;
  std::string raw;
  double ttft = -1, full = -1;
  std::string problem, finish;
  bool done = false, timed_out = false;
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    if (api == 1 || raw.size() < 4096) raw.append(d, n);
    if (api != 1)
      sse.feed(d, n, [&](const std::string& payload) {
        if (payload == "[DONE]") {
          if (api == 2) done = true, full = ms_since(start);
          return;
        }
        json j = json::parse(payload, nullptr, false);
        if (j.is_discarded()) {
          if (problem.empty()) problem = "a stream event is not JSON: " + snippet(payload);
          return;
        }
        if (j.contains("error")) {
          if (problem.empty()) problem = "error event: " + snippet(j["error"].dump(), 300);
          return;
        }
        if (api == 0) {
          if (j.value("stop", false)) {
            done = true;
            full = ms_since(start);
            finish = j.value("stop_type", "");
          } else if (ttft < 0 && j.contains("content") && j["content"].is_string() &&
                     !j["content"].get_ref<const std::string&>().empty()) {
            ttft = ms_since(start);
          }
        } else if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty()) {
          const json& ch = j["choices"][0];
          if (ttft < 0 && ch.contains("delta") && ch["delta"].is_object() && ch["delta"].contains("content") &&
              ch["delta"]["content"].is_string() && !ch["delta"]["content"].get_ref<const std::string&>().empty())
            ttft = ms_since(start);
          if (ch.contains("finish_reason") && ch["finish_reason"].is_string()) finish = ch["finish_reason"];
        }
      });
    if (Clock::now() > deadline) {
      timed_out = true;
      return false;
    }
    return true;
  };
  auto res = c.send(req);
  if (api == 1 && res && res->status == 200) {
    full = ms_since(start);
    json j = json::parse(raw, nullptr, false);
    if (j.is_discarded() || !j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) {
      problem = "response is not a text_completion: " + snippet(raw);
    } else {
      done = true;
      const json& ch = j["choices"][0];
      finish = ch.contains("finish_reason") && ch["finish_reason"].is_string() ? ch["finish_reason"].get<std::string>()
                                                                               : std::string();
    }
  }
  static const char* kApi[] = {"/infill", "/v1/completions+suffix", "/v1/fim/completions"};
  Outcome o = Outcome::kOk;
  std::string what;
  if (timed_out) {
    o = Outcome::kUnexpected, what = fmt::format("{}: still running after {:.0f} s", kApi[api], tr.a.request_timeout_s);
  } else if (!res) {
    o = Outcome::kUnexpected, what = fmt::format("{}: {} after {:.0f} ms", kApi[api], httplib::to_string(res.error()), ms_since(start));
  } else if (is_overload(res->status)) {
    o = Outcome::kOverload;
  } else if (res->status != 200) {
    o = Outcome::kUnexpected, what = fmt::format("{}: HTTP {}: {}", kApi[api], res->status, snippet(raw, 300));
  } else if (!problem.empty()) {
    o = Outcome::kUnexpected, what = fmt::format("{}: {}", kApi[api], problem);
  } else if (!done) {
    o = Outcome::kUnexpected, what = fmt::format("{}: the response ended without its final event", kApi[api]);
  } else if (finish == "cancelled") {
    o = Outcome::kSuperseded;
  } else if (finish.empty()) {
    o = Outcome::kUnexpected, what = fmt::format("{}: no finish_reason / stop_type", kApi[api]);
  }
  tr.rec.record(kFim, start, o, what);
  if (o == Outcome::kOk)
    tr.rec.with_window(start, [&](Window& w) {
      w.fim_full_ms.push_back(full);
      if (api != 1) w.fim_ttft_ms.push_back(ttft >= 0 ? ttft : full);  // an empty suggestion: its end
    });
}

void fim_editor(Traffic& tr, const Document& doc) {
  struct Job {
    std::thread th;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::list<Job> jobs;
  auto reap = [&](bool all) {
    for (auto it = jobs.begin(); it != jobs.end();) {
      if (all || it->done->load()) {
        it->th.join();
        it = jobs.erase(it);
      } else {
        ++it;
      }
    }
  };
  // Start at the first line that has a full prefix window above it.
  const int n_lines = static_cast<int>(doc.line_start.size());
  const int first_line = std::min(tr.a.fim_prefix_lines, std::max(0, n_lines - 2));
  size_t cur = doc.line_start[static_cast<size_t>(first_line)];
  auto next_due = Clock::now();
  int seq = 0;
  const auto key = std::chrono::microseconds(static_cast<int64_t>(tr.a.fim_interval_ms * 1000));
  const auto pause = std::chrono::microseconds(static_cast<int64_t>(tr.a.fim_line_pause_ms * 1000));
  while (!tr.stop.load() && Clock::now() < tr.end) {
    // Auto-indent: the cursor jumps over the line's leading blanks.
    int l = doc.line_of(cur);
    if (cur == doc.line_start[static_cast<size_t>(l)])
      while (cur < doc.text.size() && (doc.text[cur] == ' ' || doc.text[cur] == '\t')) ++cur;
    ++cur;  // one key typed
    if (cur >= doc.text.size()) cur = doc.line_start[static_cast<size_t>(first_line)];  // start over
    l = doc.line_of(cur);
    // The prefix: whole lines from a 16-line grid point about fim_prefix_lines above the cursor
    // (as editor plugins send, moving in steps so consecutive prompts share their beginning).
    int pl = std::max(0, l - tr.a.fim_prefix_lines);
    pl -= pl % 16;
    std::string prefix = doc.text.substr(doc.line_start[static_cast<size_t>(pl)], cur - doc.line_start[static_cast<size_t>(pl)]);
    // The suffix: the lines after the one being typed (it does not exist beyond the cursor yet).
    size_t s0 = l + 1 < n_lines ? doc.line_start[static_cast<size_t>(l + 1)] : doc.text.size();
    int sl = std::min(n_lines, l + 1 + tr.a.fim_suffix_lines);
    size_t s1 = sl < n_lines ? doc.line_start[static_cast<size_t>(sl)] : doc.text.size();
    std::string suffix = doc.text.substr(s0, s1 - s0);
    const bool line_end = cur < doc.text.size() && doc.text[cur] == '\n';
    if (line_end) ++cur;  // the newline is typed with the pause after the line
    auto flag = std::make_shared<std::atomic<bool>>(false);
    tr.rec.with_window(Clock::now(), [](Window& w) { ++w.fim_sent; });
    jobs.push_back({std::thread([&tr, s = seq++, prefix = std::move(prefix), suffix = std::move(suffix), flag]() mutable {
                      fim_request(tr, s, std::move(prefix), std::move(suffix));
                      flag->store(true);
                    }),
                    flag});
    reap(false);
    next_due += key + (line_end ? pause : std::chrono::microseconds(0));
    std::this_thread::sleep_until(next_due);
  }
  reap(true);
}

// Requests dropped by the client after a short random delay.
void disconnect_loop(Traffic& tr) {
  std::mt19937_64 rng(tr.a.seed * 7919 + 3);
  std::uniform_real_distribution<double> u(0, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  while (!tr.stop.load() && Clock::now() < tr.end) {
    const bool stream = rng() % 2;
    const int api = static_cast<int>(rng() % 4);
    const int max_tokens = 100 + static_cast<int>(rng() % 200);
    const char* task = kTasks[rng() % std::size(kTasks)];
    std::string path;
    json body;
    switch (api) {
      case 0:
        path = "/v1/chat/completions";
        body = {{"messages", {{{"role", "user"}, {"content", task}}}}, {"max_tokens", max_tokens}};
        break;
      case 1:
        path = "/v1/completions";
        body = {{"prompt", std::string("// ") + task + "\n"}, {"max_tokens", max_tokens}};
        break;
      case 2:
        path = "/v1/messages";
        body = {{"messages", {{{"role", "user"}, {"content", task}}}}, {"max_tokens", max_tokens}};
        break;
      default:
        path = "/infill";
        body = {{"input_prefix", std::string("// ") + task + "\nint main() {\n"}, {"input_suffix", "\n}\n"},
                {"n_predict", max_tokens}, {"t_max_predict_ms", 0}};
    }
    body["stream"] = stream;
    body["temperature"] = 0.7;
    const int delay_ms = 20 + static_cast<int>(u(rng) * 1500);
    const bool reset = rng() % 2;
    const std::string desc = fmt::format("{} {}stream, dropped after {} ms ({})", path, stream ? "" : "non-", delay_ms,
                                         reset ? "RST" : "FIN");
    const auto start = Clock::now();
    RawSocket s;
    std::string err;
    RawResult r;
    Outcome o;
    std::string what;
    if (!s.connect_to(tr.t, err) || !s.send_all(http_request(tr.t, "POST", path, body.dump()), err)) {
      o = Outcome::kUnexpected, what = desc + ": " + err;
    } else {
      s.read_response(r, start + std::chrono::milliseconds(delay_ms));
      s.close_now(reset);
      if (r.complete) {  // the answer came before the drop
        o = r.status == 200 ? Outcome::kOk : is_overload(r.status) ? Outcome::kOverload : Outcome::kUnexpected;
        if (o == Outcome::kUnexpected) what = fmt::format("{}: HTTP {}: {}", desc, r.status, snippet(r.body, 300));
      } else if (r.timed_out) {
        if (r.status != 0 && r.status != 200 && !is_overload(r.status))
          o = Outcome::kUnexpected, what = fmt::format("{}: HTTP {} before the drop", desc, r.status);
        else
          o = is_overload(r.status) ? Outcome::kOverload : Outcome::kDisconnected;
      } else {
        o = Outcome::kUnexpected, what = desc + ": " + r.error;
      }
    }
    tr.rec.record(kDisconnect, start, o, what);
    double gap = tr.a.disconnect_interval_s * (0.5 + u(rng));
    auto next = start + std::chrono::milliseconds(static_cast<int64_t>(gap * 1000));
    while (!tr.stop.load() && Clock::now() < std::min(next, tr.end))
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

struct BadRequest {
  std::string name, method = "POST", path;
  std::string body;
  std::optional<size_t> declared_length;  // a Content-Length larger than what is sent
};

std::vector<BadRequest> bad_requests(const Target& t) {
  std::vector<BadRequest> v;
  auto add = [&](std::string name, std::string path, std::string body) {
    v.push_back({std::move(name), "POST", std::move(path), std::move(body), std::nullopt});
  };
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  add("invalid JSON (truncated)", "/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"})");
  add("invalid JSON (garbage)", "/v1/completions", "this is not json");
  add("empty body", "/v1/chat/completions", "");
  add("body is an array", "/v1/chat/completions", "[1,2,3]");
  add("body is null", "/v1/completions", "null");
  add("messages is a string", "/v1/chat/completions", R"({"messages":"hello","max_tokens":8})");
  add("max_tokens is a string", "/v1/chat/completions", "{" + msgs + R"(,"max_tokens":"ten"})");
  add("temperature is a string", "/v1/chat/completions", "{" + msgs + R"(,"temperature":"hot"})");
  add("prompt is an object", "/v1/completions", R"({"prompt":{"a":1},"max_tokens":8})");
  add("stream is a string", "/v1/completions", R"({"prompt":"x","stream":"yes"})");
  add("message content is a number", "/v1/chat/completions", R"({"messages":[{"role":"user","content":42}]})");
  add("message without role", "/v1/chat/completions", R"({"messages":[{"content":"hi"}]})");
  add("unknown model (chat)", "/v1/chat/completions", "{" + msgs + R"(,"model":"no-such-model"})");
  add("unknown model (completions)", "/v1/completions", R"({"prompt":"x","model":"no-such-model"})");
  add("unknown model (infill)", "/infill", R"({"input_prefix":"x","model":"no-such-model"})");
  add("max_tokens beyond the context", "/v1/chat/completions", "{" + msgs + R"(,"max_tokens":1000000})");
  add("max_tokens beyond int32", "/v1/completions", R"({"prompt":"x","max_tokens":99999999999})");
  add("max_tokens beyond the context (messages)", "/v1/messages", "{" + msgs + R"(,"max_tokens":1000000})");
  add("invalid UTF-8 bytes in content", "/v1/chat/completions",
      "{\"messages\":[{\"role\":\"user\",\"content\":\"abc\xff\xfe\xc3(\"}]}");
  add("invalid UTF-8 bytes in prompt", "/v1/completions", "{\"prompt\":\"x\xed\xa0\x80y\",\"max_tokens\":4}");
  add("lone surrogate escape", "/v1/completions", R"({"prompt":"x\ud800y","max_tokens":4})");
  add("invalid UTF-8 in infill prefix", "/infill", "{\"input_prefix\":\"int \xc0\xaf\",\"input_suffix\":\"\"}");
  add("empty messages", "/v1/chat/completions", R"({"messages":[]})");
  add("empty messages (messages API)", "/v1/messages", R"({"messages":[],"max_tokens":8})");
  add("messages API without max_tokens", "/v1/messages", "{" + msgs + "}");
  add("unsupported field (tools)", "/v1/chat/completions",
      "{" + msgs + R"(,"tools":[{"type":"function","function":{"name":"f"}}]})");
  add("infill prefix is a number", "/infill", R"({"input_prefix":3,"input_suffix":""})");
  add("infill input_extra is a string", "/infill", R"({"input_prefix":"a","input_extra":"x"})");
  add("FIM suffix with n=2", "/v1/completions", R"({"prompt":"a","suffix":"b","n":2})");
  add("mistral FIM suffix is a number", "/v1/fim/completions", R"({"prompt":"a","suffix":5})");
  add("tokenize content is a number", "/tokenize", R"({"content":5})");
  add("unknown URL", "/v1/chat/completion", "{" + msgs + "}");
  // A prompt well beyond the context (about 3 characters a token for code).
  std::string huge;
  while (huge.size() < static_cast<size_t>(t.ctx) * 8) huge += "for (int i = 0; i < n; ++i) sum += values[i] * weights[i];\n";
  add("prompt beyond the context (chat)", "/v1/chat/completions",
      json{{"messages", {{{"role", "user"}, {"content", huge}}}}, {"max_tokens", 16}}.dump());
  add("prompt beyond the context (completions)", "/v1/completions",
      json{{"prompt", huge}, {"max_tokens", 16}}.dump());
  // A body over the server's default --max-body-bytes (8 MiB), sent in full: 413 (or 400 on a
  // server that accepts it, the prompt being beyond the context).
  add("body over --max-body-bytes (9 MiB)", "/v1/chat/completions",
      json{{"messages", {{{"role", "user"}, {"content", std::string(size_t{9} << 20, 'a')}}}}}.dump());
  return v;
}

void malformed_loop(Traffic& tr) {
  const auto reqs = bad_requests(tr.t);
  size_t i = static_cast<size_t>(tr.a.seed % reqs.size());
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  while (!tr.stop.load() && Clock::now() < tr.end) {
    const BadRequest& b = reqs[i++ % reqs.size()];
    const auto start = Clock::now();
    RawSocket s;
    std::string err;
    RawResult r;
    Outcome o = Outcome::kOk;
    std::string what;
    if (!s.connect_to(tr.t, err)) {
      o = Outcome::kUnexpected, what = b.name + ": " + err;
    } else {
      // A refused oversized body may be answered before it is sent: a failed send is fine then.
      (void)s.send_all(http_request(tr.t, b.method, b.path, b.body, b.declared_length), err);
      s.read_response(r, start + std::chrono::seconds(30));
      if (r.timed_out) {
        o = Outcome::kUnexpected, what = fmt::format("{} ({} {}): no answer within 30 s", b.name, b.method, b.path);
      } else if (!r.complete) {
        o = Outcome::kUnexpected, what = fmt::format("{} ({} {}): {}{}", b.name, b.method, b.path, r.error,
                                                     err.empty() ? "" : " (" + err + ")");
      } else if (is_overload(r.status)) {
        o = Outcome::kOverload;
      } else if (r.status < 400 || r.status >= 500) {
        o = Outcome::kUnexpected,
        what = fmt::format("{} ({} {}): HTTP {} (expected 4xx): {} | request: {}", b.name, b.method, b.path, r.status,
                           snippet(r.body, 200), snippet(b.body, 160));
      } else {
        json j = json::parse(r.body, nullptr, false);
        if (j.is_discarded() || !j.is_object() || !j.contains("error"))
          o = Outcome::kUnexpected,
          what = fmt::format("{} ({} {}): HTTP {} without a JSON error body: {}", b.name, b.method, b.path, r.status,
                             snippet(r.body, 200));
      }
    }
    tr.rec.record(kMalformed, start, o, what);
    auto next = start + std::chrono::milliseconds(static_cast<int64_t>(tr.a.malformed_interval_s * 1000));
    while (!tr.stop.load() && Clock::now() < std::min(next, tr.end))
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// ---- the run ----------------------------------------------------------------------------------

json metrics_snapshot(const Target& t) {
  auto m = get_metrics(t);
  if (!m) return json::object();
  json j = json::object();
  for (const char* n : {"merlin_requests_running", "merlin_requests_waiting", "merlin_kv_cache_usage_ratio",
                        "merlin_requests_finished_total", "merlin_requests_cancelled_total", "merlin_preemptions_total"})
    if (auto v = metric(*m, n)) j[n] = *v;
  return j;
}

std::atomic<bool> g_interrupted{false};

int run_soak(SoakArgs a) {
  std::signal(SIGPIPE, SIG_IGN);
  auto tgt = parse_url(a.url);
  if (!tgt) {
    fmt::print(stderr, "error: --url must be http://127.0.0.1:PORT (loopback only), got {}\n", a.url);
    return 2;
  }
  Target t = *tgt;
  t.api_key = a.api_key;
  {
    httplib::Client c(t.host, t.port);
    c.set_connection_timeout(5, 0);
    auto r = c.Get("/v1/models", json_headers(t));
    if (!r || r->status != 200) {
      fmt::print(stderr, "error: cannot reach {}: {}\n", a.url, r ? fmt::format("HTTP {}", r->status) : httplib::to_string(r.error()));
      return 2;
    }
    json j = json::parse(r->body, nullptr, false);
    if (!j.is_discarded() && j.contains("data") && j["data"].is_array() && !j["data"].empty()) {
      t.model = j["data"][0].value("id", "");
      t.ctx = j["data"][0].value("max_model_len", 4096);
    }
  }
  Document doc;
  {
    std::ifstream in(a.fim_file);
    if (!in) {
      fmt::print(stderr, "error: cannot read the FIM document {}\n", a.fim_file);
      return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    doc.text = ss.str();
    for (size_t p = 0; p < doc.text.size();) {
      doc.line_start.push_back(p);
      size_t nl = doc.text.find('\n', p);
      p = nl == std::string::npos ? doc.text.size() : nl + 1;
    }
    if (doc.line_start.size() < static_cast<size_t>(a.fim_prefix_lines) + 8) {
      fmt::print(stderr, "error: {} has {} lines, fewer than --fim-prefix-lines + 8\n", a.fim_file, doc.line_start.size());
      return 2;
    }
  }
  if (a.server_pid > 0 && !read_rss_mib(a.server_pid)) {
    fmt::print(stderr, "error: cannot read /proc/{}/status (--server-pid)\n", a.server_pid);
    return 2;
  }
  const double window_s = a.window_min * 60;
  const int n_windows = std::max(1, static_cast<int>(std::ceil(a.duration_min / a.window_min - 1e-9)));
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::milliseconds(static_cast<int64_t>(a.duration_min * 60000));
  Recorder rec(t0, window_s, n_windows);
  std::atomic<bool> stop{false};
  Traffic tr{a, t, rec, stop, end};
  const auto rss0 = read_rss_mib(a.server_pid);
  fmt::print(stderr,
             "[soak] {} ({}, ctx {}): {:.1f} min in {} windows of {:.1f} min; {} chat streams, FIM key every {:.0f} ms "
             "(pause {:.0f} ms at line ends) on {}, a disconnect every ~{:.1f} s, a malformed request every {:.1f} s{}\n",
             a.url, t.model, t.ctx, a.duration_min, n_windows, a.window_min, a.chat_streams, a.fim_interval_ms,
             a.fim_line_pause_ms, a.fim_file, a.disconnect_interval_s, a.malformed_interval_s,
             rss0 ? fmt::format("; server RSS {:.1f} MiB", *rss0) : std::string("; no --server-pid: RSS not tracked"));

  std::vector<std::thread> threads;
  for (int i = 0; i < a.chat_streams; ++i) threads.emplace_back([&tr, i] { chat_loop(tr, i); });
  threads.emplace_back([&] { fim_editor(tr, doc); });
  if (a.disconnect_interval_s > 0) threads.emplace_back([&] { disconnect_loop(tr); });
  if (a.malformed_interval_s > 0) threads.emplace_back([&] { malformed_loop(tr); });

  // Progress, one line per window.
  for (int w = 0; w < n_windows && !stop.load(); ++w) {
    auto due = std::min(end, t0 + std::chrono::milliseconds(static_cast<int64_t>((w + 1) * window_s * 1000)));
    while (Clock::now() < due && !g_interrupted.load()) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (g_interrupted.load()) {
      fmt::print(stderr, "[soak] interrupted\n");
      stop = true;
    }
    auto rss = read_rss_mib(a.server_pid);
    json m = metrics_snapshot(t);
    Window snap;
    rec.with_index(w, [&](Window& win) {
      win.rss_mib = rss.value_or(-1);
      win.metrics = m;
      snap = win;
    });
    auto c = snap.counts;
    double base = -1;
    rec.with_index(0, [&](Window& w0) { base = w0.rss_mib; });
    fmt::print(stderr,
               "[soak] window {}/{} ({:.1f} min): chat {} ok/{} exp/{} unexp (ttft p95 {:.0f} ms, {} tokens) | fim {} sent, "
               "{} done, {} superseded, {} unexp, full p50 {:.0f} p95 {:.0f} ms, ttft p95 {:.0f} ms | disconnect {} "
               "dropped/{} done/{} unexp | malformed {} 4xx/{} unexp | overload {} | RSS {} | running {} waiting {} kv {:.2f}\n",
               w + 1, n_windows, std::chrono::duration<double>(Clock::now() - t0).count() / 60, c[kChat].completed,
               c[kChat].expected_failures(), c[kChat].unexpected, pct(snap.chat_ttft_ms, 95), snap.chat_tokens,
               snap.fim_sent, c[kFim].completed, c[kFim].superseded, c[kFim].unexpected, pct(snap.fim_full_ms, 50),
               pct(snap.fim_full_ms, 95), pct(snap.fim_ttft_ms, 95), c[kDisconnect].disconnected, c[kDisconnect].completed,
               c[kDisconnect].unexpected, c[kMalformed].completed, c[kMalformed].unexpected,
               c[kChat].overload + c[kFim].overload + c[kDisconnect].overload + c[kMalformed].overload,
               rss ? fmt::format("{:.1f} MiB{}", *rss, base > 0 && w > 0 ? fmt::format(" ({:+.1f} % since window 1)", 100 * (*rss / base - 1)) : "")
                   : std::string("-"),
               m.value("merlin_requests_running", -1.0), m.value("merlin_requests_waiting", -1.0),
               m.value("merlin_kv_cache_usage_ratio", -1.0));
  }
  stop = true;
  fmt::print(stderr, "[soak] load stopped; waiting for the requests in flight\n");
  for (auto& th : threads) th.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - t0).count();

  // Nothing may be left running once every client is gone (disconnected ones included).
  json drained;
  bool leak = true;
  for (int i = 0; i < 60; ++i) {
    drained = metrics_snapshot(t);
    if (drained.value("merlin_requests_running", -1.0) == 0 && drained.value("merlin_requests_waiting", -1.0) == 0) {
      leak = false;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  const auto rss_drained = read_rss_mib(a.server_pid);

  // ---- report ----
  auto windows = rec.windows();
  auto errors = rec.errors();
  std::array<Counts, kNumKinds> total;
  int64_t fim_sent = 0;
  for (const auto& w : windows) {
    for (int k = 0; k < kNumKinds; ++k) total[k].add(w.counts[k]);
    fim_sent += w.fim_sent;
  }
  int64_t unexpected = 0;
  for (const auto& c : total) unexpected += c.unexpected;
  if (leak) {
    ++unexpected;
    errors[kDisconnect].push_back(fmt::format("after the load stopped the server still reports {} running / {} waiting "
                                              "requests (merlin_requests_running/_waiting, 30 s later)",
                                              drained.value("merlin_requests_running", -1.0),
                                              drained.value("merlin_requests_waiting", -1.0)));
  }
  const double rss_start = windows.front().rss_mib, rss_end = windows.back().rss_mib;
  const bool have_rss = a.server_pid > 0 && rss_start > 0 && rss_end > 0;
  const double growth = have_rss ? 100 * (rss_end / rss_start - 1) : 0;
  bool fim_ok = true;
  for (const auto& w : windows)
    if (w.fim_full_ms.empty() || pct(w.fim_full_ms, 95) >= a.fim_p95_goal_ms) fim_ok = false;
  const bool rss_ok = !have_rss || growth < a.rss_growth_goal_pct;
  const bool pass = unexpected == 0 && fim_ok && rss_ok;

  fmt::print("================ Soak run ================\n");
  fmt::print("server {} (model {}, ctx {}), {:.1f} min ({:.0f} s wall), {} windows of {:.1f} min\n", a.url, t.model,
             t.ctx, a.duration_min, wall_s, n_windows, a.window_min);
  fmt::print("{:<12} {:>10} {:>11} {:>11} {:>12} {:>9} {:>11}\n", "kind", "completed", "superseded", "disconnect",
             "overload", "expected", "UNEXPECTED");
  for (int k = 0; k < kNumKinds; ++k)
    fmt::print("{:<12} {:>10} {:>11} {:>11} {:>12} {:>9} {:>11}\n", kKindName[k], total[k].completed,
               total[k].superseded, total[k].disconnected, total[k].overload, total[k].expected_failures(),
               total[k].unexpected);
  fmt::print("(malformed: completed = answered 4xx with a JSON error body; fim: {} requests sent)\n", fim_sent);
  fmt::print("\n{:<8} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10} {:>9} {:>10}\n", "window", "fim", "done", "superS",
             "full p50", "full p95", "ttft p95", "chat ttft95", "chat tok", "RSS MiB");
  for (size_t i = 0; i < windows.size(); ++i) {
    const auto& w = windows[i];
    fmt::print("{:<8} {:>7} {:>6} {:>6} {:>9.1f} {:>9.1f} {:>9.1f} {:>10.0f} {:>9} {:>10.1f}{}\n", i + 1, w.fim_sent,
               w.counts[kFim].completed, w.counts[kFim].superseded, pct(w.fim_full_ms, 50), pct(w.fim_full_ms, 95),
               pct(w.fim_ttft_ms, 95), pct(w.chat_ttft_ms, 95), w.chat_tokens, w.rss_mib,
               w.fim_full_ms.empty() || pct(w.fim_full_ms, 95) >= a.fim_p95_goal_ms ? "  <- FIM goal missed" : "");
  }
  if (have_rss)
    fmt::print("\nRSS: at start {:.1f} MiB (before load), end of window 1 {:.1f} MiB, end {:.1f} MiB: growth {:+.2f} % "
               "(after draining {:.1f} MiB)\n",
               rss0.value_or(-1), rss_start, rss_end, growth, rss_drained.value_or(-1));
  else
    fmt::print("\nRSS: not tracked (--server-pid)\n");
  fmt::print("after the load: running {} waiting {}{}\n", drained.value("merlin_requests_running", -1.0),
             drained.value("merlin_requests_waiting", -1.0), leak ? "  <- LEAK" : "");
  for (int k = 0; k < kNumKinds; ++k)
    for (const auto& e : errors[k]) fmt::print("unexpected {}: {}\n", kKindName[k], e);
  fmt::print("\ngoals: unexpected errors {} (goal 0): {}; FIM p95 < {:.0f} ms in every window: {}; RSS growth {} (goal < "
             "{:.0f} %): {}\n",
             unexpected, unexpected == 0 ? "met" : "MISSED", a.fim_p95_goal_ms, fim_ok ? "met" : "MISSED",
             have_rss ? fmt::format("{:+.2f} %", growth) : std::string("n/a"), a.rss_growth_goal_pct,
             have_rss ? (rss_ok ? "met" : "MISSED") : "not measured");
  fmt::print("==========================================\n");
  std::fflush(stdout);

  if (!a.json_file.empty()) {
    json j;
    j["config"] = {{"url", a.url}, {"model", t.model}, {"ctx", t.ctx}, {"duration_min", a.duration_min},
                   {"window_min", a.window_min}, {"chat_streams", a.chat_streams},
                   {"chat_max_tokens", {a.chat_min_tokens, a.chat_max_tokens}}, {"fim_interval_ms", a.fim_interval_ms},
                   {"fim_line_pause_ms", a.fim_line_pause_ms}, {"fim_max_tokens", a.fim_max_tokens},
                   {"fim_prefix_lines", a.fim_prefix_lines}, {"fim_suffix_lines", a.fim_suffix_lines},
                   {"fim_file", a.fim_file}, {"disconnect_interval_s", a.disconnect_interval_s},
                   {"malformed_interval_s", a.malformed_interval_s}, {"server_pid", a.server_pid}};
    j["wall_s"] = wall_s;
    for (int k = 0; k < kNumKinds; ++k) {
      j["totals"][kKindName[k]] = total[k].to_json();
      j["errors"][kKindName[k]] = errors[k];
    }
    j["fim_sent"] = fim_sent;
    json ws = json::array();
    for (const auto& w : windows) {
      json counts;
      for (int k = 0; k < kNumKinds; ++k) counts[kKindName[k]] = w.counts[k].to_json();
      ws.push_back({{"counts", counts}, {"fim_sent", w.fim_sent}, {"fim_completed", w.fim_full_ms.size()},
                    {"fim_full_p50_ms", pct(w.fim_full_ms, 50)}, {"fim_full_p95_ms", pct(w.fim_full_ms, 95)},
                    {"fim_ttft_p50_ms", pct(w.fim_ttft_ms, 50)}, {"fim_ttft_p95_ms", pct(w.fim_ttft_ms, 95)},
                    {"chat_ttft_p95_ms", pct(w.chat_ttft_ms, 95)}, {"chat_tokens", w.chat_tokens},
                    {"rss_mib", w.rss_mib}, {"metrics", w.metrics}});
    }
    j["windows"] = ws;
    j["rss"] = {{"before_load_mib", rss0 ? json(*rss0) : json(nullptr)}, {"start_mib", rss_start},
                {"end_mib", rss_end}, {"growth_pct", have_rss ? json(growth) : json(nullptr)},
                {"after_drain_mib", rss_drained ? json(*rss_drained) : json(nullptr)}};
    j["after_load_metrics"] = drained;
    j["leak"] = leak;
    j["goals"] = {{"unexpected_errors", unexpected}, {"unexpected_ok", unexpected == 0}, {"fim_p95_ok", fim_ok},
                  {"fim_p95_goal_ms", a.fim_p95_goal_ms}, {"rss_ok", rss_ok}, {"rss_measured", have_rss},
                  {"rss_growth_goal_pct", a.rss_growth_goal_pct}, {"pass", pass}};
    std::ofstream out(a.json_file);
    out << j.dump(2) << "\n";
    if (!out) fmt::print(stderr, "error: cannot write {}\n", a.json_file);
  }
  return pass ? 0 : 1;
}

const CommandRegistrar reg("bench-soak", "Soak run: long mixed load (chat, FIM typing, disconnects, malformed) on a running server",
                           [](CLI::App& app) {
  auto a = std::make_shared<SoakArgs>();
  app.add_option("--url", a->url, "Server base URL, loopback only (http://127.0.0.1:PORT)");
  app.add_option("--duration-min", a->duration_min, "Length of the run in minutes")->check(CLI::Range(0.05, 100000.0));
  app.add_option("--window-min", a->window_min, "Reporting window in minutes (FIM p95, RSS, progress line)")
      ->check(CLI::Range(0.05, 100000.0));
  app.add_option("--chat-streams", a->chat_streams, "Chat clients streaming in a loop")->check(CLI::Range(0, 4096));
  app.add_option("--chat-min-tokens", a->chat_min_tokens, "Smallest max_tokens of a chat request")->check(CLI::Range(1, 1 << 20));
  app.add_option("--chat-max-tokens", a->chat_max_tokens, "Largest max_tokens of a chat request")->check(CLI::Range(1, 1 << 20));
  app.add_option("--fim-interval-ms", a->fim_interval_ms, "Milliseconds between the editor's keystrokes (one FIM request each)")
      ->check(CLI::Range(1.0, 1e7));
  app.add_option("--fim-line-pause-ms", a->fim_line_pause_ms,
                 "Extra pause after each typed line, so the line's last request can finish (0: none)")
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--fim-max-tokens", a->fim_max_tokens, "max_tokens / n_predict of a FIM request")->check(CLI::Range(1, 4096));
  app.add_option("--fim-prefix-lines", a->fim_prefix_lines, "Lines of prefix above the cursor (on a 16-line grid)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--fim-suffix-lines", a->fim_suffix_lines, "Lines of suffix below the cursor's line")->check(CLI::Range(0, 100000));
  app.add_option("--fim-file", a->fim_file, "Source file the editor retypes (default: src/engine/engine_loop.cc)");
  app.add_option("--disconnect-interval-s", a->disconnect_interval_s,
                 "Mean seconds between requests dropped by the client (0: none)")->check(CLI::Range(0.0, 1e6));
  app.add_option("--malformed-interval-s", a->malformed_interval_s, "Seconds between malformed requests (0: none)")
      ->check(CLI::Range(0.0, 1e6));
  app.add_option("--server-pid", a->server_pid, "PID of the server, for its RSS (/proc/PID/status VmRSS)");
  app.add_option("--json", a->json_file, "Write the results as JSON to this file");
  app.add_option("--api-key", a->api_key, "Bearer key of the server");
  app.add_option("--request-timeout-s", a->request_timeout_s, "A request still running after this long is a hang")
      ->check(CLI::Range(1.0, 1e6));
  app.add_option("--fim-p95-goal-ms", a->fim_p95_goal_ms, "Goal: FIM p95 (full response) below this in every window");
  app.add_option("--rss-growth-goal-pct", a->rss_growth_goal_pct, "Goal: RSS growth (end of window 1 to end) below this");
  app.add_option("--seed", a->seed, "Seed of the traffic's random choices");
  return [a] {
    std::signal(SIGINT, [](int) { g_interrupted = true; });
    return run_soak(*a);
  };
});

}  // namespace
}  // namespace merlin::cli
