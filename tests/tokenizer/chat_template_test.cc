// Unit tests of the chat-template language: the snippets in tests/data/chat-templates/
// snippets.json cover whitespace control, loops, scoping, macros, filters, tests, operators,
// slicing, str() of values and error cases, each compared with Python Jinja2's rendering
// (snippets.golden.json, from tests/tokenizer/jinja_oracle.py --snippets). Hand-written tests
// below cover error messages, hostile input and speed.
#include <chrono>
#include <fstream>
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

std::tm fixed_now() {
  std::tm tm{};
  tm.tm_year = 2024 - 1900;
  tm.tm_mon = 6;
  tm.tm_mday = 26;
  tm.tm_hour = 14;
  tm.tm_min = 5;
  tm.tm_sec = 9;
  std::time_t t = timegm(&tm);
  gmtime_r(&t, &tm);
  return tm;
}

// Renders `src` with `ctx`; returns the output or "ERROR: <message>".
std::string render(const std::string& src, const nlohmann::ordered_json& ctx = nlohmann::ordered_json::object()) {
  ChatTemplateOptions opt;
  opt.now = fixed_now;
  auto t = ChatTemplate::parse(src, opt);
  if (!t) return "ERROR: " + t.error().message;
  auto r = (*t)->render_ordered(ctx);
  return r ? *r : "ERROR: " + r.error().message;
}

TEST(ChatTemplateJinja, SnippetsMatchJinja2) {
  auto snippets = nlohmann::ordered_json::parse(read_file(kDir + "snippets.json"));
  auto golden = nlohmann::ordered_json::parse(read_file(kDir + "snippets.golden.json"))["cases"];
  ASSERT_GT(snippets.size(), 80u);
  for (const auto& s : snippets) {
    const std::string name = s["name"];
    SCOPED_TRACE(name + ": " + s["template"].get<std::string>());
    const auto& want = golden[name];
    std::string got = render(s["template"], s["context"]);
    if (want.contains("error")) {
      EXPECT_TRUE(got.starts_with("ERROR: ")) << "Jinja2 raised " << want["error_type"].get<std::string>()
                                              << ": " << want["error"].get<std::string>() << "\ngot: " << got;
    } else {
      EXPECT_EQ(got, want["output"].get<std::string>());
    }
  }
}

TEST(ChatTemplateJinja, ErrorsNameLineAndConstruct) {
  EXPECT_EQ(render("a\nb\n{{ x | nosuch }}"), "ERROR: chat template line 3: no filter named 'nosuch'");
  EXPECT_EQ(render("line1\n{% if true %}\nx"),
            "ERROR: chat template line 2: unterminated block: expected '{% endif %}' before the end of the template");
  EXPECT_EQ(render("{% for x in y %}\n{% endif %}"),
            "ERROR: chat template line 2: unexpected '{% endif %}' (no open block it could close)");
  EXPECT_EQ(render("\n\n{{ 'abc }}"), "ERROR: chat template line 3: unterminated string literal");
  EXPECT_EQ(render("{{ 1 +"), "ERROR: chat template line 1: unterminated '{{' tag (missing '}}')");
  EXPECT_EQ(render("{# never closed"), "ERROR: chat template line 1: unterminated comment '{#' (missing '#}')");
  EXPECT_EQ(render("{% endfor %}"), "ERROR: chat template line 1: unexpected '{% endfor %}' (no open block it could close)");
  EXPECT_EQ(render("{% break %}"), "ERROR: chat template line 1: 'break' outside of a for loop");
  EXPECT_EQ(render("x\n{{ raise_exception('Only user and assistant roles are supported!') }}"),
            "ERROR: chat template line 2: Only user and assistant roles are supported!");
  EXPECT_EQ(render("{{ 1 @ 2 }}"), "ERROR: chat template line 1: unexpected character '@' in tag");
  EXPECT_EQ(render("{{ messages[0].content }}", {{"messages", nlohmann::ordered_json::array()}}),
            "ERROR: chat template line 1: list object has no element 0");
}

TEST(ChatTemplateJinja, HostileInputErrorsInsteadOfCrashing) {
  // Deep nesting in expressions, statements and data, and runaway recursion, all hit limits.
  const std::pair<std::string, std::string> nests[] = {{"(", ")"}, {"[", "]"}, {"-", ""}, {"not ", ""}, {"{'a': ", "}"}};
  for (const auto& [open, close] : nests) {
    std::string src = "{{ ";
    for (int i = 0; i < 100000; ++i) src += open;
    src += "1";
    for (int i = 0; i < 100000; ++i) src += close;
    src += " }}";
    std::string r = render(src);
    EXPECT_TRUE(r.starts_with("ERROR: ")) << open;
    EXPECT_NE(r.find("too deep"), std::string::npos) << r.substr(0, 200);
  }
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  chain += " }}";
  EXPECT_NE(render(chain).find("nested too deeply"), std::string::npos);
  std::string filters = "{{ 'x'";
  for (int i = 0; i < 100000; ++i) filters += " | trim";
  filters += " }}";
  EXPECT_NE(render(filters).find("nested too deeply"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 100000; ++i) ifs += "{% if true %}";
  EXPECT_NE(render(ifs).find("too deep"), std::string::npos);
  EXPECT_NE(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("recursion"), std::string::npos);
  EXPECT_NE(render("{% macro f() %}{% for x in range(1000) %}{{ f() }}{% endfor %}{% endmacro %}{{ f() }}").find("ERROR"),
            std::string::npos);
  EXPECT_NE(render("{{ range(100000000) | length }}").find("range() larger"), std::string::npos);
  EXPECT_NE(render("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}").find("too many steps"),
            std::string::npos);
  EXPECT_NE(render("{{ 'x' * 1000000000000 }}").find("too large"), std::string::npos);
  EXPECT_NE(render("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")
                .find("ERROR"),
            std::string::npos);
  nlohmann::ordered_json deep = 1;
  for (int i = 0; i < 2000; ++i) deep = nlohmann::ordered_json::array({deep});
  EXPECT_NE(render("{{ d | tojson }}", {{"d", deep}}).find("too deep"), std::string::npos);
  // Garbage never crashes.
  std::string junk;
  uint32_t seed = 12345;
  const std::string alphabet = "{}%#-+()[]|.,:'\"abc ifendforsetmacro=<>!~*/\n";
  for (int round = 0; round < 2000; ++round) {
    junk.clear();
    for (int i = 0; i < 60; ++i) {
      seed = seed * 1103515245 + 12345;
      junk += alphabet[(seed >> 16) % alphabet.size()];
    }
    (void)render(junk);
  }
}

TEST(ChatTemplateJinja, JsonContextKeyOrder) {
  // nlohmann::json sorts object keys; render_ordered keeps the caller's order like Python dicts.
  const std::string src = "{{ tools | tojson }}";
  auto t = ChatTemplate::parse(src);
  ASSERT_TRUE(t);
  auto ordered = nlohmann::ordered_json::parse(R"({"tools": {"name": "f", "description": "d"}})");
  EXPECT_EQ(*(*t)->render_ordered(ordered), R"({"name": "f", "description": "d"})");
  EXPECT_EQ(*(*t)->render(nlohmann::json::parse(R"({"tools": {"name": "f", "description": "d"}})")),
            R"({"description": "d", "name": "f"})");
  EXPECT_FALSE((*t)->render(nlohmann::json::array()));
}

TEST(ChatTemplateJinja, StrftimeNowUsesSystemClockByDefault) {
  auto t = ChatTemplate::parse("{{ strftime_now('%Y') }}");
  ASSERT_TRUE(t);
  auto r = (*t)->render(nlohmann::json::object());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 4u);
  EXPECT_GE(std::stoi(*r), 2024);
}

TEST(ChatTemplateJinja, ParseAndRenderAreFast) {
  const std::string src = read_file(kDir + "Qwen-Qwen3-0.6B.jinja");
  auto cases = nlohmann::ordered_json::parse(read_file(kDir + "cases.json"));
  const auto& ctx = cases[2]["context"];  // system + 3 turns
  constexpr int kIters = 200;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < kIters; ++i) {
    auto t = ChatTemplate::parse(src);
    ASSERT_TRUE(t);
    auto r = (*t)->render_ordered(ctx);
    ASSERT_TRUE(r);
  }
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / kIters;
  std::printf("parse + render of Qwen3 template: %.1f us\n", us);
  // Well under a millisecond in Release; loose bound so that shared CI machines stay green.
  EXPECT_LT(us, 5000.0);
}

}  // namespace
}  // namespace merlin
