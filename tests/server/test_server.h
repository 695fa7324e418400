// The in-process HTTP server the server tests run against: the tiny model behind a real
// HttpServer on a free 127.0.0.1 port, served on its own thread; plus SSE parsing helpers.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "engine/engine.h"
#include "server/server.h"

namespace merlin::server::test_server {

struct Config {
  int32_t ctx_size = 512;
  int32_t max_running = 4;
  int32_t max_queue = 0;                       // EngineOptions::max_queue
  std::shared_ptr<const Tokenizer> tokenizer;  // replaces the model's own when set
  ServerOptions server;                        // the port is always 0 (any free port)
  std::function<void(LoadedModel&)> edit_model;  // last changes to the model before the engine starts
};

struct TestServer {
  std::unique_ptr<Engine> engine;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  int port = 0;

  static std::unique_ptr<TestServer> start(Config cfg = {}) {
    auto r = std::make_unique<TestServer>();
    auto m = load_model(test::model_dir("target"));
    EXPECT_TRUE(m) << m.error().message;
    if (!m) return nullptr;
    if (cfg.tokenizer) m->tokenizer = cfg.tokenizer;
    if (cfg.edit_model) cfg.edit_model(*m);
    EngineOptions eo;
    eo.ctx_size = cfg.ctx_size;
    eo.max_running = cfg.max_running;
    eo.max_queue = cfg.max_queue;
    auto e = Engine::create(std::move(*m), eo);
    EXPECT_TRUE(e) << e.error().message;
    if (!e) return nullptr;
    r->engine = std::move(*e);
    cfg.server.port = 0;
    auto s = HttpServer::create(*r->engine, cfg.server);
    EXPECT_TRUE(s) << s.error().message;
    if (!s) return nullptr;
    r->server = std::move(*s);
    auto port = r->server->bind();
    EXPECT_TRUE(port);
    if (!port) return nullptr;
    r->port = *port;
    r->thread = std::thread([p = r.get()] { p->server->serve(); });
    return r;
  }
  ~TestServer() {
    if (server) server->stop();
    if (thread.joinable()) thread.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    return c;
  }
};

// SSE body -> (event name, data) per event.
inline std::vector<std::pair<std::string, std::string>> sse(const std::string& body) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    std::string block = body.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? body.size() : end + 2;
    std::string ev, data;
    size_t lp = 0;
    while (lp < block.size()) {
      size_t nl = block.find('\n', lp);
      std::string line = block.substr(lp, nl == std::string::npos ? std::string::npos : nl - lp);
      lp = nl == std::string::npos ? block.size() : nl + 1;
      if (line.rfind("event: ", 0) == 0) ev = line.substr(7);
      if (line.rfind("data: ", 0) == 0) data = line.substr(6);
    }
    if (!ev.empty() || !data.empty()) out.emplace_back(ev, data);
  }
  return out;
}

// The data lines of an SSE body as JSON ("[DONE]" as that string).
inline std::vector<nlohmann::json> sse_data(const std::string& body) {
  std::vector<nlohmann::json> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    size_t end = body.find("\n\n", pos);
    std::string d = body.substr(pos + 6, end - pos - 6);
    pos = end;
    if (d == "[DONE]") out.push_back("[DONE]");
    else out.push_back(nlohmann::json::parse(d));
  }
  return out;
}

}  // namespace merlin::server::test_server
