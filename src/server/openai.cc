// OpenAI endpoints: POST /v1/completions (without a suffix; with one it is FIM, fim.cc) and
// POST /v1/chat/completions.
#include <httplib.h>

#include <algorithm>

#include "server/core.h"
#include "server/ids.h"

namespace merlin::server {

using nlohmann::json;

namespace {

// OpenAI chat format: {"content":[{token, logprob, bytes, top_logprobs:[...]}]}
json chat_logprobs(const ServerCore& s, const std::vector<TokenId>& ids, const std::vector<TokenLogprob>& lps,
                   const std::vector<std::vector<TokenLogprob>>& tops, size_t from, size_t to) {
  json content = json::array();
  for (size_t i = from; i < to && i < lps.size(); ++i) {
    json top = json::array();
    if (i < tops.size())
      for (const auto& t : tops[i])
        top.push_back({{"token", s.tok_str(t.id)}, {"logprob", t.logprob}, {"bytes", s.tok_bytes(t.id)}});
    TokenId id = i < ids.size() ? ids[i] : lps[i].id;
    content.push_back(
        {{"token", s.tok_str(id)}, {"logprob", lps[i].logprob}, {"bytes", s.tok_bytes(id)}, {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

// Legacy completions format: tokens, token_logprobs, top_logprobs, text_offset.
json legacy_logprobs(const ServerCore& s, const Gen& g, size_t from, size_t to, size_t& offset) {
  json tokens = json::array(), lp = json::array(), top = json::array(), off = json::array();
  for (size_t i = from; i < to && i < g.lps.size(); ++i) {
    TokenId id = i < g.tokens.size() ? g.tokens[i] : g.lps[i].id;
    std::string str = s.tok_str(id);
    tokens.push_back(str);
    lp.push_back(g.lps[i].logprob);
    json d = json::object();
    if (i < g.tops.size())
      for (const auto& t : g.tops[i]) d[s.tok_str(t.id)] = t.logprob;
    top.push_back(d);
    off.push_back(offset);
    offset += str.size();
  }
  return {{"tokens", tokens}, {"token_logprobs", lp}, {"top_logprobs", top}, {"text_offset", off}};
}

// The end of an OpenAI stream, the same for completions and chat: an error chunk if a
// generation failed, else the usage chunk when asked for; then [DONE]. `head` holds the
// chunk's id/object/created/model.
bool finish_openai_stream(const ServerCore& s, Sse& sse, const std::vector<Gen>& gens, bool include_usage, json head,
                          int32_t prompt_tokens) {
  for (const auto& g : gens)
    if (failed(g)) {
      sse.data(openai_error_body(s.gen_error(g)));
      sse.done_marker();
      sse.finish();
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
    head["usage"] = ServerCore::openai_usage(prompt_tokens, completion, cached);
    sse.data(head);
  }
  sse.done_marker();
  sse.finish();
  return true;
}

}  // namespace

void handle_completions(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  constexpr ApiKind kK = ApiKind::kOpenAI;
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  if (is_fim_completion(*body)) return handle_completion_fim(s, *body, req, res);
  auto r = parse_completion_request(*body, s.pctx);
  if (!r) return s.send_error(res, kK, r.error());

  std::vector<GenerationRequest> reqs;
  std::vector<std::string> echo_text;
  int32_t prompt_total = 0;
  for (auto& p : r->prompts) {
    Ids ids = p.text ? s.encode_prompt(*p.text) : p.ids;
    auto mt = s.resolve_max_tokens(r->gen.max_tokens, ids.size(), false);
    if (!mt) return s.send_error(res, kK, mt.error());
    prompt_total += static_cast<int32_t>(ids.size());
    std::string et = r->echo ? (p.text ? *p.text : s.tok().decode(ids)) : std::string();
    for (int j = 0; j < r->n; ++j) {
      reqs.push_back(s.make_request(r->gen, ids, *mt, r->logprobs, Priority::kCompletion, j));
      echo_text.push_back(et);
    }
  }
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto gens = s.submit_all(std::move(reqs));
  if (!gens) return s.send_error(res, kK, gens.error());

  std::string id = random_id("cmpl-");
  int64_t created = unix_now();
  std::string model = s.pctx.model_name;
  if (!r->stream) {
    if (!s.wait_all(*gens, *conn)) return;  // the client is gone
    json choices = json::array();
    int32_t completion = 0, cached = 0;
    for (auto& g : *gens) {
      if (failed(g)) return s.send_error(res, kK, s.gen_error(g));
      size_t off = echo_text[g.index].size();
      json lp = r->logprobs >= 0 ? legacy_logprobs(s, g, 0, g.lps.size(), off) : json(nullptr);
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
               {"usage", ServerCore::openai_usage(prompt_total, completion, cached)}});
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
      [&s, state, guard, conn, id, created, model, include_usage, logprobs, offsets, echo_text, prompt_total](
          size_t, httplib::DataSink& sink) {
        Sse sse(sink, conn);
        auto chunk = [&](json choice) {
          json c = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model},
                    {"system_fingerprint", "merlin"}, {"choices", json::array({std::move(choice)})}};
          if (include_usage) c["usage"] = nullptr;
          return c;
        };
        // Echoed prompts go first, as their own chunks.
        for (auto& g : *state)
          if (!echo_text[g.index].empty() &&
              !sse.data(chunk({{"index", g.index}, {"text", echo_text[g.index]}, {"logprobs", nullptr},
                               {"finish_reason", nullptr}})))
            return false;
        std::vector<size_t> lp_sent(state->size(), 0);
        bool ok = sse.pump(streams_of(*state), [&](size_t i, const StreamEvent& ev) {
          Gen& g = (*state)[i];
          g.add(ev);
          if (ev.done && failed(g)) return true;  // reported after the loop
          json lp = nullptr;
          if (logprobs >= 0 && g.lps.size() > lp_sent[g.index]) {
            lp = legacy_logprobs(s, g, lp_sent[g.index], g.lps.size(), (*offsets)[g.index]);
            lp_sent[g.index] = g.lps.size();
          }
          if (!ev.text.empty() || !lp.is_null() || ev.done) {
            json fin = ev.done ? json(openai_finish(g.finish)) : json(nullptr);
            if (!sse.data(chunk({{"index", g.index}, {"text", ev.text}, {"logprobs", lp}, {"finish_reason", fin}})))
              return false;
          }
          return true;
        });
        if (!ok) return false;
        return finish_openai_stream(s, sse, *state, include_usage,
                                    {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model}},
                                    prompt_total);
      });
}

void handle_chat(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  constexpr ApiKind kK = ApiKind::kOpenAI;
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  auto r = parse_chat_request(*body, s.pctx);
  if (!r) return s.send_error(res, kK, r.error());
  auto rendered = s.render_chat(r->messages, true);
  if (!rendered) return s.send_error(res, kK, rendered.error());
  Ids ids = s.encode_chat(*rendered);
  auto mt = s.resolve_max_tokens(r->gen.max_tokens, ids.size(), true);
  if (!mt) return s.send_error(res, kK, mt.error());
  int32_t n_lp = r->logprobs ? r->top_logprobs : -1;
  std::vector<GenerationRequest> reqs;
  for (int j = 0; j < r->n; ++j) reqs.push_back(s.make_request(r->gen, ids, *mt, n_lp, Priority::kChat, j));
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto gens = s.submit_all(std::move(reqs));
  if (!gens) return s.send_error(res, kK, gens.error());

  std::string id = random_id("chatcmpl-");
  int64_t created = unix_now();
  std::string model = s.pctx.model_name;
  int32_t prompt_len = static_cast<int32_t>(ids.size());
  bool want_lp = r->logprobs;
  if (!r->stream) {
    if (!s.wait_all(*gens, *conn)) return;  // the client is gone
    json choices = json::array();
    int32_t completion = 0, cached = 0;
    for (auto& g : *gens) {
      if (failed(g)) return s.send_error(res, kK, s.gen_error(g));
      choices.push_back(
          {{"index", g.index},
           {"message", {{"role", "assistant"}, {"content", g.text}, {"refusal", nullptr}}},
           {"logprobs", want_lp ? chat_logprobs(s, g.tokens, g.lps, g.tops, 0, g.lps.size()) : json(nullptr)},
           {"finish_reason", openai_finish(g.finish)}});
      completion += g.usage.completion_tokens;
      cached = std::max(cached, g.usage.cached_tokens);
    }
    send_json(res, 200,
              {{"id", id}, {"object", "chat.completion"}, {"created", created}, {"model", model},
               {"system_fingerprint", "merlin"}, {"choices", choices},
               {"usage", ServerCore::openai_usage(prompt_len, completion, cached)}});
    return;
  }

  auto state = std::make_shared<std::vector<Gen>>(std::move(*gens));
  bool include_usage = r->include_usage;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [&s, state, guard, conn, id, created, model, include_usage, want_lp, prompt_len](
                               size_t, httplib::DataSink& sink) {
        Sse sse(sink, conn);
        auto chunk = [&](json choice) {
          json c = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model},
                    {"system_fingerprint", "merlin"}, {"choices", json::array({std::move(choice)})}};
          if (include_usage) c["usage"] = nullptr;
          return c;
        };
        // The first chunk of each choice carries the role, as OpenAI's does.
        for (auto& g : *state)
          if (!sse.data(chunk({{"index", g.index},
                               {"delta", {{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}},
                               {"logprobs", nullptr},
                               {"finish_reason", nullptr}})))
            return false;
        std::vector<size_t> lp_sent(state->size(), 0);
        bool ok = sse.pump(streams_of(*state), [&](size_t i, const StreamEvent& ev) {
          Gen& g = (*state)[i];
          g.add(ev);
          if (ev.done && failed(g)) return true;
          json lp = nullptr;
          if (want_lp && g.lps.size() > lp_sent[g.index]) {
            lp = chat_logprobs(s, g.tokens, g.lps, g.tops, lp_sent[g.index], g.lps.size());
            lp_sent[g.index] = g.lps.size();
          }
          if (!ev.text.empty() || !lp.is_null()) {
            if (!sse.data(chunk({{"index", g.index}, {"delta", {{"content", ev.text}}}, {"logprobs", lp},
                                 {"finish_reason", nullptr}})))
              return false;
          }
          if (ev.done && !sse.data(chunk({{"index", g.index}, {"delta", json::object()}, {"logprobs", nullptr},
                                          {"finish_reason", openai_finish(g.finish)}})))
            return false;
          return true;
        });
        if (!ok) return false;
        return finish_openai_stream(
            s, sse, *state, include_usage,
            {{"id", id}, {"object", "chat.completion.chunk"}, {"created", created}, {"model", model}}, prompt_len);
      });
}

}  // namespace merlin::server
