// Chat-template evaluator: the eval/render methods of the AST (chat_template_ast.h), Python
// operator semantics, macros and loops, with recursion, work and native stack use bounded so
// that no template can run away or overflow the stack.
#include <cmath>

#include "tokenizer/chat_template_ast.h"

namespace merlin::jinja {

constexpr int kMaxMacroDepth = 128;
constexpr int64_t kMaxSteps = 2'000'000;
constexpr size_t kStackBudget = size_t(1) << 20;

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
// Expressions

static void render_body(const Body& body, Ctx& c, std::string& out) {
  for (const auto& n : body) {
    n->render(c, out);
    if (c.loop_ctl) return;
  }
  if (out.size() > c.env.max_output) fail(body.empty() ? 0 : body.back()->line, "template output exceeds {} bytes", c.env.max_output);
}

static Args eval_args(const std::vector<CallArg>& args, Ctx& c) {
  Args a;
  for (const auto& arg : args) {
    if (arg.name.empty()) a.pos.push_back(arg.value->eval(c));
    else a.kw.emplace_back(arg.name, arg.value->eval(c));
  }
  return a;
}

[[noreturn]] static void raise_undefined(const Value& v, int line) {
  fail(line, "{}", v.s.empty() ? std::string("value is undefined") : v.s);
}

Value Literal::eval(Ctx&) const { return v; }

Value NameExpr::eval(Ctx& c) const {
  if (const Value* v = c.frame->find(name)) return *v;
  Value g = builtin_global(name);
  if (!g.is_undefined()) return g;
  return Value::undefined(fmt::format("'{}' is undefined", name));
}

Value ListExpr::eval(Ctx& c) const {
  std::vector<Value> v;
  v.reserve(items.size());
  for (const auto& e : items) v.push_back(e->eval(c));
  return Value::make_list(std::move(v), tuple);
}

Value DictExpr::eval(Ctx& c) const {
  Value d = Value::make_dict();
  for (const auto& [k, v] : items) {
    Value key = k->eval(c);
    d.dict->set(key_string(key, line), v->eval(c));
  }
  return d;
}

Value GetAttrExpr::eval(Ctx& c) const { return get_attr(obj->eval(c), name, line); }

Value GetItemExpr::eval(Ctx& c) const { return get_item(obj->eval(c), key->eval(c), line); }

static int64_t slice_index(const Value& v, int line) {
  if (v.type == Value::kInt) return v.i;
  if (v.type == Value::kBool) return v.b;
  fail(line, "slice indices must be integers or None");
}

Value SliceExpr::eval(Ctx& c) const {
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

Value FilterExpr::apply(Ctx& c, const Value& v) const {
  if (!known) fail(line, "no filter named '{}'", name);
  return apply_filter(c.env, name, v, eval_args(args, c), line);
}

Value FilterExpr::eval(Ctx& c) const { return apply(c, value->eval(c)); }

Value TestExpr::eval(Ctx& c) const {
  if (!known) fail(line, "no test named '{}'", name);
  Value v = value->eval(c);
  bool r = apply_test(c.env, name, v, eval_args(args, c), line);
  return Value::boolean(r != negated);
}

Value UnaryExpr::eval(Ctx& c) const {
  Value v = operand->eval(c);
  if (op == '!') return Value::boolean(!truthy(v));
  if (v.type == Value::kUndefined) raise_undefined(v, line);
  if (v.type == Value::kInt) return op == '-' ? Value::integer(-v.i) : v;
  if (v.type == Value::kBool) return Value::integer(op == '-' ? -int64_t(v.b) : int64_t(v.b));
  if (v.type == Value::kFloat) return op == '-' ? Value::real(-v.f) : v;
  fail(line, "bad operand type for unary {}: '{}'", op, type_name(v));
}

static int64_t as_int(const Value& v) { return v.type == Value::kBool ? int64_t(v.b) : v.i; }

static int64_t floordiv(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

static bool contains(const Value& container, const Value& item, int line) {
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

static Value checked_str(std::string s, bool safe, int line) {
  if (s.size() > kMaxString) fail(line, "string longer than {} bytes", kMaxString);
  Value v = Value::str(std::move(s));
  v.safe = safe;
  return v;
}

static Value binary_op(const std::string& op, const Value& a, const Value& b, int line) {
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

Value BinaryExpr::eval(Ctx& c) const {
  Value a = lhs->eval(c);
  if (op == "and") return truthy(a) ? rhs->eval(c) : a;
  if (op == "or") return truthy(a) ? a : rhs->eval(c);
  return binary_op(op, a, rhs->eval(c), line);
}

Value CompareExpr::eval(Ctx& c) const {
  Value a = first->eval(c);
  for (const auto& [op, e] : rest) {
    Value b = e->eval(c);
    if (!truthy(binary_op(op, a, b, line))) return Value::boolean(false);
    a = std::move(b);
  }
  return Value::boolean(true);
}

Value CondExpr::eval(Ctx& c) const {
  if (truthy(cond->eval(c))) return then->eval(c);
  if (otherwise) return otherwise->eval(c);
  return Value::undefined("the inline if expression has no else branch");
}

static Value invoke_macro(Ctx& c, const Callable& fn, const Args& a, int line, const Value* caller);

static Value call_value(Ctx& c, const Value& f, const Args& a, int line, const Value* caller = nullptr) {
  if (f.type == Value::kUndefined) raise_undefined(f, line);
  if (f.type != Value::kCallable) fail(line, "'{}' object is not callable", type_name(f));
  if (f.fn->builtin >= 0) return call_builtin(c.env, *f.fn, a, line);
  return invoke_macro(c, *f.fn, a, line, caller);
}

Value CallExpr::eval(Ctx& c) const {
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

Value CallExpr::eval_with_caller(Ctx& c, const Value& caller) const {
  Value f = callee->eval(c);
  return call_value(c, f, eval_args(args, c), line, &caller);
}

// ---------------------------------------------------------------------------------------------
// Statements

void TextNode::render(Ctx&, std::string& out) const { out += text; }

void OutputNode::render(Ctx& c, std::string& out) const {
  c.tick(line);
  Value v = expr->eval(c);
  if (v.type == Value::kString) out += v.s;
  else out += to_str(v);
}

void IfNode::render(Ctx& c, std::string& out) const {
  c.tick(line);
  for (const auto& [cond, body] : branches) {
    if (truthy(cond->eval(c))) {
      render_body(body, c, out);
      return;
    }
  }
  render_body(otherwise, c, out);
}

static void assign(Frame& f, const Target& t, const Value& v, int line) {
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

void ForNode::render(Ctx& c, std::string& out) const {
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

void SetNode::render(Ctx& c, std::string&) const {
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

void SetBlockNode::render(Ctx& c, std::string&) const {
  std::string s;
  render_body(body, c, s);
  Value v = Value::str(std::move(s));
  for (const auto& f : filters) v = f->apply(c, v);
  c.frame->set(name, std::move(v));
}

void FilterBlockNode::render(Ctx& c, std::string& out) const {
  std::string s;
  render_body(body, c, s);
  Value v = Value::str(std::move(s));
  for (const auto& f : filters) v = f->apply(c, v);
  out += to_str(v);
}

void MacroNode::render(Ctx& c, std::string&) const {
  Value v;
  v.type = Value::kCallable;
  auto fn = std::make_shared<Callable>();
  fn->name = def.name;
  fn->macro = &def;
  fn->closure = c.frame;
  v.fn = std::move(fn);
  c.frame->set(def.name, std::move(v));
}

void CallBlockNode::render(Ctx& c, std::string& out) const {
  Value v;
  v.type = Value::kCallable;
  auto fn = std::make_shared<Callable>();
  fn->name = "caller";
  fn->macro = &caller;
  fn->closure = c.frame;
  v.fn = std::move(fn);
  out += to_str(call->eval_with_caller(c, v));
}

void LoopCtlNode::render(Ctx& c, std::string&) const { c.loop_ctl = ctl; }

void BodyNode::render(Ctx& c, std::string& out) const { render_body(body, c, out); }

static Value invoke_macro(Ctx& c, const Callable& fn, const Args& a, int line, const Value* caller) {
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

Result<std::string> render(const Body& body, const ChatTemplateOptions& options,
                           const nlohmann::ordered_json& context) {
  if (!context.is_object() && !context.is_null())
    return Err(Code::kInvalidArgument, "chat template context must be a JSON object");
  Ctx c;
  char anchor = 0;
  c.stack_base = &anchor;
  c.env.now = options.now ? &options.now : nullptr;
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
    render_body(body, c, out);
  } catch (const TemplateError& e) {
    return Errf(Code::kInvalidArgument, "chat template line {}: {}", e.line, e.message);
  } catch (const std::exception& e) {  // bad_alloc, json type errors: still an error, not a crash
    return Errf(Code::kInternal, "chat template: {}", e.what());
  }
  return out;
}

}  // namespace merlin::jinja
