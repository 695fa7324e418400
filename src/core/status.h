// Status / Result: the one error type of the project. Library code returns these and never
// exits or aborts on bad input; assertions are reserved for broken invariants.
#pragma once
#include <expected>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace merlin {

enum class Code {
  kOk = 0,
  kInvalidArgument,   // bad user input (flags, request fields, prompt too long)
  kNotFound,          // missing file, tensor, model
  kCorrupt,           // a file that is truncated, inconsistent or hostile
  kUnsupported,       // valid input that Merlin does not handle (architecture, dtype)
  kOutOfMemory,       // KV blocks or memory exhausted
  kCancelled,
  kOverloaded,        // a bounded queue is full; the caller may retry later
  kInternal,
};

struct Status {
  Code code = Code::kOk;
  std::string message;

  bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
};

template <class T>
using Result = std::expected<T, Status>;

inline std::unexpected<Status> Err(Code code, std::string msg) {
  return std::unexpected<Status>(Status{code, std::move(msg)});
}

template <class... Args>
std::unexpected<Status> Errf(Code code, fmt::format_string<Args...> f, Args&&... args) {
  return std::unexpected<Status>(Status{code, fmt::format(f, std::forward<Args>(args)...)});
}

const char* code_name(Code c);

}  // namespace merlin

// Propagate an error from an expression returning Result<T> (or Result<void>).
#define MERLIN_TRY(var, expr)                          \
  auto var##_res_ = (expr);                            \
  if (!var##_res_) return std::unexpected(var##_res_.error()); \
  auto& var = *var##_res_

#define MERLIN_CHECK_OK(expr)                          \
  do {                                                 \
    auto r_ = (expr);                                  \
    if (!r_) return std::unexpected(r_.error());       \
  } while (0)
