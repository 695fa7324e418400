#include "tokenizer/normalizer.h"

#include <algorithm>
#include <cstdlib>

#include <nlohmann/json.hpp>
#include <utf8proc.h>

namespace merlin {

namespace {

using nlohmann::json;

Result<void> collect(const json& j, std::vector<Normalizer::Step>& out) {
  using K = Normalizer::Kind;
  if (j.is_null()) return {};
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    return Errf(Code::kCorrupt, "normalizer without a type");
  const std::string type = j["type"];
  if (type == "Sequence") {
    if (!j.contains("normalizers") || !j["normalizers"].is_array())
      return Errf(Code::kCorrupt, "normalizer Sequence without a normalizers array");
    for (const auto& n : j["normalizers"]) MERLIN_CHECK_OK(collect(n, out));
    return {};
  }
  auto add = [&](K kind, std::string a = {}, std::string b = {}) -> Normalizer::Step& {
    out.push_back(Normalizer::Step{.kind = kind, .a = std::move(a), .b = std::move(b)});
    return out.back();
  };
  if (type == "NFC") add(K::kNfc);
  else if (type == "NFD") add(K::kNfd);
  else if (type == "NFKC") add(K::kNfkc);
  else if (type == "NFKD") add(K::kNfkd);
  else if (type == "Lowercase") add(K::kLowercase);
  else if (type == "Strip") {
    Normalizer::Step& st = add(K::kStrip);
    st.left = j.value("strip_left", true);
    st.right = j.value("strip_right", true);
  } else if (type == "Prepend") {
    if (!j.contains("prepend") || !j["prepend"].is_string())
      return Errf(Code::kCorrupt, "normalizer Prepend without a prepend string");
    add(K::kPrepend, j["prepend"].get<std::string>());
  } else if (type == "Replace") {
    const json& p = j.contains("pattern") ? j["pattern"] : json();
    if (!p.is_object() || !p.contains("String") || !p["String"].is_string())
      return Errf(Code::kUnsupported, "normalizer Replace with pattern {} is not supported (only String patterns)",
                  p.dump());
    if (!j.contains("content") || !j["content"].is_string())
      return Errf(Code::kCorrupt, "normalizer Replace without a content string");
    if (p["String"].get<std::string>().empty())
      return Errf(Code::kCorrupt, "normalizer Replace with an empty pattern");
    add(K::kReplace, p["String"].get<std::string>(), j["content"].get<std::string>());
  } else {
    return Errf(Code::kUnsupported,
                "normalizer {} is not supported (Merlin applies NFC, NFD, NFKC, NFKD, Lowercase, Strip, Prepend, "
                "Replace and Sequences of them)",
                type);
  }
  return {};
}

// Unicode White_Space, as Rust's char::is_whitespace (HF Strip).
bool is_white_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Applies `f` to each maximal run of valid UTF-8; invalid bytes are copied as they are.
template <class F>
std::string per_valid_run(std::string_view s, F f) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0, run = 0;
  auto flush = [&](size_t end) {
    if (end > run) out += f(s.substr(run, end - run));
  };
  while (i < s.size()) {
    int32_t cp = 0;
    const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                    static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n > 0) {
      i += static_cast<size_t>(n);
      continue;
    }
    flush(i);
    out += s[i++];
    run = i;
  }
  flush(i);
  return out;
}

std::string unicode_form(std::string_view s, int options) {
  return per_valid_run(s, [options](std::string_view run) {
    utf8proc_uint8_t* dst = nullptr;
    const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(run.data()),
                                static_cast<utf8proc_ssize_t>(run.size()), &dst,
                                static_cast<utf8proc_option_t>(UTF8PROC_STABLE | options));
    std::string r = n >= 0 ? std::string(reinterpret_cast<const char*>(dst), static_cast<size_t>(n)) : std::string(run);
    std::free(dst);
    return r;
  });
}

std::string lowercase(std::string_view s) {
  return per_valid_run(s, [](std::string_view run) {
    std::string r;
    r.reserve(run.size());
    for (size_t i = 0; i < run.size();) {
      int32_t cp = 0;
      i += static_cast<size_t>(utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(run.data() + i),
                                                static_cast<utf8proc_ssize_t>(run.size() - i), &cp));
      // Rust's char::to_lowercase: the simple mapping, except U+0130 which becomes "i" + U+0307.
      if (cp == 0x130) {
        r += "i\xCC\x87";
        continue;
      }
      utf8proc_uint8_t buf[4];
      const auto n = utf8proc_encode_char(utf8proc_tolower(cp), buf);
      r.append(reinterpret_cast<const char*>(buf), static_cast<size_t>(n));
    }
    return r;
  });
}

std::string strip(std::string_view s, bool left, bool right) {
  auto decode_at = [&](size_t i, int32_t& cp) {
    return utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                            static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  };
  size_t b = 0, e = s.size();
  if (left) {
    int32_t cp = 0;
    for (utf8proc_ssize_t n; b < e && (n = decode_at(b, cp)) > 0 && is_white_space(cp);) b += static_cast<size_t>(n);
  }
  if (right) {
    while (e > b) {
      size_t k = e - 1;
      while (k > b && (static_cast<uint8_t>(s[k]) & 0xC0) == 0x80) --k;
      int32_t cp = 0;
      const auto n = decode_at(k, cp);
      if (n <= 0 || k + static_cast<size_t>(n) != e || !is_white_space(cp)) break;
      e = k;
    }
  }
  return std::string(s.substr(b, e - b));
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0;;) {
    const size_t f = s.find(from, pos);
    if (f == std::string_view::npos) {
      out.append(s.substr(pos));
      return out;
    }
    out.append(s.substr(pos, f - pos)).append(to);
    pos = f + from.size();
  }
}

}  // namespace

Result<Normalizer> Normalizer::parse(const nlohmann::json& j) {
  Normalizer n;
  MERLIN_CHECK_OK(collect(j, n.steps_));
  return n;
}

void Normalizer::remove_if_matches(Kind kind, std::string_view a, std::string_view b) {
  std::erase_if(steps_, [&](const Step& s) { return s.kind == kind && s.a == a && s.b == b; });
}

std::string Normalizer::apply(std::string_view text) const {
  std::string s(text);
  for (const Step& st : steps_) {
    switch (st.kind) {
      case Kind::kNfc: s = unicode_form(s, UTF8PROC_COMPOSE); break;
      case Kind::kNfd: s = unicode_form(s, UTF8PROC_DECOMPOSE); break;
      case Kind::kNfkc: s = unicode_form(s, UTF8PROC_COMPOSE | UTF8PROC_COMPAT); break;
      case Kind::kNfkd: s = unicode_form(s, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT); break;
      case Kind::kLowercase: s = lowercase(s); break;
      case Kind::kStrip: s = strip(s, st.left, st.right); break;
      case Kind::kPrepend: if (!s.empty()) s = st.a + s; break;
      case Kind::kReplace: s = replace_all(s, st.a, st.b); break;
    }
  }
  return s;
}

}  // namespace merlin
