// The `merlin` command's contract: run --json fields, tokenize, perplexity against the reference
// (within 0.1 %), and clear errors with a non-zero exit for bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "../test_util.h"

namespace merlin {
namespace {

std::string bin() { return MERLIN_BINARY; }
std::string q(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

TEST(Cli, RunJsonGreedyMatchesReference) {
  const auto& p = test::reference()["models"]["target"]["prompts"][0];
  int rc = 0;
  auto out = test::run_cmd(bin() + " run -m " + q(test::model_dir()) + " -p " + q(p["text"]) +
                               " -n 48 --temp 0 --ignore-eos --threads 2 --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["tokens"].get<std::vector<int>>(), p["greedy_48"].get<std::vector<int>>());
  EXPECT_EQ(j["text"], p["greedy_48_text"]);
  EXPECT_EQ(j["prompt_tokens"], p["ids"].size());
  for (const char* k : {"ttft_ms", "prompt_tps", "gen_tps"}) EXPECT_GT(j[k].get<double>(), 0) << k;
}

TEST(Cli, RunSpeculativeSameText) {
  const auto& p = test::reference()["models"]["target"]["prompts"][1];
  int rc = 0;
  auto out = test::run_cmd(bin() + " run -m " + q(test::model_dir()) + " --draft " + q(test::model_dir("draft")) +
                               " --lookup -p " + q(p["text"]) + " -n 48 --temp 0 --ignore-eos --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["tokens"].get<std::vector<int>>(), p["greedy_48"].get<std::vector<int>>());
}

TEST(Cli, TokenizeJson) {
  const auto& c = test::reference()["tokenizer"]["cases"][3];
  int rc = 0;
  auto out = test::run_cmd(bin() + " tokenize -m " + q(test::model_dir()) + " --json " + q(c["text"]) + " 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(nlohmann::json::parse(out).get<std::vector<int>>(), c["ids"].get<std::vector<int>>());
}

class PerplexityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PerplexityTest, HeldoutWithinPointOnePercent) {
  const std::string dir = test::temp_dir("ppl");
  const std::string file = dir + "/heldout.txt";
  std::ofstream(file) << test::reference()["tokenizer"]["heldout_text"].get<std::string>();
  int rc = 0;
  auto out = test::run_cmd(bin() + " perplexity -m " + q(test::model_dir(GetParam())) + " -f " + q(file) +
                               " --ctx 512 --limit-tokens 8192 --json 2>/dev/null", &rc);
  ASSERT_EQ(rc, 0) << out;
  auto j = nlohmann::json::parse(out);
  const double want = test::reference()["models"][GetParam()]["heldout_ppl"]["ppl"];
  EXPECT_NEAR(j["ppl"].get<double>(), want, want * 0.001);
  EXPECT_EQ(j["n_tokens"], 16 * 511);
}

INSTANTIATE_TEST_SUITE_P(Models, PerplexityTest, ::testing::Values("target", "draft"));

TEST(Cli, BadInputGivesMessageAndNonZeroExit) {
  int rc = 0;
  auto out = test::run_cmd(bin() + " run -m /nonexistent -p hi 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent"), std::string::npos) << out;
  out = test::run_cmd(bin() + " run -m " + q(test::model_dir()) + " -p hi -n 999999 2>&1", &rc);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("context"), std::string::npos) << out;
  out = test::run_cmd(bin() + " perplexity -m " + q(test::model_dir()) + " -f /nonexistent.txt 2>&1", &rc);
  EXPECT_NE(rc, 0);
  out = test::run_cmd(bin() + " run --no-such-flag 2>&1", &rc);
  EXPECT_NE(rc, 0);
  out = test::run_cmd(bin() + " run --help 2>&1", &rc);
  EXPECT_EQ(rc, 0);
  for (const char* f : {"--temp", "--top-k", "--top-p", "--seed", "--ignore-eos", "--threads", "--json", "--draft", "--lookup"})
    EXPECT_NE(out.find(f), std::string::npos) << f;
}

// --kv-type: an unknown value is a usage error naming it and the supported types, never f32.
TEST(Cli, UnsupportedKvTypeIsAnError) {
  for (const char* cmd : {"run -p hi -n 1", "bench -p 16 -n 1 -r 1"}) {
    int rc = 0;
    auto out = test::run_cmd(bin() + " " + cmd + " -m " + q(test::model_dir()) + " --kv-type q4_0 2>&1", &rc);
    EXPECT_NE(rc, 0) << cmd << "\n" << out;
    EXPECT_NE(out.find("'q4_0' is not a KV cache type Merlin supports (f32, q8_0)"), std::string::npos) << cmd << "\n" << out;
  }
}

// merlin bench loads OpenBLAS at run time (the binary does not link it); without it the pp
// baseline says so instead of failing.
TEST(Cli, BenchWithoutOpenBlasSaysSo) {
  int rc = 0;
  auto out = test::run_cmd("MERLIN_OPENBLAS=/nonexistent/libopenblas.so.0 " + bin() + " bench -m " + q(test::model_dir()) +
                               " -p 16 -n 2 -r 1 --threads 2 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("OpenBLAS not found |"), std::string::npos) << out;
}

// A sliding window shorter than max_position_embeddings caps the default context (with a
// warning) and refuses a longer --ctx; use_sliding_window: false turns it off.
TEST(Cli, SlidingWindowCapsOrRefusesTheContext) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(test::temp_dir("sliding")) / "model";
  fs::create_directories(dir);
  for (const char* f : {"model.safetensors", "tokenizer.json"}) {
    fs::remove(dir / f);
    fs::create_symlink(fs::path(test::model_dir()) / f, dir / f);
  }
  auto cfg = nlohmann::json::parse(std::ifstream(fs::path(test::model_dir()) / "config.json"));
  cfg["sliding_window"] = 512;
  std::ofstream(dir / "config.json") << cfg.dump();
  int rc = 0;
  auto out = test::run_cmd(bin() + " run -m " + q(dir.string()) + " -p hi -n 2 --temp 0 --ignore-eos --threads 2 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("sliding window of 512 tokens"), std::string::npos) << out;
  EXPECT_NE(out.find("ctx 512"), std::string::npos) << out;
  out = test::run_cmd(bin() + " run -m " + q(dir.string()) + " --ctx 1024 -p hi -n 2 --temp 0 2>&1", &rc);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("longer than the model's sliding attention window (512 tokens)"), std::string::npos) << out;
  cfg["use_sliding_window"] = false;
  std::ofstream(dir / "config.json") << cfg.dump();
  out = test::run_cmd(bin() + " run -m " + q(dir.string()) + " --ctx 1024 -p hi -n 2 --temp 0 --threads 2 2>&1", &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("sliding window of"), std::string::npos) << out;
  fs::remove_all(dir.parent_path());
}

}  // namespace
}  // namespace merlin
