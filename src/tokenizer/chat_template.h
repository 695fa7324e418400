// Chat templates: a Jinja2-subset interpreter written for Hugging Face chat templates.
// It renders the way Python Jinja2 does with HF's settings (trim_blocks, lstrip_blocks,
// raise_exception, strftime_now, tojson). Templates it cannot parse or render give an error
// naming the line and the construct, never a wrong string.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace merlin {

class ChatTemplate {
 public:
  // Parses once; the result is immutable and thread-safe to render.
  static Result<std::shared_ptr<const ChatTemplate>> parse(const std::string& source);
  virtual ~ChatTemplate() = default;

  // `context` holds the template variables: messages (array of {role, content, ...}), tools,
  // add_generation_prompt, bos_token, eos_token and anything else the caller passes.
  virtual Result<std::string> render(const nlohmann::json& context) const = 0;
};

}  // namespace merlin
