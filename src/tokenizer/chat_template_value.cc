#include "tokenizer/chat_template_value.h"

#include <cmath>

#include "tokenizer/chat_template_internal.h"

namespace merlin::jinja {

const Value* Dict::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void Dict::set(const std::string& key, Value v) {
  for (auto& [k, old] : items) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  items.emplace_back(key, std::move(v));
}

std::string key_string(const Value& key, int line) {
  switch (key.type) {
    case Value::kString: return key.s;
    case Value::kNone: return "\x01n";
    case Value::kBool: return fmt::format("\x01i{}", int(key.b));  // True == 1 as a dict key
    case Value::kInt: return fmt::format("\x01i{}", key.i);
    case Value::kFloat:
      if (key.f == std::floor(key.f) && std::fabs(key.f) < 9e18) return fmt::format("\x01i{}", int64_t(key.f));
      return "\x01f" + float_repr(key.f);
    default: fail(line, "unhashable type: '{}'", type_name(key));
  }
}

Value key_value(const std::string& key) {
  if (key.empty() || key[0] != '\x01') return Value::str(key);
  if (key[1] == 'n') return Value::none();
  if (key[1] == 'i') return Value::integer(std::strtoll(key.c_str() + 2, nullptr, 10));
  return Value::real(std::strtod(key.c_str() + 2, nullptr));
}

Value from_json(const nlohmann::ordered_json& j) {
  using T = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case T::null: return Value::none();
    case T::boolean: return Value::boolean(j.get<bool>());
    case T::number_integer: return Value::integer(j.get<int64_t>());
    case T::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > uint64_t(INT64_MAX)) return Value::real(double(u));
      return Value::integer(int64_t(u));
    }
    case T::number_float: return Value::real(j.get<double>());
    case T::string: return Value::str(j.get<std::string>());
    case T::array: {
      Value v = Value::make_list();
      v.list->items.reserve(j.size());
      for (const auto& e : j) v.list->items.push_back(from_json(e));
      return v;
    }
    case T::object: {
      Value v = Value::make_dict();
      v.dict->items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it) v.dict->items.emplace_back(it.key(), from_json(it.value()));
      return v;
    }
    default: return Value::none();  // binary / discarded: not producible from JSON text
  }
}

}  // namespace merlin::jinja
