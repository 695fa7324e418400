#include "tokenizer/unicode.h"

#include "tokenizer/tokenizer.h"

namespace merlin::unicode {

Utf8Status utf8_check(std::string_view s, size_t i, size_t* len, uint32_t* cp) {
  const auto b0 = static_cast<uint8_t>(s[i]);
  *len = 1;
  if (b0 < 0x80) {
    if (cp) *cp = b0;
    return Utf8Status::kComplete;
  }
  size_t need;
  uint32_t v;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2; v = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3; v = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;        // overlong
    if (b0 == 0xED) hi = 0x9F;        // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4; v = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;        // overlong
    if (b0 == 0xF4) hi = 0x8F;        // > U+10FFFF
  } else {
    return Utf8Status::kInvalid;
  }
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return Utf8Status::kIncomplete;
    const auto b = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return Utf8Status::kInvalid;
    v = (v << 6) | (b & 0x3F);
  }
  *len = need;
  if (cp) *cp = v;
  return Utf8Status::kComplete;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

namespace {
struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 512> from_cp{};  // every mapped code point is < 512
  ByteTables() {
    from_cp.fill(-1);
    // Printable Latin-1 bytes map to themselves; the rest are shifted to 256+ so that every
    // byte becomes a visible character (the GPT-2 convention).
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = keep ? b : 256 + n++;
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};
const ByteTables& tables() {
  static const ByteTables t;
  return t;
}
}  // namespace

const std::array<uint32_t, 256>& byte_to_unicode() { return tables().to_cp; }

int unicode_to_byte(uint32_t cp) { return cp < 512 ? tables().from_cp[cp] : -1; }

std::string bytes_to_byte_level(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) utf8_append(out, tables().to_cp[static_cast<uint8_t>(c)]);
  return out;
}

std::string byte_level_to_bytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t len;
    uint32_t cp;
    if (utf8_check(text, i, &len, &cp) == Utf8Status::kComplete) {
      const int b = unicode_to_byte(cp);
      if (b >= 0) out += static_cast<char>(b);
      else out.append(text.substr(i, len));
      i += len;
    } else {
      out += text[i++];
    }
  }
  return out;
}

}  // namespace merlin::unicode

namespace merlin {

size_t utf8_complete_prefix(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (unicode::utf8_check(s, i, &len) != unicode::Utf8Status::kComplete) break;
    i += len;
  }
  return i;
}

bool utf8_valid(std::string_view s) { return utf8_complete_prefix(s) == s.size(); }

}  // namespace merlin
