#include "tokenizer/chat_template_source.h"

#include "core/mmap_file.h"

namespace merlin {

Result<void> resolve_hf_chat_template(const std::string& dir, TokenizerVocab& vocab) {
  vocab.chat_template_source = vocab.chat_template.empty() ? "" : kChatTemplateFromConfig;
  const std::string path = dir + "/" + kChatTemplateFromJinja;
  auto text = read_file(path);
  if (!text) {
    if (text.error().code == Code::kNotFound) return {};
    return std::unexpected(text.error());
  }
  if (text->empty()) return {};
  vocab.chat_template = std::move(*text);
  vocab.chat_template_source = kChatTemplateFromJinja;
  return {};
}

}  // namespace merlin
