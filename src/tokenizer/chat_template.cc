// Jinja2-subset interpreter for Hugging Face chat templates: lexer (with trim_blocks,
// lstrip_blocks and `-` whitespace control exactly as Jinja2's lexer applies them), a recursive
// descent parser producing an immutable AST, and a tree-walking evaluator. Errors inside are
// thrown as TemplateError and converted to Status at the public API, so nothing escapes.
#include "tokenizer/chat_template.h"

#include <cmath>
#include <unordered_map>

#include "tokenizer/chat_template_internal.h"

namespace merlin {
namespace jinja {
namespace {

// ---------------------------------------------------------------------------------------------
// Limits against hostile templates: nesting is bounded when parsing, recursion and work when
// rendering, and native stack use is measured directly so that no input can overflow it.
constexpr int kMaxExprDepth = 96;
constexpr int kMaxStmtDepth = 96;
constexpr int kMaxMacroDepth = 128;
constexpr int64_t kMaxSteps = 2'000'000;
constexpr size_t kStackBudget = size_t(1) << 20;

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

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  std::vector<Token> run() {
    normalize();
    const size_t n = src_.size();
    bool line_starting = true;
    while (pos_ < n) {
      size_t k = pos_;
      while (true) {
        k = src_.find('{', k);
        if (k == std::string::npos || k + 1 >= n) { k = std::string::npos; break; }
        char c2 = src_[k + 1];
        if (c2 == '{' || c2 == '%' || c2 == '#') break;
        ++k;
      }
      if (k == std::string::npos) {
        emit_text(src_.substr(pos_), line_);
        advance_to(n);
        break;
      }
      std::string text = src_.substr(pos_, k - pos_);
      int text_line = line_;
      char kind = src_[k + 1];
      char sign = k + 2 < n ? src_[k + 2] : 0;
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the indentation before a block or comment tag alone on its line.
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool all_ws = true;
          for (size_t q = l_pos; q < text.size(); ++q)
            if (!is_ws(text[q])) { all_ws = false; break; }
          if (all_ws) text.resize(l_pos);
        }
      }
      emit_text(std::move(text), text_line);
      advance_to(k);
      int tag_line = line_;
      advance_to(k + 2 + ((sign == '-' || sign == '+') ? 1 : 0));
      if (kind == '#') {
        size_t e = src_.find("#}", pos_);
        if (e == std::string::npos) fail(tag_line, "unterminated comment '{{#' (missing '#}}')");
        bool minus = e > pos_ && src_[e - 1] == '-';
        bool plus = e > pos_ && src_[e - 1] == '+';
        advance_to(e + 2);
        line_starting = finish_tag(minus, !plus && !minus);
      } else if (kind == '%') {
        if (try_raw(tag_line, line_starting)) continue;
        tokens_.push_back({Tok::kBlockBegin, "", 0, 0, tag_line});
        line_starting = lex_tag(true, tag_line);
      } else {
        tokens_.push_back({Tok::kVarBegin, "", 0, 0, tag_line});
        line_starting = lex_tag(false, tag_line);
      }
    }
    tokens_.push_back({Tok::kEof, "", 0, 0, line_});
    return std::move(tokens_);
  }

 private:
  void normalize() {
    // Jinja2 splits on \r\n|\r|\n and rejoins with \n, dropping one trailing newline
    // (keep_trailing_newline=False).
    if (src_.find('\r') == std::string::npos) {
      if (!src_.empty() && src_.back() == '\n') src_.pop_back();
      return;
    }
    std::string out;
    out.reserve(src_.size());
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\r') {
        out += '\n';
        if (i + 1 < src_.size() && src_[i + 1] == '\n') ++i;
      } else {
        out += src_[i];
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    src_ = std::move(out);
  }

  void advance_to(size_t p) {
    for (size_t i = pos_; i < p && i < src_.size(); ++i)
      if (src_[i] == '\n') ++line_;
    pos_ = p;
  }

  void emit_text(std::string text, int line) {
    if (!text.empty()) tokens_.push_back({Tok::kText, std::move(text), 0, 0, line});
  }

  // After a closing tag: `-` eats all following whitespace, trim_blocks eats one newline.
  // Returns Jinja's line_starting: whether what the closing tag consumed ended in a newline.
  bool finish_tag(bool minus, bool trim) {
    const size_t n = src_.size();
    if (minus) {
      size_t e = pos_;
      while (e < n && is_ws(src_[e])) ++e;
      bool nl = e > pos_ && src_[e - 1] == '\n';
      advance_to(e);
      return nl;
    }
    if (trim && pos_ < n && src_[pos_] == '\n') {
      advance_to(pos_ + 1);
      return true;
    }
    return false;
  }

  bool try_raw(int tag_line, bool& line_starting) {
    size_t p = pos_;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    bool minus = src_.compare(p, 3, "-%}") == 0;
    if (!minus && src_.compare(p, 2, "%}") != 0) return false;
    advance_to(p + (minus ? 3 : 2));
    if (minus) finish_tag(true, false);
    // Find {% endraw %} with optional whitespace control.
    size_t q = pos_;
    while (true) {
      q = src_.find("{%", q);
      if (q == std::string::npos) fail(tag_line, "unterminated 'raw' block (missing endraw)");
      size_t r = q + 2;
      bool lminus = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) { q += 2; continue; }
      r += 6;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      bool rminus = src_.compare(r, 3, "-%}") == 0;
      bool rplus = src_.compare(r, 3, "+%}") == 0;
      if (!rminus && !rplus && src_.compare(r, 2, "%}") != 0) { q += 2; continue; }
      std::string body = src_.substr(pos_, q - pos_);
      if (lminus) {
        while (!body.empty() && is_ws(body.back())) body.pop_back();
      }
      emit_text(std::move(body), line_);
      advance_to(r + (rminus || rplus ? 3 : 2));
      line_starting = finish_tag(rminus, !rplus && !rminus);
      return true;
    }
  }

  // Tokenizes an expression up to the tag's end; returns line_starting for the next text.
  bool lex_tag(bool block, int tag_line) {
    const size_t n = src_.size();
    int depth = 0;
    while (true) {
      while (pos_ < n && is_ws(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= n) fail(tag_line, "unterminated '{}' tag (missing '{}')", block ? "{%" : "{{", block ? "%}" : "}}");
      char c = src_[pos_];
      if (depth == 0 && (c == '-' || c == '+' || c == '%' || c == '}')) {
        if (block) {
          if (src_.compare(pos_, 3, "-%}") == 0) { advance_to(pos_ + 3); end(Tok::kBlockEnd); return finish_tag(true, false); }
          if (src_.compare(pos_, 3, "+%}") == 0) { advance_to(pos_ + 3); end(Tok::kBlockEnd); return false; }
          if (src_.compare(pos_, 2, "%}") == 0) { advance_to(pos_ + 2); end(Tok::kBlockEnd); return finish_tag(false, true); }
        } else {
          if (src_.compare(pos_, 3, "-}}") == 0) { advance_to(pos_ + 3); end(Tok::kVarEnd); return finish_tag(true, false); }
          if (src_.compare(pos_, 2, "}}") == 0) { advance_to(pos_ + 2); end(Tok::kVarEnd); return false; }
        }
      }
      if (c == '\'' || c == '"') {
        lex_string(c);
      } else if (c >= '0' && c <= '9') {
        lex_number();
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        tokens_.push_back({Tok::kName, src_.substr(pos_, e - pos_), 0, 0, line_});
        advance_to(e);
      } else {
        std::string op;
        char c2 = pos_ + 1 < n ? src_[pos_ + 1] : 0;
        if ((c == '/' && c2 == '/') || (c == '*' && c2 == '*') || (c2 == '=' && (c == '=' || c == '!' || c == '<' || c == '>')))
          op = std::string{c, c2};
        if (op.empty()) {
          if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos)
            fail(line_, "unexpected character '{}' in tag", c);
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') ++depth;
          if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        }
        tokens_.push_back({Tok::kOp, op, 0, 0, line_});
        advance_to(pos_ + op.size());
      }
    }
  }

  void end(Tok t) { tokens_.push_back({t, "", 0, 0, line_}); }

  void lex_string(char q) {
    int start_line = line_;
    size_t p = pos_ + 1;
    std::string out;
    const size_t n = src_.size();
    while (true) {
      if (p >= n) fail(start_line, "unterminated string literal");
      char c = src_[p];
      if (c == q) break;
      if (c != '\\') {
        size_t e = p + 1;
        while (e < n && src_[e] != q && src_[e] != '\\') ++e;
        out.append(src_, p, e - p);
        p = e;
        continue;
      }
      if (p + 1 >= n) fail(start_line, "unterminated string literal");
      char e = src_[p + 1];
      p += 2;
      auto hex = [&](int digits) {
        if (p + size_t(digits) > n) fail(start_line, "truncated \\x/\\u escape in string literal");
        uint32_t v = 0;
        for (int d = 0; d < digits; ++d) {
          char h = src_[p + size_t(d)];
          int x = std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                  : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
          if (x < 0) fail(start_line, "bad \\x/\\u escape in string literal");
          v = v * 16 + uint32_t(x);
        }
        p += size_t(digits);
        utf8_append(out, char32_t(v));
      };
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '0': out += '\0'; break;
        case '\n': break;  // line continuation
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default: out += '\\'; out += e; break;  // Python keeps unknown escapes verbatim
      }
    }
    tokens_.push_back({Tok::kString, std::move(out), 0, 0, start_line});
    advance_to(p + 1);
  }

  void lex_number() {
    const size_t n = src_.size();
    size_t e = pos_;
    auto digits = [&] { while (e < n && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e; };
    digits();
    bool is_float = false;
    // After '.', as in `messages.0`, only an integer may follow (Jinja's lookbehind).
    bool after_dot = !tokens_.empty() && tokens_.back().type == Tok::kOp && tokens_.back().text == ".";
    if (!after_dot) {
      if (e + 1 < n && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
        is_float = true;
        ++e;
        digits();
      }
      if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t f = e + 1;
        if (f < n && (src_[f] == '+' || src_[f] == '-')) ++f;
        if (f < n && std::isdigit(static_cast<unsigned char>(src_[f]))) {
          is_float = true;
          e = f;
          digits();
        }
      }
    }
    std::string text;
    for (size_t i = pos_; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    Token t{is_float ? Tok::kFloat : Tok::kInt, text, 0, 0, line_};
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      t.ival = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(line_, "integer literal {} is too large", text);
    }
    tokens_.push_back(std::move(t));
    advance_to(e);
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------------------------
// Run-time state

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  std::shared_ptr<Frame> parent;

  const Value* find(std::string_view name) const {
    for (const Frame* f = this; f; f = f->parent.get())
      for (const auto& [k, v] : f->vars)
        if (k == name) return &v;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& [k, old] : vars)
      if (k == name) { old = std::move(v); return; }
    vars.emplace_back(name, std::move(v));
  }
};

struct Ctx {
  RenderEnv env;
  std::shared_ptr<Frame> frame;
  int macro_depth = 0;
  int loop_ctl = 0;  // 1: break, 2: continue, pending until the enclosing loop sees it
  int64_t steps = 0;
  const char* stack_base = nullptr;

  void tick(int line) {
    if (++steps > kMaxSteps) fail(line, "template takes too many steps (runaway loop?)");
    const char* here = static_cast<const char*>(__builtin_frame_address(0));
    size_t used = size_t(stack_base > here ? stack_base - here : here - stack_base);
    if (used > kStackBudget) fail(line, "template nesting too deep (recursion limit)");
  }
};

// ---------------------------------------------------------------------------------------------
// AST

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

void render_body(const Body& body, Ctx& c, std::string& out) {
  for (const auto& n : body) {
    n->render(c, out);
    if (c.loop_ctl) return;
  }
  if (out.size() > c.env.max_output) fail(body.empty() ? 0 : body.back()->line, "template output exceeds {} bytes", c.env.max_output);
}

struct CallArg {
  std::string name;  // empty for positional
  ExprP value;
};

Args eval_args(const std::vector<CallArg>& args, Ctx& c) {
  Args a;
  for (const auto& arg : args) {
    if (arg.name.empty()) a.pos.push_back(arg.value->eval(c));
    else a.kw.emplace_back(arg.name, arg.value->eval(c));
  }
  return a;
}

[[noreturn]] void raise_undefined(const Value& v, int line) {
  fail(line, "{}", v.s.empty() ? std::string("value is undefined") : v.s);
}

struct Literal : Expr {
  Value v;
  Value eval(Ctx&) const override { return v; }
};

struct NameExpr : Expr {
  std::string name;
  Value eval(Ctx& c) const override {
    if (const Value* v = c.frame->find(name)) return *v;
    Value g = builtin_global(name);
    if (!g.is_undefined()) return g;
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }
};

struct ListExpr : Expr {
  std::vector<ExprP> items;
  bool tuple = false;
  Value eval(Ctx& c) const override {
    std::vector<Value> v;
    v.reserve(items.size());
    for (const auto& e : items) v.push_back(e->eval(c));
    return Value::make_list(std::move(v), tuple);
  }
};

struct DictExpr : Expr {
  std::vector<std::pair<ExprP, ExprP>> items;
  Value eval(Ctx& c) const override {
    Value d = Value::make_dict();
    for (const auto& [k, v] : items) {
      Value key = k->eval(c);
      d.dict->set(key_string(key, line), v->eval(c));
    }
    return d;
  }
};

struct GetAttrExpr : Expr {
  ExprP obj;
  std::string name;
  Value eval(Ctx& c) const override { return get_attr(obj->eval(c), name, line); }
};

struct GetItemExpr : Expr {
  ExprP obj, key;
  Value eval(Ctx& c) const override { return get_item(obj->eval(c), key->eval(c), line); }
};

int64_t slice_index(const Value& v, int line) {
  if (v.type == Value::kInt) return v.i;
  if (v.type == Value::kBool) return v.b;
  fail(line, "slice indices must be integers or None");
}

struct SliceExpr : Expr {
  ExprP obj, start, stop, step;
  Value eval(Ctx& c) const override {
    Value o = obj->eval(c);
    auto opt = [&](const ExprP& e) -> std::optional<int64_t> {
      if (!e) return std::nullopt;
      Value v = e->eval(c);
      if (v.type == Value::kNone) return std::nullopt;
      return slice_index(v, line);
    };
    std::optional<int64_t> b = opt(start), e = opt(stop), s = opt(step);
    if (o.type == Value::kUndefined) raise_undefined(o, line);
    int64_t st = s.value_or(1);
    if (st == 0) fail(line, "slice step cannot be zero");
    auto do_slice = [&](int64_t len, auto&& take) {
      // CPython's PySlice_AdjustIndices.
      int64_t lo, hi;
      if (st > 0) {
        lo = b ? (*b < 0 ? std::max<int64_t>(*b + len, 0) : std::min(*b, len)) : 0;
        hi = e ? (*e < 0 ? std::max<int64_t>(*e + len, 0) : std::min(*e, len)) : len;
        for (int64_t i = lo; i < hi; i += st) take(i);
      } else {
        lo = b ? (*b < 0 ? std::max<int64_t>(*b + len, -1) : std::min(*b, len - 1)) : len - 1;
        hi = e ? (*e < 0 ? std::max<int64_t>(*e + len, -1) : std::min(*e, len - 1)) : -1;
        for (int64_t i = lo; i > hi; i += st) take(i);
      }
    };
    if (o.type == Value::kString) {
      std::u32string cps = utf8_decode(o.s);
      std::string out;
      do_slice(int64_t(cps.size()), [&](int64_t i) { utf8_append(out, cps[size_t(i)]); });
      return Value::str(std::move(out));
    }
    if (o.type == Value::kList && !o.list->generator) {
      std::vector<Value> out;
      const auto& items = o.list->items;
      do_slice(int64_t(items.size()), [&](int64_t i) { out.push_back(items[size_t(i)]); });
      return Value::make_list(std::move(out), o.list->tuple);
    }
    return Value::undefined(fmt::format("'{}' object is not subscriptable", type_name(o)));
  }
};

struct FilterExpr : Expr {
  ExprP value;  // null inside {% filter %} blocks, where the body is the value
  std::string name;
  std::vector<CallArg> args;
  bool known = true;
  Value apply(Ctx& c, const Value& v) const {
    if (!known) fail(line, "no filter named '{}'", name);
    return apply_filter(c.env, name, v, eval_args(args, c), line);
  }
  Value eval(Ctx& c) const override { return apply(c, value->eval(c)); }
};

struct TestExpr : Expr {
  ExprP value;
  std::string name;
  std::vector<CallArg> args;
  bool negated = false;
  bool known = true;
  Value eval(Ctx& c) const override {
    if (!known) fail(line, "no test named '{}'", name);
    Value v = value->eval(c);
    bool r = apply_test(c.env, name, v, eval_args(args, c), line);
    return Value::boolean(r != negated);
  }
};

struct UnaryExpr : Expr {
  char op;  // '!' for not, '-', '+'
  ExprP operand;
  Value eval(Ctx& c) const override {
    Value v = operand->eval(c);
    if (op == '!') return Value::boolean(!truthy(v));
    if (v.type == Value::kUndefined) raise_undefined(v, line);
    if (v.type == Value::kInt) return op == '-' ? Value::integer(-v.i) : v;
    if (v.type == Value::kBool) return Value::integer(op == '-' ? -int64_t(v.b) : int64_t(v.b));
    if (v.type == Value::kFloat) return op == '-' ? Value::real(-v.f) : v;
    fail(line, "bad operand type for unary {}: '{}'", op, type_name(v));
  }
};

int64_t as_int(const Value& v) { return v.type == Value::kBool ? int64_t(v.b) : v.i; }

int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

bool contains(const Value& container, const Value& item, int line) {
  switch (container.type) {
    case Value::kUndefined: return false;
    case Value::kString:
      if (item.type != Value::kString)
        fail(line, "'in <string>' requires string as left operand, not {}", type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case Value::kList: {
      for (const auto& e : iterate(container, line))
        if (equals(e, item)) return true;
      return false;
    }
    case Value::kDict:
      if (container.dict->is_namespace) fail(line, "argument of type 'Namespace' is not iterable");
      return container.dict->find(key_string(item, line)) != nullptr;
    default: fail(line, "argument of type '{}' is not iterable", type_name(container));
  }
}

constexpr size_t kMaxString = size_t(16) << 20;

Value checked_str(std::string s, bool safe, int line) {
  if (s.size() > kMaxString) fail(line, "string longer than {} bytes", kMaxString);
  Value v = Value::str(std::move(s));
  v.safe = safe;
  return v;
}

Value binary_op(const std::string& op, const Value& a, const Value& b, int line) {
  if (op == "~") return checked_str(to_str(a) + to_str(b), false, line);
  if (op == "==") return Value::boolean(equals(a, b));
  if (op == "!=") return Value::boolean(!equals(a, b));
  if (op == "in") return Value::boolean(contains(b, a, line));
  if (op == "notin") return Value::boolean(!contains(b, a, line));
  if (a.type == Value::kUndefined) raise_undefined(a, line);
  if (b.type == Value::kUndefined) raise_undefined(b, line);
  if (op == "<") return Value::boolean(less(a, b, line));
  if (op == ">") return Value::boolean(less(b, a, line));
  if (op == "<=") return Value::boolean(!less(b, a, line));
  if (op == ">=") return Value::boolean(!less(a, b, line));
  bool nums = a.is_number() && b.is_number();
  bool ints = nums && a.type != Value::kFloat && b.type != Value::kFloat;
  if (op == "+") {
    if (ints) return Value::integer(as_int(a) + as_int(b));
    if (nums) return Value::real(a.as_double() + b.as_double());
    if (a.type == Value::kString && b.type == Value::kString) {
      if (a.safe) return checked_str(a.s + (b.safe ? b.s : html_escape(b.s)), true, line);
      if (b.safe) return checked_str(html_escape(a.s) + b.s, true, line);
      return checked_str(a.s + b.s, false, line);
    }
    if (a.type == Value::kList && b.type == Value::kList && !a.list->generator && !b.list->generator &&
        a.list->tuple == b.list->tuple) {
      if (a.list->items.size() + b.list->items.size() > kMaxString / sizeof(Value)) fail(line, "list too long");
      std::vector<Value> v = a.list->items;
      v.insert(v.end(), b.list->items.begin(), b.list->items.end());
      return Value::make_list(std::move(v), a.list->tuple);
    }
    if (a.type == Value::kString) fail(line, "can only concatenate str (not \"{}\") to str", type_name(b));
    if (a.type == Value::kList) fail(line, "can only concatenate list (not \"{}\") to list", type_name(b));
    fail(line, "unsupported operand type(s) for +: '{}' and '{}'", type_name(a), type_name(b));
  }
  if (op == "*") {
    if (ints) return Value::integer(as_int(a) * as_int(b));
    if (nums) return Value::real(a.as_double() * b.as_double());
    const Value* seq = a.type == Value::kString || a.type == Value::kList ? &a : &b;
    const Value* cnt = seq == &a ? &b : &a;
    if ((seq->type == Value::kString || (seq->type == Value::kList && !seq->list->generator)) &&
        (cnt->type == Value::kInt || cnt->type == Value::kBool)) {
      int64_t n = std::max<int64_t>(as_int(*cnt), 0);
      size_t unit = seq->type == Value::kString ? seq->s.size() : seq->list->items.size() * sizeof(Value);
      if (unit && size_t(n) > (size_t(64) << 20) / unit) fail(line, "sequence repetition too large");
      if (seq->type == Value::kString) {
        std::string out;
        for (int64_t i = 0; i < n; ++i) out += seq->s;
        return Value::str(std::move(out));
      }
      std::vector<Value> out;
      for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq->list->items.begin(), seq->list->items.end());
      return Value::make_list(std::move(out), seq->list->tuple);
    }
    fail(line, "unsupported operand type(s) for *: '{}' and '{}'", type_name(a), type_name(b));
  }
  if (!nums) fail(line, "unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b));
  if (op == "-") return ints ? Value::integer(as_int(a) - as_int(b)) : Value::real(a.as_double() - b.as_double());
  if (op == "/") {
    if (b.as_double() == 0) fail(line, "division by zero");
    return Value::real(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (b.as_double() == 0) fail(line, "integer division or modulo by zero");
    if (ints) return Value::integer(floordiv(as_int(a), as_int(b)));
    return Value::real(std::floor(a.as_double() / b.as_double()));
  }
  if (op == "%") {
    if (b.as_double() == 0) fail(line, "integer division or modulo by zero");
    if (ints) {
      int64_t x = as_int(a), y = as_int(b);
      return Value::integer(x - floordiv(x, y) * y);
    }
    double x = a.as_double(), y = b.as_double();
    double m = std::fmod(x, y);
    if (m != 0 && ((m < 0) != (y < 0))) m += y;
    return Value::real(m);
  }
  if (op == "**") {
    if (ints && as_int(b) >= 0) {
      int64_t base = as_int(a), e = as_int(b), r = 1;
      for (int64_t i = 0; i < e; ++i) {
        if (__builtin_mul_overflow(r, base, &r)) fail(line, "integer power overflows");
      }
      return Value::integer(r);
    }
    return Value::real(std::pow(a.as_double(), b.as_double()));
  }
  fail(line, "unknown operator {}", op);
}

struct BinaryExpr : Expr {
  std::string op;
  ExprP lhs, rhs;
  Value eval(Ctx& c) const override {
    Value a = lhs->eval(c);
    if (op == "and") return truthy(a) ? rhs->eval(c) : a;
    if (op == "or") return truthy(a) ? a : rhs->eval(c);
    return binary_op(op, a, rhs->eval(c), line);
  }
};

// Chained comparison: a < b < c is (a < b) and (b < c), evaluating b once.
struct CompareExpr : Expr {
  ExprP first;
  std::vector<std::pair<std::string, ExprP>> rest;
  Value eval(Ctx& c) const override {
    Value a = first->eval(c);
    for (const auto& [op, e] : rest) {
      Value b = e->eval(c);
      if (!truthy(binary_op(op, a, b, line))) return Value::boolean(false);
      a = std::move(b);
    }
    return Value::boolean(true);
  }
};

struct CondExpr : Expr {
  ExprP cond, then, otherwise;
  Value eval(Ctx& c) const override {
    if (truthy(cond->eval(c))) return then->eval(c);
    if (otherwise) return otherwise->eval(c);
    return Value::undefined("the inline if expression has no else branch");
  }
};

struct MacroDef {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprP> defaults;  // aligned with params; null where none
  Body body;
  int line = 0;
};

Value invoke_macro(Ctx& c, const Callable& fn, const Args& a, int line, const Value* caller);

Value call_value(Ctx& c, const Value& f, const Args& a, int line, const Value* caller = nullptr) {
  if (f.type == Value::kUndefined) raise_undefined(f, line);
  if (f.type != Value::kCallable) fail(line, "'{}' object is not callable", type_name(f));
  if (f.fn->builtin >= 0) return call_builtin(c.env, *f.fn, a, line);
  return invoke_macro(c, *f.fn, a, line, caller);
}

struct CallExpr : Expr {
  ExprP callee;
  std::vector<CallArg> args;
  Value eval(Ctx& c) const override {
    c.tick(line);
    if (auto* ga = dynamic_cast<const GetAttrExpr*>(callee.get())) {
      Value obj = ga->obj->eval(c);
      if (obj.type == Value::kUndefined) raise_undefined(obj, line);
      Args a = eval_args(args, c);
      if (auto r = call_method(c.env, obj, ga->name, a, line)) return std::move(*r);
      return call_value(c, get_attr(obj, ga->name, line), a, line);
    }
    Value f = callee->eval(c);
    return call_value(c, f, eval_args(args, c), line);
  }
  // For {% call %}: the same call with `caller` passed along.
  Value eval_with_caller(Ctx& c, const Value& caller) const {
    Value f = callee->eval(c);
    return call_value(c, f, eval_args(args, c), line, &caller);
  }
};

// ---------------------------------------------------------------------------------------------
// Statements

struct TextNode : Node {
  std::string text;
  void render(Ctx&, std::string& out) const override { out += text; }
};

struct OutputNode : Node {
  ExprP expr;
  void render(Ctx& c, std::string& out) const override {
    c.tick(line);
    Value v = expr->eval(c);
    if (v.type == Value::kString) out += v.s;
    else out += to_str(v);
  }
};

struct IfNode : Node {
  std::vector<std::pair<ExprP, Body>> branches;
  Body otherwise;
  void render(Ctx& c, std::string& out) const override {
    c.tick(line);
    for (const auto& [cond, body] : branches) {
      if (truthy(cond->eval(c))) {
        render_body(body, c, out);
        return;
      }
    }
    render_body(otherwise, c, out);
  }
};

// A for/set target: one name, or names to unpack.
struct Target {
  std::vector<std::string> names;
  bool unpack = false;
};

void assign(Frame& f, const Target& t, const Value& v, int line) {
  if (!t.unpack) {
    f.set(t.names[0], v);
    return;
  }
  if (v.type != Value::kList && v.type != Value::kString && v.type != Value::kDict)
    fail(line, "cannot unpack non-iterable {} object", type_name(v));
  std::vector<Value> items = iterate(v, line);
  if (items.size() != t.names.size())
    fail(line, "cannot unpack {} values into {} names", items.size(), t.names.size());
  for (size_t i = 0; i < items.size(); ++i) f.set(t.names[i], items[i]);
}

struct ForNode : Node {
  Target target;
  ExprP iter, cond;
  Body body, otherwise;
  void render(Ctx& c, std::string& out) const override {
    c.tick(line);
    Value seq = iter->eval(c);
    // Lists are immutable in the sandbox, so loop over them in place instead of copying.
    std::vector<Value> copied;
    if (seq.type != Value::kList || seq.list->generator || cond) copied = iterate(seq, line);
    std::vector<Value>& items = copied.empty() && seq.type == Value::kList && !seq.list->generator && !cond
                                    ? seq.list->items : copied;
    auto frame = std::make_shared<Frame>();
    frame->parent = c.frame;
    auto saved = c.frame;
    c.frame = frame;
    if (cond) {
      std::vector<Value> kept;
      for (auto& it : items) {
        c.tick(line);
        assign(*frame, target, it, line);
        if (truthy(cond->eval(c))) kept.push_back(std::move(it));
      }
      frame->vars.clear();
      items = std::move(kept);
    }
    const int64_t n = int64_t(items.size());
    Value loop;
    for (int64_t i = 0; i < n; ++i) {
      c.tick(line);
      // Jinja2 gives each iteration a fresh scope: a `set` in the body does not carry over to
      // the next iteration (templates use namespace() for that).
      frame->vars.clear();
      assign(*frame, target, items[size_t(i)], line);
      // Reuse the loop object unless the body kept a reference to it.
      if (loop.type != Value::kDict || loop.dict.use_count() != 1) {
        loop = Value::make_dict();
        for (const char* k : {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0"})
          loop.dict->items.emplace_back(k, Value());
      }
      auto& d = loop.dict->items;
      d.resize(9);
      d[0].second = Value::integer(i + 1);
      d[1].second = Value::integer(i);
      d[2].second = Value::integer(n - i);
      d[3].second = Value::integer(n - i - 1);
      d[4].second = Value::boolean(i == 0);
      d[5].second = Value::boolean(i == n - 1);
      d[6].second = Value::integer(n);
      d[7].second = Value::integer(1);
      d[8].second = Value::integer(0);
      if (i > 0) d.emplace_back("previtem", items[size_t(i - 1)]);
      if (i + 1 < n) d.emplace_back("nextitem", items[size_t(i + 1)]);
      frame->vars.emplace_back("loop", loop);
      render_body(body, c, out);
      if (c.loop_ctl == 1) { c.loop_ctl = 0; break; }
      if (c.loop_ctl == 2) c.loop_ctl = 0;
    }
    c.frame = saved;
    if (n == 0) render_body(otherwise, c, out);
  }
};

struct SetNode : Node {
  Target target;
  std::string attr;  // set ns.attr = ...
  ExprP value;
  void render(Ctx& c, std::string&) const override {
    c.tick(line);
    Value v = value->eval(c);
    if (!attr.empty()) {
      const Value* ns = c.frame->find(target.names[0]);
      if (!ns || ns->type != Value::kDict || !ns->dict->is_namespace)
        fail(line, "cannot assign attribute on non-namespace object '{}'", target.names[0]);
      ns->dict->set(attr, std::move(v));
      return;
    }
    assign(*c.frame, target, v, line);
  }
};

struct SetBlockNode : Node {
  std::string name;
  Body body;
  std::vector<std::unique_ptr<FilterExpr>> filters;
  void render(Ctx& c, std::string&) const override {
    std::string s;
    render_body(body, c, s);
    Value v = Value::str(std::move(s));
    for (const auto& f : filters) v = f->apply(c, v);
    c.frame->set(name, std::move(v));
  }
};

struct FilterBlockNode : Node {
  Body body;
  std::vector<std::unique_ptr<FilterExpr>> filters;
  void render(Ctx& c, std::string& out) const override {
    std::string s;
    render_body(body, c, s);
    Value v = Value::str(std::move(s));
    for (const auto& f : filters) v = f->apply(c, v);
    out += to_str(v);
  }
};

struct MacroNode : Node {
  MacroDef def;
  void render(Ctx& c, std::string&) const override {
    Value v;
    v.type = Value::kCallable;
    auto fn = std::make_shared<Callable>();
    fn->name = def.name;
    fn->macro = &def;
    fn->closure = c.frame;
    v.fn = std::move(fn);
    c.frame->set(def.name, std::move(v));
  }
};

struct CallBlockNode : Node {
  MacroDef caller;  // the body, with the call block's parameters
  std::unique_ptr<CallExpr> call;
  void render(Ctx& c, std::string& out) const override {
    Value v;
    v.type = Value::kCallable;
    auto fn = std::make_shared<Callable>();
    fn->name = "caller";
    fn->macro = &caller;
    fn->closure = c.frame;
    v.fn = std::move(fn);
    out += to_str(call->eval_with_caller(c, v));
  }
};

struct LoopCtlNode : Node {
  int ctl;
  void render(Ctx& c, std::string&) const override { c.loop_ctl = ctl; }
};

struct BodyNode : Node {  // {% generation %}: HF only tracks assistant-token spans with it
  Body body;
  void render(Ctx& c, std::string& out) const override { render_body(body, c, out); }
};

Value invoke_macro(Ctx& c, const Callable& fn, const Args& a, int line, const Value* caller) {
  const auto& def = *static_cast<const MacroDef*>(fn.macro);
  if (++c.macro_depth > kMaxMacroDepth) fail(line, "macro recursion deeper than {} calls", kMaxMacroDepth);
  c.tick(line);
  auto frame = std::make_shared<Frame>();
  frame->parent = std::static_pointer_cast<Frame>(fn.closure.lock());
  if (!frame->parent) fail(line, "macro '{}' called after the scope that defined it ended", def.name);
  auto saved = c.frame;
  c.frame = frame;
  std::vector<Value> varargs;
  for (size_t i = 0; i < a.pos.size(); ++i) {
    if (i < def.params.size()) frame->set(def.params[i], a.pos[i]);
    else varargs.push_back(a.pos[i]);
  }
  Value kwargs = Value::make_dict();
  for (const auto& [k, v] : a.kw) {
    bool is_param = false;
    for (size_t i = 0; i < def.params.size(); ++i) {
      if (def.params[i] == k) {
        if (i < a.pos.size()) fail(line, "macro '{}' got multiple values for argument '{}'", def.name, k);
        is_param = true;
      }
    }
    if (is_param) frame->set(k, v);
    else if (k == "caller") caller = &v;
    else kwargs.dict->set(k, v);
  }
  for (size_t i = a.pos.size(); i < def.params.size(); ++i) {
    bool given = false;
    for (const auto& kv : a.kw) given |= kv.first == def.params[i];
    if (given) continue;
    if (def.defaults[i]) frame->set(def.params[i], def.defaults[i]->eval(c));
    else frame->set(def.params[i], Value::undefined(fmt::format("parameter '{}' was not provided", def.params[i])));
  }
  frame->set("varargs", Value::make_list(std::move(varargs), true));
  frame->set("kwargs", std::move(kwargs));
  if (caller) frame->set("caller", *caller);
  std::string out;
  int saved_ctl = c.loop_ctl;
  c.loop_ctl = 0;
  render_body(def.body, c, out);
  c.loop_ctl = saved_ctl;
  c.frame = saved;
  --c.macro_depth;
  return Value::str(std::move(out));
}

// ---------------------------------------------------------------------------------------------
// Parser

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse_template() {
    std::string end;
    Body b = parse_body({}, end, 0);
    return b;
  }

 private:
  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::kName && cur().text == n; }
  const Token& next() { const Token& t = t_[p_]; if (p_ + 1 < t_.size()) ++p_; return t; }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::kEof: return "end of template";
      case Tok::kBlockEnd: return "end of statement block";
      case Tok::kVarEnd: return "end of print statement";
      case Tok::kText: return "template text";
      case Tok::kString: return "string literal";
      default: return fmt::format("'{}'", t.text);
    }
  }

  void expect_op(const char* op) {
    if (!is_op(op)) fail(cur().line, "expected '{}', got {}", op, describe(cur()));
    next();
  }
  std::string expect_name() {
    if (cur().type != Tok::kName) fail(cur().line, "expected a name, got {}", describe(cur()));
    return next().text;
  }
  void expect_block_end() {
    if (cur().type != Tok::kBlockEnd) fail(cur().line, "expected end of statement block, got {}", describe(cur()));
    next();
  }

  struct DepthGuard {
    int& d;
    DepthGuard(int& depth, int limit, int line) : d(depth) {
      if (++d > limit) fail(line, "template nesting too deep (more than {} levels)", limit);
    }
    ~DepthGuard() { --d; }
  };

  template <class T>
  std::unique_ptr<T> mk(int line) {
    auto n = std::make_unique<T>();
    n->line = line;
    return n;
  }
  // Checks the depth of a new expression node against the limit, so that evaluation (which
  // recurses over the tree) stays shallow even for long chains like 1+1+1+...
  ExprP seal(ExprP e, std::initializer_list<const Expr*> kids) {
    int d = 0;
    for (const Expr* k : kids)
      if (k) d = std::max(d, k->depth);
    e->depth = d + 1;
    if (e->depth > kMaxExprDepth) fail(e->line, "expression nested too deeply (more than {} levels)", kMaxExprDepth);
    return e;
  }

  static void check_depth(const Expr& e) {
    if (e.depth > kMaxExprDepth) fail(e.line, "expression nested too deeply (more than {} levels)", kMaxExprDepth);
  }

  // --- templates and statements ---

  Body parse_body(const std::vector<std::string>& ends, std::string& found, int open_line) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty())
          fail(open_line, "unterminated block: expected '{{% {} %}}' before the end of the template", ends.back());
        return body;
      }
      if (t.type == Tok::kText) {
        auto n = mk<TextNode>(t.line);
        n->text = t.text;
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::kVarBegin) {
        next();
        auto n = mk<OutputNode>(t.line);
        n->expr = parse_tuple(true);
        if (cur().type != Tok::kVarEnd) fail(cur().line, "expected '}}}}', got {}", describe(cur()));
        next();
        body.push_back(std::move(n));
      } else if (t.type == Tok::kBlockBegin) {
        next();
        if (cur().type != Tok::kName) fail(cur().line, "expected a statement name after '{{%', got {}", describe(cur()));
        for (const auto& e : ends) {
          if (cur().text == e) {
            found = e;
            next();
            return body;
          }
        }
        body.push_back(parse_statement());
      } else {
        fail(t.line, "unexpected {}", describe(t));
      }
    }
  }

  NodeP parse_statement() {
    const Token& t = cur();
    int line = t.line;
    DepthGuard g(stmt_depth_, kMaxStmtDepth, line);
    std::string kw = t.text;
    next();
    if (kw == "if") return parse_if(line);
    if (kw == "for") return parse_for(line);
    if (kw == "set") return parse_set(line);
    if (kw == "macro") return parse_macro(line);
    if (kw == "call") return parse_call_block(line);
    if (kw == "filter") return parse_filter_block(line);
    if (kw == "generation") {
      auto n = mk<BodyNode>(line);
      expect_block_end();
      std::string end;
      n->body = parse_body({"endgeneration"}, end, line);
      expect_block_end();
      return n;
    }
    if (kw == "break" || kw == "continue") {
      if (loop_depth_ == 0) fail(line, "'{}' outside of a for loop", kw);
      auto n = mk<LoopCtlNode>(line);
      n->ctl = kw == "break" ? 1 : 2;
      expect_block_end();
      return n;
    }
    static const char* kEnds[] = {"endif", "endfor", "endset", "endmacro", "endcall", "endfilter",
                                  "elif", "else", "endgeneration", "endraw"};
    for (const char* e : kEnds)
      if (kw == e) fail(line, "unexpected '{{% {} %}}' (no open block it could close)", kw);
    fail(line, "unknown tag '{}'", kw);
  }

  NodeP parse_if(int line) {
    auto n = mk<IfNode>(line);
    SoftGuard soft(this);
    while (true) {
      ExprP cond = parse_tuple(true);
      expect_block_end();
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, end, line);
      n->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "elif") continue;
      if (end == "else") {
        expect_block_end();
        n->otherwise = parse_body({"endif"}, end, line);
      }
      expect_block_end();
      return n;
    }
  }

  Target parse_target() {
    Target t;
    bool paren = is_op("(");
    if (paren) next();
    t.names.push_back(expect_name());
    while (is_op(",")) {
      next();
      if (cur().type != Tok::kName) break;
      t.names.push_back(expect_name());
      t.unpack = true;
    }
    if (paren) {
      expect_op(")");
      t.unpack = true;
    }
    return t;
  }

  NodeP parse_for(int line) {
    auto n = mk<ForNode>(line);
    n->target = parse_target();
    if (!is_name("in")) fail(cur().line, "expected 'in' in for loop, got {}", describe(cur()));
    next();
    {
      HardGuard hard(this);
      n->iter = parse_tuple(false);
    }
    HardGuard hard(this);
    if (is_name("if")) {
      next();
      n->cond = parse_expression(true);
    }
    if (is_name("recursive")) fail(cur().line, "recursive for loops are not supported");
    expect_block_end();
    std::string end;
    ++loop_depth_;
    n->body = parse_body({"else", "endfor"}, end, line);
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      n->otherwise = parse_body({"endfor"}, end, line);
    }
    expect_block_end();
    return n;
  }

  NodeP parse_set(int line) {
    Target target = parse_target();
    std::string attr;
    if (!target.unpack && is_op(".")) {
      next();
      attr = expect_name();
    }
    if (is_op("=")) {
      next();
      auto n = mk<SetNode>(line);
      n->target = std::move(target);
      n->attr = attr;
      n->value = parse_tuple(true);
      expect_block_end();
      return n;
    }
    if (target.unpack || !attr.empty()) fail(line, "block set needs a single plain name");
    auto n = mk<SetBlockNode>(line);
    n->name = target.names[0];
    n->filters = parse_filter_chain();
    expect_block_end();
    HardGuard hard(this);
    std::string end;
    n->body = parse_body({"endset"}, end, line);
    expect_block_end();
    return n;
  }

  std::vector<std::unique_ptr<FilterExpr>> parse_filter_chain(bool first_bare = false) {
    std::vector<std::unique_ptr<FilterExpr>> out;
    while (first_bare || is_op("|")) {
      if (!first_bare) next();
      first_bare = false;
      auto f = mk<FilterExpr>(cur().line);
      f->name = expect_name();
      f->known = is_known_filter(f->name);
      if (!f->known && !soft_) fail(f->line, "no filter named '{}'", f->name);
      if (is_op("(")) f->args = parse_call_args();
      out.push_back(std::move(f));
    }
    return out;
  }

  NodeP parse_filter_block(int line) {
    auto n = mk<FilterBlockNode>(line);
    HardGuard hard(this);
    n->filters = parse_filter_chain(true);
    expect_block_end();
    std::string end;
    n->body = parse_body({"endfilter"}, end, line);
    expect_block_end();
    return n;
  }

  void parse_signature(MacroDef& def) {
    expect_op("(");
    while (!is_op(")")) {
      def.params.push_back(expect_name());
      if (is_op("=")) {
        next();
        def.defaults.push_back(parse_expression(true));
      } else {
        def.defaults.push_back(nullptr);
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }

  NodeP parse_macro(int line) {
    auto n = mk<MacroNode>(line);
    n->def.name = expect_name();
    n->def.line = line;
    HardGuard hard(this);
    parse_signature(n->def);
    expect_block_end();
    std::string end;
    int saved_loops = loop_depth_;
    loop_depth_ = 0;
    n->def.body = parse_body({"endmacro"}, end, line);
    loop_depth_ = saved_loops;
    if (cur().type == Tok::kName) next();  // {% endmacro name %}
    expect_block_end();
    return n;
  }

  NodeP parse_call_block(int line) {
    auto n = mk<CallBlockNode>(line);
    n->caller.name = "caller";
    n->caller.line = line;
    HardGuard hard(this);
    if (is_op("(")) parse_signature(n->caller);
    ExprP e = parse_expression(true);
    auto* call = dynamic_cast<CallExpr*>(e.get());
    if (!call) fail(line, "{{% call %}} needs a macro call");
    e.release();
    n->call.reset(call);
    expect_block_end();
    std::string end;
    n->caller.body = parse_body({"endcall"}, end, line);
    expect_block_end();
    return n;
  }

  // Jinja2 reports unknown filters/tests at compile time except inside `if` tests and bodies
  // and inline-if expressions, where they fail only when reached; templates rely on that.
  struct SoftGuard {
    Parser* p;
    bool saved;
    explicit SoftGuard(Parser* parser) : p(parser), saved(parser->soft_) { p->soft_ = true; }
    ~SoftGuard() { p->soft_ = saved; }
  };
  struct HardGuard {
    Parser* p;
    bool saved;
    explicit HardGuard(Parser* parser) : p(parser), saved(parser->soft_) { p->soft_ = false; }
    ~HardGuard() { p->soft_ = saved; }
  };

  // --- expressions ---

  ExprP parse_tuple(bool with_cond) {
    int line = cur().line;
    ExprP first = parse_expression(with_cond);
    if (!is_op(",")) return first;
    auto t = mk<ListExpr>(line);
    t->tuple = true;
    t->items.push_back(std::move(first));
    while (is_op(",")) {
      next();
      if (cur().type == Tok::kBlockEnd || cur().type == Tok::kVarEnd || is_op(")")) break;
      t->items.push_back(parse_expression(with_cond));
    }
    int d = 0;
    for (auto& e : t->items) d = std::max(d, e->depth);
    t->depth = d + 1;
    check_depth(*t);
    return t;
  }

  ExprP parse_expression(bool with_cond) {
    DepthGuard g(expr_depth_, kMaxExprDepth, cur().line);
    ExprP e = parse_or();
    if (!with_cond) return e;
    while (is_name("if")) {
      int line = cur().line;
      next();
      auto c = mk<CondExpr>(line);
      SoftGuard soft(this);
      c->cond = parse_or();
      if (is_name("else")) {
        next();
        c->otherwise = parse_expression(true);
      }
      c->then = std::move(e);
      const Expr *a = c->cond.get(), *b = c->then.get(), *o = c->otherwise.get();
      e = seal(std::move(c), {a, b, o});
    }
    return e;
  }

  ExprP binary(std::string op, ExprP l, ExprP r, int line) {
    auto b = mk<BinaryExpr>(line);
    b->op = std::move(op);
    const Expr *x = l.get(), *y = r.get();
    b->lhs = std::move(l);
    b->rhs = std::move(r);
    return seal(std::move(b), {x, y});
  }

  ExprP parse_or() {
    ExprP e = parse_and();
    while (is_name("or")) {
      int line = cur().line;
      next();
      e = binary("or", std::move(e), parse_and(), line);
    }
    return e;
  }

  ExprP parse_and() {
    ExprP e = parse_not();
    while (is_name("and")) {
      int line = cur().line;
      next();
      e = binary("and", std::move(e), parse_not(), line);
    }
    return e;
  }

  ExprP parse_not() {
    if (is_name("not")) {
      int line = cur().line;
      DepthGuard g(expr_depth_, kMaxExprDepth, line);
      next();
      auto u = mk<UnaryExpr>(line);
      u->op = '!';
      u->operand = parse_not();
      const Expr* k = u->operand.get();
      return seal(std::move(u), {k});
    }
    return parse_compare();
  }

  ExprP parse_compare() {
    int line = cur().line;
    ExprP e = parse_math1();
    std::unique_ptr<CompareExpr> cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::kOp && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                     cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        next();
      } else if (is_name("in")) {
        op = "in";
        next();
      } else if (is_name("not") && peek().type == Tok::kName && peek().text == "in") {
        op = "notin";
        next();
        next();
      } else {
        break;
      }
      if (!cmp) {
        cmp = mk<CompareExpr>(line);
        cmp->first = std::move(e);
        cmp->depth = cmp->first->depth + 1;
      }
      ExprP r = parse_math1();
      cmp->depth = std::max(cmp->depth, r->depth + 1);
      if (cmp->depth > kMaxExprDepth) fail(line, "expression nested too deeply");
      cmp->rest.emplace_back(op, std::move(r));
    }
    if (cmp) return cmp;
    return e;
  }

  ExprP parse_math1() {
    ExprP e = parse_concat();
    while (is_op("+") || is_op("-")) {
      int line = cur().line;
      std::string op = next().text;
      e = binary(op, std::move(e), parse_concat(), line);
    }
    return e;
  }

  ExprP parse_concat() {
    ExprP e = parse_math2();
    while (is_op("~")) {
      int line = cur().line;
      next();
      e = binary("~", std::move(e), parse_math2(), line);
    }
    return e;
  }

  ExprP parse_math2() {
    ExprP e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      int line = cur().line;
      std::string op = next().text;
      e = binary(op, std::move(e), parse_pow(), line);
    }
    return e;
  }

  ExprP parse_pow() {
    ExprP e = parse_unary(true);
    while (is_op("**")) {
      int line = cur().line;
      next();
      e = binary("**", std::move(e), parse_unary(true), line);
    }
    return e;
  }

  ExprP parse_unary(bool with_filter) {
    int line = cur().line;
    DepthGuard g(expr_depth_, kMaxExprDepth, line);
    ExprP e;
    if (is_op("-") || is_op("+")) {
      char op = next().text[0];
      auto u = mk<UnaryExpr>(line);
      u->op = op;
      u->operand = parse_unary(false);
      const Expr* k = u->operand.get();
      e = seal(std::move(u), {k});
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprP parse_primary() {
    const Token& t = cur();
    int line = t.line;
    switch (t.type) {
      case Tok::kName: {
        std::string n = next().text;
        if (n == "true" || n == "True") return literal(Value::boolean(true), line);
        if (n == "false" || n == "False") return literal(Value::boolean(false), line);
        if (n == "none" || n == "None") return literal(Value::none(), line);
        auto e = mk<NameExpr>(line);
        e->name = n;
        return e;
      }
      case Tok::kString: {
        std::string s = next().text;
        while (cur().type == Tok::kString) s += next().text;  // adjacent literals concatenate
        return literal(Value::str(std::move(s)), line);
      }
      case Tok::kInt: return literal(Value::integer(next().ival), line);
      case Tok::kFloat: return literal(Value::real(next().fval), line);
      case Tok::kOp: {
        if (t.text == "(") {
          next();
          if (is_op(")")) {
            next();
            auto l = mk<ListExpr>(line);
            l->tuple = true;
            return l;
          }
          ExprP e = parse_tuple(true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") {
          next();
          auto l = mk<ListExpr>(line);
          int d = 0;
          while (!is_op("]")) {
            l->items.push_back(parse_expression(true));
            d = std::max(d, l->items.back()->depth);
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          l->depth = d + 1;
          check_depth(*l);
          return l;
        }
        if (t.text == "{") {
          next();
          auto l = mk<DictExpr>(line);
          int d = 0;
          while (!is_op("}")) {
            ExprP k = parse_expression(true);
            expect_op(":");
            ExprP v = parse_expression(true);
            d = std::max({d, k->depth, v->depth});
            l->items.emplace_back(std::move(k), std::move(v));
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          l->depth = d + 1;
          check_depth(*l);
          return l;
        }
        break;
      }
      default: break;
    }
    fail(line, "unexpected {} in expression", describe(t));
  }

  ExprP literal(Value v, int line) {
    auto l = mk<Literal>(line);
    l->v = std::move(v);
    return l;
  }

  std::vector<CallArg> parse_call_args() {
    expect_op("(");
    std::vector<CallArg> args;
    bool seen_kw = false;
    while (!is_op(")")) {
      CallArg a;
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        a.name = next().text;
        next();
        seen_kw = true;
      } else if (seen_kw) {
        fail(cur().line, "positional argument follows keyword argument");
      }
      a.value = parse_expression(true);
      args.push_back(std::move(a));
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
    return args;
  }

  static int args_depth(const std::vector<CallArg>& args) {
    int d = 0;
    for (const auto& a : args) d = std::max(d, a.value->depth);
    return d;
  }

  ExprP parse_postfix(ExprP e) {
    while (true) {
      int line = cur().line;
      if (is_op(".")) {
        next();
        if (cur().type == Tok::kInt) {
          auto g = mk<GetItemExpr>(line);
          g->key = literal(Value::integer(next().ival), line);
          const Expr* k = e.get();
          g->obj = std::move(e);
          e = seal(std::move(g), {k});
        } else {
          auto g = mk<GetAttrExpr>(line);
          g->name = expect_name();
          const Expr* k = e.get();
          g->obj = std::move(e);
          e = seal(std::move(g), {k});
        }
      } else if (is_op("[")) {
        next();
        e = parse_subscript(std::move(e), line);
      } else if (is_op("(")) {
        auto c = mk<CallExpr>(line);
        c->args = parse_call_args();
        c->depth = std::max(args_depth(c->args), e->depth) + 1;
        c->callee = std::move(e);
        check_depth(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprP parse_subscript(ExprP obj, int line) {
    // [expr] or a slice [a:b:c] with any part omitted.
    ExprP parts[3];
    int n = 0;
    bool is_slice = false;
    while (true) {
      if (!is_op(":") && !is_op("]")) parts[n] = parse_expression(true);
      if (is_op(":")) {
        is_slice = true;
        next();
        if (++n > 2) fail(line, "too many ':' in subscript");
        continue;
      }
      break;
    }
    expect_op("]");
    if (!is_slice) {
      if (!parts[0]) fail(line, "empty subscript");
      auto g = mk<GetItemExpr>(line);
      const Expr *a = obj.get(), *b = parts[0].get();
      g->obj = std::move(obj);
      g->key = std::move(parts[0]);
      return seal(std::move(g), {a, b});
    }
    auto s = mk<SliceExpr>(line);
    const Expr *a = obj.get(), *b = parts[0].get(), *c = parts[1].get(), *d = parts[2].get();
    s->obj = std::move(obj);
    s->start = std::move(parts[0]);
    s->stop = std::move(parts[1]);
    s->step = std::move(parts[2]);
    return seal(std::move(s), {a, b, c, d});
  }

  ExprP parse_filter_expr(ExprP e) {
    while (true) {
      int line = cur().line;
      if (is_op("|")) {
        next();
        auto f = mk<FilterExpr>(line);
        f->name = expect_name();
        f->known = is_known_filter(f->name);
        if (!f->known && !soft_) fail(line, "no filter named '{}'", f->name);
        if (is_op("(")) f->args = parse_call_args();
        f->depth = std::max(args_depth(f->args), e->depth) + 1;
        f->value = std::move(e);
        check_depth(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        next();
        auto t = mk<TestExpr>(line);
        if (is_name("not")) {
          t->negated = true;
          next();
        }
        t->name = expect_name();
        t->known = is_known_test(t->name);
        if (!t->known && !soft_) fail(line, "no test named '{}'", t->name);
        if (is_op("(")) {
          t->args = parse_call_args();
        } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
                    cur().type == Tok::kFloat || is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail(line, "cannot chain multiple tests with 'is'");
          CallArg a;
          a.value = parse_postfix(parse_primary());
          t->args.push_back(std::move(a));
        }
        t->depth = std::max(args_depth(t->args), e->depth) + 1;
        t->value = std::move(e);
        check_depth(*t);
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_postfix(std::move(e));
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int expr_depth_ = 0;
  int stmt_depth_ = 0;
  int loop_depth_ = 0;
  bool soft_ = false;
};

// ---------------------------------------------------------------------------------------------

class ChatTemplateImpl final : public ChatTemplate {
 public:
  ChatTemplateImpl(Body body, ChatTemplateOptions options)
      : body_(std::move(body)), options_(std::move(options)) {}

  Result<std::string> render(const nlohmann::json& context) const override {
    return render_ordered(nlohmann::ordered_json(context));
  }

  Result<std::string> render_ordered(const nlohmann::ordered_json& context) const override {
    if (!context.is_object() && !context.is_null())
      return Err(Code::kInvalidArgument, "chat template context must be a JSON object");
    Ctx c;
    char anchor = 0;
    c.stack_base = &anchor;
    c.env.now = options_.now ? &options_.now : nullptr;
    c.env.namespaces = std::make_shared<std::vector<std::shared_ptr<Dict>>>();
    struct BreakCycles {
      std::vector<std::shared_ptr<Dict>>& ns;
      ~BreakCycles() {
        for (auto& d : ns) d->items.clear();
      }
    } break_cycles{*c.env.namespaces};
    c.frame = std::make_shared<Frame>();
    if (context.is_object())
      for (auto it = context.begin(); it != context.end(); ++it) c.frame->set(it.key(), from_json(it.value()));
    std::string out;
    try {
      render_body(body_, c, out);
    } catch (const TemplateError& e) {
      return Errf(Code::kInvalidArgument, "chat template line {}: {}", e.line, e.message);
    } catch (const std::exception& e) {  // bad_alloc, json type errors: still an error, not a crash
      return Errf(Code::kInternal, "chat template: {}", e.what());
    }
    return out;
  }

 private:
  Body body_;
  ChatTemplateOptions options_;
};

}  // namespace
}  // namespace jinja

Result<std::shared_ptr<const ChatTemplate>> ChatTemplate::parse(const std::string& source) {
  return parse(source, ChatTemplateOptions{});
}

Result<std::shared_ptr<const ChatTemplate>> ChatTemplate::parse(const std::string& source,
                                                               ChatTemplateOptions options) {
  try {
    jinja::Lexer lexer(source);
    jinja::Parser parser(lexer.run());
    auto body = parser.parse_template();
    return std::make_shared<const jinja::ChatTemplateImpl>(std::move(body), std::move(options));
  } catch (const jinja::TemplateError& e) {
    return Errf(Code::kInvalidArgument, "chat template line {}: {}", e.line, e.message);
  } catch (const std::exception& e) {
    return Errf(Code::kInternal, "chat template: {}", e.what());
  }
}

}  // namespace merlin
