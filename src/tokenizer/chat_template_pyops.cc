// Python semantics of values for the chat-template interpreter: truthiness, equality, ordering,
// str()/repr(), json.dumps and the str methods templates call. Kept exact because a template's
// output is compared byte for byte with what Jinja2 (i.e. Python) produces.
#include <algorithm>
#include <charconv>
#include <cmath>

#include "tokenizer/chat_template_internal.h"

namespace merlin::jinja {

const char* type_name(const Value& v) {
  switch (v.type) {
    case Value::kUndefined: return "Undefined";
    case Value::kNone: return "NoneType";
    case Value::kBool: return "bool";
    case Value::kInt: return "int";
    case Value::kFloat: return "float";
    case Value::kString: return "str";
    case Value::kList: return v.list->generator ? "generator" : v.list->tuple ? "tuple" : "list";
    case Value::kDict: return v.dict->is_namespace ? "Namespace" : "dict";
    case Value::kCallable: return "function";
  }
  return "object";
}

bool truthy(const Value& v) {
  switch (v.type) {
    case Value::kUndefined:
    case Value::kNone: return false;
    case Value::kBool: return v.b;
    case Value::kInt: return v.i != 0;
    case Value::kFloat: return v.f != 0;
    case Value::kString: return !v.s.empty();
    case Value::kList: return v.list->generator || !v.list->items.empty();
    case Value::kDict: return v.dict->is_namespace || !v.dict->items.empty();
    case Value::kCallable: return true;
  }
  return false;
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.type == Value::kFloat || b.type == Value::kFloat) return a.as_double() == b.as_double();
    return (a.type == Value::kBool ? int64_t(a.b) : a.i) == (b.type == Value::kBool ? int64_t(b.b) : b.i);
  }
  if (a.type != b.type) return false;
  switch (a.type) {
    case Value::kUndefined:
    case Value::kNone: return true;
    case Value::kString: return a.s == b.s;
    case Value::kList: {
      if (a.list == b.list) return true;
      if (a.list->generator || b.list->generator) return false;
      if (a.list->tuple != b.list->tuple) return false;
      const auto &x = a.list->items, &y = b.list->items;
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!equals(x[i], y[i])) return false;
      return true;
    }
    case Value::kDict: {
      if (a.dict == b.dict) return true;
      if (a.dict->is_namespace || b.dict->is_namespace) return false;
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& [k, v] : a.dict->items) {
        const Value* o = b.dict->find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    }
    case Value::kCallable: return a.fn == b.fn;
    default: return false;
  }
}

bool less(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) {
    if (a.type != Value::kFloat && b.type != Value::kFloat) {
      int64_t x = a.type == Value::kBool ? a.b : a.i, y = b.type == Value::kBool ? b.b : b.i;
      return x < y;
    }
    return a.as_double() < b.as_double();
  }
  if (a.type == Value::kString && b.type == Value::kString) return a.s < b.s;  // UTF-8 order = code point order
  if (a.type == Value::kList && b.type == Value::kList && !a.list->generator && !b.list->generator) {
    const auto &x = a.list->items, &y = b.list->items;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!equals(x[i], y[i])) return less(x[i], y[i], line);
    }
    return x.size() < y.size();
  }
  fail(line, "'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b));
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  // sci is like "-1.2345e+02": split into sign, digits and exponent.
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (size_t k = 0; k < epos; ++k)
    if (sci[k] != '.') digits += sci[k];
  std::string out = neg ? "-" : "";
  // Python's repr: positional for 1e-4 <= |d| < 1e16, scientific otherwise.
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp + 1) >= digits.size()) {
      out += digits + std::string(size_t(exp + 1) - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(exp + 1)) + "." + digits.substr(size_t(exp + 1));
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return out;
}

static void repr_string(const std::string& s, std::string& out) {
  bool sq = s.find('\'') != std::string::npos, dq = s.find('"') != std::string::npos;
  char q = (sq && !dq) ? '"' : '\'';
  out += q;
  for (unsigned char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += char(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += char(c);
    }
  }
  out += q;
}

static void repr_into(const Value& v, std::string& out);

static void str_into(const Value& v, std::string& out) {
  switch (v.type) {
    case Value::kUndefined: return;
    case Value::kNone: out += "None"; return;
    case Value::kBool: out += v.b ? "True" : "False"; return;
    case Value::kInt: out += fmt::format("{}", v.i); return;
    case Value::kFloat: out += float_repr(v.f); return;
    case Value::kString: out += v.s; return;
    default: repr_into(v, out);
  }
}

static void repr_into(const Value& v, std::string& out) {
  switch (v.type) {
    case Value::kString: repr_string(v.s, out); return;
    case Value::kUndefined: return;  // repr(Undefined) is 'Undefined' but str() of a container of it is rare
    case Value::kList: {
      if (v.list->generator) {
        out += "<generator object>";
        return;
      }
      out += v.list->tuple ? '(' : '[';
      bool first = true;
      for (const auto& e : v.list->items) {
        if (!first) out += ", ";
        first = false;
        repr_into(e, out);
      }
      if (v.list->tuple && v.list->items.size() == 1) out += ',';
      out += v.list->tuple ? ')' : ']';
      return;
    }
    case Value::kDict: {
      if (v.dict->is_namespace) out += "<Namespace ";
      out += '{';
      bool first = true;
      for (const auto& [k, e] : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        repr_into(key_value(k), out);
        out += ": ";
        repr_into(e, out);
      }
      out += '}';
      if (v.dict->is_namespace) out += '>';
      return;
    }
    case Value::kCallable: out += "<function>"; return;
    default: str_into(v, out);
  }
}

std::string to_str(const Value& v) {
  if (v.type == Value::kString) return v.s;
  std::string out;
  str_into(v, out);
  return out;
}

std::string to_repr(const Value& v) {
  std::string out;
  repr_into(v, out);
  return out;
}

static void json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  out += '"';
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    if (c == '"') out += "\\\"";
    else if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c == '\b') out += "\\b";
    else if (c == '\f') out += "\\f";
    else if (c < 0x20 || (ensure_ascii && c == 0x7f)) out += fmt::format("\\u{:04x}", c);
    else if (c >= 0x80 && ensure_ascii) {
      // Decode one code point; Python escapes astral ones as a surrogate pair.
      size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
      auto cps = utf8_decode(std::string_view(s).substr(i, n));
      char32_t cp = cps.empty() ? 0xFFFD : cps[0];
      if (cp >= 0x10000) {
        cp -= 0x10000;
        out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        out += fmt::format("\\u{:04x}", uint32_t(cp));
      }
      i += n;
      continue;
    } else out += char(c);
    ++i;
  }
  out += '"';
}

void to_json(const Value& v, const JsonOptions& opt, int level, std::string& out, int line) {
  auto newline = [&](int lvl) {
    out += '\n';
    out.append(size_t(opt.indent) * size_t(lvl), ' ');
  };
  if (level > 500) fail(line, "tojson: nesting too deep");
  switch (v.type) {
    case Value::kNone: out += "null"; return;
    case Value::kBool: out += v.b ? "true" : "false"; return;
    case Value::kInt: out += fmt::format("{}", v.i); return;
    case Value::kFloat:
      if (std::isnan(v.f)) out += "NaN";
      else if (std::isinf(v.f)) out += v.f < 0 ? "-Infinity" : "Infinity";
      else out += float_repr(v.f);
      return;
    case Value::kString: json_string(v.s, opt.ensure_ascii, out); return;
    case Value::kList: {
      if (v.list->generator) fail(line, "Object of type generator is not JSON serializable");
      if (v.list->items.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& e : v.list->items) {
        if (!first) out += opt.item_sep;
        first = false;
        if (opt.indent >= 0) newline(level + 1);
        to_json(e, opt, level + 1, out, line);
      }
      if (opt.indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Value::kDict: {
      if (v.dict->is_namespace) fail(line, "Object of type Namespace is not JSON serializable");
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      if (opt.sort_keys)
        std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += opt.item_sep;
        first = false;
        if (opt.indent >= 0) newline(level + 1);
        Value key = key_value(kv->first);
        if (key.type == Value::kString) json_string(key.s, opt.ensure_ascii, out);
        else if (key.type == Value::kNone) out += "\"null\"";
        else out += '"' + to_str(key) + '"';
        out += opt.key_sep;
        to_json(kv->second, opt, level + 1, out, line);
      }
      if (opt.indent >= 0) newline(level);
      out += '}';
      return;
    }
    default: fail(line, "Object of type {} is not JSON serializable", type_name(v));
  }
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    char32_t cp;
    size_t n;
    if (c < 0x80) { cp = c; n = 1; }
    else if ((c >> 5) == 6) { cp = c & 0x1F; n = 2; }
    else if ((c >> 4) == 14) { cp = c & 0x0F; n = 3; }
    else if ((c >> 3) == 30) { cp = c & 0x07; n = 4; }
    else { out += char32_t(0xFFFD); ++i; continue; }
    if (i + n > s.size()) { out += char32_t(0xFFFD); break; }
    bool ok = true;
    for (size_t k = 1; k < n; ++k) {
      unsigned char cc = s[i + k];
      if ((cc >> 6) != 2) { ok = false; break; }
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (!ok) { out += char32_t(0xFFFD); ++i; continue; }
    out += cp;
    i += n;
  }
  return out;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return false;
  return true;
}

size_t py_len(const Value& v, int line) {
  switch (v.type) {
    case Value::kUndefined: return 0;
    case Value::kString: {
      if (is_ascii(v.s)) return v.s.size();
      size_t n = 0;
      for (unsigned char c : v.s) n += (c >> 6) != 2;
      return n;
    }
    case Value::kList:
      if (v.list->generator) fail(line, "object of type 'generator' has no len()");
      return v.list->items.size();
    case Value::kDict:
      if (v.dict->is_namespace) fail(line, "object of type 'Namespace' has no len()");
      return v.dict->items.size();
    default: fail(line, "object of type '{}' has no len()", type_name(v));
  }
}

bool py_isspace(char32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 ||
         c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::vector<Value> iterate(const Value& v, int line) {
  switch (v.type) {
    case Value::kUndefined: return {};
    case Value::kList: {
      if (v.list->generator) {
        std::vector<Value> out = std::move(v.list->items);
        v.list->items.clear();
        return out;
      }
      return v.list->items;
    }
    case Value::kDict: {
      if (v.dict->is_namespace) fail(line, "'Namespace' object is not iterable");
      std::vector<Value> out;
      out.reserve(v.dict->items.size());
      for (const auto& kv : v.dict->items) out.push_back(key_value(kv.first));
      return out;
    }
    case Value::kString: {
      std::vector<Value> out;
      for (char32_t c : utf8_decode(v.s)) {
        std::string ch;
        utf8_append(ch, c);
        out.push_back(Value::str(std::move(ch)));
      }
      return out;
    }
    default: fail(line, "'{}' object is not iterable", type_name(v));
  }
}

std::string py_strip(std::string_view s, const Value* chars, bool left, bool right) {
  if (chars && chars->type != Value::kNone && chars->type != Value::kUndefined) {
    std::u32string set = utf8_decode(chars->s);
    std::u32string cps = utf8_decode(s);
    size_t b = 0, e = cps.size();
    if (left) while (b < e && set.find(cps[b]) != std::u32string::npos) ++b;
    if (right) while (e > b && set.find(cps[e - 1]) != std::u32string::npos) --e;
    return utf8_encode(std::u32string_view(cps).substr(b, e - b));
  }
  if (is_ascii(s)) {
    size_t b = 0, e = s.size();
    if (left) while (b < e && py_isspace(char32_t(s[b]))) ++b;
    if (right) while (e > b && py_isspace(char32_t(s[e - 1]))) --e;
    return std::string(s.substr(b, e - b));
  }
  std::u32string cps = utf8_decode(s);
  size_t b = 0, e = cps.size();
  if (left) while (b < e && py_isspace(cps[b])) ++b;
  if (right) while (e > b && py_isspace(cps[e - 1])) --e;
  return utf8_encode(std::u32string_view(cps).substr(b, e - b));
}

std::vector<std::string> py_split(const std::string& s, const Value* sep, int64_t maxsplit) {
  std::vector<std::string> out;
  if (!sep || sep->type == Value::kNone || sep->type == Value::kUndefined) {
    // Runs of whitespace separate; leading/trailing whitespace gives no empty strings.
    std::u32string cps = utf8_decode(s);
    size_t i = 0, n = cps.size();
    while (true) {
      while (i < n && py_isspace(cps[i])) ++i;
      if (i >= n) break;
      if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) {
        size_t e = n;
        while (e > i && py_isspace(cps[e - 1])) --e;
        out.push_back(utf8_encode(std::u32string_view(cps).substr(i, e - i)));
        break;
      }
      size_t j = i;
      while (j < n && !py_isspace(cps[j])) ++j;
      out.push_back(utf8_encode(std::u32string_view(cps).substr(i, j - i)));
      i = j;
    }
    return out;
  }
  const std::string& d = sep->s;
  size_t pos = 0;
  while (true) {
    if (maxsplit >= 0 && int64_t(out.size()) >= maxsplit) break;
    size_t k = s.find(d, pos);
    if (k == std::string::npos) break;
    out.push_back(s.substr(pos, k - pos));
    pos = k + d.size();
  }
  out.push_back(s.substr(pos));
  return out;
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to,
                       int64_t count) {
  std::string out;
  if (from.empty()) {
    // Python inserts `to` around every code point.
    std::u32string cps = utf8_decode(s);
    int64_t done = 0;
    for (char32_t c : cps) {
      if (count < 0 || done < count) { out += to; ++done; }
      utf8_append(out, c);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t k = s.find(from, pos);
    if (k == std::string::npos) break;
    out.append(s, pos, k - pos);
    out += to;
    pos = k + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string ascii_lower(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

std::string ascii_upper(std::string s) {
  for (auto& c : s)
    if (c >= 'a' && c <= 'z') c = char(c - 'a' + 'A');
  return s;
}

}  // namespace merlin::jinja
