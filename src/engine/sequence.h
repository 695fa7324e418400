// One request inside the engine: its tokens, KV blocks, sampler, and the text it has sent.
// Engine thread only, except `out` (the stream's shared state).
#pragma once
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace merlin {

struct DraftState;  // engine/spec.h

struct Sequence {
  Sequence(uint64_t id, GenerationRequest req, std::shared_ptr<RequestStream::Shared> out, const Tokenizer& tok,
           const SpecOptions& spec_default, bool have_draft);
  ~Sequence();

  uint64_t id;
  GenerationRequest req;
  std::shared_ptr<RequestStream::Shared> out;
  const Tokenizer& tok;

  Ids tokens;                        // prompt then generated tokens
  int32_t n_prompt = 0;
  int32_t n_computed = 0;            // tokens whose K/V are in the cache
  std::vector<int32_t> blocks;       // block table
  std::vector<uint64_t> block_hashes;  // chain hashes of the leading full blocks published
  bool looked_up = false;            // prefix cache consulted since (re)admission
  int32_t cached_tokens = 0;

  Sampler sampler;
  IncrementalDetokenizer detok;
  std::string text;                  // generated text so far (after stop handling)
  size_t sent = 0;                   // bytes of `text` already sent
  bool text_cut = false;             // a stop string / line rule truncated `text`
  int32_t n_generated = 0;
  FinishReason finish = FinishReason::kNone;
  std::string error;

  SpecOptions spec;                  // effective speculation settings
  std::unique_ptr<DraftState> draft; // draft-model KV state, when speculating with a draft
  int32_t spec_len = 4;              // adaptive draft length
  bool spec_draft_now = false;       // the draft proposes this step (batch small enough)

  std::chrono::steady_clock::time_point t_arrival, t_first_sched, t_first_token, t_last_token;
  bool scheduled_once = false;

  int32_t n_uncomputed() const { return static_cast<int32_t>(tokens.size()) - n_computed; }
  bool in_prefill() const { return n_computed < n_prompt; }
  bool cancelled() const { return out->cancelled.load(); }

  // Appends a sampled token and handles stops; fills `ev` with what to send. Returns true when
  // the sequence has finished (finish set).
  bool accept_token(TokenId t, const TokenLogprob* lp, const std::vector<TokenLogprob>* top, int32_t ctx_size,
                    StreamEvent& ev);
  // Pushes an event to the client.
  void send(StreamEvent ev);
  // Builds the final event for `finish` (text still held back is flushed).
  StreamEvent final_event();
};

}  // namespace merlin
