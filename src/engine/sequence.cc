#include "engine/sequence.h"

#include "engine/spec.h"

namespace merlin {

Sequence::Sequence(uint64_t id_, GenerationRequest r, std::shared_ptr<RequestStream::Shared> o, const Tokenizer& t,
                   const SpecOptions& spec_default, bool have_draft)
    : id(id_), req(std::move(r)), out(std::move(o)), tok(t), sampler(req.sampling), detok(t) {
  tokens = req.prompt;
  n_prompt = static_cast<int32_t>(tokens.size());
  spec = req.spec.value_or(spec_default);
  if (!have_draft) spec.use_draft = false;
  t_arrival = std::chrono::steady_clock::now();
}

Sequence::~Sequence() = default;

void Sequence::send(StreamEvent ev) {
  {
    std::lock_guard lk(out->mu);
    out->events.push_back(std::move(ev));
  }
  out->cv.notify_all();
}

static std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\r' || s[b] == '\n')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r' || s[e - 1] == '\n')) --e;
  return std::string(s.substr(b, e - b));
}

bool Sequence::accept_token(TokenId t, const TokenLogprob* lp, const std::vector<TokenLogprob>* top,
                            int32_t ctx_size, StreamEvent& ev) {
  tokens.push_back(t);
  ++n_generated;
  ev.tokens.push_back(t);
  if (lp) ev.logprobs.push_back(*lp);
  if (top) ev.top_logprobs.push_back(*top);

  bool is_stop_token = !req.ignore_eos && tok.is_eog(t);
  for (TokenId s : req.stop_tokens) is_stop_token |= s == t;
  if (is_stop_token) {
    finish = FinishReason::kStop;
    return true;
  }
  text += detok.push(t);

  // Stop strings: cut the text before the earliest match.
  size_t cut = std::string::npos;
  for (const auto& s : req.stop) {
    if (s.empty()) continue;
    const size_t from = sent > s.size() ? sent - s.size() : 0;
    size_t p = text.find(s, from);
    if (p != std::string::npos && p < cut) cut = p;
  }
  if (cut != std::string::npos) {
    text.resize(std::max(cut, sent));
    text_cut = true;
    finish = FinishReason::kStop;
  }
  // Editor rules: a line budget, and stopping when the suffix's next line is reproduced.
  if (finish == FinishReason::kNone && (req.max_lines > 0 || !req.stop_at_suffix_line.empty())) {
    size_t lines = 0, line_start = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if (text[i] != '\n') continue;
      ++lines;
      std::string line = trim(std::string_view(text).substr(line_start, i - line_start));
      if (!req.stop_at_suffix_line.empty() && !line.empty() && line == trim(req.stop_at_suffix_line)) {
        text.resize(std::max(line_start, sent));
        text_cut = true;
        finish = FinishReason::kStop;
        break;
      }
      if (req.max_lines > 0 && static_cast<int32_t>(lines) >= req.max_lines) {
        text.resize(std::max(i, sent));
        text_cut = true;
        finish = FinishReason::kStop;
        break;
      }
      line_start = i + 1;
    }
  }
  if (finish == FinishReason::kNone) {
    if (n_generated >= req.max_tokens || static_cast<int32_t>(tokens.size()) >= ctx_size) finish = FinishReason::kLength;
  }
  // Hold back a tail that could still become a stop string.
  size_t hold = 0;
  if (finish == FinishReason::kNone) {
    for (const auto& s : req.stop) {
      for (size_t k = std::min(s.size() - 1, text.size() - sent); k > hold; --k)
        if (text.compare(text.size() - k, k, s, 0, k) == 0) {
          hold = k;
          break;
        }
    }
    // Also hold a line that might turn out to be the suffix's next line.
    if (!req.stop_at_suffix_line.empty()) {
      size_t nl = text.rfind('\n');
      size_t ls = nl == std::string::npos ? 0 : nl + 1;
      if (ls >= sent) hold = std::max(hold, text.size() - ls);
    }
  }
  const size_t upto = text.size() - std::min(hold, text.size() - sent);
  if (upto > sent) {
    ev.text += text.substr(sent, upto - sent);
    sent = upto;
  }
  return finish != FinishReason::kNone;
}

StreamEvent Sequence::final_event() {
  StreamEvent ev;
  ev.done = true;
  ev.finish = finish;
  ev.error = error;
  // Bytes of an unfinished character: flushed (as U+FFFD) unless a stop rule cut the text.
  if (!text_cut) text += detok.flush();
  if (sent < text.size()) {
    ev.text = text.substr(sent);
    sent = text.size();
  }
  ev.usage.prompt_tokens = n_prompt;
  ev.usage.completion_tokens = n_generated;
  ev.usage.cached_tokens = cached_tokens;
  auto now = std::chrono::steady_clock::now();
  if (scheduled_once && t_first_sched.time_since_epoch().count() != 0)
    ev.queue_ms = std::chrono::duration<double, std::milli>(t_first_sched - t_arrival).count();
  if (n_generated > 0) ev.ttft_ms = std::chrono::duration<double, std::milli>(t_first_token - t_arrival).count();
  ev.e2e_ms = std::chrono::duration<double, std::milli>(now - t_arrival).count();
  return ev;
}

}  // namespace merlin
