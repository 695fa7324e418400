#include "server/server.h"

#include <sys/socket.h>

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "core/log.h"
#include "server/api_error.h"
#include "server/fim.h"
#include "server/ids.h"
#include "server/request_parse.h"
#include "tokenizer/chat_template.h"

namespace merlin::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Used when a model ships no chat template: ChatML, which most code models' tokenizers know.
constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";


// Generated text can end in the middle of a character (or hold bytes the model made up), and
// nlohmann throws on dumping invalid UTF-8: replace rather than fail the response.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string lossy_utf8(const std::string& s) {
  if (valid_utf8(s)) return s;
  return json::parse(json(s).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
}

bool write_str(httplib::DataSink& sink, const std::string& s) { return sink.write(s.data(), s.size()); }
bool write_data(httplib::DataSink& sink, const json& j) { return write_str(sink, "data: " + dump(j) + "\n\n"); }
bool write_event(httplib::DataSink& sink, const char* name, const json& j) {
  return write_str(sink, fmt::format("event: {}\ndata: {}\n\n", name, dump(j)));
}

// One generation in flight (a choice) and what has been collected from it.
struct Gen {
  std::unique_ptr<RequestStream> stream;
  int index = 0;
  int32_t prompt_len = 0;
  std::string text;
  Ids tokens;
  std::vector<TokenLogprob> lps;
  std::vector<std::vector<TokenLogprob>> tops;
  bool done = false;
  FinishReason finish = FinishReason::kNone;
  std::string error;
  Usage usage;

  void add(const StreamEvent& ev) {
    text += ev.text;
    tokens.insert(tokens.end(), ev.tokens.begin(), ev.tokens.end());
    lps.insert(lps.end(), ev.logprobs.begin(), ev.logprobs.end());
    tops.insert(tops.end(), ev.top_logprobs.begin(), ev.top_logprobs.end());
    if (ev.done) {
      done = true;
      finish = ev.finish;
      error = ev.error;
      usage = ev.usage;
      if (usage.completion_tokens == 0) usage.completion_tokens = static_cast<int32_t>(tokens.size());
      if (usage.prompt_tokens == 0) usage.prompt_tokens = prompt_len;
    }
  }
};

const char* openai_finish(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength:
    case FinishReason::kTimeBudget: return "length";
    default: return "stop";
  }
}

bool failed(const Gen& g) { return g.finish == FinishReason::kCancelled || g.finish == FinishReason::kError; }

}  // namespace

struct HttpServer::Impl {
  Engine* engine = nullptr;
  ServerOptions opt;
  std::shared_ptr<const ChatTemplate> tmpl;
  std::string bos_str, eos_str;
  ParseContext pctx;
  httplib::Server svr;
  int listen_fd = -1;  // the listening socket, to widen httplib's fixed backlog of 5
  std::unique_ptr<FimRoutes> fim;  // /infill, /v1/fim/completions, suffix on /v1/completions
  std::atomic<bool> stopping{false};
  std::atomic<int> active{0};  // generation requests in flight (handlers and stream providers)
  std::mutex stop_mu;
  bool stopped = false;

  const Tokenizer& tok() const { return engine->tokenizer(); }

  // ---- plumbing -----------------------------------------------------------------------------

  static void send_json(httplib::Response& res, int status, const json& j) {
    res.status = status;
    res.set_content(dump(j), "application/json");
  }
  static void send_error(httplib::Response& res, ApiKind kind, const ApiError& e) {
    send_json(res, e.status, error_body(kind, e));
  }
  static ApiKind kind_of_path(const std::string& path) {
    return path.rfind("/v1/messages", 0) == 0 ? ApiKind::kAnthropic : ApiKind::kOpenAI;
  }

  static bool same_key(const std::string& a, const std::string& b) {
    // Constant time in the key's content, so the comparison leaks only the length.
    if (a.size() != b.size()) return false;
    unsigned char d = 0;
    for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
    return d == 0;
  }

  std::optional<ApiError> check_auth(const httplib::Request& req, ApiKind kind) const {
    if (opt.api_key.empty()) return std::nullopt;
    std::string given;
    std::string auth = req.get_header_value("Authorization");
    if (auth.rfind("Bearer ", 0) == 0) given = auth.substr(7);
    if (given.empty()) given = req.get_header_value("x-api-key");  // Anthropic's header
    if (given.empty()) {
      if (kind == ApiKind::kAnthropic) return ApiError{401, "x-api-key header is required", {}, {}, {}};
      return ApiError{401,
                      "You didn't provide an API key. You need to provide your API key in an Authorization header "
                      "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                      {}, {}, {}};
    }
    if (!same_key(given, opt.api_key)) {
      if (kind == ApiKind::kAnthropic) return ApiError{401, "invalid x-api-key", {}, {}, {}};
      return ApiError{401, "Incorrect API key provided.", {}, "invalid_api_key", {}};
    }
    return std::nullopt;
  }

  // Counts a generation request as in flight for its whole life, including a stream provider
  // that outlives the handler, so that stop() can wait for every stream to end properly.
  struct ActiveGuard {
    std::atomic<int>* n;
    explicit ActiveGuard(std::atomic<int>& a) : n(&a) { n->fetch_add(1); }
    ~ActiveGuard() { n->fetch_sub(1); }
  };

  // Parses the body and checks authentication; on failure the response is already written.
  std::optional<json> preamble(const httplib::Request& req, httplib::Response& res, ApiKind kind) {
    if (auto e = check_auth(req, kind)) {
      send_error(res, kind, *e);
      return std::nullopt;
    }
    auto j = parse_json_body(req.body);
    if (!j) {
      send_error(res, kind, j.error());
      return std::nullopt;
    }
    return std::move(*j);
  }

  ApiResult<int32_t> resolve_max_tokens(std::optional<int32_t> asked, size_t prompt_len, bool rest_of_ctx) const {
    const int32_t ctx = engine->ctx_size();
    if (prompt_len == 0) return api_err(400, "The prompt is empty.", "prompt");
    if (static_cast<int64_t>(prompt_len) >= ctx)
      return api_err(400,
                     fmt::format("This model's maximum context length is {} tokens. However, your prompt has {} "
                                 "tokens, leaving no room for a completion.",
                                 ctx, prompt_len),
                     "messages", "context_length_exceeded");
    const int32_t room = ctx - static_cast<int32_t>(prompt_len);
    if (!asked) return rest_of_ctx ? room : std::min(16, room);
    if (*asked > room)
      return api_err(400,
                     fmt::format("This model's maximum context length is {} tokens. However, you requested {} tokens "
                                 "({} in the prompt, {} in the completion). Please reduce the length of the prompt "
                                 "or the completion.",
                                 ctx, prompt_len + *asked, prompt_len, *asked),
                     "max_tokens", "context_length_exceeded");
    return *asked;
  }

  ApiResult<std::string> render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
    json arr = json::array();
    for (const auto& m : msgs) {
      json o = {{"role", m.role}, {"content", m.content}};
      if (!m.name.empty()) o["name"] = m.name;
      arr.push_back(std::move(o));
    }
    json ctx = {{"messages", std::move(arr)},
                {"add_generation_prompt", add_generation_prompt},
                {"bos_token", bos_str},
                {"eos_token", eos_str}};
    auto r = tmpl->render(ctx);
    // A template that raises (e.g. "roles must alternate") is the request's fault.
    if (!r) return api_err(400, fmt::format("The chat template rejected the messages: {}", r.error().message), "messages");
    return *r;
  }

  Ids encode_chat(const std::string& rendered) const {
    // The template writes BOS itself (bos_token), so no extra one here.
    return tok().encode(rendered, /*parse_special=*/true, /*add_bos=*/false);
  }
  Ids encode_prompt(const std::string& text) const {
    return tok().encode(text, /*parse_special=*/true, /*add_bos=*/tok().info().add_bos);
  }

  GenerationRequest make_request(const GenFields& g, Ids prompt, int32_t max_tokens, int32_t n_logprobs,
                                 Priority prio, int choice) const {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.sampling = g.sampling;
    // n choices with one seed must differ yet be reproducible: choice i uses seed + i.
    if (r.sampling.seed && choice > 0) r.sampling.seed = *r.sampling.seed + static_cast<uint64_t>(choice);
    r.max_tokens = max_tokens;
    r.stop = g.stop;
    r.ignore_eos = g.ignore_eos;
    if (g.speculative) {
      // Per-request switch: on = the draft model when one is loaded, and prompt lookup.
      SpecOptions so = engine->options().spec_default;
      so.use_draft = *g.speculative && engine->has_draft();
      so.use_lookup = *g.speculative;
      r.spec = so;
    }
    r.n_logprobs = n_logprobs;
    r.priority = prio;
    r.client_id = g.user;
    return r;
  }

  // Submits every request; on failure cancels the ones already submitted.
  ApiResult<std::vector<Gen>> submit_all(std::vector<GenerationRequest> reqs) {
    if (stopping.load()) return api_err(503, "The server is shutting down.", {}, {}, "server_error");
    std::vector<Gen> gens;
    for (size_t i = 0; i < reqs.size(); ++i) {
      int32_t plen = static_cast<int32_t>(reqs[i].prompt.size());
      auto s = engine->submit(std::move(reqs[i]));
      if (!s) {
        for (auto& g : gens) g.stream->cancel();
        return std::unexpected(api_error_from_status(s.error()));
      }
      Gen g;
      g.stream = std::move(*s);
      g.index = static_cast<int>(i);
      g.prompt_len = plen;
      gens.push_back(std::move(g));
    }
    return gens;
  }

  // Blocks until every generation is done (non-streaming responses).
  void wait_all(std::vector<Gen>& gens) {
    for (auto& g : gens) {
      StreamEvent ev;
      while (!g.done) {
        ev = StreamEvent{};
        if (g.stream->next(ev, std::chrono::milliseconds(500))) g.add(ev);
      }
    }
  }

  // Streams events of all generations to `on_event` as they arrive. Returns false when the
  // client went away (on_event returned false): the generations are then cancelled.
  template <class F>
  bool pump(std::vector<Gen>& gens, httplib::DataSink& sink, F&& on_event) {
    auto last_write = Clock::now();
    auto all_done = [&] {
      return std::all_of(gens.begin(), gens.end(), [](const Gen& g) { return g.done; });
    };
    auto cancel_all = [&] {
      for (auto& g : gens)
        if (!g.done) g.stream->cancel();
    };
    while (!all_done()) {
      bool got = false;
      for (auto& g : gens) {
        if (g.done) continue;
        StreamEvent ev;
        auto wait = gens.size() == 1 ? std::chrono::milliseconds(250) : std::chrono::milliseconds(0);
        while (!g.done && g.stream->next(ev, wait)) {
          got = true;
          g.add(ev);
          if (!on_event(g, ev)) {
            cancel_all();
            return false;
          }
          last_write = Clock::now();
          ev = StreamEvent{};
          wait = std::chrono::milliseconds(0);
        }
      }
      if (!got) {
        if (!sink.is_writable()) {
          cancel_all();
          return false;
        }
        // Long queueing or prefill: an SSE comment (ignored by clients) finds a closed
        // connection, since a write to a reset socket fails.
        if (Clock::now() - last_write > std::chrono::seconds(5)) {
          if (!write_str(sink, ": keep-alive\n\n")) {
            cancel_all();
            return false;
          }
          last_write = Clock::now();
        }
        if (gens.size() > 1) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    }
    return true;
  }

  ApiError gen_error(const Gen& g) const {
    if (g.finish == FinishReason::kCancelled)
      return ApiError{503, stopping.load() ? "The server is shutting down." : "The request was cancelled.", {}, {},
                      "server_error"};
    return ApiError{500, g.error.empty() ? "generation failed" : g.error, {}, {}, "server_error"};
  }

  // ---- logprobs formats ---------------------------------------------------------------------

  std::string tok_str(TokenId id) const { return lossy_utf8(tok().token_bytes(id)); }
  json tok_bytes(TokenId id) const {
    json b = json::array();
    for (unsigned char c : tok().token_bytes(id)) b.push_back(static_cast<int>(c));
    return b;
  }

  // OpenAI chat format: {"content":[{token, logprob, bytes, top_logprobs:[...]}]}
  json chat_logprobs(const std::vector<TokenId>& ids, const std::vector<TokenLogprob>& lps,
                     const std::vector<std::vector<TokenLogprob>>& tops, size_t from, size_t to) const {
    json content = json::array();
    for (size_t i = from; i < to && i < lps.size(); ++i) {
      json top = json::array();
      if (i < tops.size())
        for (const auto& t : tops[i])
          top.push_back({{"token", tok_str(t.id)}, {"logprob", t.logprob}, {"bytes", tok_bytes(t.id)}});
      TokenId id = i < ids.size() ? ids[i] : lps[i].id;
      content.push_back(
          {{"token", tok_str(id)}, {"logprob", lps[i].logprob}, {"bytes", tok_bytes(id)}, {"top_logprobs", top}});
    }
    return {{"content", content}, {"refusal", nullptr}};
  }

  // Legacy completions format: tokens, token_logprobs, top_logprobs, text_offset.
  json legacy_logprobs(const Gen& g, size_t from, size_t to, size_t& offset) const {
    json tokens = json::array(), lp = json::array(), top = json::array(), off = json::array();
    for (size_t i = from; i < to && i < g.lps.size(); ++i) {
      TokenId id = i < g.tokens.size() ? g.tokens[i] : g.lps[i].id;
      std::string s = tok_str(id);
      tokens.push_back(s);
      lp.push_back(g.lps[i].logprob);
      json d = json::object();
      if (i < g.tops.size())
        for (const auto& t : g.tops[i]) d[tok_str(t.id)] = t.logprob;
      top.push_back(d);
      off.push_back(offset);
      offset += s.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", lp}, {"top_logprobs", top}, {"text_offset", off}};
  }

  json openai_usage(int32_t prompt, int32_t completion, int32_t cached) const {
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
  }

  // ---- endpoints ----------------------------------------------------------------------------

  void handle_completions(const httplib::Request& req, httplib::Response& res) {
    constexpr ApiKind kK = ApiKind::kOpenAI;
    auto body = preamble(req, res, kK);
    if (!body) return;
    if (fim && FimRoutes::is_fim_completion(*body)) return fim->handle_openai_completion(*body, req, res);
    auto r = parse_completion_request(*body, pctx);
    if (!r) return send_error(res, kK, r.error());

    std::vector<GenerationRequest> reqs;
    std::vector<std::string> echo_text;
    int32_t prompt_total = 0;
    for (auto& p : r->prompts) {
      Ids ids = p.text ? encode_prompt(*p.text) : p.ids;
      auto mt = resolve_max_tokens(r->gen.max_tokens, ids.size(), false);
      if (!mt) return send_error(res, kK, mt.error());
      prompt_total += static_cast<int32_t>(ids.size());
      std::string et = r->echo ? (p.text ? *p.text : tok().decode(ids)) : std::string();
      for (int j = 0; j < r->n; ++j) {
        reqs.push_back(make_request(r->gen, ids, *mt, r->logprobs, Priority::kCompletion, j));
        echo_text.push_back(et);
      }
    }
    auto guard = std::make_shared<ActiveGuard>(active);
    auto gens = submit_all(std::move(reqs));
    if (!gens) return send_error(res, kK, gens.error());

    std::string id = random_id("cmpl-");
    int64_t created = unix_now();
    std::string model = pctx.model_name;
    if (!r->stream) {
      wait_all(*gens);
      json choices = json::array();
      int32_t completion = 0, cached = 0;
      for (auto& g : *gens) {
        if (failed(g)) return send_error(res, kK, gen_error(g));
        size_t off = echo_text[g.index].size();
        json lp = r->logprobs >= 0 ? legacy_logprobs(g, 0, g.lps.size(), off) : json(nullptr);
        choices.push_back({{"index", g.index},
                           {"text", echo_text[g.index] + g.text},
                           {"logprobs", lp},
                           {"finish_reason", openai_finish(g.finish)}});
        completion += g.usage.completion_tokens;
        cached = std::max(cached, g.usage.cached_tokens);
      }
      send_json(res, 200,
                {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                 {"system_fingerprint", "merlin"}, {"choices", choices},
                 {"usage", openai_usage(prompt_total, completion, cached)}});
      return;
    }

    auto state = std::make_shared<std::vector<Gen>>(std::move(*gens));
    bool include_usage = r->include_usage;
    int logprobs = r->logprobs;
    auto offsets = std::make_shared<std::vector<size_t>>();
    for (auto& g : *state) offsets->push_back(echo_text[g.index].size());
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, state, guard, id, created, model, include_usage, logprobs, offsets, echo_text, prompt_total](
            size_t, httplib::DataSink& sink) {
          auto chunk = [&](json choice) {
            json c = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                      {"system_fingerprint", "merlin"}, {"choices", json::array({std::move(choice)})}};
            if (include_usage) c["usage"] = nullptr;
            return c;
          };
          // Echoed prompts go first, as their own chunks.
          for (auto& g : *state)
            if (!echo_text[g.index].empty() &&
                !write_data(sink, chunk({{"index", g.index}, {"text", echo_text[g.index]}, {"logprobs", nullptr},
                                         {"finish_reason", nullptr}})))
              return false;
          std::vector<size_t> lp_sent(state->size(), 0);
          bool ok = pump(*state, sink, [&](Gen& g, const StreamEvent& ev) {
            if (ev.done && failed(g)) return true;  // reported after the loop
            json lp = nullptr;
            if (logprobs >= 0 && g.lps.size() > lp_sent[g.index]) {
              lp = legacy_logprobs(g, lp_sent[g.index], g.lps.size(), (*offsets)[g.index]);
              lp_sent[g.index] = g.lps.size();
            }
            if (!ev.text.empty() || !lp.is_null() || ev.done) {
              json fin = ev.done ? json(openai_finish(g.finish)) : json(nullptr);
              if (!write_data(sink, chunk({{"index", g.index}, {"text", ev.text}, {"logprobs", lp},
                                           {"finish_reason", fin}})))
                return false;
            }
            return true;
          });
          if (!ok) return false;
          return finish_openai_stream(sink, *state, include_usage,
                                      {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model}},
                                      prompt_total);
        });
  }

  // The end of an OpenAI stream, the same for completions and chat: an error chunk if a
  // generation failed, else the usage chunk when asked for; then [DONE]. `head` holds the
  // chunk's id/object/created/model.
  bool finish_openai_stream(httplib::DataSink& sink, const std::vector<Gen>& gens, bool include_usage, json head,
                            int32_t prompt_tokens) const {
    for (const auto& g : gens)
      if (failed(g)) {
        write_data(sink, openai_error_body(gen_error(g)));
        write_str(sink, "data: [DONE]\n\n");
        sink.done();
        return true;
      }
    if (include_usage) {
      int32_t completion = 0, cached = 0;
      for (const auto& g : gens) {
        completion += g.usage.completion_tokens;
        cached = std::max(cached, g.usage.cached_tokens);
      }
      head["system_fingerprint"] = "merlin";
      head["choices"] = json::array();
      head["usage"] = openai_usage(prompt_tokens, completion, cached);
      write_data(sink, head);
    }
    write_str(sink, "data: [DONE]\n\n");
    sink.done();
    return true;
  }

  void handle_chat(const httplib::Request& req, httplib::Response& res) {
    constexpr ApiKind kK = ApiKind::kOpenAI;
    auto body = preamble(req, res, kK);
    if (!body) return;
    auto r = parse_chat_request(*body, pctx);
    if (!r) return send_error(res, kK, r.error());
    auto rendered = render_chat(r->messages, true);
    if (!rendered) return send_error(res, kK, rendered.error());
    Ids ids = encode_chat(*rendered);
    auto mt = resolve_max_tokens(r->gen.max_tokens, ids.size(), true);
    if (!mt) return send_error(res, kK, mt.error());
    int32_t n_lp = r->logprobs ? r->top_logprobs : -1;
    std::vector<GenerationRequest> reqs;
    for (int j = 0; j < r->n; ++j) reqs.push_back(make_request(r->gen, ids, *mt, n_lp, Priority::kChat, j));
    auto guard = std::make_shared<ActiveGuard>(active);
    auto gens = submit_all(std::move(reqs));
    if (!gens) return send_error(res, kK, gens.error());

    std::string id = random_id("chatcmpl-");
    int64_t created = unix_now();
    std::string model = pctx.model_name;
    int32_t prompt_len = static_cast<int32_t>(ids.size());
    bool want_lp = r->logprobs;
    if (!r->stream) {
      wait_all(*gens);
      json choices = json::array();
      int32_t completion = 0, cached = 0;
      for (auto& g : *gens) {
        if (failed(g)) return send_error(res, kK, gen_error(g));
        choices.push_back({{"index", g.index},
                           {"message", {{"role", "assistant"}, {"content", g.text}, {"refusal", nullptr}}},
                           {"logprobs", want_lp ? chat_logprobs(g.tokens, g.lps, g.tops, 0, g.lps.size()) : json(nullptr)},
                           {"finish_reason", openai_finish(g.finish)}});
        completion += g.usage.completion_tokens;
        cached = std::max(cached, g.usage.cached_tokens);
      }
      send_json(res, 200,
                {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
                 {"system_fingerprint", "merlin"}, {"choices", choices},
                 {"usage", openai_usage(prompt_len, completion, cached)}});
      return;
    }

    auto state = std::make_shared<std::vector<Gen>>(std::move(*gens));
    bool include_usage = r->include_usage;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream", [this, state, guard, id, created, model, include_usage, want_lp, prompt_len](
                                 size_t, httplib::DataSink& sink) {
          auto chunk = [&](json choice) {
            json c = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                      {"system_fingerprint", "merlin"}, {"choices", json::array({std::move(choice)})}};
            if (include_usage) c["usage"] = nullptr;
            return c;
          };
          // The first chunk of each choice carries the role, as OpenAI's does.
          for (auto& g : *state)
            if (!write_data(sink, chunk({{"index", g.index},
                                         {"delta", {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}},
                                         {"logprobs", nullptr},
                                         {"finish_reason", nullptr}})))
              return false;
          std::vector<size_t> lp_sent(state->size(), 0);
          bool ok = pump(*state, sink, [&](Gen& g, const StreamEvent& ev) {
            if (ev.done && failed(g)) return true;
            json lp = nullptr;
            if (want_lp && g.lps.size() > lp_sent[g.index]) {
              lp = chat_logprobs(g.tokens, g.lps, g.tops, lp_sent[g.index], g.lps.size());
              lp_sent[g.index] = g.lps.size();
            }
            if (!ev.text.empty() || !lp.is_null()) {
              if (!write_data(sink, chunk({{"index", g.index}, {"delta", {{"content", ev.text}}}, {"logprobs", lp},
                                           {"finish_reason", nullptr}})))
                return false;
            }
            if (ev.done &&
                !write_data(sink, chunk({{"index", g.index}, {"delta", json::object()}, {"logprobs", nullptr},
                                         {"finish_reason", openai_finish(g.finish)}})))
              return false;
            return true;
          });
          if (!ok) return false;
          return finish_openai_stream(sink, *state, include_usage,
                                      {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created},
                                       {"model", model}},
                                      prompt_len);
        });
  }

  // Which of Anthropic's stop reasons ended a finished generation.
  std::pair<std::string, json> anthropic_stop(const Gen& g, const std::vector<std::string>& stops,
                                              bool ignore_eos) const {
    if (g.finish == FinishReason::kLength || g.finish == FinishReason::kTimeBudget) return {"max_tokens", nullptr};
    if (!g.tokens.empty() && !ignore_eos && tok().is_eog(g.tokens.back())) return {"end_turn", nullptr};
    if (!stops.empty()) {
      // The text ends right before the stop sequence; the tokens still hold it.
      std::string full = tok().decode(g.tokens);
      for (const auto& s : stops)
        if (full.size() >= g.text.size() + s.size() && full.compare(g.text.size(), s.size(), s) == 0)
          return {"stop_sequence", s};
      std::string tail = full.size() > g.text.size() ? full.substr(g.text.size()) : std::string();
      for (const auto& s : stops)
        if (tail.find(s) != std::string::npos) return {"stop_sequence", s};
    }
    return {"end_turn", nullptr};
  }

  void handle_messages(const httplib::Request& req, httplib::Response& res) {
    constexpr ApiKind kK = ApiKind::kAnthropic;
    auto body = preamble(req, res, kK);
    if (!body) return;
    auto r = parse_messages_request(*body, pctx, false);
    if (!r) return send_error(res, kK, r.error());
    auto rendered = render_chat(r->messages, true);
    if (!rendered) return send_error(res, kK, rendered.error());
    if (r->prefill) *rendered += *r->prefill;
    Ids ids = encode_chat(*rendered);
    auto mt = resolve_max_tokens(r->gen.max_tokens, ids.size(), false);
    if (!mt) return send_error(res, kK, mt.error());
    std::vector<GenerationRequest> reqs;
    reqs.push_back(make_request(r->gen, ids, *mt, -1, Priority::kChat, 0));
    auto guard = std::make_shared<ActiveGuard>(active);
    auto gens = submit_all(std::move(reqs));
    if (!gens) return send_error(res, kK, gens.error());

    std::string id = random_id("msg_");
    std::string model = r->model.empty() ? pctx.model_name : r->model;
    int32_t prompt_len = static_cast<int32_t>(ids.size());
    auto stops = r->gen.stop;
    bool ignore_eos = r->gen.ignore_eos;
    if (!r->stream) {
      wait_all(*gens);
      Gen& g = (*gens)[0];
      if (failed(g)) return send_error(res, kK, gen_error(g));
      auto [reason, seq] = anthropic_stop(g, stops, ignore_eos);
      send_json(res, 200,
                {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                 {"content", json::array({{{"type", "text"}, {"text", g.text}}})},
                 {"stop_reason", reason}, {"stop_sequence", seq},
                 {"usage", {{"input_tokens", prompt_len}, {"output_tokens", g.usage.completion_tokens}}}});
      return;
    }

    auto state = std::make_shared<std::vector<Gen>>(std::move(*gens));
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, state, guard, id, model, prompt_len, stops, ignore_eos](size_t, httplib::DataSink& sink) {
          json start = {{"type", "message_start"},
                        {"message",
                         {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                          {"content", json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                          {"usage", {{"input_tokens", prompt_len}, {"output_tokens", 0}}}}}};
          if (!write_event(sink, "message_start", start)) return false;
          if (!write_event(sink, "content_block_start",
                           {{"type", "content_block_start"}, {"index", 0},
                            {"content_block", {{"type", "text"}, {"text", ""}}}}))
            return false;
          if (!write_event(sink, "ping", {{"type", "ping"}})) return false;
          bool ok = pump(*state, sink, [&](Gen& g, const StreamEvent& ev) {
            if (ev.text.empty()) return true;
            return write_event(sink, "content_block_delta",
                               {{"type", "content_block_delta"}, {"index", 0},
                                {"delta", {{"type", "text_delta"}, {"text", ev.text}}}});
          });
          if (!ok) return false;
          Gen& g = (*state)[0];
          if (failed(g)) {
            write_event(sink, "error", anthropic_error_body(gen_error(g)));
            sink.done();
            return true;
          }
          auto [reason, seq] = anthropic_stop(g, stops, ignore_eos);
          write_event(sink, "content_block_stop", {{"type", "content_block_stop"}, {"index", 0}});
          write_event(sink, "message_delta",
                      {{"type", "message_delta"},
                       {"delta", {{"stop_reason", reason}, {"stop_sequence", seq}}},
                       {"usage", {{"output_tokens", g.usage.completion_tokens}}}});
          write_event(sink, "message_stop", {{"type", "message_stop"}});
          sink.done();
          return true;
        });
  }

  void handle_count_tokens(const httplib::Request& req, httplib::Response& res) {
    constexpr ApiKind kK = ApiKind::kAnthropic;
    auto body = preamble(req, res, kK);
    if (!body) return;
    auto r = parse_messages_request(*body, pctx, true);
    if (!r) return send_error(res, kK, r.error());
    auto rendered = render_chat(r->messages, true);
    if (!rendered) return send_error(res, kK, rendered.error());
    if (r->prefill) *rendered += *r->prefill;
    send_json(res, 200, {{"input_tokens", encode_chat(*rendered).size()}});
  }

  void handle_tokenize(const httplib::Request& req, httplib::Response& res) {
    auto body = preamble(req, res, ApiKind::kOpenAI);
    if (!body) return;
    auto r = parse_tokenize_request(*body);
    if (!r) return send_error(res, ApiKind::kOpenAI, r.error());
    Ids ids = tok().encode(r->content, true, r->add_special && tok().info().add_bos);
    json toks = json::array();
    for (TokenId id : ids) {
      if (r->with_pieces) toks.push_back({{"id", id}, {"piece", tok_str(id)}});
      else toks.push_back(id);
    }
    send_json(res, 200, {{"tokens", toks}});
  }

  void handle_detokenize(const httplib::Request& req, httplib::Response& res) {
    auto body = preamble(req, res, ApiKind::kOpenAI);
    if (!body) return;
    auto r = parse_detokenize_request(*body, pctx);
    if (!r) return send_error(res, ApiKind::kOpenAI, r.error());
    send_json(res, 200, {{"content", lossy_utf8(tok().decode(r->tokens))}});
  }

  json model_object() const {
    return {{"id", pctx.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "merlin"},
            {"max_model_len", engine->ctx_size()}};
  }

  void routes() {
    auto gen_route = [this](auto method) {
      return [this, method](const httplib::Request& req, httplib::Response& res) {
        try {
          (this->*method)(req, res);
        } catch (const std::exception& e) {
          spdlog::error("{} {}: {}", req.method, req.path, e.what());
          send_error(res, kind_of_path(req.path), ApiError{500, fmt::format("internal error: {}", e.what()), {}, {}, {}});
        }
      };
    };
    svr.Post("/v1/completions", gen_route(&Impl::handle_completions));
    fim = std::make_unique<FimRoutes>(FimHost{engine, pctx.model_name, opt.fim,
                                              [this](const httplib::Request& r) { return check_auth(r, ApiKind::kOpenAI); },
                                              [this] { return stopping.load(); }, &active});
    fim->register_routes(svr);
    svr.Post("/v1/chat/completions", gen_route(&Impl::handle_chat));
    svr.Post("/v1/messages", gen_route(&Impl::handle_messages));
    svr.Post("/v1/messages/count_tokens", gen_route(&Impl::handle_count_tokens));
    svr.Post("/tokenize", gen_route(&Impl::handle_tokenize));
    svr.Post("/detokenize", gen_route(&Impl::handle_detokenize));
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      send_json(res, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
    });
    svr.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      std::string m = req.matches[1];
      if (m != pctx.model_name)
        return send_error(res, ApiKind::kOpenAI,
                          ApiError{404, fmt::format("The model `{}` does not exist or you do not have access to it.", m),
                                   "model", "model_not_found", {}});
      send_json(res, 200, model_object());
    });
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (stopping.load()) return send_json(res, 503, {{"status", "shutting down"}});
      send_json(res, 200, {{"status", "ok"}});
    });
    svr.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      res.set_content(engine->metrics().render_prometheus(pctx.model_name), "text/plain; version=0.0.4");
    });
    // Errors httplib produces itself (413 for oversized bodies, 404 for unknown paths) get the
    // imitated API's body too; responses that already have a body are left alone.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiKind kind = kind_of_path(req.path);
      ApiError e{res.status, "", {}, {}, {}};
      if (res.status == 413) {
        e.message = "The request body is too large.";
        e.code = "request_too_large";
      } else if (res.status == 404) {
        e.message = fmt::format("Unknown request URL: {} {}.", req.method, req.path);
        e.code = "unknown_url";
      } else if (res.status == 405) {
        e.message = fmt::format("Method {} is not allowed on {}.", req.method, req.path);
      } else {
        e.message = fmt::format("HTTP error {}.", res.status);
      }
      res.set_content(dump(error_body(kind, e)), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      spdlog::error("{} {}: {}", req.method, req.path, what);
      res.status = 500;
      res.set_content(dump(error_body(kind_of_path(req.path), ApiError{500, "internal error: " + what, {}, {}, {}})),
                      "application/json");
    });
  }
};

Result<std::unique_ptr<HttpServer>> HttpServer::create(Engine& engine, ServerOptions opt) {
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  Impl& im = *s->impl_;
  im.engine = &engine;
  im.opt = opt;
  const Tokenizer& tok = engine.tokenizer();
  std::string src = tok.info().chat_template;
  if (src.empty()) {
    spdlog::warn("model {} has no chat template; chat endpoints use ChatML", engine.model().name);
    src = kChatMlTemplate;
  }
  auto t = ChatTemplate::parse(src);
  if (!t) return Errf(t.error().code, "chat template of {}: {}", engine.model().name, t.error().message);
  im.tmpl = *t;
  if (auto b = tok.bos()) im.bos_str = tok.token_text(*b);
  if (auto e = tok.eos()) im.eos_str = tok.token_text(*e);
  im.pctx.model_name = engine.model().name;
  im.pctx.n_vocab = tok.n_vocab();

  int threads = opt.http_threads > 0 ? opt.http_threads : 64;
  im.svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  im.svr.set_payload_max_length(opt.max_body_bytes);
  im.svr.set_read_timeout(opt.read_timeout_s, 0);
  im.svr.set_write_timeout(opt.write_timeout_s, 0);
  im.svr.set_keep_alive_max_count(1000);
  im.svr.set_keep_alive_timeout(5);
  // Remember the listening socket (the options callback runs on it before bind) so bind() can
  // raise the accept backlog: Debian's compiled httplib listens with a backlog of 5, which
  // drops connections when hundreds of clients connect at once.
  im.svr.set_socket_options([&im](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&yes), sizeof(yes));
    im.listen_fd = sock;
  });
  im.routes();
  return s;
}

HttpServer::~HttpServer() {
  if (impl_) stop();
}

Result<int> HttpServer::bind() {
  int port = impl_->opt.port;
  if (port == 0) {
    port = impl_->svr.bind_to_any_port(impl_->opt.host);
    if (port < 0) return Errf(Code::kInvalidArgument, "cannot bind {}", impl_->opt.host);
  } else if (!impl_->svr.bind_to_port(impl_->opt.host, port)) {
    return Errf(Code::kInvalidArgument, "cannot bind {}:{} (in use, or not an address of this machine)",
                impl_->opt.host, port);
  }
  // Listening again on a listening socket only changes its backlog (Linux).
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, 4096);
  return port;
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }

bool HttpServer::stopping() const { return impl_->stopping.load(); }

void HttpServer::stop() {
  std::lock_guard lk(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->stopping = true;
  // Ending the engine's requests gives every open stream its final event; the providers then
  // write their closing error event and finish. Only then is the listener stopped.
  impl_->engine->shutdown();
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (impl_->active.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (impl_->active.load() > 0) spdlog::warn("{} requests still open at shutdown", impl_->active.load());
  impl_->svr.stop();
}

}  // namespace merlin::server
