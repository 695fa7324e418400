// Chat-template parser: a recursive descent parser from tokens to the immutable AST of
// chat_template_ast.h, with nesting bounded (kMaxExprDepth, kMaxStmtDepth) so that rendering
// stays shallow.
#include "tokenizer/chat_template_ast.h"

namespace merlin::jinja {
namespace {

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

}  // namespace

Body parse(std::vector<Token> tokens) {
  Parser parser(std::move(tokens));
  return parser.parse_template();
}

}  // namespace merlin::jinja
