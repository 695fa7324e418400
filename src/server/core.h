// What the API handlers of `merlin serve` share (internal to src/server): the engine, the
// parsed chat template, authentication, prompt / request building, submission and the
// collected result of a generation. The handlers themselves live one file per API:
//   openai.cc     POST /v1/completions, POST /v1/chat/completions
//   anthropic.cc  POST /v1/messages, POST /v1/messages/count_tokens
//   fim.cc        POST /infill, POST /v1/fim/completions, suffix on /v1/completions
//   server.cc     setup, routes, auth, GET /v1/models, /health, /metrics, /tokenize, /detokenize
#pragma once
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "server/api_error.h"
#include "server/request_parse.h"
#include "server/server.h"
#include "server/stream.h"
#include "tokenizer/chat_template.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace merlin::server {

void send_json(httplib::Response& res, int status, const nlohmann::json& j);
// Writes the error in the API's shape. An overload (is_overload: the engine's queue is full) is
// 429 on OpenAI-shaped endpoints and 529 overloaded_error on Anthropic's, with Retry-After.
void send_error(httplib::Response& res, ApiKind kind, const ApiError& e, int retry_after_s = 1);
bool is_overload(const ApiError& e);
// What a request that ran past --request-timeout answers: 504, type timeout_error.
ApiError timeout_error(double timeout_s);
ApiKind kind_of_path(const std::string& path);

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

  void add(const StreamEvent& ev);
};

const char* openai_finish(FinishReason r);
// Ended without a result to return: cancelled (shutdown), failed, or past the request timeout.
inline bool failed(const Gen& g) {
  return g.finish == FinishReason::kCancelled || g.finish == FinishReason::kError || g.finish == FinishReason::kTimeout;
}
std::vector<RequestStream*> streams_of(std::vector<Gen>& gens);

// Counts a generation request as in flight for its whole life, including a stream provider
// that outlives the handler, so that stop() can wait for every stream to end properly.
struct ActiveGuard {
  std::atomic<int>* n;
  explicit ActiveGuard(std::atomic<int>& a) : n(&a) { n->fetch_add(1); }
  ~ActiveGuard() { n->fetch_sub(1); }
};

struct ServerCore {
  Engine* engine = nullptr;
  ServerOptions opt;
  std::shared_ptr<const ChatTemplate> tmpl;
  // Which chat template the chat endpoints use: "model (SOURCE)", or kChatMlFallback.
  std::string chat_template_desc;
  std::string bos_str, eos_str;
  ParseContext pctx;
  std::atomic<bool> stopping{false};
  std::atomic<int> active{0};  // generation requests in flight (handlers and stream providers)

  const Tokenizer& tok() const { return engine->tokenizer(); }

  void send_error(httplib::Response& res, ApiKind kind, const ApiError& e) const {
    server::send_error(res, kind, e, opt.retry_after_s);
  }
  std::optional<ApiError> check_auth(const httplib::Request& req, ApiKind kind) const;
  // Checks authentication and parses the body; on failure the response is already written.
  std::optional<nlohmann::json> preamble(const httplib::Request& req, httplib::Response& res, ApiKind kind) const;

  ApiResult<int32_t> resolve_max_tokens(std::optional<int32_t> asked, size_t prompt_len, bool rest_of_ctx) const;
  ApiResult<std::string> render_chat(const std::vector<ChatMessage>& msgs, bool add_generation_prompt) const;
  Ids encode_chat(const std::string& rendered) const;
  Ids encode_prompt(const std::string& text) const;
  GenerationRequest make_request(const GenFields& g, Ids prompt, int32_t max_tokens, int32_t n_logprobs,
                                 Priority prio, int choice) const;
  // Submits every request; on failure cancels the ones already submitted.
  ApiResult<std::vector<Gen>> submit_all(std::vector<GenerationRequest> reqs);
  // Blocks until every generation is done (non-streaming responses). False when the client
  // went away meanwhile: the generations are then cancelled and no answer is needed.
  bool wait_all(std::vector<Gen>& gens, ClientConn& conn);
  ApiError gen_error(const Gen& g) const;

  std::string tok_str(TokenId id) const { return lossy_utf8(tok().token_bytes(id)); }
  nlohmann::json tok_bytes(TokenId id) const;
  static nlohmann::json openai_usage(int32_t prompt, int32_t completion, int32_t cached);
};

// Handlers, one file per API.
void handle_completions(ServerCore& s, const httplib::Request& req, httplib::Response& res);
void handle_chat(ServerCore& s, const httplib::Request& req, httplib::Response& res);
void handle_messages(ServerCore& s, const httplib::Request& req, httplib::Response& res);
void handle_count_tokens(ServerCore& s, const httplib::Request& req, httplib::Response& res);
void handle_infill(ServerCore& s, const httplib::Request& req, httplib::Response& res);
void handle_fim_completions(ServerCore& s, const httplib::Request& req, httplib::Response& res);
// /v1/completions with a suffix (is_fim_completion(body)), body already parsed.
void handle_completion_fim(ServerCore& s, const nlohmann::json& body, const httplib::Request& req,
                           httplib::Response& res);

}  // namespace merlin::server
