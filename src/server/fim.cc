// Code completion: FIM prompt building and the /infill, /v1/fim/completions and
// /v1/completions-with-suffix handlers (bodies parsed by request_parse.h, responses streamed
// through stream.h).
#include "server/fim.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>

#include <fmt/format.h>

#include "core/log.h"
#include "server/core.h"
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

bool all_space(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

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
  double queue_ms = 0, ttft_ms = 0, e2e_ms = 0;
  bool truncated = false;  // the prompt builder cut prefix, suffix or extra context to fit

  // Applies one event; returns the text that may be sent now.
  std::string push(const StreamEvent& ev) {
    tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    if (!indent_stop) text += ev.text;
    if (ev.done) {
      done = true;
      finish = ev.finish;
      error = ev.error;
      usage = ev.usage;
      queue_ms = ev.queue_ms;
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

const char* fim_finish(const FimRun& g) {
  if (g.cancelled()) return "cancelled";
  if (g.indent_stop) return "stop";
  switch (g.finish) {
    case FinishReason::kLength:
    case FinishReason::kTimeBudget: return "length";
    default: return "stop";
  }
}


constexpr ApiKind kK = ApiKind::kOpenAI;  // FIM errors have OpenAI's shape on every endpoint

// Builds the prompt and submits; the run is returned ready to read.
ApiResult<std::shared_ptr<FimRun>> start(ServerCore& s, FimRequest& c, const httplib::Request& req) {
  if (s.stopping.load()) return api_err(503, "The server is shutting down.", {}, {}, "server_error");
  const FimOptions& fo = s.opt.fim;
  const int32_t ctx = s.engine->ctx_size();
  int32_t max_tokens = c.max_tokens.value_or(fo.default_max_tokens);
  max_tokens = std::max<int32_t>(1, std::min(max_tokens, ctx - 8));
  FimLayoutOptions lo;
  lo.order = fo.order;
  lo.ctx_size = ctx;
  lo.n_predict = max_tokens;
  lo.max_input_tokens = fo.max_input_tokens;
  auto p = build_fim_prompt(s.tok(), c.in, lo);
  if (!p) return std::unexpected(p.error());

  GenerationRequest g;
  g.prompt = std::move(p->ids);
  g.sampling = c.sampling;
  g.max_tokens = max_tokens;
  g.stop = c.stop;
  g.ignore_eos = c.ignore_eos;
  g.priority = c.priority.value_or(fo.priority_lane ? Priority::kCompletion : Priority::kChat);
  // Cancel-on-keystroke: the editor's next request makes this one stale.
  std::string client = req.get_header_value("X-Client-Id");
  g.client_id = client.empty() ? c.client_id : client;
  g.supersede_same_client = !g.client_id.empty();
  double budget = c.time_budget_ms.value_or(fo.default_time_budget_ms);
  if (budget > 0) g.time_budget_ms = budget;
  if (s.opt.request_timeout_s > 0) g.timeout_ms = s.opt.request_timeout_s * 1000.0;
  g.stop_at_suffix_line = first_nonempty_line(c.in.suffix);

  auto run = std::make_shared<FimRun>();
  run->n_indent = c.n_indent;
  run->prompt_len = static_cast<int32_t>(g.prompt.size());
  run->truncated = p->truncated;
  auto st = s.engine->submit(std::move(g));
  if (!st) return std::unexpected(api_error_from_status(st.error()));
  run->stream = std::move(*st);
  return run;
}

// Non-streaming: false when the client went away (the run is then cancelled).
bool wait(FimRun& r, ClientConn& conn) {
  return pump_events(
      {r.stream.get()},
      [&](size_t, const StreamEvent& ev) {
        r.push(ev);
        return true;
      },
      [&] { return conn.alive(); });
}

// Streaming: hands each piece of text that may be shown to on_text; false when the client
// went away.
template <class F>
bool pump_text(FimRun& r, Sse& sse, F&& on_text) {
  return sse.pump({r.stream.get()}, [&](size_t, const StreamEvent& ev) {
    std::string t = r.push(ev);
    return t.empty() || on_text(t);
  });
}

ApiError failure(const ServerCore& s, const FimRun& r) {
  if (r.finish == FinishReason::kTimeout) return timeout_error(s.opt.request_timeout_s);
  if (s.stopping.load()) return ApiError{503, "The server is shutting down.", {}, {}, "server_error"};
  return ApiError{500, r.error.empty() ? "generation failed" : r.error, {}, {}, "server_error"};
}
bool hard_failure(const ServerCore& s, const FimRun& r) {
  return r.finish == FinishReason::kError || r.finish == FinishReason::kTimeout || (r.cancelled() && s.stopping.load());
}

json usage_json(const FimRun& r) {
  return {{"prompt_tokens", r.usage.prompt_tokens},
          {"completion_tokens", r.usage.completion_tokens},
          {"total_tokens", r.usage.prompt_tokens + r.usage.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", r.usage.cached_tokens}}}};
}

std::string stop_type(const ServerCore& s, const FimRun& r) {
  if (r.cancelled()) return "cancelled";
  if (r.indent_stop || r.finish == FinishReason::kLength || r.finish == FinishReason::kTimeBudget) return "limit";
  if (r.finish == FinishReason::kStop) return r.is_eos(s.tok()) ? "eos" : "word";
  return "none";
}

json infill_final(const ServerCore& s, const FimRun& r, bool with_content) {
  const double prompt_ms = r.ttft_ms;
  const double pred_ms = std::max(0.0, r.e2e_ms - r.ttft_ms);
  const int32_t prompt_n = r.usage.prompt_tokens - r.usage.cached_tokens;
  const int32_t pred_n = r.usage.completion_tokens;
  // queue_ms (Merlin's addition to llama.cpp's timings): arrival to the first engine step; it is
  // part of prompt_ms, which runs from arrival to the first token.
  json timings = {{"cache_n", r.usage.cached_tokens},
                  {"queue_ms", r.queue_ms},
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
          {"model", s.pctx.model_name},
          {"tokens_predicted", pred_n},
          {"tokens_evaluated", r.usage.prompt_tokens},
          {"tokens_cached", r.usage.cached_tokens},
          // llama.cpp: the prompt was cut to fit the context (here: FimPrompt::truncated).
          {"truncated", r.truncated},
          {"stop_type", stop_type(s, r)},
          {"stopping_word", ""},
          {"timings", timings}};
}

}  // namespace

// ---- OpenAI /v1/completions with suffix -----------------------------------------------------

void handle_completion_fim(ServerCore& s, const json& body, const httplib::Request& req, httplib::Response& res) {
  auto c = parse_completion_fim_request(body, s.pctx);
  if (!c) return s.send_error(res, kK, c.error());
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto run = start(s, *c, req);
  if (!run) return s.send_error(res, kK, run.error());
  std::string id = random_id("cmpl-");
  int64_t created = unix_now();
  std::string model = s.pctx.model_name;
  auto r = *run;
  if (!c->stream) {
    if (!wait(*r, *conn)) return;  // the client is gone
    if (hard_failure(s, *r)) return s.send_error(res, kK, failure(s, *r));
    send_json(res, 200,
              {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
               {"system_fingerprint", "merlin"},
               {"choices", json::array({{{"index", 0}, {"text", r->cancelled() ? "" : r->text},
                                         {"logprobs", nullptr}, {"finish_reason", fim_finish(*r)}}})},
               {"usage", usage_json(*r)}});
    return;
  }
  bool include_usage = c->include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [&s, r, guard, conn, id, created, model, include_usage](size_t, httplib::DataSink& sink) {
        Sse sse(sink, conn);
        auto chunk = [&](const std::string& text, json fin) {
          json o = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                    {"system_fingerprint", "merlin"},
                    {"choices", json::array({{{"index", 0}, {"text", text}, {"logprobs", nullptr},
                                              {"finish_reason", std::move(fin)}}})}};
          if (include_usage) o["usage"] = nullptr;
          return o;
        };
        if (!pump_text(*r, sse, [&](const std::string& t) { return sse.data(chunk(t, nullptr)); })) return false;
        if (hard_failure(s, *r)) {
          sse.data(openai_error_body(failure(s, *r)));
        } else {
          sse.data(chunk("", fim_finish(*r)));
          if (include_usage)
            sse.data({{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                      {"choices", json::array()}, {"usage", usage_json(*r)}});
        }
        sse.done_marker();
        sse.finish();
        return true;
      });
}

// ---- llama.cpp /infill ----------------------------------------------------------------------

void handle_infill(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  auto c = parse_infill_request(*body, s.pctx);
  if (!c) return s.send_error(res, kK, c.error());
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto run = start(s, *c, req);
  if (!run) return s.send_error(res, kK, run.error());
  auto r = *run;
  if (!c->stream) {
    if (!wait(*r, *conn)) return;  // the client is gone
    if (hard_failure(s, *r)) return s.send_error(res, kK, failure(s, *r));
    return send_json(res, 200, infill_final(s, *r, true));
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [&s, r, guard, conn](size_t, httplib::DataSink& sink) {
    Sse sse(sink, conn);
    if (!pump_text(*r, sse, [&](const std::string& t) {
          return sse.data({{"content", t}, {"stop", false}, {"id_slot", -1}, {"tokens", json::array()}});
        }))
      return false;
    if (hard_failure(s, *r)) sse.data(openai_error_body(failure(s, *r)));
    else sse.data(infill_final(s, *r, false));
    sse.finish();
    return true;
  });
}

// ---- Mistral /v1/fim/completions ------------------------------------------------------------

void handle_fim_completions(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  auto c = parse_fim_completion_request(*body, s.pctx);
  if (!c) return s.send_error(res, kK, c.error());
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto run = start(s, *c, req);
  if (!run) return s.send_error(res, kK, run.error());
  auto r = *run;
  std::string id = random_id("fim-");
  int64_t created = unix_now();
  std::string model = c->model.empty() ? s.pctx.model_name : c->model;
  if (!c->stream) {
    if (!wait(*r, *conn)) return;  // the client is gone
    if (hard_failure(s, *r)) return s.send_error(res, kK, failure(s, *r));
    json msg = {{"role", "assistant"}, {"content", r->cancelled() ? "" : r->text}, {"tool_calls", nullptr},
                {"prefix", false}};
    send_json(res, 200,
              {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
               {"choices", json::array({{{"index", 0}, {"message", msg}, {"finish_reason", fim_finish(*r)}}})},
               {"usage", usage_json(*r)}});
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [&s, r, guard, conn, id, created, model](size_t, httplib::DataSink& sink) {
        Sse sse(sink, conn);
        auto chunk = [&](json delta, json fin) {
          return json{{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                      {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)},
                                                {"finish_reason", std::move(fin)}}})}};
        };
        if (!sse.data(chunk({{"role", "assistant"}, {"content", ""}}, nullptr))) {
          r->stream->cancel();
          return false;
        }
        if (!pump_text(*r, sse, [&](const std::string& t) { return sse.data(chunk({{"content", t}}, nullptr)); }))
          return false;
        if (hard_failure(s, *r)) {
          sse.data(openai_error_body(failure(s, *r)));
        } else {
          json last = chunk(json::object(), fim_finish(*r));
          last["usage"] = usage_json(*r);
          sse.data(last);
        }
        sse.done_marker();
        sse.finish();
        return true;
      });
}

}  // namespace merlin::server
