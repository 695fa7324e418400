// The completion lane under a full engine: a completion request runs within two steps of
// arriving even when lower-priority sequences hold every slot (--parallel) or every KV block,
// and the sequences it displaces resume with unchanged greedy output. Also the bounded queue
// (max_queue) and the whole-request timeout.
#include <gtest/gtest.h>

#include <thread>

#include "../test_util.h"
#include "engine/engine.h"
#include "engine_test_util.h"

namespace merlin {
namespace {

using engine_test::make_engine;
using engine_test::target;



GenerationRequest greedy(const std::string& text, int n, Priority prio) {
  return engine_test::greedy(target().tokenizer->encode(text, false), n, prio);
}

struct Out {
  Ids tokens;
  StreamEvent first, last;
  bool got_first = false;
};

Out collect(RequestStream& s) {
  Out o;
  StreamEvent ev;
  for (;;) {
    if (!s.next(ev, std::chrono::milliseconds(120000))) {
      ADD_FAILURE() << "stream timed out";
      return o;
    }
    if (!o.got_first && !ev.tokens.empty()) {
      o.first = ev;
      o.got_first = true;
    }
    o.tokens.insert(o.tokens.end(), ev.tokens.begin(), ev.tokens.end());
    if (ev.done) {
      o.last = ev;
      return o;
    }
  }
}

const char* kChat[2] = {"def quicksort(items):\n", "class LinkedList:\n    def __init__(self):\n"};

// A chat prompt of about n tokens: source lines, then the opening of kChat[i].
std::string chat_prompt(int i, int n) {
  std::string p;
  for (int k = 0; n > 0 && static_cast<int>(target().tokenizer->encode(p, false).size()) < n - 12; ++k)
    p += "    total_" + std::to_string(k * 7 + i) + " = compute(values[" + std::to_string(k) + "], scale)\n";
  return p + kChat[i];
}
const char* kFim = "int add(int a, int b) {\n  return";

// Chat outputs of an undisturbed run: each request alone.
std::vector<Ids> undisturbed(int n_tokens, int prompt_len) {
  EngineOptions o;
  o.max_running = 2;
  auto e = make_engine(o);
  std::vector<Ids> r;
  for (int i = 0; i < 2; ++i) {
    auto s = e->submit(greedy(chat_prompt(i, prompt_len), n_tokens, Priority::kChat));
    EXPECT_TRUE(s.has_value());
    r.push_back(collect(**s).tokens);
  }
  return r;
}

// Starts the two chat streams and reads them until both decode and `ready` holds.
template <class Ready>
std::vector<std::unique_ptr<RequestStream>> start_chats(Engine& e, int n_tokens, int prompt_len,
                                                         std::vector<Out>& partial, Ready ready) {
  std::vector<std::unique_ptr<RequestStream>> chats;
  for (int i = 0; i < 2; ++i) {
    auto s = e.submit(greedy(chat_prompt(i, prompt_len), n_tokens, Priority::kChat));
    EXPECT_TRUE(s.has_value());
    chats.push_back(std::move(*s));
  }
  partial.assign(2, Out{});
  StreamEvent ev;
  for (int round = 0; round < 10000; ++round) {
    bool both = true;
    for (int i = 0; i < 2; ++i) {
      if (chats[i]->next(ev, std::chrono::milliseconds(round == 0 ? 60000 : 5))) {
        EXPECT_FALSE(ev.done) << "chat " << i << " ended before the completion arrived";
        partial[i].tokens.insert(partial[i].tokens.end(), ev.tokens.begin(), ev.tokens.end());
      }
      both = both && partial[i].tokens.size() >= 4;
    }
    if (both && ready()) break;
  }
  return chats;
}

void run_lane_case(EngineOptions o, int chat_tokens, int prompt_len, bool kv_full) {
  const auto want = undisturbed(chat_tokens, prompt_len);
  if (kv_full) {
    // Blocks for both chats' prompts plus 16 generated tokens each: the cache is full, with
    // every block held, long before either chat ends.
    int32_t blocks = 0;
    for (int i = 0; i < 2; ++i)
      blocks += (static_cast<int32_t>(target().tokenizer->encode(chat_prompt(i, prompt_len), false).size()) + 16 + 15) / 16;
    o.kv_tokens = 16 * (blocks - 1);  // the engine adds one block
  }
  auto e = make_engine(o);
  std::vector<Out> partial;
  const auto& m = e->metrics();
  auto chats = start_chats(*e, chat_tokens, prompt_len, partial, [&] {
    return !kv_full || m.kv_blocks_used.load() >= m.kv_blocks_total.load();
  });
  if (kv_full) {
    ASSERT_EQ(m.kv_blocks_used.load(), m.kv_blocks_total.load()) << "the chats do not hold every block";
  }
  // The FIM request arrives while both chats decode (and, in the KV case, hold the cache).
  const uint64_t step0 = m.steps.load();
  auto fim = e->submit(greedy(kFim, 16, Priority::kCompletion));
  ASSERT_TRUE(fim.has_value()) << fim.error().message;
  auto f = collect(**fim);
  ASSERT_TRUE(f.got_first);
  EXPECT_LE(f.first.step - step0, 2u) << "the completion's first token came " << (f.first.step - step0)
                                      << " steps after it arrived";
  EXPECT_EQ(f.tokens.size(), 16u);
  for (int i = 0; i < 2; ++i) {
    auto rest = collect(*chats[i]);
    Ids all = partial[i].tokens;
    all.insert(all.end(), rest.tokens.begin(), rest.tokens.end());
    EXPECT_EQ(all, want[i]) << "chat " << i << " changed by the completion that displaced it";
  }
  if (kv_full) EXPECT_GT(m.preemptions.load(), 0u);
  else EXPECT_GT(m.parked.load(), 0u);
}

TEST(Lane, CompletionParksChatHoldingEverySlot) {
  EngineOptions o;
  o.max_running = 2;  // --parallel 2, both slots taken by chat
  run_lane_case(o, 160, 0, false);
}

TEST(Lane, CompletionPreemptsChatHoldingEveryKvBlock) {
  EngineOptions o;
  o.max_running = 3;  // a free slot: KV is what the completion lacks
  o.ctx_size = 512;
  o.prefix_cache = false;  // blocks are held, not merely cached
  run_lane_case(o, 64, 200, true);
}

TEST(Lane, BoundedQueueRefusesBeyondMaxQueue) {
  EngineOptions o;
  o.max_running = 1;
  o.max_queue = 2;
  auto e = make_engine(o);
  auto busy = e->submit(greedy(kChat[0], 400, Priority::kChat));
  ASSERT_TRUE(busy.has_value());
  StreamEvent ev;
  ASSERT_TRUE((*busy)->next(ev, std::chrono::milliseconds(60000)));  // running, so not queued
  std::vector<std::unique_ptr<RequestStream>> ok;
  for (int i = 0; i < 2; ++i) {
    auto s = e->submit(greedy(kChat[1], 4, Priority::kChat));
    ASSERT_TRUE(s.has_value()) << s.error().message;
    ok.push_back(std::move(*s));
  }
  EXPECT_EQ(e->queued(Priority::kChat), 2);
  auto over = e->submit(greedy(kChat[1], 4, Priority::kChat));
  ASSERT_FALSE(over.has_value());
  EXPECT_EQ(over.error().code, Code::kOverloaded);
  // Each lane has its own queue: a completion request is still taken.
  auto fim = e->submit(greedy(kFim, 4, Priority::kCompletion));
  ASSERT_TRUE(fim.has_value());
  EXPECT_EQ(collect(**fim).last.finish, FinishReason::kLength);
  (*busy)->cancel();
  collect(**busy);
  for (auto& s : ok) EXPECT_EQ(collect(*s).last.finish, FinishReason::kLength);
  EXPECT_EQ(e->queued(Priority::kChat), 0);
}

TEST(Lane, WholeRequestTimeoutEndsTheRequest) {
  EngineOptions o;
  auto e = make_engine(o);
  auto r = greedy(kChat[0], 900, Priority::kChat);
  r.timeout_ms = 100;
  auto t0 = std::chrono::steady_clock::now();
  auto s = e->submit(r);
  ASSERT_TRUE(s.has_value());
  auto out = collect(**s);
  EXPECT_EQ(out.last.finish, FinishReason::kTimeout);
  EXPECT_LT(out.tokens.size(), 900u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  for (int i = 0; i < 100 && e->metrics().kv_blocks_used.load() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(e->metrics().kv_blocks_used.load(), 0);
}

// Cancel-on-keystroke stops the superseded request's step in flight (at its next layer), and the
// new request's output is what it would be alone.
TEST(Lane, SupersedingRequestAbortsTheStepInFlight) {
  EngineOptions o;
  o.max_batch_tokens = 1024;  // one long prefill step to land in
  o.ctx_size = 2048;
  auto e = make_engine(o);
  auto first = greedy(chat_prompt(0, 1000), 16, Priority::kCompletion);
  first.client_id = "editor";
  first.supersede_same_client = true;
  auto second = greedy(chat_prompt(1, 300), 16, Priority::kCompletion);
  second.client_id = "editor";
  second.supersede_same_client = true;
  const Ids alone = [&] {
    auto s = e->submit(second);
    EXPECT_TRUE(s.has_value());
    return collect(**s).tokens;
  }();
  const uint64_t steps0 = e->metrics().steps.load();
  auto a = e->submit(first);
  ASSERT_TRUE(a.has_value());
  // Its prefill step has started (steps counts a step when its forward pass begins).
  while (e->metrics().steps.load() == steps0) std::this_thread::yield();
  auto b = e->submit(second);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(collect(**a).last.finish, FinishReason::kCancelled);
  EXPECT_EQ(collect(**b).tokens, alone);
  EXPECT_EQ(e->metrics().aborted_steps.load(), 1u);
}

}  // namespace
}  // namespace merlin
