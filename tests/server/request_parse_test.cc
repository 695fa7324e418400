// Request parsing: accepted requests become the right typed request; the bad-request catalogue
// gives the status, parameter and error body shape of the API being imitated.
#include <gtest/gtest.h>

#include "server/request_parse.h"

namespace merlin::server {
namespace {

using nlohmann::json;

const ParseContext kCtx{"tiny-coder-target", 1000};

ApiResult<CompletionRequest> completion(std::string_view body) {
  return parse_body_with<CompletionRequest>(body, [](const json& j) { return parse_completion_request(j, kCtx); });
}
ApiResult<ChatRequest> chat(std::string_view body) {
  return parse_body_with<ChatRequest>(body, [](const json& j) { return parse_chat_request(j, kCtx); });
}
ApiResult<MessagesRequest> messages(std::string_view body) {
  return parse_body_with<MessagesRequest>(body, [](const json& j) { return parse_messages_request(j, kCtx); });
}

TEST(RequestParse, CompletionBasics) {
  auto r = completion(R"({"model":"tiny-coder-target","prompt":"def f(","max_tokens":8,"temperature":0,
      "stop":"\n","seed":7,"n":2,"top_k":5,"top_p":0.9,"min_p":0.1,"logprobs":3,"stream":true,
      "stream_options":{"include_usage":true},"presence_penalty":0.5,"frequency_penalty":-0.5,
      "repetition_penalty":1.1,"user":"u1","logit_bias":{"12":-100}})");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->prompts.size(), 1u);
  EXPECT_EQ(*r->prompts[0].text, "def f(");
  EXPECT_EQ(*r->gen.max_tokens, 8);
  EXPECT_EQ(r->gen.sampling.temperature, 0.0f);
  EXPECT_EQ(r->gen.stop, std::vector<std::string>{"\n"});
  EXPECT_EQ(*r->gen.sampling.seed, 7u);
  EXPECT_EQ(r->n, 2);
  EXPECT_EQ(r->gen.sampling.top_k, 5);
  EXPECT_FLOAT_EQ(r->gen.sampling.top_p, 0.9f);
  EXPECT_FLOAT_EQ(r->gen.sampling.min_p, 0.1f);
  EXPECT_EQ(r->logprobs, 3);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  EXPECT_FLOAT_EQ(r->gen.sampling.repetition_penalty, 1.1f);
  EXPECT_EQ(r->gen.user, "u1");
  ASSERT_EQ(r->gen.sampling.logit_bias.size(), 1u);
  EXPECT_EQ(r->gen.sampling.logit_bias[0].first, 12);
}

TEST(RequestParse, CompletionPromptForms) {
  auto ids = completion(R"({"prompt":[1,2,3]})");
  ASSERT_TRUE(ids);
  EXPECT_FALSE(ids->prompts[0].text);
  EXPECT_EQ(ids->prompts[0].ids, (Ids{1, 2, 3}));
  auto one = completion(R"({"prompt":["abc"]})");
  ASSERT_TRUE(one);
  EXPECT_EQ(*one->prompts[0].text, "abc");
  auto many = completion(R"({"prompt":["a","b"],"n":2})");
  ASSERT_TRUE(many);
  EXPECT_EQ(many->prompts.size(), 2u);
  auto nested = completion(R"({"prompt":[[1,2],[3]]})");
  ASSERT_TRUE(nested);
  EXPECT_EQ(nested->prompts[1].ids, Ids{3});
  // Defaults: OpenAI's temperature 1, no max_tokens (server default), missing model accepted.
  auto d = completion(R"({"prompt":"x"})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->gen.sampling.temperature, 1.0f);
  EXPECT_FALSE(d->gen.max_tokens);
  EXPECT_EQ(d->n, 1);
  // null means "not given"
  auto nulls = completion(R"({"prompt":"x","temperature":null,"stop":null,"max_tokens":null,"seed":null})");
  ASSERT_TRUE(nulls) << nulls.error().message;
}

TEST(RequestParse, ChatBasics) {
  auto r = chat(R"({"model":"tiny-coder-target","messages":[
      {"role":"system","content":"be brief"},
      {"role":"developer","content":"dev"},
      {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
      {"role":"assistant","content":null},
      {"role":"user","content":"q","name":"bob"}],
      "max_completion_tokens":5,"max_tokens":9,"logprobs":true,"top_logprobs":2,
      "response_format":{"type":"text"},"tools":[],"tool_choice":"none","store":false,"n":1,
      "stream":false,"parallel_tool_calls":true,"modalities":["text"],"metadata":{"k":"v"}})");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->messages.size(), 5u);
  EXPECT_EQ(r->messages[1].role, "system");
  EXPECT_EQ(r->messages[2].content, "a\nb");
  EXPECT_EQ(r->messages[3].content, "");
  EXPECT_EQ(r->messages[4].name, "bob");
  EXPECT_EQ(*r->gen.max_tokens, 5);  // max_completion_tokens wins
  EXPECT_TRUE(r->logprobs);
  EXPECT_EQ(r->top_logprobs, 2);
}

TEST(RequestParse, MessagesBasics) {
  auto r = messages(R"({"model":"tiny-coder-target","max_tokens":16,
      "system":[{"type":"text","text":"sys"}],
      "messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"Sure:"}]}],
      "stop_sequences":["END"],"temperature":0,"top_k":3,"top_p":0.5,"stream":true,
      "metadata":{"user_id":"u"}})");
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->messages.size(), 2u);
  EXPECT_EQ(r->messages[0].role, "system");
  EXPECT_EQ(r->messages[0].content, "sys");
  EXPECT_EQ(*r->prefill, "Sure:");
  EXPECT_EQ(*r->gen.max_tokens, 16);
  EXPECT_EQ(r->gen.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(r->gen.sampling.top_k, 3);
  EXPECT_TRUE(r->stream);
  auto ct = parse_body_with<MessagesRequest>(R"({"model":"tiny-coder-target","messages":[{"role":"user","content":"hi"}]})",
                                             [](const json& j) { return parse_messages_request(j, kCtx, true); });
  ASSERT_TRUE(ct) << ct.error().message;
}

TEST(RequestParse, TokenizeDetokenize) {
  auto t = parse_body_with<TokenizeRequest>(R"({"content":"abc","add_special":true,"with_pieces":true})",
                                            [](const json& j) { return parse_tokenize_request(j); });
  ASSERT_TRUE(t);
  EXPECT_EQ(t->content, "abc");
  EXPECT_TRUE(t->add_special);
  EXPECT_TRUE(t->with_pieces);
  auto d = parse_body_with<DetokenizeRequest>(R"({"tokens":[1,2]})",
                                              [](const json& j) { return parse_detokenize_request(j, kCtx); });
  ASSERT_TRUE(d);
  EXPECT_EQ(d->tokens, (Ids{1, 2}));
  auto bad = parse_body_with<DetokenizeRequest>(R"({"tokens":[1,2000]})",
                                                [](const json& j) { return parse_detokenize_request(j, kCtx); });
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().param, "tokens");
}

struct BadCase {
  const char* endpoint;  // "completions", "chat", "messages"
  const char* body;
  int status;
  const char* param;     // expected param ("" = don't care)
  const char* needle;    // substring of the message
};

ApiResult<bool> run_case(const BadCase& c) {
  std::string ep = c.endpoint;
  if (ep == "completions") {
    auto r = completion(c.body);
    if (!r) return std::unexpected(r.error());
  } else if (ep == "chat") {
    auto r = chat(c.body);
    if (!r) return std::unexpected(r.error());
  } else {
    auto r = messages(c.body);
    if (!r) return std::unexpected(r.error());
  }
  return true;
}

class BadRequest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadRequest, Refused) {
  const BadCase& c = GetParam();
  auto r = run_case(c);
  ASSERT_FALSE(r) << c.body;
  EXPECT_EQ(r.error().status, c.status) << c.body << " -> " << r.error().message;
  if (*c.param) {
    EXPECT_EQ(r.error().param, c.param) << c.body;
  }
  EXPECT_NE(r.error().message.find(c.needle), std::string::npos) << r.error().message;
  // Body shapes of the imitated APIs.
  json o = openai_error_body(r.error());
  ASSERT_TRUE(o["error"].is_object());
  EXPECT_TRUE(o["error"]["message"].is_string());
  EXPECT_TRUE(o["error"]["type"].is_string());
  EXPECT_TRUE(o["error"].contains("param"));
  EXPECT_TRUE(o["error"].contains("code"));
  json a = anthropic_error_body(r.error());
  EXPECT_EQ(a["type"], "error");
  EXPECT_TRUE(a["error"]["type"].is_string());
  EXPECT_TRUE(a["error"]["message"].is_string());
}

const BadCase kBad[] = {
    // malformed JSON / not an object / invalid UTF-8
    {"completions", R"({"prompt": "x",)", 400, "", "parse"},
    {"chat", "[1,2]", 400, "", "JSON object"},
    {"chat", "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", 400, "", "UTF-8"},
    {"chat", R"({"messages":[{"role":"user","content":"\ud800"}]})", 400, "", "surrogate"},
    {"messages", "{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"\xc0\xaf\"}]}", 400, "", "UTF-8"},
    // unknown model
    {"completions", R"({"model":"gpt-4","prompt":"x"})", 404, "model", "does not exist"},
    {"chat", R"({"model":"gpt-4","messages":[{"role":"user","content":"x"}]})", 404, "model", "does not exist"},
    {"messages", R"({"model":"claude","max_tokens":1,"messages":[{"role":"user","content":"x"}]})", 404, "model",
     "claude"},
    // wrong types
    {"completions", R"({"prompt":"x","temperature":"hot"})", 400, "temperature", "Invalid type"},
    {"completions", R"({"prompt":"x","max_tokens":1.5})", 400, "max_tokens", "integer"},
    {"completions", R"({"prompt":"x","stream":"yes"})", 400, "stream", "boolean"},
    {"completions", R"({"prompt":"x","stop":7})", 400, "stop", "Invalid type"},
    {"completions", R"({"prompt":{"a":1}})", 400, "prompt", "Invalid type"},
    {"completions", R"({"prompt":[1,"a"]})", 400, "prompt[]", "Invalid type"},
    {"chat", R"({"messages":"hi"})", 400, "messages", "Invalid type"},
    {"chat", R"({"messages":[{"role":"user","content":5}]})", 400, "messages[0].content", "Invalid type"},
    {"chat", R"({"messages":[{"role":7,"content":"x"}]})", 400, "messages[0].role", "Invalid type"},
    {"messages", R"({"max_tokens":"10","messages":[{"role":"user","content":"x"}]})", 400, "max_tokens", "Invalid type"},
    // ranges
    {"completions", R"({"prompt":"x","temperature":3})", 400, "temperature", "between"},
    {"completions", R"({"prompt":"x","top_p":1.5})", 400, "top_p", "between"},
    {"completions", R"({"prompt":"x","max_tokens":0})", 400, "max_tokens", "between"},
    {"completions", R"({"prompt":"x","n":0})", 400, "n", "between"},
    {"completions", R"({"prompt":"x","logprobs":21})", 400, "logprobs", "between"},
    {"completions", R"({"prompt":"x","presence_penalty":-3})", 400, "presence_penalty", "between"},
    {"completions", R"({"prompt":[5000]})", 400, "prompt", "out of range"},
    {"completions", R"({"prompt":[-1]})", 400, "prompt", "out of range"},
    {"completions", R"({"prompt":"x","logit_bias":{"abc":1}})", 400, "logit_bias", "logit_bias"},
    {"completions", R"({"prompt":"x","logit_bias":{"5":500}})", 400, "logit_bias", "logit_bias"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":30,"logprobs":true})", 400,
     "top_logprobs", "between"},
    {"messages", R"({"max_tokens":1,"temperature":1.5,"messages":[{"role":"user","content":"x"}]})", 400,
     "temperature", "between"},
    // missing / empty
    {"completions", R"({})", 400, "prompt", "required"},
    {"completions", R"({"prompt":""})", 400, "prompt", "empty"},
    {"completions", R"({"prompt":[]})", 400, "prompt", "empty"},
    {"chat", R"({})", 400, "messages", "required"},
    {"chat", R"({"messages":[]})", 400, "messages", "at least one"},
    {"chat", R"({"messages":[{"content":"x"}]})", 400, "messages[0].role", "required"},
    {"chat", R"({"messages":[{"role":"user"}]})", 400, "messages[0].content", "required"},
    {"messages", R"({"messages":[{"role":"user","content":"x"}]})", 400, "max_tokens", "Field required"},
    {"messages", R"({"max_tokens":5,"messages":[]})", 400, "messages", "at least one"},
    {"messages", R"({"max_tokens":5})", 400, "messages", "Field required"},
    {"completions", R"({"prompt":"x","stop":["a",""]})", 400, "stop", "empty"},
    // unsupported features: never silently ignored
    {"completions", R"({"prompt":"x","frobnicate":1})", 400, "frobnicate", "Unrecognized request argument"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"foo":null})", 400, "foo", "Unrecognized"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"user","content":"x"}],"foo":1})", 400, "foo",
     "Extra inputs are not permitted"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}})", 400,
     "response_format", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{}}})",
     400, "response_format", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}]})",
     400, "tools", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"tool_choice":"required"})", 400, "tool_choice",
     "not supported"},
    {"chat", R"({"messages":[{"role":"tool","content":"x","tool_call_id":"1"}]})", 400, "messages[0].role",
     "not supported"},
    {"chat", R"({"messages":[{"role":"robot","content":"x"}]})", 400, "messages[0].role", "Invalid value"},
    {"chat", R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]})", 400,
     "messages[0].content", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"store":true})", 400, "store", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"audio":{"voice":"x"}})", 400, "audio", "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":"low"})", 400, "reasoning_effort",
     "not supported"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", 400, "top_logprobs", "requires"},
    {"chat", R"({"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}})", 400,
     "stream_options", "only allowed"},
    {"completions", R"({"prompt":"x","echo":true,"logprobs":1})", 400, "echo", "not supported"},
    {"completions", R"({"prompt":"x","suffix":"y"})", 400, "suffix", "not supported"},
    {"completions", R"({"prompt":"x","best_of":3})", 400, "best_of", "not supported"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"t"}]})", 400,
     "tools", "not supported"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"enabled","budget_tokens":1024}})",
     400, "thinking", "not supported"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"system","content":"x"}]})", 400, "messages.0.role",
     "Input should be"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]})", 400,
     "messages.0.content", "not supported"},
    {"messages", R"({"max_tokens":1,"messages":[{"role":"user","content":"x"},{"role":"assistant","content":"y "}]})",
     400, "", "trailing whitespace"},
};

INSTANTIATE_TEST_SUITE_P(Catalogue, BadRequest, ::testing::ValuesIn(kBad));

TEST(RequestParse, ErrorBodies) {
  ApiError e{404, "The model `x` does not exist", "model", "model_not_found", {}};
  json o = openai_error_body(e);
  EXPECT_EQ(o["error"]["type"], "invalid_request_error");
  EXPECT_EQ(o["error"]["param"], "model");
  EXPECT_EQ(o["error"]["code"], "model_not_found");
  EXPECT_EQ(anthropic_error_body(e)["error"]["type"], "not_found_error");
  EXPECT_EQ(anthropic_error_type(401), "authentication_error");
  EXPECT_EQ(anthropic_error_type(413), "request_too_large");
  EXPECT_EQ(anthropic_error_type(500), "api_error");
  ApiError plain{400, "m", {}, {}, {}};
  EXPECT_TRUE(openai_error_body(plain)["error"]["param"].is_null());
  EXPECT_TRUE(openai_error_body(plain)["error"]["code"].is_null());
}

TEST(RequestParse, Utf8Validator) {
  EXPECT_TRUE(valid_utf8("abc é € 𝄞"));
  EXPECT_FALSE(valid_utf8("\xff"));
  EXPECT_FALSE(valid_utf8("\xe2\x82"));        // truncated
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));    // surrogate
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));        // overlong
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // > U+10FFFF
}

}  // namespace
}  // namespace merlin::server
