#include "server/core.h"

#include <httplib.h>

#include <algorithm>

#include <fmt/format.h>

namespace merlin::server {

using nlohmann::json;

void send_json(httplib::Response& res, int status, const json& j) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

void send_error(httplib::Response& res, ApiKind kind, const ApiError& e, int retry_after_s) {
  if (is_overload(e)) {
    // A full queue: OpenAI answers 429 rate_limit_exceeded, Anthropic 529 overloaded_error;
    // both SDKs retry after Retry-After.
    ApiError o = e;
    if (kind == ApiKind::kAnthropic) o.status = 529;
    res.set_header("Retry-After", std::to_string(std::max(1, retry_after_s)));
    return send_json(res, o.status, error_body(kind, o));
  }
  send_json(res, e.status, error_body(kind, e));
}

bool is_overload(const ApiError& e) { return e.status == 429 && e.code == "rate_limit_exceeded"; }

ApiError timeout_error(double timeout_s) {
  return ApiError{504,
                  fmt::format("The request did not finish within the server's request timeout ({} s).", timeout_s),
                  {}, "request_timeout", "timeout_error"};
}

ApiKind kind_of_path(const std::string& path) {
  return path.rfind("/v1/messages", 0) == 0 ? ApiKind::kAnthropic : ApiKind::kOpenAI;
}

void Gen::add(const StreamEvent& ev) {
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

const char* openai_finish(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength:
    case FinishReason::kTimeBudget: return "length";
    default: return "stop";
  }
}

std::vector<RequestStream*> streams_of(std::vector<Gen>& gens) {
  std::vector<RequestStream*> out;
  for (auto& g : gens) out.push_back(g.stream.get());
  return out;
}

namespace {
bool same_key(const std::string& a, const std::string& b) {
  // Constant time in the key's content, so the comparison leaks only the length.
  if (a.size() != b.size()) return false;
  unsigned char d = 0;
  for (size_t i = 0; i < a.size(); ++i) d |= static_cast<unsigned char>(a[i] ^ b[i]);
  return d == 0;
}
}  // namespace

std::optional<ApiError> ServerCore::check_auth(const httplib::Request& req, ApiKind kind) const {
  if (opt.api_keys.empty()) return std::nullopt;
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
  bool ok = false;
  for (const auto& k : opt.api_keys) ok |= same_key(given, k);  // every key compared: no early exit
  if (!ok) {
    if (kind == ApiKind::kAnthropic) return ApiError{401, "invalid x-api-key", {}, {}, {}};
    return ApiError{401, "Incorrect API key provided.", {}, "invalid_api_key", {}};
  }
  return std::nullopt;
}

std::optional<json> ServerCore::preamble(const httplib::Request& req, httplib::Response& res, ApiKind kind) const {
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

ApiResult<int32_t> ServerCore::resolve_max_tokens(std::optional<int32_t> asked, size_t prompt_len,
                                                  bool rest_of_ctx) const {
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

ApiResult<std::string> ServerCore::render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const {
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

Ids ServerCore::encode_chat(const std::string& rendered) const {
  // The template writes BOS itself (bos_token), so no extra one here.
  return tok().encode(rendered, /*parse_special=*/true, /*add_bos=*/false);
}

Ids ServerCore::encode_prompt(const std::string& text) const {
  return tok().encode(text, /*parse_special=*/true, /*add_bos=*/tok().info().add_bos);
}

GenerationRequest ServerCore::make_request(const GenFields& g, Ids prompt, int32_t max_tokens, int32_t n_logprobs,
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
  if (opt.request_timeout_s > 0) r.timeout_ms = opt.request_timeout_s * 1000.0;
  return r;
}

ApiResult<std::vector<Gen>> ServerCore::submit_all(std::vector<GenerationRequest> reqs) {
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

bool ServerCore::wait_all(std::vector<Gen>& gens, ClientConn& conn) {
  return pump_events(
      streams_of(gens),
      [&](size_t i, const StreamEvent& ev) {
        gens[i].add(ev);
        return true;
      },
      [&] { return conn.alive(); });
}

ApiError ServerCore::gen_error(const Gen& g) const {
  if (g.finish == FinishReason::kTimeout) return timeout_error(opt.request_timeout_s);
  if (g.finish == FinishReason::kCancelled)
    return ApiError{503, stopping.load() ? "The server is shutting down." : "The request was cancelled.", {}, {},
                    "server_error"};
  return ApiError{500, g.error.empty() ? "generation failed" : g.error, {}, {}, "server_error"};
}

json ServerCore::tok_bytes(TokenId id) const {
  json b = json::array();
  for (unsigned char c : tok().token_bytes(id)) b.push_back(static_cast<int>(c));
  return b;
}

json ServerCore::openai_usage(int32_t prompt, int32_t completion, int32_t cached) {
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

}  // namespace merlin::server
