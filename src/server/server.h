// `merlin serve`: OpenAI- and Anthropic-compatible HTTP API over one Engine.
//   OpenAI:    GET /v1/models, POST /v1/completions, POST /v1/chat/completions   (openai.cc)
//   Anthropic: POST /v1/messages, POST /v1/messages/count_tokens                 (anthropic.cc)
//   FIM:       POST /infill, POST /v1/fim/completions, suffix on /v1/completions (fim.cc)
//   Utility:   GET /health, POST /tokenize, POST /detokenize, GET /metrics       (server.cc)
// Request bodies of every endpoint are parsed by server/request_parse.h (pure, fuzzed); SSE,
// waiting for generations and noticing clients that left are in server/stream.h.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/engine.h"
#include "server/fim.h"

namespace merlin::server {

struct ServerOptions {
  std::string host = "127.0.0.1";   // loopback unless asked otherwise
  int port = 8080;                  // 0: any free port (tests)
  // Accepted keys (Authorization: Bearer or x-api-key); empty: no authentication. `merlin serve`
  // reads them from MERLIN_API_KEY / --api-key-file (server/api_keys.h). Never logged.
  std::vector<std::string> api_keys;
  // Log each request's method, path, status, time and body (prompt text). Off by default, so
  // that nothing a client sends reaches the log.
  bool log_requests = false;
  size_t max_body_bytes = 8u << 20;
  int http_threads = 0;             // 0: enough for every running sequence plus waiting ones
  int read_timeout_s = 60;
  int write_timeout_s = 60;
  FimOptions fim;                   // code completion (server/fim.h)
  // Whole-request limit from arrival, queueing included (GenerationRequest::timeout_ms); 0: none.
  // A request past it answers 504 (non-streaming) or ends its stream with an error event.
  double request_timeout_s = 0;
  // Retry-After (seconds) on 429 / 529 when the engine's queue is full (--max-queue).
  int retry_after_s = 1;
};

// What "chat_template" says when the model ships none and ChatML is used instead.
extern const char* const kChatMlFallback;

class HttpServer {
 public:
  // The engine must outlive the server. Parses the model's chat template once.
  static Result<std::unique_ptr<HttpServer>> create(Engine& engine, ServerOptions opt);
  ~HttpServer();

  // Binds the socket; returns the port (useful with port 0).
  Result<int> bind();
  // Serves until stop(); call after bind().
  void serve();
  // Graceful shutdown from any thread: new generation requests get 503, in-flight ones end with
  // a final error event (the engine is shut down), then the listener stops. Idempotent.
  void stop();
  bool stopping() const;
  // The chat template in use, as GET /v1/models reports it ("chat_template"): "model (SOURCE)"
  // for the model's own, kChatMlFallback when the model has none.
  const std::string& chat_template() const;

 private:
  HttpServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace merlin::server
