// Code completion (fill-in-the-middle) for `merlin serve`:
//   POST /v1/completions with "suffix" (OpenAI), POST /infill (llama.cpp),
//   POST /v1/fim/completions (Mistral / Codestral).
// Prompts are built from the model's own FIM tokens (Tokenizer::info()); every request runs in
// the engine's completion lane (Priority::kCompletion), superseding the same client's older
// request, with editor stop rules (suffix's next line, n_indent, a time budget).
// The layout of prompts, truncation and response shapes are documented in docs/api.md (FIM).
// Request bodies are parsed in request_parse.h; the HTTP handlers are declared in core.h.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "server/api_error.h"
#include "server/request_parse.h"  // FimInput, FimRequest
#include "tokenizer/tokenizer.h"

namespace merlin::server {

// PSM: <PRE>prefix<SUF>suffix<MID>. SPM (llama.cpp --spm-infill): <SUF>suffix<PRE>prefix<MID>.
enum class FimOrder { kPsm, kSpm };

struct FimTokens {
  TokenId pre = 0, suf = 0, mid = 0;
  std::optional<TokenId> rep, sep;  // repo-level layout (<|repo_name|>, <|file_sep|>)
};
// None when the model lacks any of prefix / suffix / middle.
std::optional<FimTokens> fim_tokens(const Tokenizer& tok);

struct FimLayoutOptions {
  FimOrder order = FimOrder::kPsm;
  int32_t ctx_size = 0;              // the prompt plus n_predict must fit
  int32_t n_predict = 0;             // room kept for generation
  int32_t max_input_tokens = 0;      // prefix + suffix cap (0: whatever fits the context)
  std::string repo_name = "myproject";
  std::string filename = "filename";  // the current file's name in the repo-level layout
};

struct FimPrompt {
  Ids ids;
  int32_t n_prefix = 0, n_suffix = 0, n_extra = 0;  // tokens taken of each
  bool truncated = false;                            // something did not fit
};

// Builds the token sequence. Prefix, suffix, prompt and extra chunks are tokenized as plain
// text (special-token text inside user code stays text). Prefix is cut from the left and
// suffix from the right, the prefix keeping at least 3/4 of the budget when both are long.
// 400 when the model has no FIM tokens or nothing fits.
ApiResult<FimPrompt> build_fim_prompt(const Tokenizer& tok, const FimInput& in, const FimLayoutOptions& opt);

// The first line of the suffix with non-whitespace content (trimmed), or "".
std::string first_nonempty_line(const std::string& suffix);

// Server-wide FIM settings (merlin serve flags).
struct FimOptions {
  double default_time_budget_ms = 1000;  // used when a request gives none; 0: no budget
  FimOrder order = FimOrder::kPsm;
  bool priority_lane = true;             // false: FIM requests run as chat (benchmarks)
  int32_t max_input_tokens = 0;          // prefix + suffix cap; 0: the context
  int32_t default_max_tokens = 64;       // when a request gives none
};

}  // namespace merlin::server
