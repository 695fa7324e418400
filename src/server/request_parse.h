// Request parsing for the HTTP server, separated from HTTP so that it can be unit tested and
// fuzzed: pure functions from a request body (or its JSON) to a typed request, or an ApiError
// with the status and message the imitated API would give. Nothing here tokenizes or touches
// the engine; the server turns these into GenerationRequests.
//
// Policy: every field the API defines is either honoured, or accepted only at its default /
// a no-op value; anything else (unknown fields, unsupported features with non-default values)
// is a 400 naming the field. Nothing is silently ignored.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/engine.h"  // Priority (header only: the parser links nothing of the engine)
#include "engine/sampler.h"
#include "server/api_error.h"

namespace merlin::server {

// What parsing needs to know about the served model.
struct ParseContext {
  std::string model_name;  // requests naming another model get 404
  int32_t n_vocab = 0;     // token ids must be below this
};

// Sampling and stopping fields shared by the generation endpoints.
struct GenFields {
  SamplingParams sampling;
  std::optional<int32_t> max_tokens;  // nullopt: endpoint default (completions 16, chat: rest of ctx)
  std::vector<std::string> stop;
  bool ignore_eos = false;            // extension (benchmarks)
  std::optional<bool> speculative;    // extension: force speculative decoding on/off for this request
  std::string user;
};

struct CompletionPrompt {
  std::optional<std::string> text;  // a string prompt, tokenized by the server
  Ids ids;                          // or token ids
};

struct CompletionRequest {
  std::string model;
  std::vector<CompletionPrompt> prompts;  // a list of prompts is a batch: choices i*n + j
  GenFields gen;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;
  int32_t logprobs = -1;  // -1 none; k: chosen + top k (legacy format)
};

struct ChatMessage {
  std::string role;
  std::string content;
  std::string name;  // optional; passed to the template
};

struct ChatRequest {
  std::string model;
  std::vector<ChatMessage> messages;
  GenFields gen;
  int32_t n = 1;
  bool stream = false;
  bool include_usage = false;
  bool logprobs = false;
  int32_t top_logprobs = 0;
};

struct MessagesRequest {  // Anthropic /v1/messages and /v1/messages/count_tokens
  std::string model;
  std::vector<ChatMessage> messages;  // the system prompt, if any, first with role "system"
  // A final assistant message is a prefill: the answer continues it rather than starting a
  // new turn, so it is kept out of `messages` and appended after the generation prompt.
  std::optional<std::string> prefill;
  GenFields gen;
  bool stream = false;
};

struct TokenizeRequest {
  std::string content;
  bool add_special = false;
  bool with_pieces = false;
};

struct DetokenizeRequest {
  Ids tokens;
};

// ---- code completion (fill-in-the-middle) ----------------------------------------------------

struct FimExtraChunk {
  std::string filename;
  std::string text;
};

struct FimInput {
  std::string prefix, suffix;
  std::string prompt;                // text placed after the middle token (llama.cpp /infill)
  std::vector<FimExtraChunk> extra;  // repository context, oldest / least relevant first
};

// Which API a FIM request came in on.
enum class FimApi { kOpenAI, kInfill, kMistral };

// One parsed FIM request, whichever endpoint it came from.
struct FimRequest {
  FimApi api = FimApi::kOpenAI;
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

// /v1/completions: true when the body asks for FIM (a non-empty string "suffix").
bool is_fim_completion(const nlohmann::json& body);
// POST /infill (llama.cpp).
ApiResult<FimRequest> parse_infill_request(const nlohmann::json& j, const ParseContext& ctx);
// POST /v1/fim/completions (Mistral / Codestral).
ApiResult<FimRequest> parse_fim_completion_request(const nlohmann::json& j, const ParseContext& ctx);
// POST /v1/completions with a suffix (OpenAI): the rest of the body is validated by
// parse_completion_request, so every OpenAI field is checked the same way as without a suffix.
ApiResult<FimRequest> parse_completion_fim_request(const nlohmann::json& j, const ParseContext& ctx);

// The body as JSON: must be valid UTF-8 and a JSON object.
ApiResult<nlohmann::json> parse_json_body(std::string_view body);

ApiResult<CompletionRequest> parse_completion_request(const nlohmann::json& j, const ParseContext& ctx);
ApiResult<ChatRequest> parse_chat_request(const nlohmann::json& j, const ParseContext& ctx);
ApiResult<MessagesRequest> parse_messages_request(const nlohmann::json& j, const ParseContext& ctx,
                                                  bool count_tokens_only = false);
ApiResult<TokenizeRequest> parse_tokenize_request(const nlohmann::json& j);
ApiResult<DetokenizeRequest> parse_detokenize_request(const nlohmann::json& j, const ParseContext& ctx);

// Convenience for tests and the fuzzer: body -> request.
template <class T, class F>
ApiResult<T> parse_body_with(std::string_view body, F&& f) {
  auto j = parse_json_body(body);
  if (!j) return std::unexpected(j.error());
  return f(*j);
}

bool valid_utf8(std::string_view s);

}  // namespace merlin::server
