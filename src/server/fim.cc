#include "server/fim.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>

#include <fmt/format.h>

#include "core/log.h"
#include "server/ids.h"
#include "server/request_parse.h"

namespace merlin::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::optional<FimTokens> fim_tokens(const Tokenizer& tok) {
  const auto& i = tok.info();
  if (!i.fim_pre || !i.fim_suf || !i.fim_mid) return std::nullopt;
  return FimTokens{*i.fim_pre, *i.fim_suf, *i.fim_mid, i.fim_rep, i.fim_sep};
}

std::string first_nonempty_line(const std::string& suffix) {
  size_t pos = 0;
  while (pos <= suffix.size()) {
    size_t nl = suffix.find('\n', pos);
    std::string_view line(suffix.data() + pos, (nl == std::string::npos ? suffix.size() : nl) - pos);
    size_t a = line.find_first_not_of(" \t\r\f\v");
    if (a != std::string_view::npos) {
      size_t b = line.find_last_not_of(" \t\r\f\v");
      return std::string(line.substr(a, b - a + 1));
    }
    if (nl == std::string::npos) break;
    pos = nl + 1;
  }
  return {};
}

ApiResult<FimPrompt> build_fim_prompt(const Tokenizer& tok, const FimInput& in, const FimLayoutOptions& opt) {
  auto ft = fim_tokens(tok);
  if (!ft)
    return api_err(400,
                   "This model has no fill-in-the-middle tokens (prefix/suffix/middle), so it cannot do code "
                   "completion with a suffix.",
                   "suffix", "fim_not_supported");
  // Plain text: a "<fim_middle>" typed in a source file must not become the control token.
  auto enc = [&](const std::string& s) { return s.empty() ? Ids{} : tok.encode(s, /*parse_special=*/false, false); };
  Ids pre = enc(in.prefix), suf = enc(in.suffix), prompt = enc(in.prompt);
  const bool bos = tok.info().add_bos && tok.bos();
  const int32_t fixed = 3 + (bos ? 1 : 0) + static_cast<int32_t>(prompt.size());
  int32_t budget = opt.ctx_size - opt.n_predict - fixed;
  if (opt.max_input_tokens > 0) budget = std::min(budget, opt.max_input_tokens);
  if (budget < 1)
    return api_err(400,
                   fmt::format("This model's maximum context length is {} tokens: no room for the prefix after {} "
                               "tokens of completion.",
                               opt.ctx_size, opt.n_predict),
                   "max_tokens", "context_length_exceeded");
  // The prefix matters most (the code right before the cursor): it keeps at least 3/4 of the
  // budget, and whatever the suffix does not need.
  const int32_t np = static_cast<int32_t>(pre.size()), ns = static_cast<int32_t>(suf.size());
  const int32_t take_pre = std::min(np, std::max(budget * 3 / 4, budget - ns));
  const int32_t take_suf = std::min(ns, budget - take_pre);
  FimPrompt out;
  out.n_prefix = take_pre;
  out.n_suffix = take_suf;
  out.truncated = take_pre < np || take_suf < ns;

  Ids pre_part{ft->pre};
  pre_part.insert(pre_part.end(), pre.end() - take_pre, pre.end());
  Ids suf_part{ft->suf};
  suf_part.insert(suf_part.end(), suf.begin(), suf.begin() + take_suf);

  // Repository context (the Qwen2.5-Coder repo-level layout that llama.cpp's /infill uses):
  //   <|repo_name|>myproject\n<|file_sep|>name0\ntext0<|file_sep|>name1\ntext1...<|file_sep|>filename\n
  // Models without a file separator get each chunk after a "\n\n--- snippet ---\n\n" line.
  // Only when input_extra is given, so a plain request is exactly the model's trained FIM form.
  Ids extra;
  if (!in.extra.empty()) {
    if (ft->rep) {
      extra.push_back(*ft->rep);
      Ids r = enc(opt.repo_name + "\n");
      extra.insert(extra.end(), r.begin(), r.end());
    }
    for (const auto& c : in.extra) {
      if (ft->sep) {
        extra.push_back(*ft->sep);
        Ids f = enc((c.filename.empty() ? std::string("tmp") : c.filename) + "\n");
        extra.insert(extra.end(), f.begin(), f.end());
      } else {
        Ids f = enc("\n\n--- snippet ---\n\n");
        extra.insert(extra.end(), f.begin(), f.end());
      }
      Ids t = enc(c.text);
      extra.insert(extra.end(), t.begin(), t.end());
    }
    if (ft->sep) {
      extra.push_back(*ft->sep);
      Ids f = enc(opt.filename + "\n");
      extra.insert(extra.end(), f.begin(), f.end());
    }
  }
  const int32_t core = fixed - 1 + take_pre + take_suf;  // without the middle token counted twice
  const int32_t room_extra = std::max(0, opt.ctx_size - opt.n_predict - core - 1);
  // Like llama.cpp: the extra context keeps its end (nearest the current file).
  const int32_t take_extra = std::min(room_extra, static_cast<int32_t>(extra.size()));
  out.n_extra = take_extra;
  out.truncated |= take_extra < static_cast<int32_t>(extra.size());

  Ids& ids = out.ids;
  if (bos) ids.push_back(*tok.bos());
  ids.insert(ids.end(), extra.end() - take_extra, extra.end());
  const Ids& first = opt.order == FimOrder::kPsm ? pre_part : suf_part;
  const Ids& second = opt.order == FimOrder::kPsm ? suf_part : pre_part;
  ids.insert(ids.end(), first.begin(), first.end());
  ids.insert(ids.end(), second.begin(), second.end());
  ids.push_back(ft->mid);
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  return out;
}

namespace {

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }
bool write_str(httplib::DataSink& sink, const std::string& s) { return sink.write(s.data(), s.size()); }
bool write_data(httplib::DataSink& sink, const json& j) { return write_str(sink, "data: " + dump(j) + "\n\n"); }


bool all_space(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

enum class Api { kOpenAI, kInfill, kMistral };

// One parsed FIM request, whichever endpoint it came from.
struct FimCall {
  Api api = Api::kOpenAI;
  std::string model;
  FimInput in;
  SamplingParams sampling;
  std::optional<int32_t> max_tokens;
  std::vector<std::string> stop;
  std::string client_id;
  int32_t n_indent = 0;
  std::optional<double> time_budget_ms;  // nullopt: server default; 0: none
  std::optional<Priority> priority;      // extension: "priority": "chat" opts out of the lane
  bool ignore_eos = false;
  bool stream = false;
  bool include_usage = false;
};

// The generation of one FIM request as it streams, with the editor rules applied on top of
// the engine's: n_indent, and whitespace-only suggestions held back (and dropped at the end).
struct FimRun {
  std::unique_ptr<RequestStream> stream;
  int32_t n_indent = 0;
  int32_t prompt_len = 0;
  std::string text;   // accepted text
  size_t sent = 0;    // bytes of text handed to the client
  Ids tokens;
  bool done = false, indent_stop = false;
  FinishReason finish = FinishReason::kNone;
  std::string error;
  Usage usage;
  double ttft_ms = 0, e2e_ms = 0;

  // Applies one event; returns the text that may be sent now.
  std::string push(const StreamEvent& ev) {
    tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    if (!indent_stop) text += ev.text;
    if (ev.done) {
      done = true;
      finish = ev.finish;
      error = ev.error;
      usage = ev.usage;
      ttft_ms = ev.ttft_ms;
      e2e_ms = ev.e2e_ms;
      if (usage.completion_tokens == 0) usage.completion_tokens = static_cast<int32_t>(tokens.size());
      if (usage.prompt_tokens == 0) usage.prompt_tokens = prompt_len;
    }
    if (!indent_stop && n_indent > 0) check_indent();
    if (indent_stop && !done) stream->cancel();  // ends with kCancelled, reported as a stop
    return take(done || indent_stop);
  }

  // llama.cpp's n_indent: a line after the first that starts less indented than n_indent
  // ends the suggestion (the line is dropped), since it leaves the block being completed.
  void check_indent() {
    size_t ls = text.find('\n');
    while (ls != std::string::npos) {
      ++ls;
      size_t p = ls;
      int32_t ind = 0;
      while (p < text.size() && (text[p] == ' ' || text[p] == '\t')) ++p, ++ind;
      if (p < text.size() && text[p] != '\n' && text[p] != '\r' && ind < n_indent) {
        text.resize(std::max(ls, sent));
        indent_stop = true;
        return;
      }
      ls = text.find('\n', ls);
    }
  }

  std::string take(bool final) {
    size_t upto = text.size();
    if (all_space(text)) {
      upto = 0;  // nothing worth showing yet (and never, if it stays so)
    } else if (!final && n_indent > 0) {
      // The last line's indentation is not known until its first non-blank character.
      size_t nl = text.rfind('\n');
      if (nl != std::string::npos && all_space(std::string_view(text).substr(nl + 1))) upto = nl + 1;
    }
    if (final && all_space(text)) text.clear();
    if (upto <= sent) return {};
    std::string out = text.substr(sent, upto - sent);
    sent = upto;
    return out;
  }

  bool cancelled() const { return finish == FinishReason::kCancelled && !indent_stop; }
  bool is_eos(const Tokenizer& tok) const { return !tokens.empty() && tok.is_eog(tokens.back()); }
};

// Field readers throwing ApiError, for the two FIM-only bodies.
struct Fields {
  const json& j;
  [[noreturn]] static void fail(std::string msg, std::string param) {
    throw ApiError{400, std::move(msg), std::move(param), {}, {}};
  }
  const json* get(const char* k) const {
    auto it = j.find(k);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<std::string> str(const char* k) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(fmt::format("'{}' must be a string.", k), k);
    return v->get<std::string>();
  }
  std::optional<double> num(const char* k, double lo, double hi) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail(fmt::format("'{}' must be a number.", k), k);
    double d = v->get<double>();
    if (!(d >= lo && d <= hi)) fail(fmt::format("'{}' must be between {} and {}.", k, lo, hi), k);
    return d;
  }
  std::optional<int64_t> integer(const char* k, int64_t lo, int64_t hi) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_number_integer() && !v->is_number_unsigned()) fail(fmt::format("'{}' must be an integer.", k), k);
    int64_t d = v->is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v->get<uint64_t>(), INT64_MAX))
                                        : v->get<int64_t>();
    if (d < lo || d > hi) fail(fmt::format("'{}' must be between {} and {}.", k, lo, hi), k);
    return d;
  }
  std::optional<bool> boolean(const char* k) const {
    auto v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(fmt::format("'{}' must be a boolean.", k), k);
    return v->get<bool>();
  }
  std::vector<std::string> stops(const char* k) const {
    std::vector<std::string> out;
    auto v = get(k);
    if (!v) return out;
    if (v->is_string()) {
      out.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      for (const auto& s : *v) {
        if (!s.is_string()) fail(fmt::format("'{}' must be a string or an array of strings.", k), k);
        out.push_back(s.get<std::string>());
      }
    } else {
      fail(fmt::format("'{}' must be a string or an array of strings.", k), k);
    }
    if (out.size() > 16) fail(fmt::format("'{}' holds more than 16 sequences.", k), k);
    std::erase(out, std::string());
    return out;
  }
  void known(std::initializer_list<const char*> names) const {
    for (const auto& [k, _] : j.items()) {
      bool ok = false;
      for (const char* n : names) ok |= k == n;
      if (!ok) fail(fmt::format("Unrecognized request argument supplied: {}", k), k);
    }
  }
  std::optional<Priority> priority() const {
    auto p = str("priority");
    if (!p) return std::nullopt;
    if (*p == "completion") return Priority::kCompletion;
    if (*p == "chat") return Priority::kChat;
    if (*p == "batch") return Priority::kBatch;
    fail("'priority' must be \"completion\", \"chat\" or \"batch\".", "priority");
  }
};

template <class F>
ApiResult<FimCall> guarded(F&& f) {
  try {
    return f();
  } catch (const ApiError& e) {
    return std::unexpected(e);
  } catch (const std::exception& e) {
    return api_err(400, fmt::format("Invalid request: {}", e.what()));
  }
}

void check_model(const std::optional<std::string>& m, const std::string& served) {
  if (m && !m->empty() && *m != served)
    throw ApiError{404, fmt::format("The model `{}` does not exist or you do not have access to it.", *m), "model",
                   "model_not_found", {}};
}

ApiResult<FimCall> parse_infill(const json& j, const std::string& served) {
  return guarded([&] {
    Fields f{j};
    // llama.cpp fields that editors (llama.vim, llama.vscode) send and that have no effect
    // here are accepted: id_slot, cache_prompt (the prefix cache is always on), samplers,
    // t_max_prompt_ms, response_fields, n_probs 0.
    f.known({"input_prefix", "input_suffix", "input_extra", "prompt", "n_predict", "max_tokens", "t_max_predict_ms",
             "n_indent", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "stream", "id_slot", "cache_prompt",
             "samplers", "t_max_prompt_ms", "response_fields", "n_probs", "model", "priority", "repeat_penalty",
             "ignore_eos", "user"});
    FimCall c;
    c.api = Api::kInfill;
    check_model(f.str("model"), served);
    c.in.prefix = f.str("input_prefix").value_or("");
    c.in.suffix = f.str("input_suffix").value_or("");
    c.in.prompt = f.str("prompt").value_or("");
    if (auto e = f.get("input_extra")) {
      if (!e->is_array()) Fields::fail("'input_extra' must be an array of {filename, text} objects.", "input_extra");
      for (const auto& ch : *e) {
        if (!ch.is_object()) Fields::fail("'input_extra' must be an array of {filename, text} objects.", "input_extra");
        Fields cf{ch};
        cf.known({"filename", "text"});
        c.in.extra.push_back({cf.str("filename").value_or(""), cf.str("text").value_or("")});
      }
    }
    if (auto v = f.integer("n_predict", -1, 1 << 20); v && *v >= 0) c.max_tokens = static_cast<int32_t>(*v);
    if (auto v = f.integer("max_tokens", 0, 1 << 20)) c.max_tokens = static_cast<int32_t>(*v);
    if (auto v = f.num("t_max_predict_ms", 0, 1e9)) c.time_budget_ms = *v;
    if (auto v = f.integer("n_indent", 0, 1 << 16)) c.n_indent = static_cast<int32_t>(*v);
    if (auto v = f.num("temperature", 0, 100)) c.sampling.temperature = static_cast<float>(*v);
    if (auto v = f.integer("top_k", 0, 1 << 30)) c.sampling.top_k = static_cast<int32_t>(*v);
    if (auto v = f.num("top_p", 0, 1)) c.sampling.top_p = static_cast<float>(*v);
    if (auto v = f.num("min_p", 0, 1)) c.sampling.min_p = static_cast<float>(*v);
    if (auto v = f.num("repeat_penalty", 0, 100)) c.sampling.repetition_penalty = static_cast<float>(*v);
    // llama.cpp: seed -1 (its default) means random.
    if (auto v = f.integer("seed", -1, INT64_MAX); v && *v >= 0) c.sampling.seed = static_cast<uint64_t>(*v);
    if (auto v = f.integer("n_probs", 0, 0)) (void)v;
    c.stop = f.stops("stop");
    c.stream = f.boolean("stream").value_or(false);
    c.ignore_eos = f.boolean("ignore_eos").value_or(false);
    c.client_id = f.str("user").value_or("");
    c.priority = f.priority();
    return c;
  });
}

ApiResult<FimCall> parse_mistral(const json& j, const std::string& served) {
  return guarded([&] {
    Fields f{j};
    f.known({"model", "prompt", "suffix", "max_tokens", "min_tokens", "temperature", "top_p", "stop", "stream",
             "random_seed", "seed", "user", "priority", "ignore_eos"});
    FimCall c;
    c.api = Api::kMistral;
    check_model(f.str("model"), served);
    auto p = f.str("prompt");
    if (!p) Fields::fail("'prompt' is required.", "prompt");
    c.in.prefix = *p;
    c.in.suffix = f.str("suffix").value_or("");
    if (auto v = f.integer("max_tokens", 0, 1 << 20)) c.max_tokens = static_cast<int32_t>(*v);
    if (auto v = f.integer("min_tokens", 0, 1 << 20); v && *v > 0)
      Fields::fail("'min_tokens' is not supported.", "min_tokens");
    if (auto v = f.num("temperature", 0, 2)) c.sampling.temperature = static_cast<float>(*v);
    if (auto v = f.num("top_p", 0, 1)) c.sampling.top_p = static_cast<float>(*v);
    if (auto v = f.integer("random_seed", 0, INT64_MAX)) c.sampling.seed = static_cast<uint64_t>(*v);
    if (auto v = f.integer("seed", 0, INT64_MAX)) c.sampling.seed = static_cast<uint64_t>(*v);
    c.stop = f.stops("stop");
    c.stream = f.boolean("stream").value_or(false);
    c.ignore_eos = f.boolean("ignore_eos").value_or(false);
    c.client_id = f.str("user").value_or("");
    c.priority = f.priority();
    c.model = f.str("model").value_or("");
    return c;
  });
}

// /v1/completions with a suffix: the rest of the body goes through the server's own parser,
// so every OpenAI field is validated the same way as without a suffix.
ApiResult<FimCall> parse_openai(const json& body, const std::string& served, int32_t n_vocab) {
  FimCall c;
  c.api = Api::kOpenAI;
  json rest = body;
  c.in.suffix = body.value("suffix", std::string());
  rest.erase("suffix");
  auto pr = guarded([&] {
    FimCall t;
    t.priority = Fields{body}.priority();
    return t;
  });
  if (!pr) return std::unexpected(pr.error());
  c.priority = pr->priority;
  rest.erase("priority");
  ParseContext pctx{served, n_vocab};
  auto r = parse_completion_request(rest, pctx);
  if (!r) return std::unexpected(r.error());
  if (r->prompts.size() != 1 || !r->prompts[0].text)
    return api_err(400, "With 'suffix', 'prompt' must be a single string.", "prompt");
  if (r->n != 1) return api_err(400, "With 'suffix', 'n' must be 1.", "n");
  if (r->echo) return api_err(400, "With 'suffix', 'echo' is not supported.", "echo");
  if (r->logprobs >= 0) return api_err(400, "With 'suffix', 'logprobs' is not supported.", "logprobs");
  c.model = r->model;
  c.in.prefix = *r->prompts[0].text;
  c.sampling = r->gen.sampling;
  c.max_tokens = r->gen.max_tokens;
  c.stop = r->gen.stop;
  c.ignore_eos = r->gen.ignore_eos;
  c.client_id = r->gen.user;
  c.stream = r->stream;
  c.include_usage = r->include_usage;
  return c;
}

const char* openai_finish(const FimRun& g) {
  if (g.cancelled()) return "cancelled";
  if (g.indent_stop) return "stop";
  switch (g.finish) {
    case FinishReason::kLength:
    case FinishReason::kTimeBudget: return "length";
    default: return "stop";
  }
}

}  // namespace

struct FimRoutes::Impl {
  FimHost host;

  const Tokenizer& tok() const { return host.engine->tokenizer(); }

  static void send_json(httplib::Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(dump(j), "application/json");
  }
  static void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, openai_error_body(e)); }

  struct Guard {
    std::atomic<int>* n;
    explicit Guard(std::atomic<int>* a) : n(a) {
      if (n) n->fetch_add(1);
    }
    ~Guard() {
      if (n) n->fetch_sub(1);
    }
  };

  // Builds the prompt and submits; the run is returned ready to read.
  ApiResult<std::shared_ptr<FimRun>> start(FimCall& c, const httplib::Request& req) {
    if (host.stopping && host.stopping()) return api_err(503, "The server is shutting down.", {}, {}, "server_error");
    const int32_t ctx = host.engine->ctx_size();
    int32_t max_tokens = c.max_tokens.value_or(host.opt.default_max_tokens);
    max_tokens = std::max<int32_t>(1, std::min(max_tokens, ctx - 8));
    FimLayoutOptions lo;
    lo.order = host.opt.order;
    lo.ctx_size = ctx;
    lo.n_predict = max_tokens;
    lo.max_input_tokens = host.opt.max_input_tokens;
    auto p = build_fim_prompt(tok(), c.in, lo);
    if (!p) return std::unexpected(p.error());

    GenerationRequest g;
    g.prompt = std::move(p->ids);
    g.sampling = c.sampling;
    g.max_tokens = max_tokens;
    g.stop = c.stop;
    g.ignore_eos = c.ignore_eos;
    g.priority = c.priority.value_or(host.opt.priority_lane ? Priority::kCompletion : Priority::kChat);
    // Cancel-on-keystroke: the editor's next request makes this one stale.
    std::string client = req.get_header_value("X-Client-Id");
    g.client_id = client.empty() ? c.client_id : client;
    g.supersede_same_client = !g.client_id.empty();
    double budget = c.time_budget_ms.value_or(host.opt.default_time_budget_ms);
    if (budget > 0) g.time_budget_ms = budget;
    g.stop_at_suffix_line = first_nonempty_line(c.in.suffix);

    auto run = std::make_shared<FimRun>();
    run->n_indent = c.n_indent;
    run->prompt_len = static_cast<int32_t>(g.prompt.size());
    auto s = host.engine->submit(std::move(g));
    if (!s) return std::unexpected(api_error_from_status(s.error()));
    run->stream = std::move(*s);
    return run;
  }

  void wait(FimRun& r) {
    while (!r.done) {
      StreamEvent ev;
      if (r.stream->next(ev, std::chrono::milliseconds(500))) r.push(ev);
    }
  }

  ApiError failure(const FimRun& r) const {
    if (host.stopping && host.stopping()) return ApiError{503, "The server is shutting down.", {}, {}, "server_error"};
    return ApiError{500, r.error.empty() ? "generation failed" : r.error, {}, {}, "server_error"};
  }
  bool hard_failure(const FimRun& r) const {
    return r.finish == FinishReason::kError || (r.cancelled() && host.stopping && host.stopping());
  }

  // Reads the run, calling on_text for each piece; false when the client went away.
  template <class F>
  bool pump(FimRun& r, httplib::DataSink& sink, F&& on_text) {
    auto last_write = Clock::now();
    while (!r.done) {
      StreamEvent ev;
      if (!r.stream->next(ev, std::chrono::milliseconds(100))) {
        if (!sink.is_writable()) {
          r.stream->cancel();
          return false;
        }
        if (Clock::now() - last_write > std::chrono::seconds(5)) {
          if (!write_str(sink, ": keep-alive\n\n")) {
            r.stream->cancel();
            return false;
          }
          last_write = Clock::now();
        }
        continue;
      }
      std::string t = r.push(ev);
      if (!t.empty()) {
        if (!on_text(t)) {
          r.stream->cancel();
          return false;
        }
        last_write = Clock::now();
      }
    }
    return true;
  }

  json usage_json(const FimRun& r) const {
    return {{"prompt_tokens", r.usage.prompt_tokens},
            {"completion_tokens", r.usage.completion_tokens},
            {"total_tokens", r.usage.prompt_tokens + r.usage.completion_tokens},
            {"prompt_tokens_details", {{"cached_tokens", r.usage.cached_tokens}}}};
  }

  // ---- OpenAI /v1/completions with suffix ---------------------------------------------------

  void openai(const json& body, const httplib::Request& req, httplib::Response& res) {
    auto c = parse_openai(body, host.model_name, tok().n_vocab());
    if (!c) return send_error(res, c.error());
    auto guard = std::make_shared<Guard>(host.active);
    auto run = start(*c, req);
    if (!run) return send_error(res, run.error());
    std::string id = random_id("cmpl-");
    int64_t created = unix_now();
    std::string model = host.model_name;
    auto r = *run;
    if (!c->stream) {
      wait(*r);
      if (hard_failure(*r)) return send_error(res, failure(*r));
      send_json(res, 200,
                {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                 {"system_fingerprint", "merlin"},
                 {"choices", json::array({{{"index", 0}, {"text", r->cancelled() ? "" : r->text},
                                           {"logprobs", nullptr}, {"finish_reason", openai_finish(*r)}}})},
                 {"usage", usage_json(*r)}});
      return;
    }
    bool include_usage = c->include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, r, guard, id, created, model, include_usage](size_t, httplib::DataSink& sink) {
          auto chunk = [&](const std::string& text, json fin) {
            json o = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                      {"system_fingerprint", "merlin"},
                      {"choices", json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr},
                                                {"finish_reason", std::move(fin)}}})}};
            if (include_usage) o["usage"] = nullptr;
            return o;
          };
          if (!pump(*r, sink, [&](const std::string& t) { return write_data(sink, chunk(t, nullptr)); })) return false;
          if (hard_failure(*r)) {
            write_data(sink, openai_error_body(failure(*r)));
          } else {
            write_data(sink, chunk("", openai_finish(*r)));
            if (include_usage)
              write_data(sink, {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                                {"choices", json::array()}, {"usage", usage_json(*r)}});
          }
          write_str(sink, "data: [DONE]\n\n");
          sink.done();
          return true;
        });
  }

  // ---- llama.cpp /infill --------------------------------------------------------------------

  std::string stop_type(const FimRun& r) const {
    if (r.cancelled()) return "cancelled";
    if (r.indent_stop || r.finish == FinishReason::kLength || r.finish == FinishReason::kTimeBudget) return "limit";
    if (r.finish == FinishReason::kStop) return r.is_eos(tok()) ? "eos" : "word";
    return "none";
  }

  json infill_final(const FimRun& r, bool with_content) const {
    const double prompt_ms = r.ttft_ms;
    const double pred_ms = std::max(0.0, r.e2e_ms - r.ttft_ms);
    const int32_t prompt_n = r.usage.prompt_tokens - r.usage.cached_tokens;
    const int32_t pred_n = r.usage.completion_tokens;
    json timings = {{"cache_n", r.usage.cached_tokens},
                    {"prompt_n", prompt_n},
                    {"prompt_ms", prompt_ms},
                    {"prompt_per_token_ms", prompt_n > 0 ? prompt_ms / prompt_n : 0.0},
                    {"prompt_per_second", prompt_ms > 0 ? 1000.0 * prompt_n / prompt_ms : 0.0},
                    {"predicted_n", pred_n},
                    {"predicted_ms", pred_ms},
                    {"predicted_per_token_ms", pred_n > 0 ? pred_ms / pred_n : 0.0},
                    {"predicted_per_second", pred_ms > 0 ? 1000.0 * pred_n / pred_ms : 0.0}};
    return {{"content", with_content && !r.cancelled() ? r.text : ""},
            {"id_slot", -1},
            {"stop", true},
            {"model", host.model_name},
            {"tokens_predicted", pred_n},
            {"tokens_evaluated", r.usage.prompt_tokens},
            {"tokens_cached", r.usage.cached_tokens},
            {"truncated", false},
            {"stop_type", stop_type(r)},
            {"stopping_word", ""},
            {"timings", timings}};
  }

  void infill(const httplib::Request& req, httplib::Response& res) {
    auto body = preamble(req, res);
    if (!body) return;
    auto c = parse_infill(*body, host.model_name);
    if (!c) return send_error(res, c.error());
    auto guard = std::make_shared<Guard>(host.active);
    auto run = start(*c, req);
    if (!run) return send_error(res, run.error());
    auto r = *run;
    if (!c->stream) {
      wait(*r);
      if (hard_failure(*r)) return send_error(res, failure(*r));
      return send_json(res, 200, infill_final(*r, true));
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [this, r, guard](size_t, httplib::DataSink& sink) {
      if (!pump(*r, sink, [&](const std::string& t) {
            return write_data(sink, {{"content", t}, {"stop", false}, {"id_slot", -1}, {"tokens", json::array()}});
          }))
        return false;
      if (hard_failure(*r)) write_data(sink, openai_error_body(failure(*r)));
      else write_data(sink, infill_final(*r, false));
      sink.done();
      return true;
    });
  }

  // ---- Mistral /v1/fim/completions ----------------------------------------------------------

  void mistral(const httplib::Request& req, httplib::Response& res) {
    auto body = preamble(req, res);
    if (!body) return;
    auto c = parse_mistral(*body, host.model_name);
    if (!c) return send_error(res, c.error());
    auto guard = std::make_shared<Guard>(host.active);
    auto run = start(*c, req);
    if (!run) return send_error(res, run.error());
    auto r = *run;
    std::string id = random_id("fim-");
    int64_t created = unix_now();
    std::string model = c->model.empty() ? host.model_name : c->model;
    if (!c->stream) {
      wait(*r);
      if (hard_failure(*r)) return send_error(res, failure(*r));
      json msg = {{"role", "assistant"}, {"content", r->cancelled() ? "" : r->text}, {"tool_calls", nullptr},
                  {"prefix", false}};
      send_json(res, 200,
                {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
                 {"choices", json::array({{{"index", 0}, {"message", msg}, {"finish_reason", openai_finish(*r)}}})},
                 {"usage", usage_json(*r)}});
      return;
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, r, guard, id, created, model](size_t, httplib::DataSink& sink) {
          auto chunk = [&](json delta, json fin) {
            return json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                        {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)},
                                                  {"finish_reason", std::move(fin)}}})}};
          };
          if (!write_data(sink, chunk({{"role", "assistant"}, {"content", ""}}, nullptr))) {
            r->stream->cancel();
            return false;
          }
          if (!pump(*r, sink, [&](const std::string& t) { return write_data(sink, chunk({{"content", t}}, nullptr)); }))
            return false;
          if (hard_failure(*r)) {
            write_data(sink, openai_error_body(failure(*r)));
          } else {
            json last = chunk(json::object(), openai_finish(*r));
            last["usage"] = usage_json(*r);
            write_data(sink, last);
          }
          write_str(sink, "data: [DONE]\n\n");
          sink.done();
          return true;
        });
  }

  std::optional<json> preamble(const httplib::Request& req, httplib::Response& res) {
    if (host.check_auth)
      if (auto e = host.check_auth(req)) {
        send_error(res, *e);
        return std::nullopt;
      }
    auto j = parse_json_body(req.body);
    if (!j) {
      send_error(res, j.error());
      return std::nullopt;
    }
    return std::move(*j);
  }
};

FimRoutes::FimRoutes(FimHost host) : impl_(std::make_shared<Impl>()) { impl_->host = std::move(host); }
FimRoutes::~FimRoutes() = default;

bool FimRoutes::is_fim_completion(const json& body) {
  auto it = body.find("suffix");
  return it != body.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

void FimRoutes::handle_openai_completion(const json& body, const httplib::Request& req, httplib::Response& res) {
  impl_->openai(body, req, res);
}

void FimRoutes::register_routes(httplib::Server& svr) {
  auto wrap = [impl = impl_](void (Impl::*m)(const httplib::Request&, httplib::Response&)) {
    return [impl, m](const httplib::Request& req, httplib::Response& res) {
      try {
        ((*impl).*m)(req, res);
      } catch (const std::exception& e) {
        spdlog::error("{} {}: {}", req.method, req.path, e.what());
        Impl::send_error(res, ApiError{500, fmt::format("internal error: {}", e.what()), {}, {}, {}});
      }
    };
  };
  svr.Post("/infill", wrap(&Impl::infill));
  svr.Post("/v1/fim/completions", wrap(&Impl::mistral));
}

}  // namespace merlin::server
