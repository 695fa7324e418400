// Chat templates: a Jinja2-subset interpreter written for Hugging Face chat templates.
// It renders the way Python Jinja2 does with HF's settings (trim_blocks, lstrip_blocks,
// raise_exception, strftime_now, tojson). Templates it cannot parse or render give an error
// naming the line and the construct, never a wrong string.
#pragma once
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace merlin {

struct ChatTemplateOptions {
  // Clock behind strftime_now(), as local broken-down time; empty means the system clock.
  // Tests pin it so that templates printing today's date render reproducibly.
  std::function<std::tm()> now;
};

class ChatTemplate {
 public:
  // Parses once; the result is immutable and thread-safe to render.
  static Result<std::shared_ptr<const ChatTemplate>> parse(const std::string& source);
  static Result<std::shared_ptr<const ChatTemplate>> parse(const std::string& source,
                                                          ChatTemplateOptions options);
  virtual ~ChatTemplate() = default;

  // `context` holds the template variables: messages (array of {role, content, ...}), tools,
  // add_generation_prompt, bos_token, eos_token and anything else the caller passes.
  // Note nlohmann::json keeps object keys sorted, so `tools | tojson` and `.items()` see keys
  // alphabetically; render_ordered keeps the caller's key order, as Python's dicts do.
  virtual Result<std::string> render(const nlohmann::json& context) const = 0;
  virtual Result<std::string> render_ordered(const nlohmann::ordered_json& context) const = 0;
};

}  // namespace merlin
