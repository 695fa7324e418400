// Internal to the chat-template interpreter: the run-time value model. Values follow Python
// semantics (truthiness, str(), ==, ordering) because Jinja2 evaluates templates as Python, and
// the goldens we must match byte for byte come from that.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace merlin::jinja {

struct Value;
struct Callable;

struct List {
  std::vector<Value> items;
  bool tuple = false;      // prints as (a, b) like a Python tuple
  bool generator = false;  // result of select/map/...: truthy, no len(), not JSON serializable
};

// Dict keys are strings; the rare non-string key (`{512: 128}` in a template) is stored with a
// \x01 prefix that no JSON or template string key carries. These convert between the two.
std::string key_string(const Value& key, int line);
Value key_value(const std::string& key);

// Insertion-ordered like a Python dict. Chat-template dicts are small, so a linear scan wins.
struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  bool is_namespace = false;  // namespace(): the one object templates may assign attributes on
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

struct Value {
  enum Type : uint8_t { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };
  Type type = kUndefined;
  bool b = false;
  // A str that is markupsafe.Markup (from |safe or |escape): Jinja2 templates concatenate such
  // values with `+`, which HTML-escapes the other operand even with autoescape off.
  bool safe = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // the string, or for undefined the message to raise when it is misused
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<const Callable> fn;

  static Value undefined(std::string hint = {}) {
    Value v;
    v.s = std::move(hint);
    return v;
  }
  static Value none() { Value v; v.type = kNone; return v; }
  static Value boolean(bool x) { Value v; v.type = kBool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.type = kInt; v.i = x; return v; }
  static Value real(double x) { Value v; v.type = kFloat; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.type = kString; v.s = std::move(x); return v; }
  static Value markup(std::string x) { Value v = str(std::move(x)); v.safe = true; return v; }
  static Value make_list(std::vector<Value> items = {}, bool tuple = false) {
    Value v;
    v.type = kList;
    v.list = std::make_shared<List>();
    v.list->items = std::move(items);
    v.list->tuple = tuple;
    return v;
  }
  static Value make_dict() {
    Value v;
    v.type = kDict;
    v.dict = std::make_shared<Dict>();
    return v;
  }

  bool is_undefined() const { return type == kUndefined; }
  bool is_number() const { return type == kInt || type == kFloat || type == kBool; }
  double as_double() const { return type == kFloat ? f : type == kBool ? (b ? 1 : 0) : double(i); }
};

Value from_json(const nlohmann::ordered_json& j);

}  // namespace merlin::jinja
