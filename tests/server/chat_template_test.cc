// A model without a chat template gets ChatML only with a warning that says so: in the log and
// start line of `merlin serve`, and in GET /v1/models ("chat_template").
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// The tiny model with its chat template removed: a folder of links to its files and a
// tokenizer_config.json without "chat_template".
std::string model_without_template() {
  static std::string dir = [] {
    fs::path src = test::model_dir("target");
    fs::path d = fs::temp_directory_path() / fmt::format("merlin_notemplate_{}", ::getpid());
    fs::remove_all(d);
    fs::create_directories(d);
    for (const auto& e : fs::directory_iterator(src))
      if (e.path().filename() != "tokenizer_config.json") fs::create_symlink(fs::absolute(e.path()), d / e.path().filename());
    std::ifstream in(src / "tokenizer_config.json");
    json cfg = json::parse(in);
    cfg.erase("chat_template");
    std::ofstream(d / "tokenizer_config.json") << cfg.dump();
    return d.string();
  }();
  return dir;
}

json models(const test_server::TestServer& srv) {
  auto c = srv.client();
  auto r = c.Get("/v1/models");
  EXPECT_TRUE(r);
  return r ? json::parse(r->body)["data"][0] : json();
}

TEST(ChatTemplate, ModelsSaysWhichTemplateIsUsed) {
  auto own = test_server::TestServer::start();
  ASSERT_TRUE(own);
  EXPECT_EQ(models(*own)["chat_template"], "model (tokenizer_config.json)");
  EXPECT_EQ(own->server->chat_template(), "model (tokenizer_config.json)");

  auto tok = Tokenizer::from_hf_dir(model_without_template());
  ASSERT_TRUE(tok) << tok.error().message;
  ASSERT_TRUE((*tok)->info().chat_template.empty());
  test_server::Config cfg;
  cfg.tokenizer = *tok;
  auto none = test_server::TestServer::start(cfg);
  ASSERT_TRUE(none);
  EXPECT_EQ(models(*none)["chat_template"], "chatml (fallback: the model has none)");
  auto c = none->client();
  auto r = c.Get(fmt::format("/v1/models/{}", models(*none)["id"].get<std::string>()));
  ASSERT_TRUE(r);
  EXPECT_EQ(json::parse(r->body)["chat_template"], kChatMlFallback);
  // Chat still works, on ChatML.
  r = c.Post("/v1/chat/completions", json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}}.dump(),
             "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  std::string chatml = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n";
  EXPECT_EQ(json::parse(r->body)["usage"]["prompt_tokens"], (*tok)->encode(chatml, true, false).size());
}

TEST(ChatTemplate, ServeWarnsInItsStartLine) {
  int rc = 0;
  std::string out = test::run_cmd(
      fmt::format("timeout -s INT 6 \"{}\" serve -m \"{}\" --port 0 2>&1", MERLIN_BINARY, model_without_template()), &rc);
  EXPECT_NE(out.find("has no chat template"), std::string::npos) << out;
  EXPECT_NE(out.find("chat template: chatml (fallback: the model has none)"), std::string::npos) << out;
  out = test::run_cmd(fmt::format("timeout -s INT 6 \"{}\" serve -m \"{}\" --port 0 2>&1", MERLIN_BINARY,
                                  test::model_dir("target")),
                      &rc);
  EXPECT_EQ(out.find("has no chat template"), std::string::npos) << out;
  EXPECT_NE(out.find("chat template: model (tokenizer_config.json)"), std::string::npos) << out;
}

}  // namespace
}  // namespace merlin::server
