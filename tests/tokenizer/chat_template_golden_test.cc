// Differential test against Python Jinja2: every chat template under tests/data/chat-templates
// is rendered for the conversations in cases.json and compared byte for byte with the goldens
// that tests/tokenizer/jinja_oracle.py produced with Jinja2 3.1.6 and HF's settings.
#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "tokenizer/chat_template.h"

namespace merlin {
namespace {

const std::string kDir = std::string(MERLIN_SOURCE_DIR) + "/tests/data/chat-templates/";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<std::string> template_names() {
  std::vector<std::string> out;
  if (DIR* d = opendir(kDir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 6 && n.ends_with(".jinja")) out.push_back(n.substr(0, n.size() - 6));
    }
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// (template, case) pairs where Merlin knowingly differs from Jinja2, with the reason. The test
// fails if one of them starts matching, so that this list cannot go stale.
const std::set<std::pair<std::string, std::string>> kKnownDiffs = {
};

std::tm fixed_now() {
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 6;
  tm.tm_mday = 26;
  tm.tm_hour = 14;
  tm.tm_min = 5;
  tm.tm_sec = 9;
  std::time_t t = timegm(&tm);  // fills tm_wday / tm_yday
  gmtime_r(&t, &tm);
  return tm;
}

class ChatTemplateGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplateGolden, MatchesJinja2) {
  const std::string name = GetParam();
  auto cases = nlohmann::ordered_json::parse(read_file(kDir + "cases.json"));
  auto golden = nlohmann::ordered_json::parse(read_file(kDir + name + ".golden.json"));
  ChatTemplateOptions opt;
  opt.now = fixed_now;
  auto tmpl = ChatTemplate::parse(read_file(kDir + name + ".jinja"), opt);
  for (const auto& c : cases) {
    const std::string case_name = c["name"];
    SCOPED_TRACE(name + " / " + case_name);
    const auto& want = golden["cases"][case_name];
    bool known = kKnownDiffs.count({name, case_name}) > 0;
    bool match;
    std::string got_desc;
    if (!tmpl) {
      match = want.contains("error");
      got_desc = "parse error: " + tmpl.error().message;
    } else {
      auto got = (*tmpl)->render_ordered(c["context"]);
      if (want.contains("error")) {
        match = !got.has_value();
        // raise_exception's message must come through to the caller.
        if (match && want["error_type"] == "TemplateError")
          match = got.error().message.find(want["error"].get<std::string>()) != std::string::npos;
        got_desc = got ? "output:\n" + *got : "error: " + got.error().message;
      } else {
        match = got.has_value() && *got == want["output"].get<std::string>();
        got_desc = got ? "output:\n" + *got : "error: " + got.error().message;
      }
    }
    if (known) {
      EXPECT_FALSE(match) << "now matches Jinja2; remove it from kKnownDiffs";
      continue;
    }
    EXPECT_TRUE(match) << "expected " << (want.contains("error") ? "error: " + want["error"].get<std::string>()
                                                                   : "output:\n" + want["output"].get<std::string>())
                       << "\n--- got " << got_desc;
  }
}

INSTANTIATE_TEST_SUITE_P(All, ChatTemplateGolden, ::testing::ValuesIn(template_names()),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(ChatTemplateGoldenSet, AllTemplatesPresent) {
  // The 68 templates of ../shared/chat-templates, copied into tests/data/chat-templates (its
  // README says 69; the folder has 68).
  EXPECT_EQ(template_names().size(), 68u);
}

}  // namespace
}  // namespace merlin
