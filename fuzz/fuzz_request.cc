// libFuzzer target for the server's request parsing (src/server/request_parse.cc): any byte
// string must give a typed request or an ApiError, never a crash, hang or sanitizer report.
// Every endpoint's parser is driven: completions (with and without a FIM suffix), chat,
// messages, count_tokens, /infill, /v1/fim/completions, /tokenize and /detokenize.
// Build and run: fuzz/run_request_fuzz.sh [seconds].
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "server/request_parse.h"

using namespace merlin::server;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto j = parse_json_body(body);
  if (!j) {
    // Error bodies must serialize for any message.
    (void)openai_error_body(j.error()).dump();
    (void)anthropic_error_body(j.error()).dump();
    return 0;
  }
  const ParseContext ctx{"tiny-coder-target", 50000};
  if (auto r = parse_completion_request(*j, ctx); !r) (void)openai_error_body(r.error()).dump();
  if (auto r = parse_chat_request(*j, ctx); !r) (void)openai_error_body(r.error()).dump();
  if (auto r = parse_messages_request(*j, ctx, false); !r) (void)anthropic_error_body(r.error()).dump();
  (void)parse_messages_request(*j, ctx, true);
  (void)parse_tokenize_request(*j);
  (void)parse_detokenize_request(*j, ctx);
  // Code completion: the three FIM endpoints. The suffix form is parsed whatever the body
  // says (the server asks is_fim_completion first; the parser must refuse the rest itself).
  (void)is_fim_completion(*j);
  if (auto r = parse_completion_fim_request(*j, ctx); !r) (void)openai_error_body(r.error()).dump();
  if (auto r = parse_infill_request(*j, ctx); !r) (void)openai_error_body(r.error()).dump();
  if (auto r = parse_fim_completion_request(*j, ctx); !r) (void)openai_error_body(r.error()).dump();
  return 0;
}
