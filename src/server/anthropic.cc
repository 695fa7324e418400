// Anthropic endpoints: POST /v1/messages and POST /v1/messages/count_tokens.
#include <httplib.h>

#include "server/core.h"
#include "server/ids.h"

namespace merlin::server {

using nlohmann::json;

namespace {

// Which of Anthropic's stop reasons ended a finished generation.
std::pair<std::string, json> anthropic_stop(const ServerCore& s, const Gen& g, const std::vector<std::string>& stops,
                                            bool ignore_eos) {
  if (g.finish == FinishReason::kLength || g.finish == FinishReason::kTimeBudget) return {"max_tokens", nullptr};
  if (!g.tokens.empty() && !ignore_eos && s.tok().is_eog(g.tokens.back())) return {"end_turn", nullptr};
  if (!stops.empty()) {
    // The text ends right before the stop sequence; the tokens still hold it.
    std::string full = s.tok().decode(g.tokens);
    for (const auto& st : stops)
      if (full.size() >= g.text.size() + st.size() && full.compare(g.text.size(), st.size(), st) == 0)
        return {"stop_sequence", st};
    std::string tail = full.size() > g.text.size() ? full.substr(g.text.size()) : std::string();
    for (const auto& st : stops)
      if (tail.find(st) != std::string::npos) return {"stop_sequence", st};
  }
  return {"end_turn", nullptr};
}

}  // namespace

void handle_messages(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  constexpr ApiKind kK = ApiKind::kAnthropic;
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  auto r = parse_messages_request(*body, s.pctx, false);
  if (!r) return s.send_error(res, kK, r.error());
  auto rendered = s.render_chat(r->messages, true);
  if (!rendered) return s.send_error(res, kK, rendered.error());
  if (r->prefill) *rendered += *r->prefill;
  Ids ids = s.encode_chat(*rendered);
  auto mt = s.resolve_max_tokens(r->gen.max_tokens, ids.size(), false);
  if (!mt) return s.send_error(res, kK, mt.error());
  std::vector<GenerationRequest> reqs;
  reqs.push_back(s.make_request(r->gen, ids, *mt, -1, Priority::kChat, 0));
  auto guard = std::make_shared<ActiveGuard>(s.active);
  auto conn = std::make_shared<ClientConn>(req);
  auto gens = s.submit_all(std::move(reqs));
  if (!gens) return s.send_error(res, kK, gens.error());

  std::string id = random_id("msg_");
  std::string model = r->model.empty() ? s.pctx.model_name : r->model;
  int32_t prompt_len = static_cast<int32_t>(ids.size());
  auto stops = r->gen.stop;
  bool ignore_eos = r->gen.ignore_eos;
  if (!r->stream) {
    if (!s.wait_all(*gens, *conn)) return;  // the client is gone
    Gen& g = (*gens)[0];
    if (failed(g)) return s.send_error(res, kK, s.gen_error(g));
    auto [reason, seq] = anthropic_stop(s, g, stops, ignore_eos);
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
      [&s, state, guard, conn, id, model, prompt_len, stops, ignore_eos](size_t, httplib::DataSink& sink) {
        Sse sse(sink, conn);
        json start = {{"type", "message_start"},
                      {"message",
                       {{"id", id}, {"type", "message"}, {"role", "assistant"}, {"model", model},
                        {"content", json::array()}, {"stop_reason", nullptr}, {"stop_sequence", nullptr},
                        {"usage", {{"input_tokens", prompt_len}, {"output_tokens", 0}}}}}};
        if (!sse.event("message_start", start)) return false;
        if (!sse.event("content_block_start", {{"type", "content_block_start"}, {"index", 0},
                                               {"content_block", {{"type", "text"}, {"text", ""}}}}))
          return false;
        if (!sse.event("ping", {{"type", "ping"}})) return false;
        bool ok = sse.pump(streams_of(*state), [&](size_t i, const StreamEvent& ev) {
          (*state)[i].add(ev);
          if (ev.text.empty()) return true;
          return sse.event("content_block_delta", {{"type", "content_block_delta"}, {"index", 0},
                                                   {"delta", {{"type", "text_delta"}, {"text", ev.text}}}});
        });
        if (!ok) return false;
        Gen& g = (*state)[0];
        if (failed(g)) {
          sse.event("error", anthropic_error_body(s.gen_error(g)));
          sse.finish();
          return true;
        }
        auto [reason, seq] = anthropic_stop(s, g, stops, ignore_eos);
        sse.event("content_block_stop", {{"type", "content_block_stop"}, {"index", 0}});
        sse.event("message_delta", {{"type", "message_delta"},
                                    {"delta", {{"stop_reason", reason}, {"stop_sequence", seq}}},
                                    {"usage", {{"output_tokens", g.usage.completion_tokens}}}});
        sse.event("message_stop", {{"type", "message_stop"}});
        sse.finish();
        return true;
      });
}

void handle_count_tokens(ServerCore& s, const httplib::Request& req, httplib::Response& res) {
  constexpr ApiKind kK = ApiKind::kAnthropic;
  auto body = s.preamble(req, res, kK);
  if (!body) return;
  auto r = parse_messages_request(*body, s.pctx, true);
  if (!r) return s.send_error(res, kK, r.error());
  auto rendered = s.render_chat(r->messages, true);
  if (!rendered) return s.send_error(res, kK, rendered.error());
  if (r->prefill) *rendered += *r->prefill;
  send_json(res, 200, {{"input_tokens", s.encode_chat(*rendered).size()}});
}

}  // namespace merlin::server
