// API errors of the HTTP server, shaped like the API being imitated: OpenAI's
// {"error":{"message","type","param","code"}} or Anthropic's {"type":"error","error":{...}}.
// Kept apart from Status because an HTTP answer needs a status code, a parameter name and the
// imitated API's error type, none of which belong in the engine's error type.
#pragma once
#include <expected>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace merlin::server {

enum class ApiKind { kOpenAI, kAnthropic };

struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // OpenAI "param" (empty: null)
  std::string code;   // OpenAI "code" (empty: null)
  // OpenAI "type"; empty means the default for the status. The Anthropic type is derived from
  // the status, as Anthropic's API does.
  std::string type;
};

template <class T>
using ApiResult = std::expected<T, ApiError>;

inline std::unexpected<ApiError> api_err(int status, std::string message, std::string param = {},
                                         std::string code = {}, std::string type = {}) {
  return std::unexpected<ApiError>(ApiError{status, std::move(message), std::move(param),
                                            std::move(code), std::move(type)});
}

// Engine/Status errors mapped to HTTP: invalid argument 400, not found 404, out of memory 503...
ApiError api_error_from_status(const Status& s);

std::string openai_error_type(const ApiError& e);
std::string anthropic_error_type(int status);
nlohmann::json openai_error_body(const ApiError& e);
nlohmann::json anthropic_error_body(const ApiError& e);
inline nlohmann::json error_body(ApiKind k, const ApiError& e) {
  return k == ApiKind::kOpenAI ? openai_error_body(e) : anthropic_error_body(e);
}

}  // namespace merlin::server
