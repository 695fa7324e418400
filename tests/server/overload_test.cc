// Overload and per-request timeouts: beyond --max-queue waiting requests the server answers
// 429 (OpenAI rate-limit shape) or 529 overloaded_error (Anthropic) with Retry-After, and every
// admitted request still completes; a request past --request-timeout answers 504 or ends its
// stream with an error event.
#include <atomic>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;
using test_server::TestServer;

TEST(Overload, BurstBeyondMaxQueueGets429WithRetryAfterAndAdmittedRequestsComplete) {
  test_server::Config cfg;
  cfg.max_running = 2;
  cfg.max_queue = 4;
  auto srv = TestServer::start(cfg);
  ASSERT_TRUE(srv);
  constexpr int kClients = 32, kTokens = 24;
  std::mutex mu;
  int ok = 0, limited = 0, other = 0;
  std::vector<std::string> problems;
  std::vector<std::thread> th;
  for (int i = 0; i < kClients; ++i)
    th.emplace_back([&, i] {
      auto c = srv->client();
      auto r = c.Post("/v1/completions",
                      json{{"prompt", fmt::format("def f{}(x):\n", i)}, {"max_tokens", kTokens}, {"ignore_eos", true},
                           {"temperature", 0}}
                          .dump(),
                      "application/json");
      std::lock_guard lk(mu);
      if (!r) {
        ++other;
        problems.push_back("no response");
        return;
      }
      if (r->status == 200) {
        auto j = json::parse(r->body);
        if (j["usage"]["completion_tokens"] != kTokens || j["choices"][0]["finish_reason"] != "length")
          problems.push_back("incomplete: " + r->body);
        ++ok;
      } else if (r->status == 429) {
        auto j = json::parse(r->body);
        if (j["error"]["code"] != "rate_limit_exceeded" || j["error"]["type"] != "requests")
          problems.push_back("429 shape: " + r->body);
        if (r->get_header_value("Retry-After").empty()) problems.push_back("429 without Retry-After");
        ++limited;
      } else {
        ++other;
        problems.push_back(fmt::format("{} {}", r->status, r->body));
      }
    });
  for (auto& t : th) t.join();
  for (const auto& p : problems) ADD_FAILURE() << p;
  std::printf("  32 concurrent: %d admitted (200), %d refused (429)\n", ok, limited);
  EXPECT_EQ(ok + limited, kClients);
  EXPECT_EQ(other, 0);
  EXPECT_GE(limited, 1) << "nothing was refused";
  // The queue counts every request not yet admitted, so how many get in depends on how many
  // the engine admits while the burst arrives: at least a full queue's worth.
  EXPECT_GE(ok, cfg.max_queue);
}

TEST(Overload, AnthropicGets529OverloadedError) {
  test_server::Config cfg;
  cfg.max_running = 1;
  cfg.max_queue = 1;
  auto srv = TestServer::start(cfg);
  ASSERT_TRUE(srv);
  auto& m = srv->engine->metrics();
  // One running, one waiting: the lane's queue is full.
  // Joined even when an assertion below returns early (after the server stops them).
  struct Background {
    TestServer* srv;
    std::vector<std::thread> th;
    ~Background() {
      srv->server->stop();
      for (auto& t : th) t.join();
    }
  } bg{srv.get(), {}};
  // One at a time: with max_queue 1, a second request sent before the engine admits the first
  // would itself be refused.
  for (int i = 0; i < 2; ++i) {
    bg.th.emplace_back([&, i] {
      auto c = srv->client();
      // Chat-lane requests that cannot stop early (ignore_eos, an OpenAI-side extension): the
      // first must still run and the second wait when the Messages request comes.
      (void)c.Post("/v1/chat/completions",
                   json{{"messages", {{{"role", "user"}, {"content", fmt::format("go {}", i)}}}},
                        {"max_tokens", 400},
                        {"ignore_eos", true}}
                       .dump(),
                   "application/json");
    });
    for (int k = 0; k < 2000 && !(m.running.load() == 1 && m.waiting.load() == i); ++k)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(m.waiting.load(), 1);
  auto c = srv->client();
  auto r = c.Post("/v1/messages", json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 529) << r->body;
  EXPECT_FALSE(r->get_header_value("Retry-After").empty());
  auto j = json::parse(r->body);
  EXPECT_EQ(j["type"], "error");
  EXPECT_EQ(j["error"]["type"], "overloaded_error");
  // The FIM lane is a lane of its own: a completion request is still admitted.
  r = c.Post("/v1/completions", json{{"prompt", "x"}, {"max_tokens", 2}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

class Timeout : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    test_server::Config cfg;
    cfg.ctx_size = 1024;
    cfg.server.request_timeout_s = 0.2;
    cfg.server.fim.default_time_budget_ms = 0;
    srv_ = TestServer::start(cfg).release();
  }
  static void TearDownTestSuite() {
    delete srv_;
    srv_ = nullptr;
  }
  static TestServer* srv_;
};
TestServer* Timeout::srv_ = nullptr;

// 900 tokens take seconds on the tiny model; 0.2 s cuts them short.
TEST_F(Timeout, NonStreamingAnswers504InEachApisShape) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  for (auto [path, body] : {std::pair<const char*, json>{"/v1/completions",
                                                         {{"prompt", "a"}, {"max_tokens", 900}, {"ignore_eos", true}}},
                            {"/v1/chat/completions",
                             {{"messages", {{{"role", "user"}, {"content", "a"}}}}, {"max_tokens", 900}, {"ignore_eos", true}}},
                            {"/infill", {{"input_prefix", "a"}, {"n_predict", 900}, {"ignore_eos", true}}},
                            {"/v1/fim/completions", {{"prompt", "a"}, {"suffix", "b"}, {"max_tokens", 900}, {"ignore_eos", true}}}}) {
    auto r = c.Post(path, body.dump(), "application/json");
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 504) << path << " " << r->body;
    auto j = json::parse(r->body);
    EXPECT_EQ(j["error"]["type"], "timeout_error") << path;
    EXPECT_EQ(j["error"]["code"], "request_timeout") << path;
  }
  auto r = c.Post("/v1/messages", json{{"messages", {{{"role", "user"}, {"content", "a"}}}}, {"max_tokens", 900}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  if (r->status != 200) {  // unless the model met EOS within 0.2 s
    EXPECT_EQ(r->status, 504) << r->body;
    EXPECT_EQ(json::parse(r->body)["error"]["type"], "timeout_error");
  }
}

TEST_F(Timeout, StreamsEndWithAnErrorEvent) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  auto r = c.Post("/v1/chat/completions",
                  json{{"messages", {{{"role", "user"}, {"content", "a"}}}}, {"max_tokens", 900}, {"ignore_eos", true},
                       {"stream", true}}
                      .dump(),
                  "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  auto evs = test_server::sse(r->body);
  ASSERT_GE(evs.size(), 2u) << r->body;
  EXPECT_EQ(evs.back().second, "[DONE]");
  auto last = json::parse(evs[evs.size() - 2].second);
  EXPECT_EQ(last["error"]["type"], "timeout_error") << last.dump();
  r = c.Post("/v1/messages",
             json{{"messages", {{{"role", "user"}, {"content", "a"}}}}, {"max_tokens", 900}, {"stream", true}}.dump(),
             "application/json");
  ASSERT_TRUE(r);
  evs = test_server::sse(r->body);
  ASSERT_FALSE(evs.empty());
  if (evs.back().first != "message_stop") {
    EXPECT_EQ(evs.back().first, "error") << r->body;
    EXPECT_EQ(json::parse(evs.back().second)["error"]["type"], "timeout_error");
  }
  r = c.Post("/infill", json{{"input_prefix", "a"}, {"n_predict", 900}, {"ignore_eos", true}, {"stream", true}}.dump(),
             "application/json");
  ASSERT_TRUE(r);
  auto d = test_server::sse_data(r->body);
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d.back()["error"]["type"], "timeout_error") << r->body;
}

}  // namespace
}  // namespace merlin::server
