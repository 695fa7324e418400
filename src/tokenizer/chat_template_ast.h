// Internal to the chat-template interpreter: what its three stages share. The lexer
// (chat_template_lexer.cc) turns source into tokens, the parser (chat_template_parser.cc) turns
// tokens into the immutable AST declared here, and the evaluator (chat_template_eval.cc) defines
// the AST's eval/render methods and renders a parsed body. All three throw TemplateError; the
// public API (chat_template.cc) turns it into a Status.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/chat_template_internal.h"

namespace merlin::jinja {

// Limits against hostile templates: nesting is bounded when parsing (here), recursion and work
// when rendering (chat_template_eval.cc).
constexpr int kMaxExprDepth = 96;
constexpr int kMaxStmtDepth = 96;

// ---------------------------------------------------------------------------------------------
// Lexer

enum class Tok { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof };

struct Token {
  Tok type;
  std::string text;
  int64_t ival = 0;
  double fval = 0;
  int line = 0;
};

// Tokens of a template source, with trim_blocks, lstrip_blocks and `-` whitespace control
// applied as Jinja2's lexer applies them; ends with a kEof token.
std::vector<Token> lex(std::string source);

// ---------------------------------------------------------------------------------------------
// AST. The eval/render methods are defined in chat_template_eval.cc.

struct Ctx;  // run-time state of one render (chat_template_eval.cc)

struct Expr {
  int line = 0;
  int depth = 1;
  virtual ~Expr() = default;
  virtual Value eval(Ctx& c) const = 0;
};

using ExprP = std::unique_ptr<Expr>;

struct Node {
  int line = 0;
  virtual ~Node() = default;
  virtual void render(Ctx& c, std::string& out) const = 0;
};

using NodeP = std::unique_ptr<Node>;
using Body = std::vector<NodeP>;

struct CallArg {
  std::string name;  // empty for positional
  ExprP value;
};

struct Literal : Expr {
  Value v;
  Value eval(Ctx&) const override;
};

struct NameExpr : Expr {
  std::string name;
  Value eval(Ctx& c) const override;
};

struct ListExpr : Expr {
  std::vector<ExprP> items;
  bool tuple = false;
  Value eval(Ctx& c) const override;
};

struct DictExpr : Expr {
  std::vector<std::pair<ExprP, ExprP>> items;
  Value eval(Ctx& c) const override;
};

struct GetAttrExpr : Expr {
  ExprP obj;
  std::string name;
  Value eval(Ctx& c) const override;
};

struct GetItemExpr : Expr {
  ExprP obj, key;
  Value eval(Ctx& c) const override;
};

struct SliceExpr : Expr {
  ExprP obj, start, stop, step;
  Value eval(Ctx& c) const override;
};

struct FilterExpr : Expr {
  ExprP value;  // null inside {% filter %} blocks, where the body is the value
  std::string name;
  std::vector<CallArg> args;
  bool known = true;
  Value apply(Ctx& c, const Value& v) const;
  Value eval(Ctx& c) const override;
};

struct TestExpr : Expr {
  ExprP value;
  std::string name;
  std::vector<CallArg> args;
  bool negated = false;
  bool known = true;
  Value eval(Ctx& c) const override;
};

struct UnaryExpr : Expr {
  char op;  // '!' for not, '-', '+'
  ExprP operand;
  Value eval(Ctx& c) const override;
};

struct BinaryExpr : Expr {
  std::string op;
  ExprP lhs, rhs;
  Value eval(Ctx& c) const override;
};

// Chained comparison: a < b < c is (a < b) and (b < c), evaluating b once.
struct CompareExpr : Expr {
  ExprP first;
  std::vector<std::pair<std::string, ExprP>> rest;
  Value eval(Ctx& c) const override;
};

struct CondExpr : Expr {
  ExprP cond, then, otherwise;
  Value eval(Ctx& c) const override;
};

struct MacroDef {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprP> defaults;  // aligned with params; null where none
  Body body;
  int line = 0;
};

struct CallExpr : Expr {
  ExprP callee;
  std::vector<CallArg> args;
  Value eval(Ctx& c) const override;
  // For {% call %}: the same call with `caller` passed along.
  Value eval_with_caller(Ctx& c, const Value& caller) const;
};

// ---------------------------------------------------------------------------------------------
// Statements

struct TextNode : Node {
  std::string text;
  void render(Ctx&, std::string& out) const override;
};

struct OutputNode : Node {
  ExprP expr;
  void render(Ctx& c, std::string& out) const override;
};

struct IfNode : Node {
  std::vector<std::pair<ExprP, Body>> branches;
  Body otherwise;
  void render(Ctx& c, std::string& out) const override;
};

// A for/set target: one name, or names to unpack.
struct Target {
  std::vector<std::string> names;
  bool unpack = false;
};

struct ForNode : Node {
  Target target;
  ExprP iter, cond;
  Body body, otherwise;
  void render(Ctx& c, std::string& out) const override;
};

struct SetNode : Node {
  Target target;
  std::string attr;  // set ns.attr = ...
  ExprP value;
  void render(Ctx& c, std::string&) const override;
};

struct SetBlockNode : Node {
  std::string name;
  Body body;
  std::vector<std::unique_ptr<FilterExpr>> filters;
  void render(Ctx& c, std::string&) const override;
};

struct FilterBlockNode : Node {
  Body body;
  std::vector<std::unique_ptr<FilterExpr>> filters;
  void render(Ctx& c, std::string& out) const override;
};

struct MacroNode : Node {
  MacroDef def;
  void render(Ctx& c, std::string&) const override;
};

struct CallBlockNode : Node {
  MacroDef caller;  // the body, with the call block's parameters
  std::unique_ptr<CallExpr> call;
  void render(Ctx& c, std::string& out) const override;
};

struct LoopCtlNode : Node {
  int ctl;
  void render(Ctx& c, std::string&) const override;
};

struct BodyNode : Node {  // {% generation %}: HF only tracks assistant-token spans with it
  Body body;
  void render(Ctx& c, std::string& out) const override;
};

// The template body of a token stream (chat_template_parser.cc).
Body parse(std::vector<Token> tokens);

// Renders a parsed body with `context`'s keys as the template variables (chat_template_eval.cc).
// Errors come back as a Status naming the line.
Result<std::string> render(const Body& body, const ChatTemplateOptions& options,
                           const nlohmann::ordered_json& context);

}  // namespace merlin::jinja
