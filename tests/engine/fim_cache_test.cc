// FIM in prefix-suffix-middle order through the cached, batched engine gives exactly the greedy
// text of an uncached, unbatched run, keystroke after keystroke: the prefix grows a character at
// a time (so the cursor lands inside cached blocks and re-tokenizes the prefix's tail), prompt
// chunks are cut at other places (and so tiled differently in attention), and a chat stream
// runs beside the completions.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "../test_util.h"
#include "engine/engine.h"
#include "engine_test_util.h"

namespace merlin {
namespace {

using engine_test::make_engine;
using engine_test::target;



Ids psm(const std::string& prefix, const std::string& suffix) {
  const Tokenizer& tok = *target().tokenizer;
  const auto& v = tok.info();
  EXPECT_TRUE(v.fim_pre && v.fim_suf && v.fim_mid);
  Ids ids{*v.fim_pre};
  for (TokenId t : tok.encode(prefix, false)) ids.push_back(t);
  ids.push_back(*v.fim_suf);
  for (TokenId t : tok.encode(suffix, false)) ids.push_back(t);
  ids.push_back(*v.fim_mid);
  return ids;
}

Ids run(Engine& e, const Ids& prompt) {
  GenerationRequest r;
  r.prompt = prompt;
  r.max_tokens = 24;
  r.sampling.temperature = 0;
  r.priority = Priority::kCompletion;
  auto s = e.submit(r);
  EXPECT_TRUE(s.has_value());
  Ids out;
  StreamEvent ev;
  for (;;) {
    if (!(*s)->next(ev, std::chrono::milliseconds(60000))) {
      ADD_FAILURE() << "timed out";
      break;
    }
    out.insert(out.end(), ev.tokens.begin(), ev.tokens.end());
    if (ev.done) break;
  }
  return out;
}

TEST(FimCache, PsmKeystrokesIdenticalToUncachedUnbatched) {
  std::ifstream in(std::string(MERLIN_SOURCE_DIR) + "/bench/data/editor_replay.cc");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  ASSERT_GT(doc.size(), 3000u);
  const size_t cursor0 = 1400, suffix_at = 1700, suffix_end = 2600;

  EngineOptions cached;
  cached.max_running = 4;
  cached.max_batch_tokens = 256;
  auto fast = make_engine(cached);
  EngineOptions plain;
  plain.max_running = 1;
  plain.prefix_cache = false;
  plain.max_batch_tokens = 48;  // other chunk boundaries, other attention tiles
  auto ref = make_engine(plain);

  // A chat stream beside the completions, in the cached engine only.
  GenerationRequest chat;
  chat.prompt = target().tokenizer->encode("def merge_sort(values):\n", false);
  chat.max_tokens = 600;
  chat.ignore_eos = true;
  chat.sampling.temperature = 0;
  auto chat_stream = fast->submit(chat);
  ASSERT_TRUE(chat_stream.has_value());

  int n_hits = 0;
  for (size_t k = 0; k < 12; ++k) {
    const std::string prefix = doc.substr(0, cursor0 + k);
    const std::string suffix = doc.substr(suffix_at, suffix_end - suffix_at);
    const Ids prompt = psm(prefix, suffix);
    const uint64_t hits0 = fast->metrics().prefix_cache_hits.load();
    const Ids got = run(*fast, prompt);
    n_hits += fast->metrics().prefix_cache_hits.load() > hits0;
    // The cursor is inside a cached block unless the prefix's token count is a multiple of 16.
    EXPECT_EQ(got, run(*ref, prompt)) << "keystroke " << k << " (prefix of " << prefix.size() << " bytes)";
  }
  EXPECT_GE(n_hits, 11) << "the keystrokes did not reuse the cached prefix";
  (*chat_stream)->cancel();
}

}  // namespace
}  // namespace merlin
