// Builtins of the chat-template interpreter: Jinja2 filters and tests, the str/list/dict
// methods templates call, and the globals HF provides (raise_exception, strftime_now) plus
// Jinja's own (range, namespace, dict). Semantics follow Jinja2 3.1 / Python 3 exactly where
// the chat templates we test depend on them; mutating list/dict methods fail as they do in
// HF's ImmutableSandboxedEnvironment.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "tokenizer/chat_template_internal.h"

namespace merlin::jinja {
namespace {

constexpr size_t kMaxRange = 100'000;

Value generator(std::vector<Value> items) {
  Value v = Value::make_list(std::move(items));
  v.list->generator = true;
  return v;
}

bool arg_bool(const Args& a, size_t i, std::string_view name, bool dflt) {
  const Value* v = a.get(i, name);
  return v ? truthy(*v) : dflt;
}

int64_t arg_int(const Args& a, size_t i, std::string_view name, int64_t dflt, int line) {
  const Value* v = a.get(i, name);
  if (!v || v->type == Value::kNone) return dflt;
  if (v->type == Value::kInt) return v->i;
  if (v->type == Value::kBool) return v->b;
  if (v->type == Value::kFloat) return int64_t(v->f);
  fail(line, "expected an integer for argument '{}', got {}", name, type_name(*v));
}

std::string arg_str(const Args& a, size_t i, std::string_view name, std::string dflt) {
  const Value* v = a.get(i, name);
  return v ? to_str(*v) : dflt;
}

// Jinja's attribute path for map/selectattr/sort(attribute=...): "a.b.0" looks up each part as
// an item, digits as integer indices.
Value get_path(const Value& item, const std::string& path, int line) {
  Value cur = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = get_item(cur, digits ? Value::integer(std::stoll(part)) : Value::str(part), line);
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// Key for sort/unique/min/max: strings compare case-insensitively unless asked otherwise.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.type == Value::kString) return Value::str(ascii_lower(v.s));
  return v;
}

std::vector<std::string> splitlines(const std::string& s) {
  std::vector<std::string> out;
  std::u32string cps = utf8_decode(s);
  std::u32string line;
  for (size_t i = 0; i < cps.size(); ++i) {
    char32_t c = cps[i];
    bool br = c == '\n' || c == '\r' || c == '\v' || c == '\f' || c == 0x1c || c == 0x1d ||
              c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!br) {
      line += c;
      continue;
    }
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    out.push_back(utf8_encode(line));
    line.clear();
  }
  if (!line.empty()) out.push_back(utf8_encode(line));
  return out;
}

std::string py_title(const std::string& s) {
  // Jinja's do_title: words start after whitespace or one of - ( { [ <.
  std::string out = s;
  bool start = true;
  for (auto& c : out) {
    bool sep = is_ws_char(c);
    if (start && !sep) c = char(std::toupper(static_cast<unsigned char>(c)));
    else if (!sep) c = char(std::tolower(static_cast<unsigned char>(c)));
    start = sep || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
  }
  return out;
}

bool parse_int(std::string s, int64_t& out) {
  s = py_strip(s, nullptr, true, true);
  std::string t;
  for (char c : s)
    if (c != '_') t += c;
  if (t.empty()) return false;
  size_t i = (t[0] == '+' || t[0] == '-') ? 1 : 0;
  if (i >= t.size()) return false;
  for (size_t k = i; k < t.size(); ++k)
    if (t[k] < '0' || t[k] > '9') return false;
  errno = 0;
  out = std::strtoll(t.c_str(), nullptr, 10);
  return errno != ERANGE;
}

bool parse_float(const std::string& s0, double& out) {
  std::string s = py_strip(s0, nullptr, true, true);
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return end && *end == 0;
}

std::string py_format(const std::string& fmt_str, const Args& a, int line) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    char c = fmt_str[i];
    if (c == '{') {
      if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '{') { out += '{'; ++i; continue; }
      size_t e = fmt_str.find('}', i);
      if (e == std::string::npos) fail(line, "str.format: single '{{' encountered in format string");
      std::string field = fmt_str.substr(i + 1, e - i - 1);
      if (field.find(':') != std::string::npos || field.find('!') != std::string::npos)
        fail(line, "str.format: format specs and conversions are not supported");
      const Value* v = nullptr;
      if (field.empty()) {
        v = auto_idx < a.pos.size() ? &a.pos[auto_idx] : nullptr;
        ++auto_idx;
      } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
        size_t k = std::stoul(field);
        v = k < a.pos.size() ? &a.pos[k] : nullptr;
      } else {
        for (const auto& [k, val] : a.kw)
          if (k == field) v = &val;
      }
      if (!v) fail(line, "str.format: no argument for field '{{{}}}'", field);
      out += to_str(*v);
      i = e;
    } else if (c == '}') {
      if (i + 1 < fmt_str.size() && fmt_str[i + 1] == '}') ++i;
      else fail(line, "str.format: single '}}' encountered in format string");
      out += '}';
    } else {
      out += c;
    }
  }
  return out;
}

bool prefix_match(const std::string& s, const Value& p, bool suffix, int line) {
  auto one = [&](const Value& x) {
    if (x.type != Value::kString) fail(line, "startswith/endswith argument must be str or a tuple of str");
    if (x.s.size() > s.size()) return false;
    return suffix ? s.compare(s.size() - x.s.size(), x.s.size(), x.s) == 0 : s.compare(0, x.s.size(), x.s) == 0;
  };
  if (p.type == Value::kList) {
    for (const auto& x : p.list->items)
      if (one(x)) return true;
    return false;
  }
  return one(p);
}

[[noreturn]] void unsafe(const Value& obj, const std::string& name, int line) {
  fail(line, "access to attribute '{}' of '{}' object is unsafe.", name, type_name(obj));
}

enum Builtin { kRange, kNamespace, kDict, kRaiseException, kStrftimeNow, kNumBuiltins };
const char* kBuiltinNames[kNumBuiltins] = {"range", "namespace", "dict", "raise_exception", "strftime_now"};

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

bool is_ws_char(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

Value get_attr(const Value& obj, const std::string& name, int line) {
  switch (obj.type) {
    case Value::kUndefined: fail(line, "{}", obj.s.empty() ? "value is undefined" : obj.s);
    case Value::kDict:
      if (const Value* v = obj.dict->find(name)) return *v;
      return Value::undefined(fmt::format("'{}' has no attribute '{}'",
                                          obj.dict->is_namespace ? "Namespace" : "dict object", name));
    case Value::kNone: return Value::undefined(fmt::format("'None' has no attribute '{}'", name));
    default: return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(obj), name));
  }
}

Value get_item(const Value& obj, const Value& key, int line) {
  switch (obj.type) {
    case Value::kUndefined: fail(line, "{}", obj.s.empty() ? "value is undefined" : obj.s);
    case Value::kDict:
      if (key.type != Value::kList && key.type != Value::kDict && key.type != Value::kUndefined) {
        if (const Value* v = obj.dict->find(key_string(key, line))) return *v;
      }
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", to_str(key)));
    case Value::kList:
    case Value::kString: {
      if (obj.type == Value::kList && obj.list->generator) break;
      if (key.type != Value::kInt && key.type != Value::kBool) break;
      int64_t i = key.type == Value::kBool ? key.b : key.i;
      if (obj.type == Value::kList) {
        int64_t n = int64_t(obj.list->items.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::undefined(fmt::format("list object has no element {}", to_str(key)));
        return obj.list->items[size_t(i)];
      }
      std::u32string cps = utf8_decode(obj.s);
      int64_t n = int64_t(cps.size());
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined(fmt::format("str object has no element {}", to_str(key)));
      std::string out;
      utf8_append(out, cps[size_t(i)]);
      return Value::str(std::move(out));
    }
    default: break;
  }
  return Value::undefined(fmt::format("{} has no element {}", obj.type == Value::kNone ? "None" : type_name(obj),
                                      to_repr(key)));
}

// ---------------------------------------------------------------------------------------------
// Tests

static const char* kTests[] = {
    "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number",
    "string", "mapping", "iterable", "sequence", "callable", "sameas", "escaped", "in", "lower",
    "upper", "odd", "even", "divisibleby", "eq", "equalto", "==", "ne", "!=", "lt", "lessthan",
    "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=", "filter", "test"};

bool is_known_test(std::string_view name) {
  for (const char* t : kTests)
    if (name == t) return true;
  return false;
}

bool apply_test(const RenderEnv& env, std::string_view n, const Value& v, const Args& a, int line) {
  auto arg = [&]() -> const Value& {
    if (a.pos.empty()) fail(line, "test '{}' needs an argument", n);
    return a.pos[0];
  };
  if (n == "defined") return !v.is_undefined();
  if (n == "undefined") return v.is_undefined();
  if (n == "none") return v.type == Value::kNone;
  if (n == "boolean") return v.type == Value::kBool;
  if (n == "false") return v.type == Value::kBool && !v.b;
  if (n == "true") return v.type == Value::kBool && v.b;
  if (n == "integer") return v.type == Value::kInt;
  if (n == "float") return v.type == Value::kFloat;
  if (n == "number") return v.is_number();
  if (n == "string") return v.type == Value::kString;
  if (n == "mapping") return v.type == Value::kDict && !v.dict->is_namespace;
  // Jinja's Undefined defines __iter__ and __len__, so it counts as iterable and a sequence.
  if (n == "iterable") return v.type == Value::kUndefined || v.type == Value::kString || v.type == Value::kList ||
                              (v.type == Value::kDict && !v.dict->is_namespace);
  if (n == "sequence") return v.type == Value::kUndefined || v.type == Value::kString ||
                              (v.type == Value::kList && !v.list->generator) ||
                              (v.type == Value::kDict && !v.dict->is_namespace);
  if (n == "callable") return v.type == Value::kCallable;
  if (n == "escaped") return false;
  if (n == "sameas") {
    const Value& o = arg();
    if (v.type != o.type) return false;
    switch (v.type) {
      case Value::kNone: case Value::kUndefined: return true;
      case Value::kBool: return v.b == o.b;
      case Value::kList: return v.list == o.list;
      case Value::kDict: return v.dict == o.dict;
      default: return equals(v, o);  // small ints and interned strings are identical in CPython
    }
  }
  if (n == "in") {
    const Value& c = arg();
    if (c.type == Value::kString) {
      if (v.type != Value::kString) fail(line, "'in <string>' requires string as left operand");
      return c.s.find(v.s) != std::string::npos;
    }
    if (c.type == Value::kDict) return c.dict->find(key_string(v, line)) != nullptr;
    for (const auto& e : iterate(c, line))
      if (equals(e, v)) return true;
    return false;
  }
  if (n == "lower" || n == "upper") {
    if (v.type != Value::kString) fail(line, "test '{}' needs a string", n);
    bool cased = false;
    for (char c : v.s) {
      if (n == "lower" && c >= 'A' && c <= 'Z') return false;
      if (n == "upper" && c >= 'a' && c <= 'z') return false;
      cased |= std::isalpha(static_cast<unsigned char>(c)) != 0;
    }
    return cased;
  }
  if (n == "odd" || n == "even" || n == "divisibleby") {
    if (v.type != Value::kInt && v.type != Value::kBool) fail(line, "test '{}' needs an integer", n);
    int64_t x = v.type == Value::kBool ? v.b : v.i;
    if (n == "odd") return x % 2 != 0;
    if (n == "even") return x % 2 == 0;
    const Value& d = arg();
    if (d.type != Value::kInt || d.i == 0) fail(line, "divisibleby needs a non-zero integer");
    return x % d.i == 0;
  }
  if (n == "eq" || n == "equalto" || n == "==") return equals(v, arg());
  if (n == "ne" || n == "!=") return !equals(v, arg());
  if (n == "lt" || n == "lessthan" || n == "<") return less(v, arg(), line);
  if (n == "le" || n == "<=") return !less(arg(), v, line);
  if (n == "gt" || n == "greaterthan" || n == ">") return less(arg(), v, line);
  if (n == "ge" || n == ">=") return !less(v, arg(), line);
  if (n == "filter") return v.type == Value::kString && is_known_filter(v.s);
  if (n == "test") return v.type == Value::kString && is_known_test(v.s);
  fail(line, "no test named '{}'", n);
}

// ---------------------------------------------------------------------------------------------
// Filters

static const char* kFilters[] = {
    "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e",
    "escape", "first", "float", "indent", "int", "items", "join", "last", "length", "list",
    "lower", "map", "max", "min", "reject", "rejectattr", "replace", "reverse", "round", "safe",
    "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper",
    "wordcount"};

bool is_known_filter(std::string_view name) {
  for (const char* f : kFilters)
    if (name == f) return true;
  return false;
}

static Value select_like(const RenderEnv& env, std::string_view n, const Value& v, const Args& a, int line) {
  if (!truthy(v)) return generator({});  // Jinja2 yields nothing for a falsy value, even None
  bool attr_mode = n == "selectattr" || n == "rejectattr";
  bool keep_if = n == "select" || n == "selectattr";
  size_t k = 0;
  std::string attr;
  if (attr_mode) {
    if (a.pos.empty()) fail(line, "{} needs an attribute name", n);
    attr = to_str(a.pos[k++]);
  }
  std::string test;
  Args targs;
  if (k < a.pos.size()) {
    test = to_str(a.pos[k++]);
    if (!is_known_test(test)) fail(line, "no test named '{}'", test);
    targs.pos.assign(a.pos.begin() + ptrdiff_t(k), a.pos.end());
    targs.kw = a.kw;
  }
  std::vector<Value> out;
  for (auto& item : iterate(v, line)) {
    Value x = attr_mode ? get_path(item, attr, line) : item;
    bool r = test.empty() ? truthy(x) : apply_test(env, test, x, targs, line);
    if (r == keep_if) out.push_back(std::move(item));
  }
  return generator(std::move(out));
}

static std::vector<Value> sorted_values(std::vector<Value> items, bool reverse, bool case_sensitive,
                                        const std::string& attr, int line) {
  std::vector<std::pair<Value, Value>> keyed;
  keyed.reserve(items.size());
  for (auto& it : items) {
    Value k = attr.empty() ? it : get_path(it, attr, line);
    keyed.emplace_back(sort_key(k, case_sensitive), std::move(it));
  }
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    return reverse ? less(y.first, x.first, line) : less(x.first, y.first, line);
  });
  std::vector<Value> out;
  out.reserve(keyed.size());
  for (auto& kv : keyed) out.push_back(std::move(kv.second));
  return out;
}

Value apply_filter(const RenderEnv& env, std::string_view n, const Value& v, const Args& a, int line) {
  if (n == "default" || n == "d") {
    const Value* dv = a.get(0, "default_value");
    bool boolean = arg_bool(a, 1, "boolean", false);
    if (v.is_undefined() || (boolean && !truthy(v))) return dv ? *dv : Value::str("");
    return v;
  }
  if (n == "safe") return v.type == Value::kString ? Value::markup(v.s) : Value::markup(to_str(v));
  // Filters that keep a Markup a Markup (str methods on markupsafe.Markup return Markup).
  auto same_kind = [&](std::string s) { return v.safe ? Value::markup(std::move(s)) : Value::str(std::move(s)); };
  if (n == "string") return same_kind(to_str(v));
  if (n == "length" || n == "count") return Value::integer(int64_t(py_len(v, line)));
  if (n == "tojson") {
    JsonOptions o;
    o.ensure_ascii = arg_bool(a, 0, "ensure_ascii", false);
    const Value* ind = a.get(1, "indent");
    if (ind && ind->type != Value::kNone) {
      if (ind->type != Value::kInt) fail(line, "tojson: indent must be an integer");
      o.indent = int(std::clamp<int64_t>(ind->i, 0, 64));
      o.item_sep = ",";
    }
    const Value* sep = a.get(2, "separators");
    if (sep && sep->type == Value::kList && sep->list->items.size() == 2) {
      o.item_sep = to_str(sep->list->items[0]);
      o.key_sep = to_str(sep->list->items[1]);
    }
    o.sort_keys = arg_bool(a, 3, "sort_keys", false);
    std::string out;
    to_json(v, o, 0, out, line);
    return Value::str(std::move(out));
  }
  if (n == "trim") {
    const Value* chars = a.get(0, "chars");
    return same_kind(py_strip(to_str(v), chars, true, true));
  }
  if (n == "upper") return same_kind(ascii_upper(to_str(v)));
  if (n == "lower") return same_kind(ascii_lower(to_str(v)));
  if (n == "capitalize") {
    std::string s = ascii_lower(to_str(v));
    if (!s.empty()) s[0] = char(std::toupper(static_cast<unsigned char>(s[0])));
    return Value::str(std::move(s));
  }
  if (n == "title") return Value::str(py_title(to_str(v)));
  if (n == "replace") {
    int64_t count = arg_int(a, 2, "count", -1, line);
    std::string from = arg_str(a, 0, "old", ""), to = arg_str(a, 1, "new", "");
    if (v.safe) {  // Markup.replace escapes its arguments
      const Value *f = a.get(0, "old"), *t = a.get(1, "new");
      if (f && !f->safe) from = html_escape(from);
      if (t && !t->safe) to = html_escape(to);
    }
    return same_kind(py_replace(to_str(v), from, to, count));
  }
  if (n == "escape" || n == "e") return v.safe ? v : Value::markup(html_escape(to_str(v)));
  if (n == "join") {
    std::string sep = arg_str(a, 0, "d", "");
    const Value* attr = a.get(1, "attribute");
    std::string out;
    bool first = true;
    for (const auto& it : iterate(v, line)) {
      if (!first) out += sep;
      first = false;
      out += to_str(attr ? get_path(it, to_str(*attr), line) : it);
    }
    return Value::str(std::move(out));
  }
  if (n == "first") {
    auto items = iterate(v, line);
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  if (n == "last") {
    if (v.type == Value::kList && v.list->generator) fail(line, "'generator' object is not reversible");
    auto items = iterate(v, line);
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  if (n == "list") return Value::make_list(iterate(v, line));
  if (n == "items") {
    if (v.is_undefined()) return generator({});
    if (v.type != Value::kDict || v.dict->is_namespace) fail(line, "Can only get item pairs from a mapping.");
    std::vector<Value> out;
    for (const auto& [k, x] : v.dict->items) out.push_back(Value::make_list({key_value(k), x}, true));
    return generator(std::move(out));
  }
  if (n == "dictsort") {
    if (v.type != Value::kDict || v.dict->is_namespace) fail(line, "dictsort needs a mapping");
    bool cs = arg_bool(a, 0, "case_sensitive", false);
    std::string by = arg_str(a, 1, "by", "key");
    bool rev = arg_bool(a, 2, "reverse", false);
    std::vector<Value> pairs;
    for (const auto& [k, x] : v.dict->items) pairs.push_back(Value::make_list({key_value(k), x}, true));
    std::string path = by == "key" ? "0" : by == "value" ? "1" : "";
    if (path.empty()) fail(line, "dictsort: 'by' must be 'key' or 'value'");
    return Value::make_list(sorted_values(std::move(pairs), rev, cs, path, line));
  }
  if (n == "sort") {
    bool rev = arg_bool(a, 0, "reverse", false);
    bool cs = arg_bool(a, 1, "case_sensitive", false);
    std::string attr = arg_str(a, 2, "attribute", "");
    return Value::make_list(sorted_values(iterate(v, line), rev, cs, attr, line));
  }
  if (n == "reverse") {
    if (v.type == Value::kString) {
      std::u32string cps = utf8_decode(v.s);
      std::reverse(cps.begin(), cps.end());
      return Value::str(utf8_encode(cps));
    }
    auto items = iterate(v, line);
    std::reverse(items.begin(), items.end());
    return generator(std::move(items));
  }
  if (n == "unique") {
    bool cs = arg_bool(a, 0, "case_sensitive", false);
    std::string attr = arg_str(a, 1, "attribute", "");
    std::vector<Value> out, seen;
    for (auto& it : iterate(v, line)) {
      Value k = sort_key(attr.empty() ? it : get_path(it, attr, line), cs);
      bool dup = false;
      for (const auto& s : seen) dup |= equals(s, k);
      if (dup) continue;
      seen.push_back(std::move(k));
      out.push_back(std::move(it));
    }
    return generator(std::move(out));
  }
  if (n == "min" || n == "max") {
    bool cs = arg_bool(a, 0, "case_sensitive", false);
    std::string attr = arg_str(a, 1, "attribute", "");
    auto items = iterate(v, line);
    if (items.empty()) return Value::undefined(fmt::format("No aggregated item, sequence was empty."));
    size_t best = 0;
    for (size_t i = 1; i < items.size(); ++i) {
      Value x = sort_key(attr.empty() ? items[i] : get_path(items[i], attr, line), cs);
      Value b = sort_key(attr.empty() ? items[best] : get_path(items[best], attr, line), cs);
      if (n == "min" ? less(x, b, line) : less(b, x, line)) best = i;
    }
    return items[best];
  }
  if (n == "sum") {
    std::string attr = arg_str(a, 0, "attribute", "");
    const Value* start = a.get(1, "start");
    Value acc = start ? *start : Value::integer(0);
    for (const auto& it : iterate(v, line)) {
      Value x = attr.empty() ? it : get_path(it, attr, line);
      if (!acc.is_number() || !x.is_number()) fail(line, "sum: unsupported operand types");
      if (acc.type != Value::kFloat && x.type != Value::kFloat)
        acc = Value::integer((acc.type == Value::kBool ? acc.b : acc.i) + (x.type == Value::kBool ? x.b : x.i));
      else
        acc = Value::real(acc.as_double() + x.as_double());
    }
    return acc;
  }
  if (n == "map") {
    std::vector<Value> out;
    if (!truthy(v)) return generator({});
    if (const Value* attr = a.get(SIZE_MAX, "attribute")) {
      const Value* dflt = a.get(SIZE_MAX, "default");
      for (const auto& it : iterate(v, line)) {
        Value x = get_path(it, to_str(*attr), line);
        out.push_back(x.is_undefined() && dflt ? *dflt : x);
      }
      return generator(std::move(out));
    }
    if (a.pos.empty()) fail(line, "map needs a filter name or attribute=");
    std::string f = to_str(a.pos[0]);
    if (!is_known_filter(f)) fail(line, "no filter named '{}'", f);
    Args fa;
    fa.pos.assign(a.pos.begin() + 1, a.pos.end());
    fa.kw = a.kw;
    for (const auto& it : iterate(v, line)) out.push_back(apply_filter(env, f, it, fa, line));
    return generator(std::move(out));
  }
  if (n == "select" || n == "reject" || n == "selectattr" || n == "rejectattr") return select_like(env, n, v, a, line);
  if (n == "int") {
    int64_t dflt = arg_int(a, 0, "default", 0, line);
    switch (v.type) {
      case Value::kInt: return v;
      case Value::kBool: return Value::integer(v.b);
      case Value::kFloat:
        if (!std::isfinite(v.f)) return Value::integer(dflt);
        return Value::integer(int64_t(v.f));
      case Value::kString: {
        int64_t x;
        if (parse_int(v.s, x)) return Value::integer(x);
        double d;
        if (parse_float(v.s, d) && std::isfinite(d)) return Value::integer(int64_t(d));
        return Value::integer(dflt);
      }
      default: return Value::integer(dflt);
    }
  }
  if (n == "float") {
    const Value* dv = a.get(0, "default");
    double dflt = dv ? dv->as_double() : 0.0;
    if (v.is_number()) return Value::real(v.as_double());
    double d;
    if (v.type == Value::kString && parse_float(v.s, d)) return Value::real(d);
    return Value::real(dflt);
  }
  if (n == "abs") {
    if (v.type == Value::kInt) return Value::integer(v.i < 0 ? -v.i : v.i);
    if (v.type == Value::kBool) return Value::integer(v.b);
    if (v.type == Value::kFloat) return Value::real(std::fabs(v.f));
    fail(line, "bad operand type for abs(): '{}'", type_name(v));
  }
  if (n == "round") {
    int64_t prec = arg_int(a, 0, "precision", 0, line);
    std::string method = arg_str(a, 1, "method", "common");
    if (!v.is_number()) fail(line, "round needs a number, got {}", type_name(v));
    double x = v.as_double(), scale = std::pow(10.0, double(prec)), r;
    if (method == "common") r = std::nearbyint(x * scale) / scale;  // Python's round: half to even
    else if (method == "ceil") r = std::ceil(x * scale) / scale;
    else if (method == "floor") r = std::floor(x * scale) / scale;
    else fail(line, "method must be common, ceil or floor");
    if (v.type != Value::kFloat && method == "common") return Value::integer(int64_t(r));
    return Value::real(r);
  }
  if (n == "indent") {
    const Value* w = a.get(0, "width");
    std::string ind = w && w->type == Value::kString ? w->s : std::string(size_t(std::clamp<int64_t>(arg_int(a, 0, "width", 4, line), 0, 1024)), ' ');
    bool first = arg_bool(a, 1, "first", false), blank = arg_bool(a, 2, "blank", false);
    std::string s = to_str(v) + "\n";
    auto lines = splitlines(s);
    std::string rv;
    if (blank) {
      for (size_t i = 0; i < lines.size(); ++i) rv += (i ? "\n" + ind : "") + lines[i];
    } else if (!lines.empty()) {
      rv = lines[0];
      for (size_t i = 1; i < lines.size(); ++i) rv += "\n" + (lines[i].empty() ? "" : ind + lines[i]);
    }
    if (first) rv = ind + rv;
    return same_kind(std::move(rv));
  }
  if (n == "center") {
    int64_t width = arg_int(a, 0, "width", 80, line);
    std::string s = to_str(v);
    int64_t len = int64_t(py_len(Value::str(s), line));
    if (width <= len) return Value::str(s);
    int64_t pad = width - len, left = pad / 2 + (pad & width & 1);
    return Value::str(std::string(size_t(left), ' ') + s + std::string(size_t(pad - left), ' '));
  }
  if (n == "batch") {
    int64_t size = arg_int(a, 0, "linecount", 1, line);
    if (size <= 0) fail(line, "batch size must be positive");
    const Value* fill = a.get(1, "fill_with");
    std::vector<Value> out, cur;
    for (auto& it : iterate(v, line)) {
      cur.push_back(std::move(it));
      if (int64_t(cur.size()) == size) out.push_back(Value::make_list(std::move(cur))), cur.clear();
    }
    if (!cur.empty()) {
      if (fill && fill->type != Value::kNone)
        while (int64_t(cur.size()) < size) cur.push_back(*fill);
      out.push_back(Value::make_list(std::move(cur)));
    }
    return generator(std::move(out));
  }
  if (n == "attr") {
    std::string name = arg_str(a, 0, "name", "");
    if (v.type == Value::kDict && v.dict->is_namespace) return get_attr(v, name, line);
    return Value::undefined(fmt::format("'{}' object has no attribute '{}'", type_name(v), name));
  }
  if (n == "wordcount") {
    int64_t words = 0;
    bool in = false;
    for (unsigned char c : to_str(v)) {
      bool w = std::isalnum(c) || c == '_' || c >= 0x80;
      if (w && !in) ++words;
      in = w;
    }
    return Value::integer(words);
  }
  fail(line, "no filter named '{}'", n);
}

// ---------------------------------------------------------------------------------------------
// Methods

std::optional<Value> call_method(const RenderEnv& env, const Value& obj, const std::string& m,
                                 const Args& a, int line) {
  if (obj.type == Value::kString) {
    const std::string& s = obj.s;
    auto same_kind = [&](std::string r) { return obj.safe ? Value::markup(std::move(r)) : Value::str(std::move(r)); };
    if (m == "strip") return same_kind(py_strip(s, a.get(0, "chars"), true, true));
    if (m == "lstrip") return same_kind(py_strip(s, a.get(0, "chars"), true, false));
    if (m == "rstrip") return same_kind(py_strip(s, a.get(0, "chars"), false, true));
    if (m == "split" || m == "rsplit") {
      int64_t maxsplit = arg_int(a, 1, "maxsplit", -1, line);
      const Value* sep = a.get(0, "sep");
      if (sep && sep->type == Value::kString && sep->s.empty()) fail(line, "empty separator");
      std::vector<std::string> parts;
      if (m == "rsplit" && maxsplit >= 0 && sep && sep->type == Value::kString) {
        // Split from the right: at most maxsplit cuts, counted from the end.
        std::string rest = s;
        std::vector<std::string> rev;
        while (int64_t(rev.size()) < maxsplit) {
          size_t k = rest.rfind(sep->s);
          if (k == std::string::npos) break;
          rev.push_back(rest.substr(k + sep->s.size()));
          rest.resize(k);
        }
        parts.push_back(rest);
        parts.insert(parts.end(), rev.rbegin(), rev.rend());
      } else {
        parts = py_split(s, sep, m == "rsplit" ? -1 : maxsplit);
      }
      std::vector<Value> out;
      for (auto& p : parts) out.push_back(Value::str(std::move(p)));
      return Value::make_list(std::move(out));
    }
    if (m == "startswith" || m == "endswith") {
      const Value* p = a.get(0, "prefix");
      if (!p) fail(line, "{} needs an argument", m);
      return Value::boolean(prefix_match(s, *p, m == "endswith", line));
    }
    if (m == "upper") return same_kind(ascii_upper(s));
    if (m == "lower") return same_kind(ascii_lower(s));
    if (m == "title") return Value::str(py_title(s));
    if (m == "capitalize") return apply_filter(env, "capitalize", obj, {}, line);
    if (m == "replace") {
      return Value::str(py_replace(s, arg_str(a, 0, "old", ""), arg_str(a, 1, "new", ""),
                                   arg_int(a, 2, "count", -1, line)));
    }
    if (m == "format") return Value::str(py_format(s, a, line));
    if (m == "join") {
      const Value* it = a.get(0, "iterable");
      if (!it) fail(line, "join needs an argument");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(*it, line)) {
        if (x.type != Value::kString) fail(line, "sequence item: expected str instance, {} found", type_name(x));
        if (!first) out += s;
        first = false;
        out += x.s;
      }
      return Value::str(std::move(out));
    }
    if (m == "find" || m == "rfind" || m == "index" || m == "count") {
      std::string sub = arg_str(a, 0, "sub", "");
      if (m == "count") {
        if (sub.empty()) return Value::integer(int64_t(py_len(obj, line)) + 1);
        int64_t c = 0;
        for (size_t k = s.find(sub); k != std::string::npos; k = s.find(sub, k + sub.size())) ++c;
        return Value::integer(c);
      }
      size_t k = m == "rfind" ? s.rfind(sub) : s.find(sub);
      if (k == std::string::npos) {
        if (m == "index") fail(line, "substring not found");
        return Value::integer(-1);
      }
      return Value::integer(int64_t(py_len(Value::str(s.substr(0, k)), line)));
    }
    if (m == "splitlines") {
      std::vector<Value> out;
      for (auto& l : splitlines(s)) out.push_back(Value::str(std::move(l)));
      return Value::make_list(std::move(out));
    }
    if (m == "isdigit" || m == "isalpha" || m == "isalnum" || m == "isspace" || m == "isupper" || m == "islower") {
      if (s.empty()) return Value::boolean(false);
      bool ok = true, cased = false;
      for (unsigned char c : s) {
        if (m == "isdigit") ok &= std::isdigit(c) != 0;
        else if (m == "isalpha") ok &= std::isalpha(c) != 0;
        else if (m == "isalnum") ok &= std::isalnum(c) != 0;
        else if (m == "isspace") ok &= is_ws_char(char(c));
        else if (m == "isupper") { ok &= !std::islower(c); cased |= std::isupper(c) != 0; }
        else { ok &= !std::isupper(c); cased |= std::islower(c) != 0; }
      }
      if (m == "isupper" || m == "islower") ok &= cased;
      return Value::boolean(ok);
    }
    return std::nullopt;
  }
  if (obj.type == Value::kList && !obj.list->generator) {
    static const char* kUnsafe[] = {"append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"};
    for (const char* u : kUnsafe)
      if (m == u) unsafe(obj, m, line);
    if (m == "index" || m == "count") {
      const Value* x = a.get(0, "value");
      if (!x) fail(line, "{} needs an argument", m);
      int64_t c = 0;
      for (size_t i = 0; i < obj.list->items.size(); ++i) {
        if (equals(obj.list->items[i], *x)) {
          if (m == "index") return Value::integer(int64_t(i));
          ++c;
        }
      }
      if (m == "index") fail(line, "{} is not in list", to_repr(*x));
      return Value::integer(c);
    }
    if (m == "copy") return Value::make_list(obj.list->items, obj.list->tuple);
    return std::nullopt;
  }
  if (obj.type == Value::kDict && !obj.dict->is_namespace) {
    static const char* kUnsafe[] = {"pop", "popitem", "update", "setdefault", "clear"};
    for (const char* u : kUnsafe)
      if (m == u) unsafe(obj, m, line);
    if (m == "get") {
      const Value* k = a.get(0, "key");
      if (!k) fail(line, "get expected at least 1 argument");
      const Value* dflt = a.get(1, "default");
      if (k->type != Value::kList && k->type != Value::kDict && k->type != Value::kUndefined)
        if (const Value* v = obj.dict->find(key_string(*k, line))) return *v;
      return dflt ? *dflt : Value::none();
    }
    if (m == "items" || m == "keys" || m == "values") {
      std::vector<Value> out;
      for (const auto& [k, v] : obj.dict->items) {
        if (m == "items") out.push_back(Value::make_list({key_value(k), v}, true));
        else out.push_back(m == "keys" ? key_value(k) : v);
      }
      return Value::make_list(std::move(out));
    }
    if (m == "copy") {
      Value d = Value::make_dict();
      d.dict->items = obj.dict->items;
      return d;
    }
    return std::nullopt;
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Globals

Value builtin_global(std::string_view name) {
  static const std::vector<Value> table = [] {
    std::vector<Value> t;
    for (int i = 0; i < kNumBuiltins; ++i) {
      Value v;
      v.type = Value::kCallable;
      auto fn = std::make_shared<Callable>();
      fn->name = kBuiltinNames[i];
      fn->builtin = i;
      v.fn = std::move(fn);
      t.push_back(std::move(v));
    }
    return t;
  }();
  for (int i = 0; i < kNumBuiltins; ++i)
    if (name == kBuiltinNames[i]) return table[size_t(i)];
  return Value::undefined();
}

Value call_builtin(const RenderEnv& env, const Callable& fn, const Args& a, int line) {
  switch (fn.builtin) {
    case kRange: {
      auto num = [&](size_t i) {
        const Value& v = a.pos[i];
        if (v.type != Value::kInt && v.type != Value::kBool)
          fail(line, "'{}' object cannot be interpreted as an integer", type_name(v));
        return v.type == Value::kBool ? int64_t(v.b) : v.i;
      };
      int64_t start = 0, stop = 0, step = 1;
      if (a.pos.size() == 1) stop = num(0);
      else if (a.pos.size() == 2) start = num(0), stop = num(1);
      else if (a.pos.size() == 3) start = num(0), stop = num(1), step = num(2);
      else fail(line, "range expected 1 to 3 arguments, got {}", a.pos.size());
      if (step == 0) fail(line, "range() arg 3 must not be zero");
      std::vector<Value> out;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (out.size() >= kMaxRange) fail(line, "range() larger than {} items", kMaxRange);
        out.push_back(Value::integer(i));
      }
      return Value::make_list(std::move(out));
    }
    case kNamespace:
    case kDict: {
      Value d = Value::make_dict();
      d.dict->is_namespace = fn.builtin == kNamespace;
      if (d.dict->is_namespace && env.namespaces) env.namespaces->push_back(d.dict);
      for (const auto& p : a.pos) {
        if (p.type == Value::kDict) {
          for (const auto& [k, v] : p.dict->items) d.dict->set(k, v);
        } else if (p.type == Value::kList) {
          for (const auto& kv : p.list->items) {
            if (kv.type != Value::kList || kv.list->items.size() != 2 || kv.list->items[0].type != Value::kString)
              fail(line, "{}() needs key/value pairs with string keys", fn.name);
            d.dict->set(kv.list->items[0].s, kv.list->items[1]);
          }
        } else {
          fail(line, "{}() argument must be a mapping", fn.name);
        }
      }
      for (const auto& [k, v] : a.kw) d.dict->set(k, v);
      return d;
    }
    case kRaiseException: {
      const Value* m = a.get(0, "message");
      fail(line, "{}", m ? to_str(*m) : std::string("raise_exception() called"));
    }
    case kStrftimeNow: {
      const Value* f = a.get(0, "format");
      if (!f || f->type != Value::kString) fail(line, "strftime_now needs a format string");
      std::tm tm{};
      if (env.now && *env.now) {
        tm = (*env.now)();
      } else {
        std::time_t t = std::time(nullptr);
        localtime_r(&t, &tm);
      }
      char buf[512];
      size_t len = std::strftime(buf, sizeof buf, f->s.c_str(), &tm);
      if (len == 0 && !f->s.empty()) fail(line, "strftime_now: format produced no output or is too long");
      return Value::str(std::string(buf, len));
    }
    default: fail(line, "unknown builtin");
  }
}

}  // namespace merlin::jinja
