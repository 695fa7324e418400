// API keys: the key-file format (server/api_keys.h) and several accepted keys.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "server/api_keys.h"
#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;

TEST(ApiKeys, KeyFileLinesBlankAndCommentsIgnored) {
  auto k = parse_api_key_lines("# comment\n\nsk-one\n   sk-two \r\n\t# indented comment\nsk-three");
  EXPECT_EQ(k, (std::vector<std::string>{"sk-one", "sk-two", "sk-three"}));
  EXPECT_TRUE(parse_api_key_lines("").empty());
  EXPECT_TRUE(parse_api_key_lines("\n# x\n  \n").empty());
}

TEST(ApiKeys, ReadFileRefusesMissingOrEmpty) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("merlin-keys-" + std::to_string(::getpid()))).string();
  std::filesystem::create_directories(dir);
  EXPECT_FALSE(read_api_key_file(dir + "/missing"));
  std::ofstream(dir + "/empty") << "# only a comment\n\n";
  EXPECT_FALSE(read_api_key_file(dir + "/empty"));
  std::ofstream(dir + "/two") << "a\nb\n";
  auto k = read_api_key_file(dir + "/two");
  ASSERT_TRUE(k);
  EXPECT_EQ(k->size(), 2u);
  std::filesystem::remove_all(dir);
}

TEST(ApiKeys, EveryConfiguredKeyIsAccepted) {
  test_server::Config cfg;
  cfg.server.api_keys = {"sk-a", "sk-b"};
  auto srv = test_server::TestServer::start(cfg);
  ASSERT_TRUE(srv);
  auto c = srv->client();
  for (const char* key : {"sk-a", "sk-b", "sk-c", ""}) {
    httplib::Headers h;
    if (*key) h.emplace("Authorization", std::string("Bearer ") + key);
    auto r = c.Post("/tokenize", h, json{{"content", "x"}}.dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, std::string(key) == "sk-a" || std::string(key) == "sk-b" ? 200 : 401) << key;
    r = c.Get("/v1/models", {{"x-api-key", key}});
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, std::string(key) == "sk-a" || std::string(key) == "sk-b" ? 200 : 401) << key;
  }
}

}  // namespace
}  // namespace merlin::server
