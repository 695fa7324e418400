// The `merlin` command's contract: run --json fields, tokenize, perplexity against the reference
// (within 0.1 %), and clear errors with a non-zero exit for bad input.
#include <gtest/gtest.h>

#include <cmath>
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

}  // namespace
}  // namespace merlin
