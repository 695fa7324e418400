// `merlin serve`: setup, routes, authentication, the utility endpoints (GET /v1/models,
// /health, /metrics, POST /tokenize, /detokenize) and graceful shutdown. The generation
// endpoints live one file per API (core.h lists them); response plumbing is in stream.h.
#include "server/server.h"

#include <sys/socket.h>

#include <httplib.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "core/log.h"
#include "server/core.h"

namespace merlin::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Used when a model ships no chat template: ChatML, which most code models' tokenizers know.
constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

}  // namespace

const char* const kChatMlFallback = "chatml (fallback: the model has none)";

struct HttpServer::Impl {
  ServerCore core;
  httplib::Server svr;
  int listen_fd = -1;  // the listening socket, to widen httplib's fixed backlog of 5
  std::mutex stop_mu;
  bool stopped = false;

  void handle_tokenize(const httplib::Request& req, httplib::Response& res) {
    auto body = core.preamble(req, res, ApiKind::kOpenAI);
    if (!body) return;
    auto r = parse_tokenize_request(*body);
    if (!r) return send_error(res, ApiKind::kOpenAI, r.error());
    Ids ids = core.tok().encode(r->content, true, r->add_special && core.tok().info().add_bos);
    json toks = json::array();
    for (TokenId id : ids) {
      if (r->with_pieces) toks.push_back({{"id", id}, {"piece", core.tok_str(id)}});
      else toks.push_back(id);
    }
    send_json(res, 200, {{"tokens", toks}});
  }

  void handle_detokenize(const httplib::Request& req, httplib::Response& res) {
    auto body = core.preamble(req, res, ApiKind::kOpenAI);
    if (!body) return;
    auto r = parse_detokenize_request(*body, core.pctx);
    if (!r) return send_error(res, ApiKind::kOpenAI, r.error());
    send_json(res, 200, {{"content", lossy_utf8(core.tok().decode(r->tokens))}});
  }

  json model_object() const {
    return {{"id", core.pctx.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "merlin"},
            {"max_model_len", core.engine->ctx_size()}, {"chat_template", core.chat_template_desc}};
  }

  void routes() {
    auto gen_route = [](auto handler) {
      return [handler](const httplib::Request& req, httplib::Response& res) {
        try {
          handler(req, res);
        } catch (const std::exception& e) {
          spdlog::error("{} {}: {}", req.method, req.path, e.what());
          send_error(res, kind_of_path(req.path), ApiError{500, fmt::format("internal error: {}", e.what()), {}, {}, {}});
        }
      };
    };
    auto api_route = [this, gen_route](void (*handler)(ServerCore&, const httplib::Request&, httplib::Response&)) {
      return gen_route([this, handler](const httplib::Request& req, httplib::Response& res) { handler(core, req, res); });
    };
    svr.Post("/v1/completions", api_route(&handle_completions));
    svr.Post("/infill", api_route(&handle_infill));
    svr.Post("/v1/fim/completions", api_route(&handle_fim_completions));
    svr.Post("/v1/chat/completions", api_route(&handle_chat));
    svr.Post("/v1/messages", api_route(&handle_messages));
    svr.Post("/v1/messages/count_tokens", api_route(&handle_count_tokens));
    svr.Post("/tokenize", gen_route([this](const httplib::Request& req, httplib::Response& res) { handle_tokenize(req, res); }));
    svr.Post("/detokenize", gen_route([this](const httplib::Request& req, httplib::Response& res) { handle_detokenize(req, res); }));
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = core.check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      send_json(res, 200, {{"object", "list"}, {"data", json::array({model_object()})}});
    });
    svr.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = core.check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      std::string m = req.matches[1];
      if (m != core.pctx.model_name)
        return send_error(res, ApiKind::kOpenAI,
                          ApiError{404, fmt::format("The model `{}` does not exist or you do not have access to it.", m),
                                   "model", "model_not_found", {}});
      send_json(res, 200, model_object());
    });
    svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (core.stopping.load()) return send_json(res, 503, {{"status", "shutting down"}});
      send_json(res, 200, {{"status", "ok"}});
    });
    svr.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
      if (auto e = core.check_auth(req, ApiKind::kOpenAI)) return send_error(res, ApiKind::kOpenAI, *e);
      res.set_content(core.engine->metrics().render_prometheus(core.pctx.model_name), "text/plain; version=0.0.4");
    });
    // Errors httplib produces itself (413 for oversized bodies, 404 for unknown paths) get the
    // imitated API's body too; responses that already have a body are left alone.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiKind kind = kind_of_path(req.path);
      ApiError e{res.status, "", {}, {}, {}};
      if (res.status == 413) {
        e.message = "The request body is too large.";
        e.code = "request_too_large";
      } else if (res.status == 404) {
        e.message = fmt::format("Unknown request URL: {} {}.", req.method, req.path);
        e.code = "unknown_url";
      } else if (res.status == 405) {
        e.message = fmt::format("Method {} is not allowed on {}.", req.method, req.path);
      } else {
        e.message = fmt::format("HTTP error {}.", res.status);
      }
      res.set_content(dump(error_body(kind, e)), "application/json");
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      spdlog::error("{} {}: {}", req.method, req.path, what);
      res.status = 500;
      res.set_content(dump(error_body(kind_of_path(req.path), ApiError{500, "internal error: " + what, {}, {}, {}})),
                      "application/json");
    });
  }
};

Result<std::unique_ptr<HttpServer>> HttpServer::create(Engine& engine, ServerOptions opt) {
  std::unique_ptr<HttpServer> s(new HttpServer());
  s->impl_ = std::make_unique<Impl>();
  Impl& im = *s->impl_;
  im.core.engine = &engine;
  im.core.opt = opt;
  const Tokenizer& tok = engine.tokenizer();
  std::string src = tok.info().chat_template;
  if (src.empty()) {
    spdlog::warn("model {} has no chat template: /v1/chat/completions and /v1/messages use ChatML, which may not "
                 "be what the model was trained on",
                 engine.model().name);
    src = kChatMlTemplate;
    im.core.chat_template_desc = kChatMlFallback;
  } else {
    const std::string& from = tok.info().chat_template_source;
    im.core.chat_template_desc = from.empty() ? "model" : fmt::format("model ({})", from);
  }
  auto t = ChatTemplate::parse(src);
  if (!t) return Errf(t.error().code, "chat template of {}: {}", engine.model().name, t.error().message);
  im.core.tmpl = *t;
  if (auto b = tok.bos()) im.core.bos_str = tok.token_text(*b);
  if (auto e = tok.eos()) im.core.eos_str = tok.token_text(*e);
  im.core.pctx.model_name = engine.model().name;
  im.core.pctx.n_vocab = tok.n_vocab();

  int threads = opt.http_threads > 0 ? opt.http_threads : 64;
  im.svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  im.svr.set_payload_max_length(opt.max_body_bytes);
  im.svr.set_read_timeout(opt.read_timeout_s, 0);
  im.svr.set_write_timeout(opt.write_timeout_s, 0);
  im.svr.set_keep_alive_max_count(1000);
  im.svr.set_keep_alive_timeout(5);
  // Remember the listening socket (the options callback runs on it before bind) so bind() can
  // raise the accept backlog: Debian's compiled httplib listens with a backlog of 5, which
  // drops connections when hundreds of clients connect at once.
  im.svr.set_socket_options([&im](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&yes), sizeof(yes));
    im.listen_fd = sock;
  });
  if (opt.log_requests) {
    // Only on request (--log-requests): bodies hold prompts. Headers, and so keys, are never logged.
    im.svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      spdlog::info("{} {} -> {} body: {}", req.method, req.path, res.status, lossy_utf8(req.body));
    });
  }
  im.routes();
  return s;
}

HttpServer::~HttpServer() {
  if (impl_) stop();
}

Result<int> HttpServer::bind() {
  int port = impl_->core.opt.port;
  if (port == 0) {
    port = impl_->svr.bind_to_any_port(impl_->core.opt.host);
    if (port < 0) return Errf(Code::kInvalidArgument, "cannot bind {}", impl_->core.opt.host);
  } else if (!impl_->svr.bind_to_port(impl_->core.opt.host, port)) {
    return Errf(Code::kInvalidArgument, "cannot bind {}:{} (in use, or not an address of this machine)",
                impl_->core.opt.host, port);
  }
  // Listening again on a listening socket only changes its backlog (Linux).
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, 4096);
  return port;
}

void HttpServer::serve() { impl_->svr.listen_after_bind(); }

bool HttpServer::stopping() const { return impl_->core.stopping.load(); }

const std::string& HttpServer::chat_template() const { return impl_->core.chat_template_desc; }

void HttpServer::stop() {
  std::lock_guard lk(impl_->stop_mu);
  if (impl_->stopped) return;
  impl_->stopped = true;
  impl_->core.stopping = true;
  // Ending the engine's requests gives every open stream its final event; the providers then
  // write their closing error event and finish. Only then is the listener stopped.
  impl_->core.engine->shutdown();
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (impl_->core.active.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (impl_->core.active.load() > 0) spdlog::warn("{} requests still open at shutdown", impl_->core.active.load());
  impl_->svr.stop();
}

}  // namespace merlin::server
