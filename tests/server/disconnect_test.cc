// A client that goes away is noticed within about one engine step, on every generation
// endpoint, streamed or not: its sequence is cancelled and freed long before its generation
// would have ended (src/server/stream.h, ClientConn).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using test_server::TestServer;

// A raw HTTP/1.1 request on its own socket, so that the test decides when the socket closes.
int send_raw(int port, const std::string& path, const json& body) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  std::string b = body.dump();
  std::string req = fmt::format(
      "POST {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}", path,
      b.size(), b);
  if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return -1;
  }
  return fd;
}

template <class F>
bool wait_for(F&& cond, std::chrono::milliseconds limit) {
  auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return cond();
}

constexpr int kMaxTokens = 900;

struct Case {
  const char* path;
  json body;
};

std::vector<Case> cases(bool stream) {
  const std::string p = "def f(x):\n";
  std::vector<Case> c = {
      {"/v1/completions", {{"prompt", p}, {"max_tokens", kMaxTokens}, {"ignore_eos", true}}},
      {"/v1/chat/completions",
       {{"messages", {{{"role", "user"}, {"content", p}}}}, {"max_tokens", kMaxTokens}, {"ignore_eos", true}}},
      // Anthropic's API has no ignore_eos; this prompt does not meet EOS within 900 tokens.
      {"/v1/messages", {{"messages", {{{"role", "user"}, {"content", p}}}}, {"max_tokens", kMaxTokens}}},
      {"/infill", {{"input_prefix", p}, {"input_suffix", ""}, {"n_predict", kMaxTokens}, {"ignore_eos", true}}},
      {"/v1/fim/completions", {{"prompt", p}, {"suffix", "\n"}, {"max_tokens", kMaxTokens}, {"ignore_eos", true}}},
      {"/v1/completions", {{"prompt", p}, {"suffix", "\n"}, {"max_tokens", kMaxTokens}, {"ignore_eos", true}}},
  };
  for (auto& x : c) x.body["stream"] = stream;
  return c;
}

class ClientGone : public ::testing::TestWithParam<bool> {
 protected:
  static void SetUpTestSuite() {
    test_server::Config cfg;
    cfg.ctx_size = 1024;
    cfg.max_running = 2;
    cfg.server.fim.default_time_budget_ms = 0;  // FIM generation runs to max_tokens
    srv_ = TestServer::start(cfg).release();
  }
  static void TearDownTestSuite() {
    delete srv_;
    srv_ = nullptr;
  }
  static TestServer* srv_;
};
TestServer* ClientGone::srv_ = nullptr;

// For each endpoint: the client sends a request for 900 tokens and closes its socket once
// generation is under way; the sequence must be freed (running back to 0, cancelled counter
// up) within a few steps, not after 900 tokens.
TEST_P(ClientGone, EveryEndpointFreesTheSequenceWithinAStep) {
  ASSERT_TRUE(srv_);
  auto& m = srv_->engine->metrics();
  for (const auto& c : cases(GetParam())) {
    SCOPED_TRACE(fmt::format("{} {}", c.path, c.body.dump()));
    ASSERT_TRUE(wait_for([&] { return m.running.load() == 0 && m.waiting.load() == 0; }, std::chrono::seconds(30)));
    const uint64_t cancelled0 = m.requests_cancelled.load();
    const uint64_t gen0 = m.generated_tokens.load();
    int fd = send_raw(srv_->port, c.path, c.body);
    ASSERT_GE(fd, 0);
    // Generation is under way: a few tokens out.
    ASSERT_TRUE(wait_for([&] { return m.generated_tokens.load() >= gen0 + 8; }, std::chrono::seconds(30)));
    ASSERT_EQ(m.running.load(), 1);
    const uint64_t steps_at_close = m.steps.load();
    const uint64_t gen_at_close = m.generated_tokens.load();
    auto t0 = Clock::now();
    ::close(fd);
    ASSERT_TRUE(wait_for([&] { return m.running.load() == 0; }, std::chrono::seconds(20)))
        << "the sequence still runs after the client left";
    auto ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    const uint64_t steps_after = m.steps.load() - steps_at_close;
    const uint64_t tokens_after = m.generated_tokens.load() - gen_at_close;
    EXPECT_GT(m.requests_cancelled.load(), cancelled0) << "ended without being cancelled";
    // Noticed within the poll interval (10 ms) plus a step; generous for a loaded machine.
    EXPECT_LT(tokens_after, 60u) << "steps after close: " << steps_after << ", " << ms << " ms";
    EXPECT_LT(m.generated_tokens.load() - gen0, static_cast<uint64_t>(kMaxTokens));
    std::printf("  %-22s %s: freed %.1f ms after close (%llu steps, %llu tokens)\n", c.path,
                GetParam() ? "stream" : "plain", ms, static_cast<unsigned long long>(steps_after),
                static_cast<unsigned long long>(tokens_after));
  }
}

INSTANTIATE_TEST_SUITE_P(Server, ClientGone, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Streamed" : "NonStreamed"; });

// A stream that is still waiting for admission writes nothing, so only watching the socket
// notices that its client left: with one slot taken, a queued stream whose client closes is
// dropped from the queue at once, not at the next keep-alive write (5 s).
TEST(ClientGoneQueued, QueuedStreamIsDroppedWhenItsClientLeaves) {
  test_server::Config cfg;
  cfg.ctx_size = 1024;
  cfg.max_running = 1;
  auto srv = TestServer::start(cfg);
  ASSERT_TRUE(srv);
  auto& m = srv->engine->metrics();
  int busy = send_raw(srv->port, "/v1/completions",
                      {{"prompt", "x = 1\n"}, {"max_tokens", kMaxTokens}, {"ignore_eos", true}});
  ASSERT_GE(busy, 0);
  ASSERT_TRUE(wait_for([&] { return m.running.load() == 1; }, std::chrono::seconds(30)));
  const uint64_t cancelled0 = m.requests_cancelled.load();
  int queued = send_raw(srv->port, "/v1/completions",
                        {{"prompt", "y = 2\n"}, {"max_tokens", 16}, {"stream", true}});
  ASSERT_GE(queued, 0);
  ASSERT_TRUE(wait_for([&] { return m.waiting.load() == 1; }, std::chrono::seconds(10)));
  auto t0 = Clock::now();
  ::close(queued);
  EXPECT_TRUE(wait_for([&] { return m.waiting.load() == 0; }, std::chrono::seconds(3)))
      << "the queued stream was not dropped";
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(3));
  EXPECT_EQ(m.running.load(), 1);  // the busy request is untouched
  EXPECT_GT(m.requests_cancelled.load(), cancelled0);
  ::close(busy);
  EXPECT_TRUE(wait_for([&] { return m.running.load() == 0; }, std::chrono::seconds(5)));
}

}  // namespace
}  // namespace merlin::server
