// Where a Hugging Face folder's chat template comes from. Older folders keep it in
// tokenizer_config.json ("chat_template": a string, or a list of named templates); newer ones
// ship it as chat_template.jinja beside tokenizer.json.
#pragma once
#include <string>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace merlin {

// File names, and the values of TokenizerVocab::chat_template_source.
inline constexpr const char* kChatTemplateFromConfig = "tokenizer_config.json";
inline constexpr const char* kChatTemplateFromJinja = "chat_template.jinja";
inline constexpr const char* kChatTemplateFromGguf = "gguf";

// Call after tokenizer_config.json's template (if any) is in vocab.chat_template. A non-empty
// `dir`/chat_template.jinja replaces it, as transformers does; vocab.chat_template_source is set
// to the file the template came from, or left empty when the folder has none.
Result<void> resolve_hf_chat_template(const std::string& dir, TokenizerVocab& vocab);

}  // namespace merlin
