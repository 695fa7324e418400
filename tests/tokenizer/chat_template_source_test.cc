// Where a Hugging Face folder's chat template is read from: tokenizer_config.json, or the
// chat_template.jinja newer folders ship (which wins, as in transformers), and
// TokenizerVocab::chat_template_source saying which (empty: no template, ChatML fallback).
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "../test_util.h"
#include "tokenizer/tokenizer.h"

namespace merlin {
namespace {

namespace fs = std::filesystem;

class ChatTemplateSource : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(test::temp_dir("chat-template-source")) /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    write("tokenizer.json",
          R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
  }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  std::shared_ptr<const Tokenizer> load() {
    auto r = Tokenizer::from_hf_dir(dir_.string());
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : nullptr;
  }
  fs::path dir_;
};

TEST_F(ChatTemplateSource, FromTokenizerConfig) {
  write("tokenizer_config.json", R"({"chat_template": "{{ messages[0].content }}"})");
  auto tok = load();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->info().chat_template, "{{ messages[0].content }}");
  EXPECT_EQ(tok->info().chat_template_source, "tokenizer_config.json");
}

TEST_F(ChatTemplateSource, JinjaFileAlone) {
  write("tokenizer_config.json", R"({"add_bos_token": false})");
  write("chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}\n");
  auto tok = load();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->info().chat_template, "{% for m in messages %}{{ m.content }}{% endfor %}\n");
  EXPECT_EQ(tok->info().chat_template_source, "chat_template.jinja");
}

TEST_F(ChatTemplateSource, JinjaFileWithoutTokenizerConfig) {
  write("chat_template.jinja", "{{ bos_token }}");
  auto tok = load();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->info().chat_template, "{{ bos_token }}");
  EXPECT_EQ(tok->info().chat_template_source, "chat_template.jinja");
}

TEST_F(ChatTemplateSource, JinjaFileWinsOverTokenizerConfig) {
  write("tokenizer_config.json", R"({"chat_template": "old"})");
  write("chat_template.jinja", "new");
  auto tok = load();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->info().chat_template, "new");
  EXPECT_EQ(tok->info().chat_template_source, "chat_template.jinja");
}

TEST_F(ChatTemplateSource, NoTemplateAnywhere) {
  write("tokenizer_config.json", R"({"add_bos_token": false})");
  auto tok = load();
  ASSERT_TRUE(tok);
  EXPECT_EQ(tok->info().chat_template, "");
  EXPECT_EQ(tok->info().chat_template_source, "");
}

}  // namespace
}  // namespace merlin
