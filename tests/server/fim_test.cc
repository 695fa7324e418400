// Code completion (FIM): prompt layout from the model's own tokens, each endpoint's greedy output
// equal to `merlin run` on the equivalent raw FIM prompt, the 400 for models without FIM tokens,
// editor stop rules, and cancel-on-keystroke.
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <unistd.h>

#include "../test_util.h"
#include "engine/engine.h"
#include "server/fim.h"
#include "server/server.h"
#include "test_server.h"

namespace merlin::server {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::shared_ptr<const Tokenizer> target_tokenizer() {
  static auto t = [] {
    auto r = Tokenizer::from_hf_dir(test::model_dir("target"));
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : nullptr;
  }();
  return t;
}

// The tiny model's tokenizer with its FIM tokens renamed, so that none is found.
std::string no_fim_tokenizer_dir() {
  static std::string dir = [] {
    fs::path d = fs::temp_directory_path() / fmt::format("merlin_nofim_{}", ::getpid());
    fs::create_directories(d);
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::ifstream in(fs::path(test::model_dir("target")) / f);
      std::string s((std::istreambuf_iterator<char>(in)), {});
      for (size_t p = 0; (p = s.find("<fim_", p)) != std::string::npos; p += 7) s.replace(p, 5, "<nofim_");
      std::ofstream(d / f) << s;
    }
    return d.string();
  }();
  return dir;
}

Ids enc(const Tokenizer& t, const std::string& s) { return t.encode(s, false, false); }
Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

FimLayoutOptions layout(int32_t ctx = 4096, int32_t n_predict = 16) {
  FimLayoutOptions o;
  o.ctx_size = ctx;
  o.n_predict = n_predict;
  return o;
}

const std::string kPrefix = "def fib(n):\n    if n < 2:\n        return n\n";
const std::string kSuffix = "\n\ndef main():\n    print(fib(10))\n";

TEST(FimPrompt, PsmEqualsTheRawPromptTokenized) {
  auto tok = target_tokenizer();
  ASSERT_TRUE(tok);
  auto ft = fim_tokens(*tok);
  ASSERT_TRUE(ft);
  auto p = build_fim_prompt(*tok, {kPrefix, kSuffix, "", {}}, layout());
  ASSERT_TRUE(p) << p.error().message;
  Ids want = cat({{ft->pre}, enc(*tok, kPrefix), {ft->suf}, enc(*tok, kSuffix), {ft->mid}});
  EXPECT_EQ(p->ids, want);
  // The raw string that `merlin run -p` is given tokenizes the same.
  EXPECT_EQ(tok->encode("<fim_prefix>" + kPrefix + "<fim_suffix>" + kSuffix + "<fim_middle>", true, false), want);
  EXPECT_FALSE(p->truncated);
}

TEST(FimPrompt, SpmOrderAndPromptAfterMiddle) {
  auto tok = target_tokenizer();
  auto ft = fim_tokens(*tok);
  auto o = layout();
  o.order = FimOrder::kSpm;
  auto p = build_fim_prompt(*tok, {"a = 1\n", "b = 2\n", "    x", {}}, o);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->ids, cat({{ft->suf}, enc(*tok, "b = 2\n"), {ft->pre}, enc(*tok, "a = 1\n"), {ft->mid}, enc(*tok, "    x")}));
}

TEST(FimPrompt, SpecialTokenTextInCodeStaysText) {
  auto tok = target_tokenizer();
  auto ft = fim_tokens(*tok);
  auto p = build_fim_prompt(*tok, {"s = '<fim_middle>'\n", "", "", {}}, layout());
  ASSERT_TRUE(p);
  EXPECT_EQ(std::count(p->ids.begin(), p->ids.end(), ft->mid), 1);  // only the real one, at the end
  EXPECT_EQ(p->ids.back(), ft->mid);
}

TEST(FimPrompt, TruncatesPrefixFromTheLeftAndSuffixFromTheRight) {
  auto tok = target_tokenizer();
  auto ft = fim_tokens(*tok);
  std::string pre, suf;
  for (int i = 0; i < 200; ++i) pre += fmt::format("x{} = {}\n", i, i);
  for (int i = 0; i < 200; ++i) suf += fmt::format("y{} = {}\n", i, i);
  Ids tp = enc(*tok, pre), ts = enc(*tok, suf);
  // ctx 256 - 16 predicted - 3 FIM tokens = 237 for prefix and suffix: 177 and 60.
  auto p = build_fim_prompt(*tok, {pre, suf, "", {}}, layout(256, 16));
  ASSERT_TRUE(p);
  EXPECT_TRUE(p->truncated);
  EXPECT_EQ(p->n_prefix, 237 * 3 / 4);
  EXPECT_EQ(p->n_suffix, 237 - 237 * 3 / 4);
  Ids want = cat({{ft->pre}, Ids(tp.end() - p->n_prefix, tp.end()), {ft->suf}, Ids(ts.begin(), ts.begin() + p->n_suffix),
                  {ft->mid}});
  EXPECT_EQ(p->ids, want);
  EXPECT_LE(static_cast<int32_t>(p->ids.size()) + 16, 256);
  // A short suffix leaves its share to the prefix.
  auto q = build_fim_prompt(*tok, {pre, "z\n", "", {}}, layout(256, 16));
  ASSERT_TRUE(q);
  EXPECT_EQ(q->n_suffix, static_cast<int32_t>(enc(*tok, "z\n").size()));
  EXPECT_EQ(q->n_prefix, 237 - q->n_suffix);
}

TEST(FimPrompt, InputExtraUsesTheRepoLevelLayout) {
  auto tok = target_tokenizer();
  auto ft = fim_tokens(*tok);
  ASSERT_TRUE(ft->sep);     // <|file_sep|>
  ASSERT_FALSE(ft->rep);    // tiny-coder has no <|repo_name|>
  FimInput in{"a = ", "\n", "", {{"util.py", "def helper():\n    pass\n"}, {"", "X = 1\n"}}};
  auto p = build_fim_prompt(*tok, in, layout());
  ASSERT_TRUE(p);
  Ids want = cat({{*ft->sep}, enc(*tok, "util.py\n"), enc(*tok, "def helper():\n    pass\n"),
                  {*ft->sep}, enc(*tok, "tmp\n"), enc(*tok, "X = 1\n"),
                  {*ft->sep}, enc(*tok, "filename\n"),
                  {ft->pre}, enc(*tok, "a = "), {ft->suf}, enc(*tok, "\n"), {ft->mid}});
  EXPECT_EQ(p->ids, want);
  EXPECT_EQ(p->n_extra, static_cast<int32_t>(want.size()) - 3 - p->n_prefix - p->n_suffix);
  // Extra context that does not fit keeps its end.
  auto small = build_fim_prompt(*tok, in, layout(static_cast<int32_t>(want.size()) + 16 - 4, 16));
  ASSERT_TRUE(small);
  EXPECT_EQ(small->ids, Ids(want.begin() + 4, want.end()));
}

TEST(FimPrompt, ModelWithoutFimTokensIs400) {
  auto t = Tokenizer::from_hf_dir(no_fim_tokenizer_dir());
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_FALSE(fim_tokens(**t));
  auto p = build_fim_prompt(**t, {"a", "b", "", {}}, layout());
  ASSERT_FALSE(p);
  EXPECT_EQ(p.error().status, 400);
}

TEST(FimPrompt, FirstNonEmptyLine) {
  EXPECT_EQ(first_nonempty_line("\n  \n  return x  \nfoo"), "return x");
  EXPECT_EQ(first_nonempty_line(""), "");
  EXPECT_EQ(first_nonempty_line(" \n\t\n"), "");
  EXPECT_EQ(first_nonempty_line("abc"), "abc");
}

// ---- over HTTP ------------------------------------------------------------------------------

using FimServer = test_server::TestServer;
using test_server::sse_data;

// A server as the FIM tests want it: output must not depend on the machine's speed.
std::unique_ptr<FimServer> start_fim_server(std::shared_ptr<const Tokenizer> tok = nullptr) {
  test_server::Config cfg;
  cfg.ctx_size = 1024;
  cfg.tokenizer = std::move(tok);
  cfg.server.fim.default_time_budget_ms = 0;
  return FimServer::start(cfg);
}

class FimServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { srv_ = start_fim_server().release(); }
  static void TearDownTestSuite() {
    delete srv_;
    srv_ = nullptr;
  }
  static FimServer* srv_;
};
FimServer* FimServerTest::srv_ = nullptr;

// `merlin run` greedy on the raw prompt (special tokens parsed), with the server's editor rule
// applied: the text ends before a completed line equal to the suffix's first non-empty line.
std::string merlin_run_reference(const std::string& prefix, const std::string& suffix, int n) {
  std::string raw = "<fim_prefix>" + prefix + "<fim_suffix>" + suffix + "<fim_middle>";
  fs::path f = fs::temp_directory_path() / fmt::format("merlin_fim_prompt_{}.txt", ::getpid());
  std::ofstream(f) << raw;
  std::string cmd = fmt::format("sh -c '\"{}\" run -m \"{}\" -p \"$(cat {})\" -n {} --temp 0 --json --raw 2>/dev/null'",
                                MERLIN_BINARY, test::model_dir("target"), f.string(), n);
  std::string out;
  if (FILE* p = popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, k);
    pclose(p);
  }
  fs::remove(f);
  auto j = json::parse(out.substr(out.find('{')));
  std::string text = j.at("text").get<std::string>();
  std::string line = first_nonempty_line(suffix);
  size_t ls = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\n') continue;
    if (!line.empty() && first_nonempty_line(text.substr(ls, i - ls)) == line) {
      text.resize(ls);
      break;
    }
    ls = i + 1;
  }
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) text.clear();
  return text;
}

constexpr int kN = 24;

const std::string& reference() {
  static std::string r = merlin_run_reference(kPrefix, kSuffix, kN);
  return r;
}

TEST_F(FimServerTest, InfillMatchesMerlinRun) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  auto res = c.Post("/infill",
                    json{{"input_prefix", kPrefix}, {"input_suffix", kSuffix}, {"n_predict", kN}, {"temperature", 0},
                         {"id_slot", 3}, {"cache_prompt", true}}
                        .dump(),
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto j = json::parse(res->body);
  EXPECT_EQ(j["content"], reference());
  EXPECT_EQ(j["stop"], true);
  EXPECT_GT(j["tokens_evaluated"].get<int>(), 20);
  EXPECT_TRUE(j["timings"].contains("predicted_ms"));
  std::string st = j["stop_type"];
  EXPECT_TRUE(st == "eos" || st == "limit" || st == "word") << st;

  // Streaming: llama.cpp's format, content pieces then a final object with stop: true.
  res = c.Post("/infill",
               json{{"input_prefix", kPrefix}, {"input_suffix", kSuffix}, {"n_predict", kN}, {"stream", true}}.dump(),
               "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  auto evs = sse_data(res->body);
  ASSERT_FALSE(evs.empty());
  std::string text;
  for (size_t i = 0; i + 1 < evs.size(); ++i) {
    EXPECT_EQ(evs[i]["stop"], false);
    text += evs[i]["content"].get<std::string>();
  }
  EXPECT_EQ(evs.back()["stop"], true);
  EXPECT_TRUE(evs.back().contains("timings"));
  EXPECT_EQ(text, reference());
}

TEST_F(FimServerTest, OpenAICompletionWithSuffixMatchesMerlinRun) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  json body = {{"prompt", kPrefix}, {"suffix", kSuffix}, {"max_tokens", kN}, {"temperature", 0}};
  auto res = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto j = json::parse(res->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], reference());
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 20);

  body["stream"] = true;
  res = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  auto evs = sse_data(res->body);
  ASSERT_GE(evs.size(), 2u);
  EXPECT_EQ(evs.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < evs.size(); ++i) text += evs[i]["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, reference());
  EXPECT_FALSE(evs[evs.size() - 2]["choices"][0]["finish_reason"].is_null());
}

TEST_F(FimServerTest, MistralFimMatchesMerlinRun) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  json body = {{"model", srv_->engine->model().name}, {"prompt", kPrefix}, {"suffix", kSuffix}, {"max_tokens", kN},
               {"temperature", 0}};
  auto res = c.Post("/v1/fim/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto j = json::parse(res->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["content"], reference());

  body["stream"] = true;
  res = c.Post("/v1/fim/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  auto evs = sse_data(res->body);
  ASSERT_GE(evs.size(), 3u);
  EXPECT_EQ(evs.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < evs.size(); ++i) {
    EXPECT_EQ(evs[i]["object"], "chat.completion.chunk");
    text += evs[i]["choices"][0]["delta"].value("content", "");
  }
  EXPECT_EQ(text, reference());

  body["min_tokens"] = 3;
  res = c.Post("/v1/fim/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
}

// llama.cpp's `truncated`: the prompt was cut to fit the context. A prefix far longer than the
// context (1024) is cut and says so, streamed or not; a short request, or extra context that
// fits, is not.
TEST_F(FimServerTest, InfillReportsTruncatedTruthfully) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  std::string long_prefix;
  for (int i = 0; i < 400; ++i) long_prefix += fmt::format("value_{} = compute({})\n", i, i);
  struct Case {
    json body;
    bool truncated;
  };
  const Case cases[] = {
      {{{"input_prefix", kPrefix}, {"input_suffix", kSuffix}, {"n_predict", 4}}, false},
      {{{"input_prefix", long_prefix}, {"input_suffix", kSuffix}, {"n_predict", 4}}, true},
      {{{"input_prefix", kPrefix}, {"input_suffix", long_prefix}, {"n_predict", 4}}, true},
      {{{"input_prefix", kPrefix}, {"input_extra", {{{"filename", "a.py"}, {"text", "x = 1\n"}}}}, {"n_predict", 4}},
       false},
      {{{"input_prefix", kPrefix}, {"input_extra", {{{"filename", "a.py"}, {"text", long_prefix}}}}, {"n_predict", 4}},
       true},
  };
  for (const auto& cs : cases) {
    for (bool stream : {false, true}) {
      json b = cs.body;
      b["stream"] = stream;
      auto r = c.Post("/infill", b.dump(), "application/json");
      ASSERT_TRUE(r);
      ASSERT_EQ(r->status, 200) << r->body;
      json fin = stream ? sse_data(r->body).back() : json::parse(r->body);
      EXPECT_EQ(fin["truncated"], cs.truncated) << b.dump().substr(0, 120);
      EXPECT_LE(fin["tokens_evaluated"].get<int>() + 4, 1024);
    }
  }
}

TEST_F(FimServerTest, NIndentCutsALessIndentedLine) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  // With n_indent beyond any line, the suggestion ends at its first newline.
  auto res = c.Post("/infill",
                    json{{"input_prefix", kPrefix}, {"input_suffix", kSuffix}, {"n_predict", kN}, {"n_indent", 64}}.dump(),
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  auto j = json::parse(res->body);
  std::string ref = reference();
  size_t nl = ref.find('\n');
  if (nl != std::string::npos && ref.find_first_not_of(" \t\r\n", nl) != std::string::npos) {
    std::string want = ref.substr(0, ref.find_first_not_of(" \t\r\n", nl));
    want = want.substr(0, want.rfind('\n') + 1);
    if (want.find_first_not_of(" \t\r\n") == std::string::npos) want.clear();
    EXPECT_EQ(j["content"], want);
    EXPECT_EQ(j["stop_type"], "limit");
  }
}

TEST_F(FimServerTest, ErrorsAre400) {
  ASSERT_TRUE(srv_);
  auto c = srv_->client();
  auto r = c.Post("/infill", json{{"input_prefix", 3}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 400);
  r = c.Post("/infill", json{{"input_prefix", "a"}, {"bogus", 1}}.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/completions", json{{"prompt", "a"}, {"suffix", "b"}, {"n", 2}}.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/fim/completions", json{{"suffix", "b"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 400);
  r = c.Post("/v1/fim/completions", json{{"prompt", "a"}, {"model", "other"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 404);
}

TEST(FimNoTokens, EveryEndpointGives400) {
  auto t = Tokenizer::from_hf_dir(no_fim_tokenizer_dir());
  ASSERT_TRUE(t);
  auto srv = start_fim_server(*t);
  ASSERT_TRUE(srv);
  auto c = srv->client();
  for (auto [path, body] : {std::pair<const char*, json>{"/infill", {{"input_prefix", "a"}, {"input_suffix", "b"}}},
                            {"/v1/fim/completions", {{"prompt", "a"}, {"suffix", "b"}}},
                            {"/v1/completions", {{"prompt", "a"}, {"suffix", "b"}}}}) {
    auto r = c.Post(path, body.dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << path << " " << r->body;
    EXPECT_NE(r->body.find("fill-in-the-middle"), std::string::npos) << r->body;
  }
  // Without a suffix /v1/completions is an ordinary completion.
  auto r = c.Post("/v1/completions", json{{"prompt", "a"}, {"max_tokens", 2}}.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
}

TEST_F(FimServerTest, SupersededRequestEndsPromptlyAsCancelled) {
  ASSERT_TRUE(srv_);
  auto& m = srv_->engine->metrics();
  const uint64_t cancelled_before = m.requests_cancelled.load();
  std::string prefix;
  for (int i = 0; i < 20; ++i) prefix += fmt::format("value_{} = compute({})\n", i, i);
  std::atomic<int> chunks{0};
  std::string body1;
  std::chrono::steady_clock::time_point t_end1;
  std::thread first([&] {
    httplib::Client c("127.0.0.1", srv_->port);
    c.set_read_timeout(120, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/infill";
    req.headers = {{"X-Client-Id", "editor-1"}, {"Content-Type", "application/json"}};
    req.body = json{{"input_prefix", prefix}, {"input_suffix", ""}, {"n_predict", 600}, {"ignore_eos", true},
                    {"t_max_predict_ms", 0}, {"stream", true}}
                   .dump();
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      body1.append(d, n);
      chunks++;
      return true;
    };
    (void)c.send(req);
    t_end1 = std::chrono::steady_clock::now();
  });
  for (int i = 0; i < 600 && chunks.load() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GE(chunks.load(), 2) << "the first request produced nothing";
  auto t_second = std::chrono::steady_clock::now();
  auto c = srv_->client();
  auto res = c.Post("/infill", {{"X-Client-Id", "editor-1"}},
                    json{{"input_prefix", prefix + "total = "}, {"input_suffix", ""}, {"n_predict", 4}}.dump(),
                    "application/json");
  first.join();
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  // The first stream ended (well before its 600 tokens) with a final "cancelled" event.
  EXPECT_LT(t_end1 - t_second, std::chrono::seconds(2));
  auto evs = sse_data(body1);
  ASSERT_FALSE(evs.empty()) << body1;
  EXPECT_EQ(evs.back()["stop"], true);
  EXPECT_EQ(evs.back()["stop_type"], "cancelled");
  EXPECT_LT(evs.back()["tokens_predicted"].get<int>(), 600);
  EXPECT_GT(m.requests_cancelled.load(), cancelled_before);
  // Its prompt blocks served the next request from the prefix cache.
  auto j = json::parse(res->body);
  EXPECT_GE(j["tokens_cached"].get<int>(), 16 * 4) << res->body;
  auto met = c.Get("/metrics");
  ASSERT_TRUE(met);
  EXPECT_NE(met->body.find("merlin_kv_cache_blocks_cached"), std::string::npos);
}

}  // namespace
}  // namespace merlin::server
