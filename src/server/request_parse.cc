#include "server/request_parse.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>

#include <fmt/format.h>

namespace merlin::server {

using nlohmann::json;

namespace {

// Parsing checks dozens of fields, each of which can fail; an internal exception keeps every
// check one line. It never leaves this file: the public functions catch it into ApiResult.
struct ParseFailure {
  ApiError err;
};

[[noreturn]] void fail(std::string msg, std::string param = {}, int status = 400, std::string code = {}) {
  throw ParseFailure{ApiError{status, std::move(msg), std::move(param), std::move(code), {}}};
}

const char* json_type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a decimal";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "an unknown type";
  }
}

[[noreturn]] void bad_type(const std::string& name, const char* expected, const json& v) {
  fail(fmt::format("Invalid type for '{}': expected {}, but got {} instead.", name, expected,
                   json_type_name(v)),
       name);
}

// Field access over one JSON object; absent and null both mean "not given", as in OpenAI's API.
class Obj {
 public:
  Obj(const json& j, std::string prefix = {}) : j_(j), prefix_(std::move(prefix)) {}

  const json* get(const std::string& k) const {
    auto it = j_.find(k);
    if (it == j_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(const std::string& k) const { return get(k) != nullptr; }
  std::string name(const std::string& k) const { return prefix_.empty() ? k : prefix_ + "." + k; }

  std::optional<double> number(const std::string& k, double lo, double hi) const {
    const json* v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_number()) bad_type(name(k), "a number", *v);
    double d = v->get<double>();
    if (!std::isfinite(d) || d < lo || d > hi)
      fail(fmt::format("'{}' must be between {} and {}, got {}.", name(k), lo, hi, v->dump()), name(k));
    return d;
  }
  std::optional<int64_t> integer(const std::string& k, int64_t lo, int64_t hi) const {
    const json* v = get(k);
    if (!v) return std::nullopt;
    int64_t x = 0;
    if (v->is_number_integer()) {
      x = v->get<int64_t>();
    } else if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      x = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                        : static_cast<int64_t>(u);
    } else if (v->is_number_float() && std::isfinite(v->get<double>()) &&
               std::floor(v->get<double>()) == v->get<double>() && std::fabs(v->get<double>()) < 9e15) {
      x = static_cast<int64_t>(v->get<double>());  // 16.0 is an integer in JSON Schema terms
    } else {
      bad_type(name(k), "an integer", *v);
    }
    if (x < lo || x > hi)
      fail(fmt::format("'{}' must be between {} and {}, got {}.", name(k), lo, hi, v->dump()), name(k));
    return x;
  }
  std::optional<bool> boolean(const std::string& k) const {
    const json* v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) bad_type(name(k), "a boolean", *v);
    return v->get<bool>();
  }
  std::optional<std::string> string(const std::string& k) const {
    const json* v = get(k);
    if (!v) return std::nullopt;
    if (!v->is_string()) bad_type(name(k), "a string", *v);
    return v->get<std::string>();
  }

  // Fields not in `known` are refused, never ignored.
  void check_known(const std::set<std::string>& known, ApiKind kind) const {
    for (auto it = j_.begin(); it != j_.end(); ++it) {
      if (known.count(it.key())) continue;
      if (kind == ApiKind::kAnthropic)
        fail(fmt::format("{}: Extra inputs are not permitted", name(it.key())), name(it.key()));
      fail(fmt::format("Unrecognized request argument supplied: {}", name(it.key())), name(it.key()));
    }
  }

 private:
  const json& j_;
  std::string prefix_;
};

void check_model(const Obj& o, const ParseContext& ctx, ApiKind kind, std::string& out) {
  auto m = o.string("model");
  if (!m) return;  // a missing model means the served one
  if (*m != ctx.model_name) {
    if (kind == ApiKind::kAnthropic) fail(fmt::format("model: {}", *m), "model", 404);
    fail(fmt::format("The model `{}` does not exist or you do not have access to it.", *m), "model", 404,
         "model_not_found");
  }
  out = *m;
}

std::vector<std::string> parse_stop(const Obj& o, const std::string& k, bool allow_string) {
  std::vector<std::string> out;
  const json* v = o.get(k);
  if (!v) return out;
  if (v->is_string() && allow_string) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    if (v->size() > 64) fail(fmt::format("'{}' has more than 64 entries.", k), k);
    for (const auto& s : *v) {
      if (!s.is_string()) bad_type(k + "[]", "a string", s);
      out.push_back(s.get<std::string>());
    }
  } else {
    bad_type(k, allow_string ? "a string or an array of strings" : "an array of strings", *v);
  }
  for (const auto& s : out)
    if (s.empty()) fail(fmt::format("'{}' entries must not be empty strings.", k), k);
  return out;
}

// Sampling fields common to OpenAI's two endpoints, with OpenAI's ranges; top_k, min_p,
// repetition_penalty and ignore_eos are extensions as in vLLM.
void parse_openai_sampling(const Obj& o, const ParseContext& ctx, GenFields& g) {
  auto& s = g.sampling;
  if (auto t = o.number("temperature", 0, 2)) s.temperature = static_cast<float>(*t);
  else s.temperature = 1.0f;  // OpenAI's default is 1, not greedy
  if (auto v = o.number("top_p", 0, 1)) s.top_p = static_cast<float>(*v);
  if (auto v = o.integer("top_k", -1, 1 << 30)) s.top_k = *v < 0 ? 0 : static_cast<int32_t>(*v);
  if (auto v = o.number("min_p", 0, 1)) s.min_p = static_cast<float>(*v);
  if (auto v = o.number("presence_penalty", -2, 2)) s.presence_penalty = static_cast<float>(*v);
  if (auto v = o.number("frequency_penalty", -2, 2)) s.frequency_penalty = static_cast<float>(*v);
  if (auto v = o.number("repetition_penalty", 0, 10)) {
    if (*v <= 0) fail("'repetition_penalty' must be greater than 0.", "repetition_penalty");
    s.repetition_penalty = static_cast<float>(*v);
  }
  if (auto v = o.integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()))
    s.seed = static_cast<uint64_t>(*v);
  if (const json* lb = o.get("logit_bias")) {
    if (!lb->is_object()) bad_type("logit_bias", "an object", *lb);
    for (auto it = lb->begin(); it != lb->end(); ++it) {
      const std::string& key = it.key();
      char* end = nullptr;
      errno = 0;
      long id = std::strtol(key.c_str(), &end, 10);
      if (key.empty() || *end != '\0' || errno != 0 || id < 0 || id >= ctx.n_vocab)
        fail(fmt::format("Invalid key in 'logit_bias': '{}' is not a token id of this model.", key), "logit_bias");
      if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < -100 ||
          it->get<double>() > 100)
        fail(fmt::format("Invalid value in 'logit_bias' for token {}: expected a number between -100 and 100.", key),
             "logit_bias");
      s.logit_bias.emplace_back(static_cast<TokenId>(id), it->get<float>());
    }
  }
  g.stop = parse_stop(o, "stop", true);
  if (auto v = o.boolean("ignore_eos")) g.ignore_eos = *v;
  if (auto v = o.boolean("speculative")) g.speculative = *v;
  if (auto v = o.string("user")) g.user = *v;
  else if (auto v2 = o.string("safety_identifier")) g.user = *v2;
  if (auto v = o.string("prompt_cache_key")) (void)v;  // a routing hint; the prefix cache is automatic
}

void parse_stream(const Obj& o, bool& stream, bool& include_usage) {
  if (auto v = o.boolean("stream")) stream = *v;
  if (const json* so = o.get("stream_options")) {
    if (!stream) fail("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options");
    if (!so->is_object()) bad_type("stream_options", "an object", *so);
    Obj s(*so, "stream_options");
    s.check_known({"include_usage", "include_obfuscation"}, ApiKind::kOpenAI);
    if (auto v = s.boolean("include_usage")) include_usage = *v;
    if (auto v = s.boolean("include_obfuscation"); v && *v)
      fail("'stream_options.include_obfuscation' is not supported.", "stream_options.include_obfuscation");
  }
}

int32_t parse_max_tokens(const Obj& o, const char* k) {
  return static_cast<int32_t>(*o.integer(k, 1, 1 << 24));
}

// Fields OpenAI defines that Merlin only accepts at their no-op values.
void check_openai_noops(const Obj& o) {
  if (auto v = o.boolean("store"); v && *v) fail("'store' is not supported: completions are not stored.", "store");
  if (const json* v = o.get("metadata"); v && !v->is_object()) bad_type("metadata", "an object", *v);
  if (auto v = o.string("service_tier"); v && *v != "auto" && *v != "default")
    fail(fmt::format("service_tier '{}' is not supported.", *v), "service_tier");
}

std::string text_parts(const json& content, const std::string& param, ApiKind kind) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) bad_type(param, "a string or an array of content parts", content);
  std::string out;
  bool first = true;
  for (const auto& part : content) {
    if (!part.is_object()) bad_type(param + "[]", "an object", part);
    Obj p(part, param + "[]");
    auto type = p.string("type");
    if (!type) fail(fmt::format("'{}[].type' is required.", param), param);
    if (*type != "text")
      fail(fmt::format("Content part type '{}' is not supported: only text is.", *type), param);
    if (kind == ApiKind::kAnthropic) p.check_known({"type", "text", "cache_control", "citations"}, kind);
    else p.check_known({"type", "text"}, kind);
    if (const json* c = p.get("citations"); c && !(c->is_array() && c->empty()))
      fail("Text block citations are not supported.", param);
    auto text = p.string("text");
    if (!text) fail(fmt::format("'{}[].text' is required.", param), param);
    if (!first) out += "\n";
    out += *text;
    first = false;
  }
  return out;
}

template <class F>
auto guarded(F&& f) -> ApiResult<decltype(f())> {
  try {
    return f();
  } catch (const ParseFailure& e) {
    return std::unexpected(e.err);
  } catch (const json::exception& e) {
    // A conversion the checks above did not foresee: still the client's fault, not a crash.
    std::string what = e.what();
    if (!valid_utf8(what))
      what = json::parse(json(what).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
    return api_err(400, fmt::format("Invalid request: {}", what));
  }
}

}  // namespace

bool valid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) { ++i; continue; }
    int len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

ApiResult<json> parse_json_body(std::string_view body) {
  if (!valid_utf8(body)) return api_err(400, "The request body is not valid UTF-8.");
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Run again for the position of the error; the message helps the client find it.
    try {
      json again = json::parse(body.begin(), body.end());
      (void)again;
    } catch (const json::parse_error& e) {
      std::string what = e.what();
      // A lone "\ud800" escape decodes to invalid UTF-8: say so rather than "syntax error".
      if (what.find("surrogate") != std::string::npos)
        return api_err(400, "The request body contains an invalid Unicode escape (unpaired surrogate), so a string "
                            "would not be valid UTF-8.");
      // nlohmann quotes the bytes it last read, which can cut a character in two.
      if (!valid_utf8(what))
        what = json::parse(json(what).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>();
      return api_err(400, fmt::format("We could not parse the JSON body of your request. ({})", what));
    } catch (...) {
    }
    return api_err(400, "We could not parse the JSON body of your request.");
  }
  if (!j.is_object()) return api_err(400, "The request body must be a JSON object.");
  return j;
}

ApiResult<CompletionRequest> parse_completion_request(const json& j, const ParseContext& ctx) {
  return guarded([&]() -> CompletionRequest {
    Obj o(j);
    o.check_known({"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop", "seed",
                   "echo", "logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty", "stream",
                   "stream_options", "user", "logit_bias", "best_of", "suffix", "ignore_eos", "speculative", "store", "metadata",
                   "service_tier", "safety_identifier", "prompt_cache_key"},
                  ApiKind::kOpenAI);
    CompletionRequest r;
    check_model(o, ctx, ApiKind::kOpenAI, r.model);
    check_openai_noops(o);
    const json* p = o.get("prompt");
    if (!p) fail("'prompt' is required.", "prompt");
    auto ids_of = [&](const json& arr) {
      Ids ids;
      for (const auto& t : arr) {
        if (!t.is_number_integer() && !t.is_number_unsigned()) bad_type("prompt[]", "an integer token id", t);
        int64_t id = t.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(t.get<uint64_t>(), 1ull << 40))
                                            : t.get<int64_t>();
        if (id < 0 || id >= ctx.n_vocab)
          fail(fmt::format("Token id {} in 'prompt' is out of range [0, {}).", id, ctx.n_vocab), "prompt");
        ids.push_back(static_cast<TokenId>(id));
      }
      return ids;
    };
    if (p->is_string()) {
      r.prompts.push_back({p->get<std::string>(), {}});
    } else if (p->is_array()) {
      if (p->empty()) fail("'prompt' must not be empty.", "prompt");
      const json& first = (*p)[0];
      if (first.is_number()) {
        r.prompts.push_back({std::nullopt, ids_of(*p)});
      } else {
        for (const auto& e : *p) {
          if (e.is_string()) r.prompts.push_back({e.get<std::string>(), {}});
          else if (e.is_array()) r.prompts.push_back({std::nullopt, ids_of(e)});
          else bad_type("prompt[]", "a string or an array of token ids", e);
        }
      }
      if (r.prompts.size() > 64) fail("'prompt' holds more than 64 prompts.", "prompt");
    } else {
      bad_type("prompt", "a string, an array of strings or an array of token ids", *p);
    }
    for (const auto& pr : r.prompts)
      if ((pr.text && pr.text->empty()) || (!pr.text && pr.ids.empty()))
        fail("'prompt' must not be empty.", "prompt");

    parse_openai_sampling(o, ctx, r.gen);
    if (o.has("max_tokens")) r.gen.max_tokens = parse_max_tokens(o, "max_tokens");
    if (auto v = o.integer("n", 1, 64)) r.n = static_cast<int32_t>(*v);
    if (auto v = o.integer("best_of", 1, 64); v && *v != r.n)
      fail("'best_of' different from 'n' is not supported.", "best_of");
    if (r.prompts.size() * r.n > 64) fail("'n' times the number of prompts must be at most 64.", "n");
    if (auto v = o.boolean("echo")) r.echo = *v;
    if (auto v = o.integer("logprobs", 0, 20)) r.logprobs = static_cast<int32_t>(*v);
    if (r.echo && r.logprobs >= 0)
      fail("'echo' together with 'logprobs' is not supported (prompt logprobs are not computed).", "echo");
    if (auto v = o.string("suffix"); v && !v->empty())
      fail("'suffix' is not supported on /v1/completions.", "suffix");
    parse_stream(o, r.stream, r.include_usage);
    return r;
  });
}

ApiResult<ChatRequest> parse_chat_request(const json& j, const ParseContext& ctx) {
  return guarded([&]() -> ChatRequest {
    Obj o(j);
    o.check_known({"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                   "min_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
                   "stream", "stream_options", "user", "logit_bias", "logprobs", "top_logprobs", "response_format",
                   "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call", "ignore_eos", "speculative",
                   "store", "metadata", "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
                   "web_search_options", "verbosity", "safety_identifier", "prompt_cache_key"},
                  ApiKind::kOpenAI);
    ChatRequest r;
    check_model(o, ctx, ApiKind::kOpenAI, r.model);
    check_openai_noops(o);

    const json* msgs = o.get("messages");
    if (!msgs) fail("'messages' is required.", "messages");
    if (!msgs->is_array()) bad_type("messages", "an array", *msgs);
    if (msgs->empty()) fail("'messages' must contain at least one message.", "messages");
    for (size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      std::string pn = fmt::format("messages[{}]", i);
      if (!m.is_object()) bad_type(pn, "an object", m);
      Obj mo(m, pn);
      mo.check_known({"role", "content", "name", "tool_calls", "refusal", "function_call", "audio", "tool_call_id"},
                     ApiKind::kOpenAI);
      auto role = mo.string("role");
      if (!role) fail(fmt::format("'{}.role' is required.", pn), pn + ".role");
      ChatMessage cm;
      if (*role == "system" || *role == "developer") cm.role = "system";
      else if (*role == "user" || *role == "assistant") cm.role = *role;
      else if (*role == "tool" || *role == "function")
        fail(fmt::format("Messages with role '{}' are not supported (no tool calling).", *role), pn + ".role");
      else fail(fmt::format("Invalid value for '{}.role': '{}'.", pn, *role), pn + ".role");
      if (const json* tc = mo.get("tool_calls"); tc && !(tc->is_array() && tc->empty()))
        fail("Assistant tool_calls are not supported.", pn + ".tool_calls");
      for (const char* k : {"function_call", "audio", "tool_call_id"})
        if (mo.has(k)) fail(fmt::format("'{}.{}' is not supported.", pn, k), pn + "." + k);
      if (auto v = mo.string("refusal"); v && !v->empty())
        fail(fmt::format("'{}.refusal' is not supported.", pn), pn + ".refusal");
      const json* c = mo.get("content");
      if (!c) {
        if (cm.role != "assistant") fail(fmt::format("'{}.content' is required.", pn), pn + ".content");
      } else {
        cm.content = text_parts(*c, pn + ".content", ApiKind::kOpenAI);
      }
      if (auto v = mo.string("name")) cm.name = *v;
      r.messages.push_back(std::move(cm));
    }

    parse_openai_sampling(o, ctx, r.gen);
    if (o.has("max_completion_tokens")) r.gen.max_tokens = parse_max_tokens(o, "max_completion_tokens");
    else if (o.has("max_tokens")) r.gen.max_tokens = parse_max_tokens(o, "max_tokens");
    if (auto v = o.integer("n", 1, 64)) r.n = static_cast<int32_t>(*v);
    if (auto v = o.boolean("logprobs")) r.logprobs = *v;
    if (auto v = o.integer("top_logprobs", 0, 20)) {
      if (!r.logprobs) fail("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs");
      r.top_logprobs = static_cast<int32_t>(*v);
    }
    parse_stream(o, r.stream, r.include_usage);

    if (const json* rf = o.get("response_format")) {
      if (!rf->is_object()) bad_type("response_format", "an object", *rf);
      Obj ro(*rf, "response_format");
      auto type = ro.string("type");
      if (!type) fail("'response_format.type' is required.", "response_format.type");
      if (*type == "json_object" || *type == "json_schema")
        fail(fmt::format("response_format type '{}' is not supported: structured output is not implemented; use "
                         "{{\"type\": \"text\"}}.",
                         *type),
             "response_format");
      if (*type != "text") fail(fmt::format("Invalid value for 'response_format.type': '{}'.", *type), "response_format");
      ro.check_known({"type"}, ApiKind::kOpenAI);
    }
    auto empty_array = [](const json* v) { return !v || (v->is_array() && v->empty()); };
    if (!empty_array(o.get("tools"))) fail("'tools' are not supported: this server does no tool calling.", "tools");
    if (!empty_array(o.get("functions"))) fail("'functions' are not supported: this server does no tool calling.", "functions");
    for (const char* k : {"tool_choice", "function_call"}) {
      if (const json* v = o.get(k); v && !(v->is_string() && (*v == "none" || *v == "auto")))
        fail(fmt::format("'{}' other than \"none\" or \"auto\" is not supported (no tools).", k), k);
    }
    if (const json* v = o.get("parallel_tool_calls"); v && !v->is_boolean()) bad_type("parallel_tool_calls", "a boolean", *v);
    if (const json* v = o.get("modalities")) {
      if (!v->is_array()) bad_type("modalities", "an array", *v);
      for (const auto& m : *v)
        if (m != "text") fail("Only the 'text' modality is supported.", "modalities");
    }
    for (const char* k : {"audio", "prediction", "reasoning_effort", "web_search_options", "verbosity"})
      if (o.has(k)) fail(fmt::format("'{}' is not supported.", k), k);
    return r;
  });
}

ApiResult<MessagesRequest> parse_messages_request(const json& j, const ParseContext& ctx, bool count_tokens_only) {
  return guarded([&]() -> MessagesRequest {
    Obj o(j);
    constexpr ApiKind kA = ApiKind::kAnthropic;
    if (count_tokens_only)
      o.check_known({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}, kA);
    else
      o.check_known({"model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p", "top_k",
                     "stream", "metadata", "tools", "tool_choice", "thinking", "service_tier", "container",
                     "mcp_servers", "context_management"},
                    kA);
    MessagesRequest r;
    // Anthropic requires the model; OpenAI's tolerance of a missing one is kept here too
    // (a single model is served), but a wrong name is still refused.
    check_model(o, ctx, kA, r.model);
    if (auto s = o.get("system")) {
      std::string sys = text_parts(*s, "system", kA);
      r.messages.push_back({"system", std::move(sys), {}});
    }
    const json* msgs = o.get("messages");
    if (!msgs) fail("messages: Field required", "messages");
    if (!msgs->is_array()) bad_type("messages", "an array", *msgs);
    if (msgs->empty()) fail("messages: at least one message is required", "messages");
    for (size_t i = 0; i < msgs->size(); ++i) {
      const json& m = (*msgs)[i];
      std::string pn = fmt::format("messages.{}", i);
      if (!m.is_object()) bad_type(pn, "an object", m);
      Obj mo(m, pn);
      mo.check_known({"role", "content"}, kA);
      auto role = mo.string("role");
      if (!role) fail(fmt::format("{}.role: Field required", pn), pn + ".role");
      if (*role != "user" && *role != "assistant")
        fail(fmt::format("{}.role: Input should be 'user' or 'assistant'", pn), pn + ".role");
      const json* c = mo.get("content");
      if (!c) fail(fmt::format("{}.content: Field required", pn), pn + ".content");
      std::string text = text_parts(*c, pn + ".content", kA);
      if (*role == "assistant" && i + 1 == msgs->size() && !count_tokens_only) {
        // Anthropic refuses a final assistant turn that ends in whitespace; so do we.
        if (!text.empty() && (text.back() == ' ' || text.back() == '\n' || text.back() == '\t'))
          fail("messages: final assistant content cannot end with trailing whitespace", pn + ".content");
        r.prefill = std::move(text);
      } else {
        r.messages.push_back({*role, std::move(text), {}});
      }
    }
    auto empty_array = [](const json* v) { return !v || (v->is_array() && v->empty()); };
    if (!empty_array(o.get("tools"))) fail("tools: tool use is not supported by this server", "tools");
    if (const json* tc = o.get("tool_choice")) {
      if (!tc->is_object()) bad_type("tool_choice", "an object", *tc);
      auto t = Obj(*tc, "tool_choice").string("type");
      if (!t || (*t != "auto" && *t != "none")) fail("tool_choice: only 'auto' and 'none' are supported (no tools)", "tool_choice");
    }
    if (const json* th = o.get("thinking")) {
      if (!th->is_object()) bad_type("thinking", "an object", *th);
      auto t = Obj(*th, "thinking").string("type");
      if (!t || *t != "disabled") fail("thinking: extended thinking is not supported", "thinking");
    }
    for (const char* k : {"container", "mcp_servers", "context_management"})
      if (o.has(k)) fail(fmt::format("{}: not supported by this server", k), k);
    if (count_tokens_only) return r;

    if (!o.has("max_tokens")) fail("max_tokens: Field required", "max_tokens");
    r.gen.max_tokens = parse_max_tokens(o, "max_tokens");
    r.gen.stop = parse_stop(o, "stop_sequences", false);
    auto& s = r.gen.sampling;
    s.temperature = 1.0f;
    if (auto t = o.number("temperature", 0, 1)) s.temperature = static_cast<float>(*t);
    if (auto v = o.number("top_p", 0, 1)) s.top_p = static_cast<float>(*v);
    if (auto v = o.integer("top_k", 0, 1 << 30)) s.top_k = static_cast<int32_t>(*v);
    if (auto v = o.boolean("stream")) r.stream = *v;
    if (const json* md = o.get("metadata")) {
      if (!md->is_object()) bad_type("metadata", "an object", *md);
      Obj mo(*md, "metadata");
      mo.check_known({"user_id"}, kA);
      if (auto u = mo.string("user_id")) r.gen.user = *u;
    }
    if (auto v = o.string("service_tier"); v && *v != "auto" && *v != "standard_only")
      fail(fmt::format("service_tier: '{}' is not supported", *v), "service_tier");
    return r;
  });
}

ApiResult<TokenizeRequest> parse_tokenize_request(const json& j) {
  return guarded([&]() -> TokenizeRequest {
    Obj o(j);
    o.check_known({"content", "prompt", "add_special", "with_pieces", "model"}, ApiKind::kOpenAI);
    TokenizeRequest r;
    auto c = o.string("content");
    if (!c) c = o.string("prompt");
    if (!c) fail("'content' is required.", "content");
    r.content = *c;
    if (auto v = o.boolean("add_special")) r.add_special = *v;
    if (auto v = o.boolean("with_pieces")) r.with_pieces = *v;
    return r;
  });
}

ApiResult<DetokenizeRequest> parse_detokenize_request(const json& j, const ParseContext& ctx) {
  return guarded([&]() -> DetokenizeRequest {
    Obj o(j);
    o.check_known({"tokens", "model"}, ApiKind::kOpenAI);
    const json* t = o.get("tokens");
    if (!t) fail("'tokens' is required.", "tokens");
    if (!t->is_array()) bad_type("tokens", "an array", *t);
    DetokenizeRequest r;
    for (const auto& x : *t) {
      if (!x.is_number_integer() && !x.is_number_unsigned()) bad_type("tokens[]", "an integer", x);
      int64_t id = x.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(x.get<uint64_t>(), 1ull << 40))
                                          : x.get<int64_t>();
      if (id < 0 || id >= ctx.n_vocab)
        fail(fmt::format("Token id {} is out of range [0, {}).", id, ctx.n_vocab), "tokens");
      r.tokens.push_back(static_cast<TokenId>(id));
    }
    return r;
  });
}

// ---- code completion (fill-in-the-middle) ----------------------------------------------------
// The two FIM-only bodies (/infill, /v1/fim/completions) have their own field readers: their
// messages follow llama.cpp's and Mistral's wording rather than OpenAI's.

namespace {

// Field readers throwing ApiError, for the two FIM-only bodies.
struct FimFields {
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
ApiResult<FimRequest> fim_guarded(F&& f) {
  try {
    return f();
  } catch (const ApiError& e) {
    return std::unexpected(e);
  } catch (const std::exception& e) {
    return api_err(400, fmt::format("Invalid request: {}", e.what()));
  }
}

void fim_check_model(const std::optional<std::string>& m, const std::string& served) {
  if (m && !m->empty() && *m != served)
    throw ApiError{404, fmt::format("The model `{}` does not exist or you do not have access to it.", *m), "model",
                   "model_not_found", {}};
}

ApiResult<FimRequest> parse_infill_impl(const json& j, const std::string& served) {
  return fim_guarded([&] {
    FimFields f{j};
    // llama.cpp fields that editors (llama.vim, llama.vscode) send and that have no effect
    // here are accepted: id_slot, cache_prompt (the prefix cache is always on), samplers,
    // t_max_prompt_ms, response_fields, n_probs 0.
    f.known({"input_prefix", "input_suffix", "input_extra", "prompt", "n_predict", "max_tokens", "t_max_predict_ms",
             "n_indent", "temperature", "top_k", "top_p", "min_p", "seed", "stop", "stream", "id_slot", "cache_prompt",
             "samplers", "t_max_prompt_ms", "response_fields", "n_probs", "model", "priority", "repeat_penalty",
             "ignore_eos", "user"});
    FimRequest c;
    c.api = FimApi::kInfill;
    fim_check_model(f.str("model"), served);
    c.in.prefix = f.str("input_prefix").value_or("");
    c.in.suffix = f.str("input_suffix").value_or("");
    c.in.prompt = f.str("prompt").value_or("");
    if (auto e = f.get("input_extra")) {
      if (!e->is_array()) FimFields::fail("'input_extra' must be an array of {filename, text} objects.", "input_extra");
      for (const auto& ch : *e) {
        if (!ch.is_object()) FimFields::fail("'input_extra' must be an array of {filename, text} objects.", "input_extra");
        FimFields cf{ch};
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

ApiResult<FimRequest> parse_mistral_impl(const json& j, const std::string& served) {
  return fim_guarded([&] {
    FimFields f{j};
    f.known({"model", "prompt", "suffix", "max_tokens", "min_tokens", "temperature", "top_p", "stop", "stream",
             "random_seed", "seed", "user", "priority", "ignore_eos"});
    FimRequest c;
    c.api = FimApi::kMistral;
    fim_check_model(f.str("model"), served);
    auto p = f.str("prompt");
    if (!p) FimFields::fail("'prompt' is required.", "prompt");
    c.in.prefix = *p;
    c.in.suffix = f.str("suffix").value_or("");
    if (auto v = f.integer("max_tokens", 0, 1 << 20)) c.max_tokens = static_cast<int32_t>(*v);
    if (auto v = f.integer("min_tokens", 0, 1 << 20); v && *v > 0)
      FimFields::fail("'min_tokens' is not supported.", "min_tokens");
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
ApiResult<FimRequest> parse_openai_fim_impl(const json& body, const std::string& served, int32_t n_vocab) {
  FimRequest c;
  c.api = FimApi::kOpenAI;
  json rest = body;
  c.in.suffix = body.value("suffix", std::string());
  rest.erase("suffix");
  auto pr = fim_guarded([&] {
    FimRequest t;
    t.priority = FimFields{body}.priority();
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

}  // namespace

bool is_fim_completion(const json& body) {
  auto it = body.find("suffix");
  return it != body.end() && it->is_string() && !it->get_ref<const std::string&>().empty();
}

ApiResult<FimRequest> parse_infill_request(const json& j, const ParseContext& ctx) {
  return parse_infill_impl(j, ctx.model_name);
}

ApiResult<FimRequest> parse_fim_completion_request(const json& j, const ParseContext& ctx) {
  return parse_mistral_impl(j, ctx.model_name);
}

ApiResult<FimRequest> parse_completion_fim_request(const json& j, const ParseContext& ctx) {
  if (!is_fim_completion(j)) return api_err(400, "'suffix' must be a non-empty string.", "suffix");
  return parse_openai_fim_impl(j, ctx.model_name, ctx.n_vocab);
}

// ---- errors ---------------------------------------------------------------------------------

ApiError api_error_from_status(const Status& s) {
  switch (s.code) {
    case Code::kInvalidArgument: return {400, s.message, {}, {}, {}};
    case Code::kNotFound: return {404, s.message, {}, {}, {}};
    case Code::kUnsupported: return {400, s.message, {}, {}, {}};
    case Code::kOutOfMemory: return {503, s.message, {}, {}, {}};
    case Code::kCancelled: return {503, s.message.empty() ? "The request was cancelled." : s.message, {}, {}, {}};
    // OpenAI's rate-limit shape (type "requests", code "rate_limit_exceeded"); the Anthropic
    // endpoints turn it into 529 overloaded_error (send_error).
    case Code::kOverloaded:
      return {429, s.message.empty() ? "The server is overloaded: too many requests are waiting. Retry later." : s.message,
              {}, "rate_limit_exceeded", "requests"};
    default: return {500, s.message, {}, {}, {}};
  }
}

std::string openai_error_type(const ApiError& e) {
  if (!e.type.empty()) return e.type;
  if (e.status == 401) return "invalid_request_error";
  if (e.status == 404) return "invalid_request_error";
  if (e.status == 429) return "rate_limit_exceeded";
  if (e.status == 503) return "server_error";
  if (e.status >= 500) return "server_error";
  return "invalid_request_error";
}

std::string anthropic_error_type(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503:
    case 529: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
  }
}

json openai_error_body(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", openai_error_type(e)},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return {{"error", std::move(err)}};
}

json anthropic_error_body(const ApiError& e) {
  return {{"type", "error"}, {"error", {{"type", anthropic_error_type(e.status)}, {"message", e.message}}}};
}

}  // namespace merlin::server
