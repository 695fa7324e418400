// Internal to the chat-template interpreter: Python-semantics helpers on Values shared by the
// evaluator (chat_template_eval.cc) and the builtins (chat_template_builtins.cc).
#pragma once
#include <ctime>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "tokenizer/chat_template_value.h"

namespace merlin::jinja {

// Thrown inside the interpreter and turned into a Status at the API boundary; nothing escapes.
struct TemplateError {
  std::string message;
  int line = 0;
};

template <class... Args>
[[noreturn]] void fail(int line, fmt::format_string<Args...> f, Args&&... args) {
  throw TemplateError{fmt::format(f, std::forward<Args>(args)...), line};
}

// Python's type(x).__name__, for error messages.
const char* type_name(const Value& v);

bool truthy(const Value& v);
bool equals(const Value& a, const Value& b);
// Python's a < b; throws (with `line`) where Python raises TypeError.
bool less(const Value& a, const Value& b, int line);

std::string to_str(const Value& v);   // str(v)
std::string to_repr(const Value& v);  // repr(v)
std::string float_repr(double d);

struct JsonOptions {
  bool ensure_ascii = false;
  int indent = -1;  // -1: None
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
};
void to_json(const Value& v, const JsonOptions& opt, int level, std::string& out, int line);

// UTF-8 <-> code points; Python strings index by code point.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t cp);
bool is_ascii(std::string_view s);
size_t py_len(const Value& v, int line);
bool py_isspace(char32_t c);
bool is_ws_char(char c);  // ASCII whitespace

// Materializes an iterable the way a Python for loop would; generators are consumed.
std::vector<Value> iterate(const Value& v, int line);

// Python str methods.
std::string py_strip(std::string_view s, const Value* chars, bool left, bool right);
std::vector<std::string> py_split(const std::string& s, const Value* sep, int64_t maxsplit);
std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count);
std::string ascii_lower(std::string s);
std::string html_escape(const std::string& s);  // markupsafe.escape
std::string ascii_upper(std::string s);

// Arguments of a call, filter or test, Python style.
struct Args {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The argument at position `i` or named `name`; nullptr when neither was passed.
  const Value* get(size_t i, std::string_view name) const {
    for (const auto& [k, v] : kw)
      if (k == name) return &v;
    return i < pos.size() ? &pos[i] : nullptr;
  }
};

// Per-render limits and services the builtins need.
struct RenderEnv {
  const std::function<std::tm()>* now = nullptr;
  size_t max_output = size_t(64) << 20;
  // namespace() objects made during the render: the only mutable containers, hence the only
  // way to build reference cycles (`set ns.me = ns`); emptied when the render ends.
  std::shared_ptr<std::vector<std::shared_ptr<Dict>>> namespaces;
};

bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);
Value apply_filter(const RenderEnv& env, std::string_view name, const Value& v, const Args& a, int line);
bool apply_test(const RenderEnv& env, std::string_view name, const Value& v, const Args& a, int line);
// A method call on a str, list or dict (`s.strip()`, `d.get(k)`); nullopt when `obj` has no such
// method, so that the caller can fall back to attribute lookup.
std::optional<Value> call_method(const RenderEnv& env, const Value& obj, const std::string& name,
                                 const Args& a, int line);
// Global functions (range, namespace, dict, raise_exception, strftime_now); undefined if unknown.
Value builtin_global(std::string_view name);
Value call_builtin(const RenderEnv& env, const Callable& fn, const Args& a, int line);
// Jinja's environment.getattr / getitem: a missing attribute or item is undefined, not an error.
Value get_attr(const Value& obj, const std::string& name, int line);
Value get_item(const Value& obj, const Value& key, int line);

struct Callable {
  std::string name;
  int builtin = -1;               // index into the builtin table, or -1 for a macro
  const void* macro = nullptr;    // the MacroDef for macros and call-block callers
  // The Frame the macro was defined in. Weak because that frame holds the macro: a strong
  // reference would be a cycle and leak every render.
  std::weak_ptr<void> closure;
};

}  // namespace merlin::jinja
