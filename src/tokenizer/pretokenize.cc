#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace merlin {

namespace {
constexpr std::string_view kWs = R"(\t-\r\x{20}\x{85}\p{Z})";
}

std::string rewrite_whitespace_classes(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 32);
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[i + 1];
      if (n == 's') {
        if (in_class) out.append(kWs);
        else out.append("[").append(kWs).append("]");
      } else if (n == 'S' && !in_class) {
        out.append("[^").append(kWs).append("]");
      } else {
        out += c;
        out += n;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct RegexSplitter::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Compiled() { if (code) pcre2_code_free(code); }
};

Result<RegexSplitter> RegexSplitter::create(const std::vector<std::string>& patterns) {
  RegexSplitter s;
  for (const auto& p : patterns) {
    const std::string rewritten = rewrite_whitespace_classes(p);
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                     PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off,
                                     nullptr);
    if (!code) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof buf);
      return Errf(Code::kCorrupt, "pre-tokenizer regex '{}' does not compile at offset {}: {}", p,
                  static_cast<size_t>(off), reinterpret_cast<const char*>(buf));
    }
    auto c = std::make_shared<Compiled>();
    c->code = code;
    c->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    s.patterns_.push_back(std::move(c));
  }
  return s;
}

namespace {

// Per-call matching state: match data and a JIT stack large enough for long whitespace runs.
struct Scratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* js = nullptr;
  Scratch() {
    md = pcre2_match_data_create(4, nullptr);
    mc = pcre2_match_context_create(nullptr);
    js = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (mc && js) pcre2_jit_stack_assign(mc, nullptr, js);
  }
  ~Scratch() {
    if (js) pcre2_jit_stack_free(js);
    if (mc) pcre2_match_context_free(mc);
    if (md) pcre2_match_data_free(md);
  }
};

void split_one(pcre2_code* code, bool jit, Scratch& sc, std::string_view text,
               std::vector<std::string_view>& out) {
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0, last = 0;
  while (pos <= text.size()) {
    int rc = jit ? pcre2_jit_match(code, subj, text.size(), pos, 0, sc.md, sc.mc)
                 : pcre2_match(code, subj, text.size(), pos, 0, sc.md, sc.mc);
    if (rc < 0) break;  // no match (or a resource limit): the rest is one gap piece
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(sc.md);
    size_t b = ov[0], e = ov[1];
    if (e <= b) {
      // Empty match: split here, then step over one character so the scan always advances.
      if (b > last && b < text.size()) {
        out.push_back(text.substr(last, b - last));
        last = b;
      }
      size_t step = 1;
      while (b + step < text.size() && (static_cast<uint8_t>(text[b + step]) & 0xC0) == 0x80) ++step;
      pos = b + step;
      continue;
    }
    if (b > last) out.push_back(text.substr(last, b - last));
    out.push_back(text.substr(b, e - b));
    last = pos = e;
  }
  if (last < text.size()) out.push_back(text.substr(last));
}

}  // namespace

void RegexSplitter::split(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  if (patterns_.empty()) {
    out.push_back(text);
    return;
  }
  Scratch sc;
  std::vector<std::string_view> cur{text}, next;
  for (size_t k = 0; k < patterns_.size(); ++k) {
    next.clear();
    for (auto piece : cur) split_one(patterns_[k]->code, patterns_[k]->jit, sc, piece, next);
    cur.swap(next);
  }
  out.insert(out.end(), cur.begin(), cur.end());
}

}  // namespace merlin
