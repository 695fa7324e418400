// UTF-8 and GPT-2 byte-alphabet helpers shared by the tokenizer implementations.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace merlin::unicode {

// Result of looking at the UTF-8 sequence starting at s[i].
enum class Utf8Status { kComplete, kIncomplete, kInvalid };

// kComplete: *len bytes form one valid character (no overlongs, surrogates or > U+10FFFF).
// kIncomplete: s ends inside what is so far a valid prefix of a character.
// kInvalid: s[i] cannot start a valid character given what follows (*len = 1).
Utf8Status utf8_check(std::string_view s, size_t i, size_t* len, uint32_t* cp = nullptr);

void utf8_append(std::string& out, uint32_t cp);

// GPT-2's reversible byte -> printable code point map ("Ġ" for space, ...).
const std::array<uint32_t, 256>& byte_to_unicode();
// Inverse of byte_to_unicode; -1 for code points outside the byte alphabet.
int unicode_to_byte(uint32_t cp);

// Raw bytes -> byte-level token text (each byte as its GPT-2 code point in UTF-8).
std::string bytes_to_byte_level(std::string_view bytes);
// Byte-level token text -> raw bytes. Characters outside the alphabet are kept as their UTF-8
// (vocabularies sometimes hold such tokens; dropping them would lose text).
std::string byte_level_to_bytes(std::string_view text);

}  // namespace merlin::unicode
