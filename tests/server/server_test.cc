// In-process HTTP server over the tiny model: responses match the engine's own greedy output,
// stream formats, authentication, limits, client disconnect and graceful shutdown.
#include <gtest/gtest.h>
#include <httplib.h>

#include <thread>

#include "engine/engine.h"
#include "server/server.h"
#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;

constexpr const char* kKey = "test-key";

using test_server::sse;
using Running = test_server::TestServer;

httplib::Headers auth() { return {{"Authorization", std::string("Bearer ") + kKey}}; }

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    test_server::Config cfg;
    cfg.server.api_keys = {"another-key", kKey};
    cfg.server.max_body_bytes = 100000;
    srv_ = Running::start(cfg).release();
  }
  static void TearDownTestSuite() {
    delete srv_;
    srv_ = nullptr;
  }
  static Running* srv_;
};
Running* ServerTest::srv_ = nullptr;

// The engine's greedy text for a prompt, bypassing HTTP.
std::string engine_greedy(Engine& e, const std::string& prompt, int n) {
  GenerationRequest req;
  req.prompt = e.tokenizer().encode(prompt, true, e.tokenizer().info().add_bos);
  req.max_tokens = n;
  auto s = e.submit(std::move(req));
  EXPECT_TRUE(s);
  std::string text;
  StreamEvent ev;
  while (true) {
    ev = StreamEvent{};
    if (!(*s)->next(ev)) break;
    text += ev.text;
    if (ev.done) break;
  }
  return text;
}

TEST_F(ServerTest, CompletionMatchesEngine) {
  ASSERT_TRUE(srv_);
  const std::string prompt = "def add(a, b):\n";
  std::string ref = engine_greedy(*srv_->engine, prompt, 12);
  auto c = srv_->client();
  auto res = c.Post("/v1/completions", auth(), json{{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0}}.dump(),
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json j = json::parse(res->body);
  EXPECT_EQ(j["choices"][0]["text"], ref);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["prompt_tokens"], srv_->engine->tokenizer().encode(prompt, true, false).size());
}

TEST_F(ServerTest, ChatStreamFormat) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
               {"max_tokens", 5},
               {"temperature", 0},
               {"stream", true},
               {"stream_options", {{"include_usage", true}}}};
  auto res = c.Post("/v1/chat/completions", auth(), body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/event-stream");
  auto evs = sse(res->body);
  ASSERT_GE(evs.size(), 4u);
  EXPECT_EQ(evs.back().second, "[DONE]");
  json first = json::parse(evs[0].second);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  json usage = json::parse(evs[evs.size() - 2].second);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
  json fin = json::parse(evs[evs.size() - 3].second);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
}

TEST_F(ServerTest, MessagesStreamEvents) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  httplib::Headers h = {{"x-api-key", kKey}, {"anthropic-version", "2023-06-01"}};
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}, {"stream", true}};
  auto res = c.Post("/v1/messages", h, body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto evs = sse(res->body);
  ASSERT_GE(evs.size(), 6u);
  EXPECT_EQ(evs[0].first, "message_start");
  EXPECT_EQ(evs[1].first, "content_block_start");
  EXPECT_EQ(evs[2].first, "ping");
  EXPECT_EQ(evs[evs.size() - 3].first, "content_block_stop");
  EXPECT_EQ(evs[evs.size() - 2].first, "message_delta");
  EXPECT_EQ(evs.back().first, "message_stop");
  json md = json::parse(evs[evs.size() - 2].second);
  EXPECT_EQ(md["delta"]["stop_reason"], "max_tokens");
  EXPECT_EQ(md["usage"]["output_tokens"], 4);
}

TEST_F(ServerTest, ErrorsHaveTheApiShape) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  // no key
  auto r = c.Post("/v1/completions", json{{"prompt", "x"}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_TRUE(json::parse(r->body)["error"]["message"].is_string());
  r = c.Post("/v1/messages", json{{"max_tokens", 1}}.dump(), "application/json");
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "authentication_error");
  // unknown model
  r = c.Post("/v1/completions", auth(), json{{"prompt", "x"}, {"model", "nope"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "model_not_found");
  // beyond the context (512)
  r = c.Post("/v1/completions", auth(), json{{"prompt", "x"}, {"max_tokens", 600}}.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "context_length_exceeded");
  // oversized: 413 in both shapes
  std::string big = json{{"prompt", std::string(200000, 'x')}}.dump();
  r = c.Post("/v1/completions", auth(), big, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_TRUE(json::parse(r->body)["error"]["message"].is_string());
  r = c.Post("/v1/messages", {{"x-api-key", kKey}}, big, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "request_too_large");
  // malformed
  r = c.Post("/v1/chat/completions", auth(), "{", "application/json");
  EXPECT_EQ(r->status, 400);
  // health needs no key
  r = c.Get("/health");
  EXPECT_EQ(r->status, 200);
}

TEST_F(ServerTest, ClientDisconnectCancels) {
  ASSERT_TRUE(srv_);
  uint64_t before = srv_->engine->metrics().requests_cancelled.load();
  httplib::Client c("127.0.0.1", srv_->port);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = auth();
  req.headers.emplace("Content-Type", "application/json");
  req.body = json{{"prompt", "def f(x):\n"}, {"max_tokens", 400}, {"ignore_eos", true}, {"stream", true}}.dump();
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  (void)c.send(req);
  bool cancelled = false;
  for (int i = 0; i < 200 && !cancelled; ++i) {
    cancelled = srv_->engine->metrics().requests_cancelled.load() > before;
    if (!cancelled) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(cancelled);
}

TEST(ServerShutdown, StreamsEndWithAnErrorEvent) {
  auto srv = Running::start();
  ASSERT_TRUE(srv);
  std::string body;
  std::thread client([&] {
    auto c = srv->client();
    auto res = c.Post("/v1/chat/completions",
                      json{{"messages", {{{"role", "user"}, {"content", "go"}}}},
                           {"max_tokens", 480},
                           {"ignore_eos", true},
                           {"stream", true}}
                          .dump(),
                      "application/json");
    if (res) body = res->body;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto t0 = std::chrono::steady_clock::now();
  srv->server->stop();
  client.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  auto evs = sse(body);
  ASSERT_GE(evs.size(), 2u) << body;
  EXPECT_EQ(evs.back().second, "[DONE]");
  json last = json::parse(evs[evs.size() - 2].second);
  EXPECT_TRUE(last.contains("error") || !last["choices"][0]["finish_reason"].is_null()) << last.dump();
}

}  // namespace
}  // namespace merlin::server
