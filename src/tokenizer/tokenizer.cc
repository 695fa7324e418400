// Tokenizer construction (HF tokenizer.json / tokenizer_config.json, or a GGUF-style
// TokenizerVocab), special-token splitting, decoding and special-id discovery.
#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/chat_template_source.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/unicode.h"

namespace merlin {

using nlohmann::json;

namespace {

constexpr std::string_view kSpmSpace = "\xE2\x96\x81";  // "▁"

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t f = s.find(from, pos);
    if (f == std::string_view::npos) break;
    out.append(s.substr(pos, f - pos)).append(to);
    pos = f + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// "<0x1F>" -> 0x1F, else -1.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

}  // namespace

bool Tokenizer::is_eog(TokenId id) const {
  return std::find(eog_.begin(), eog_.end(), id) != eog_.end();
}

// ---------------------------------------------------------------------------------------------
// Construction

Result<std::shared_ptr<const Tokenizer>> TokenizerImpl::build(TokenizerVocab vocab,
                                                             TokenizerOptions opt) {
  auto tok = std::shared_ptr<TokenizerImpl>(new TokenizerImpl());
  Status st = tok->init(std::move(vocab), std::move(opt));
  if (!st.ok()) return std::unexpected(st);
  return std::shared_ptr<const Tokenizer>(std::move(tok));
}

Status TokenizerImpl::init(TokenizerVocab vocab, TokenizerOptions opt) {
  const std::string& src = opt.source;
  const size_t n = vocab.tokens.size();
  if (n == 0) return {Code::kCorrupt, fmt::format("{}: empty vocabulary", src)};
  if (n > (1u << 30)) return {Code::kCorrupt, fmt::format("{}: vocabulary too large ({})", src, n)};
  if (vocab.types.empty()) vocab.types.assign(n, TokenType::kNormal);
  if (vocab.types.size() != n)
    return {Code::kCorrupt, fmt::format("{}: {} token types for {} tokens", src, vocab.types.size(), n)};
  if (!vocab.scores.empty() && vocab.scores.size() != n)
    return {Code::kCorrupt, fmt::format("{}: {} scores for {} tokens", src, vocab.scores.size(), n)};
  for (auto* id : {&vocab.bos, &vocab.eos, &vocab.eot, &vocab.pad, &vocab.unk, &vocab.fim_pre,
                   &vocab.fim_suf, &vocab.fim_mid, &vocab.fim_pad, &vocab.fim_rep, &vocab.fim_sep}) {
    if (*id && (**id < 0 || static_cast<size_t>(**id) >= n))
      return {Code::kCorrupt, fmt::format("{}: special token id {} out of range (vocabulary {})", src, **id, n)};
  }

  texts_ = std::move(vocab.tokens);
  types_ = std::move(vocab.types);
  scores_ = std::move(vocab.scores);
  const bool spm = vocab.model == TokenizerModel::kSentencePieceBpe;
  byte_token_.fill(-1);
  bytes_.resize(n);
  text_to_id_.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    const TokenId id = static_cast<TokenId>(i);
    const std::string& t = texts_[i];
    TokenType type = types_[i];
    // Lower ids win when a text repeats, as in HF and llama.cpp.
    if (!t.empty()) text_to_id_.emplace(t, id);
    if (spm) {
      const int b = parse_byte_token(t);
      if (b >= 0 && (type == TokenType::kByte || type == TokenType::kNormal)) {
        types_[i] = type = TokenType::kByte;
        bytes_[i] = std::string(1, static_cast<char>(b));
        if (byte_token_[b] < 0) byte_token_[b] = id;
      } else if (type == TokenType::kControl || type == TokenType::kUnknown) {
        bytes_[i] = t;
      } else {
        bytes_[i] = replace_all(t, kSpmSpace, " ");
      }
    } else {
      if (type == TokenType::kControl || type == TokenType::kUserDefined || type == TokenType::kUnknown) {
        bytes_[i] = t;  // added tokens are stored as plain text, not in the byte alphabet
      } else {
        bytes_[i] = unicode::byte_level_to_bytes(t);
        if (type == TokenType::kNormal || type == TokenType::kByte) {
          bytes_to_id_.emplace(bytes_[i], id);
          if (bytes_[i].size() == 1 && byte_token_[static_cast<uint8_t>(bytes_[i][0])] < 0)
            byte_token_[static_cast<uint8_t>(bytes_[i][0])] = id;
        }
      }
    }
    if ((type == TokenType::kControl || type == TokenType::kUserDefined || type == TokenType::kUnknown) &&
        !t.empty()) {
      added_.push_back({t, id, type != TokenType::kUserDefined});
    }
  }
  // Merges: "a b" strings (GGUF; split at the first space after position 0, as llama.cpp
  // does) or pairs already split by the HF loader.
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(vocab.merges.size());
  for (size_t k = 0; k < vocab.merges.size(); ++k) {
    const std::string& m = vocab.merges[k];
    const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string::npos;
    if (sp == std::string::npos)
      return {Code::kCorrupt, fmt::format("{}: merge {} ('{}') is not two tokens separated by a space", src, k, m)};
    pairs.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  merges_.reserve(pairs.size() * 2);
  for (size_t k = 0; k < pairs.size(); ++k) {
    auto a = text_to_id_.find(pairs[k].first), b = text_to_id_.find(pairs[k].second);
    auto c = text_to_id_.find(pairs[k].first + pairs[k].second);
    // Merges whose parts or result are not tokens cannot fire; HF rejects them, we skip them.
    if (a == text_to_id_.end() || b == text_to_id_.end() || c == text_to_id_.end()) continue;
    const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a->second)) << 32) |
                         static_cast<uint32_t>(b->second);
    merges_.emplace(key, std::make_pair(static_cast<int32_t>(k), c->second));
  }

  std::stable_sort(added_.begin(), added_.end(),
                   [](const Added& x, const Added& y) { return x.text.size() > y.text.size(); });
  for (size_t k = 0; k < added_.size(); ++k)
    added_by_byte_[static_cast<uint8_t>(added_[k].text[0])].push_back(static_cast<uint32_t>(k));

  if (!spm) {
    auto sp = RegexSplitter::create(opt.patterns);
    if (!sp) return {sp.error().code, fmt::format("{}: {}", src, sp.error().message)};
    splitter_ = std::move(*sp);
  }

  vocab.tokens.clear();
  vocab.scores.clear();
  vocab.types.clear();
  vocab.merges.clear();
  info_ = std::move(vocab);
  opt_ = std::move(opt);
  discover_special_ids();
  return Status::Ok();
}

void TokenizerImpl::discover_special_ids() {
  auto find = [&](std::string_view t) { return find_token(t); };
  auto fill = [&](std::optional<TokenId>& slot, std::initializer_list<std::string_view> names) {
    if (slot) return;
    for (auto nm : names) {
      if (auto id = find(nm)) {
        slot = id;
        return;
      }
    }
  };
  fill(info_.fim_pre, {"<fim_prefix>", "<|fim_prefix|>", "<PRE>", "\xE2\x96\x81<PRE>",
                       "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>"});
  fill(info_.fim_suf, {"<fim_suffix>", "<|fim_suffix|>", "<SUF>", "\xE2\x96\x81<SUF>",
                       "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "hole\xEF\xBD\x9C>"});
  fill(info_.fim_mid, {"<fim_middle>", "<|fim_middle|>", "<MID>", "\xE2\x96\x81<MID>",
                       "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>"});
  fill(info_.fim_pad, {"<fim_pad>", "<|fim_pad|>"});
  fill(info_.fim_rep, {"<|repo_name|>", "<repo_name>", "<reponame>"});
  fill(info_.fim_sep, {"<|file_sep|>", "<file_sep>"});
  fill(info_.eot, {"<|eot_id|>", "<|im_end|>", "<|end|>", "<EOT>", "\xE2\x96\x81<EOT>", "<end_of_turn>"});

  eog_.clear();
  auto add = [&](std::optional<TokenId> id) {
    if (id && std::find(eog_.begin(), eog_.end(), *id) == eog_.end()) eog_.push_back(*id);
  };
  add(info_.eos);
  add(info_.eot);
  for (auto nm : {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|eom_id|>",
                  "<EOT>", "</s>", "<|end|>"}) {
    add(find(nm));
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding / decoding

Ids TokenizerImpl::encode(std::string_view text, bool parse_special, bool add_bos) const {
  Ids out;
  if (add_bos && info_.bos) out.push_back(*info_.bos);
  size_t seg = 0, i = 0;
  bool first = true;
  while (i < text.size()) {
    const Added* hit = nullptr;
    for (uint32_t k : added_by_byte_[static_cast<uint8_t>(text[i])]) {
      const Added& a = added_[k];
      if ((!a.special || parse_special) && text.compare(i, a.text.size(), a.text) == 0) {
        hit = &a;  // longest first
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    if (i > seg) encode_fragment(text.substr(seg, i - seg), first, seg == 0, out);
    out.push_back(hit->id);
    first = true;
    i += hit->text.size();
    seg = i;
  }
  if (seg < text.size()) encode_fragment(text.substr(seg), first, seg == 0, out);
  return out;
}

void TokenizerImpl::encode_fragment(std::string_view text, bool first, bool at_start, Ids& out) const {
  std::string normalized;
  if (!opt_.normalizer.empty()) {
    normalized = opt_.normalizer.apply(text);
    text = normalized;
  }
  if (info_.model == TokenizerModel::kSentencePieceBpe) {
    std::string s;
    s.reserve(text.size() + 8);
    if (info_.add_space_prefix && first && (at_start || !opt_.prefix_only_at_start)) s += ' ';
    s.append(text);
    const std::string escaped = replace_all(s, " ", kSpmSpace);
    if (!opt_.split_on_space) {
      spm_fragment(escaped, out);
      return;
    }
    // Each word starts at a "▁" (MergedWithNext), so merges never cross a space.
    size_t start = 0;
    while (start < escaped.size()) {
      size_t next = escaped.find(kSpmSpace, start + 1);
      if (next == std::string::npos) next = escaped.size();
      spm_fragment(std::string_view(escaped).substr(start, next - start), out);
      start = next;
    }
    return;
  }
  std::string prefixed;
  if (opt_.add_prefix_space && !text.empty() && text[0] != ' ') {
    prefixed = " ";
    prefixed.append(text);
    text = prefixed;
  }
  std::vector<std::string_view> words;
  splitter_.split(text, words);
  for (auto w : words) bpe_word(w, out);
}

std::string TokenizerImpl::decode(std::span<const TokenId> ids, bool skip_special) const {
  std::string out;
  bool started = false;
  for (TokenId id : ids) {
    if (id < 0 || id >= n_vocab()) continue;
    if (skip_special && is_special(id)) continue;
    std::string_view piece = bytes_[id];
    if (!started && !is_special(id)) {
      started = true;
      // SentencePiece's decoder drops the space it added in front of the text.
      if (info_.model == TokenizerModel::kSentencePieceBpe && info_.add_space_prefix &&
          !piece.empty() && piece[0] == ' ')
        piece.remove_prefix(1);
    }
    out.append(piece);
  }
  return out;
}

std::string TokenizerImpl::token_bytes(TokenId id) const {
  return id >= 0 && id < n_vocab() ? bytes_[id] : std::string();
}

std::string TokenizerImpl::token_text(TokenId id) const {
  return id >= 0 && id < n_vocab() ? texts_[id] : std::string();
}

std::optional<TokenId> TokenizerImpl::find_token(std::string_view text) const {
  auto it = text_to_id_.find(std::string(text));
  if (it == text_to_id_.end()) return std::nullopt;
  return it->second;
}

bool TokenizerImpl::is_special(TokenId id) const {
  if (id < 0 || id >= n_vocab()) return false;
  return types_[id] == TokenType::kControl || types_[id] == TokenType::kUnknown;
}

// ---------------------------------------------------------------------------------------------
// GGUF route

Result<std::shared_ptr<const Tokenizer>> Tokenizer::from_vocab(TokenizerVocab vocab, std::string source) {
  TokenizerOptions opt;
  opt.source = std::move(source);
  if (vocab.model == TokenizerModel::kByteLevelBpe) {
    std::string why;
    const BpePreTokenizer* pre = find_bpe_pre_tokenizer(vocab.pre, &why);
    if (!pre)
      return Errf(Code::kUnsupported, "{}: tokenizer.ggml.pre '{}' is not supported: {}", opt.source, vocab.pre, why);
    opt.patterns = pre->patterns;
    opt.ignore_merges = pre->ignore_merges;
  }
  return TokenizerImpl::build(std::move(vocab), std::move(opt));
}

// ---------------------------------------------------------------------------------------------
// Hugging Face route

namespace {

Result<std::string> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return Errf(Code::kNotFound, "{}: cannot open", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return Errf(Code::kCorrupt, "{}: read error", path);
  return ss.str();
}

// Escapes a literal for use inside a PCRE2 pattern.
std::string regex_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// Collects the byte-level pre-tokenizer's regexes; errors are messages without the path.
Result<void> collect_pre(const json& p, TokenizerOptions& opt) {
  if (p.is_null()) return {};
  if (!p.is_object() || !p.contains("type") || !p["type"].is_string())
    return Errf(Code::kCorrupt, "pre_tokenizer without a type");
  const std::string type = p["type"];
  if (type == "Sequence") {
    if (!p.contains("pretokenizers") || !p["pretokenizers"].is_array())
      return Errf(Code::kCorrupt, "pre_tokenizer Sequence without a pretokenizers array");
    for (const auto& q : p["pretokenizers"]) MERLIN_CHECK_OK(collect_pre(q, opt));
    return {};
  }
  if (type == "Split") {
    const std::string behavior = p.value("behavior", "Isolated");
    if (behavior != "Isolated" || p.value("invert", false))
      return Errf(Code::kUnsupported, "pre_tokenizer Split with behavior {} (only Isolated is supported)", behavior);
    if (!p.contains("pattern") || !p["pattern"].is_object())
      return Errf(Code::kCorrupt, "pre_tokenizer Split without a pattern");
    const json& pat = p["pattern"];
    if (pat.contains("Regex") && pat["Regex"].is_string()) opt.patterns.push_back(pat["Regex"]);
    else if (pat.contains("String") && pat["String"].is_string()) opt.patterns.push_back(regex_escape(pat["String"].get<std::string>()));
    else return Errf(Code::kCorrupt, "pre_tokenizer Split pattern is neither Regex nor String");
    return {};
  }
  if (type == "ByteLevel") {
    if (p.value("use_regex", true)) opt.patterns.push_back(kGpt2Pattern);
    if (p.value("add_prefix_space", false)) opt.add_prefix_space = true;
    return {};
  }
  if (type == "Digits") {
    opt.patterns.push_back(p.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return {};
  }
  if (type == "Punctuation") {
    const std::string behavior = p.value("behavior", "Isolated");
    const std::string cls = R"([\p{P}!-/:-@\[-`{-~])";
    if (behavior == "Isolated") opt.patterns.push_back(cls);
    else if (behavior == "Contiguous") opt.patterns.push_back(cls + "+");
    else return Errf(Code::kUnsupported, "pre_tokenizer Punctuation with behavior {}", behavior);
    return {};
  }
  return Errf(Code::kUnsupported, "pre_tokenizer type {} is not supported", type);
}

std::optional<std::string> token_content(const json& j, const char* key) {
  if (!j.contains(key)) return std::nullopt;
  const json& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

Result<std::shared_ptr<const Tokenizer>> load_hf(const std::string& dir) {
  const std::string path = dir + "/tokenizer.json";
  MERLIN_TRY(text, read_file(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Errf(Code::kCorrupt, "{}: not valid JSON", path);
  if (!j.is_object()) return Errf(Code::kCorrupt, "{}: top level is not an object", path);
  if (!j.contains("model") || !j["model"].is_object())
    return Errf(Code::kCorrupt, "{}: missing \"model\" object", path);
  const json& m = j["model"];
  const std::string mtype = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>() : "BPE";
  if (mtype != "BPE") return Errf(Code::kUnsupported, "{}: model type {} is not supported (only BPE)", path, mtype);
  if (!m.contains("vocab") || !m["vocab"].is_object())
    return Errf(Code::kCorrupt, "{}: model.vocab is missing or not an object", path);

  TokenizerVocab v;
  TokenizerOptions opt;
  opt.source = path;

  // Vocabulary and added tokens -> dense id table.
  int64_t max_id = -1;
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it.value().is_number_integer())
      return Errf(Code::kCorrupt, "{}: model.vocab[\"{}\"] is not an integer id", path, it.key());
    max_id = std::max<int64_t>(max_id, it.value().get<int64_t>());
  }
  const json empty_array = json::array();
  const json& added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : empty_array;
  if (!added.is_array()) return Errf(Code::kCorrupt, "{}: added_tokens is not an array", path);
  for (const auto& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      return Errf(Code::kCorrupt, "{}: added_tokens entry without integer id and string content", path);
    max_id = std::max<int64_t>(max_id, a["id"].get<int64_t>());
  }
  if (max_id < 0) return Errf(Code::kCorrupt, "{}: empty vocabulary", path);
  if (max_id >= (1 << 24)) return Errf(Code::kCorrupt, "{}: token id {} is implausibly large", path, max_id);
  v.tokens.assign(max_id + 1, std::string());
  v.types.assign(max_id + 1, TokenType::kUnused);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    const int64_t id = it.value().get<int64_t>();
    if (id < 0) return Errf(Code::kCorrupt, "{}: negative token id {}", path, id);
    v.tokens[id] = it.key();
    v.types[id] = TokenType::kNormal;
  }
  for (const auto& a : added) {
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0) return Errf(Code::kCorrupt, "{}: negative added token id {}", path, id);
    v.tokens[id] = a["content"].get<std::string>();
    v.types[id] = a.value("special", false) ? TokenType::kControl : TokenType::kUserDefined;
  }

  // Merges: "a b" strings or [a, b] pairs.
  if (m.contains("merges") && !m["merges"].is_null()) {
    const json& mg = m["merges"];
    if (!mg.is_array()) return Errf(Code::kCorrupt, "{}: model.merges is not an array", path);
    v.merges.reserve(mg.size());
    for (size_t k = 0; k < mg.size(); ++k) {
      const json& e = mg[k];
      if (e.is_string()) {
        v.merges.push_back(e.get<std::string>());
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        v.merges.push_back(e[0].get<std::string>() + " " + e[1].get<std::string>());
      } else {
        return Errf(Code::kCorrupt, "{}: model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", path, k);
      }
    }
  }
  opt.ignore_merges = m.value("ignore_merges", false);

  const std::string pre_dump = j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "null";
  const std::string norm_dump = j.contains("normalizer") ? j["normalizer"].dump() : "null";
  const std::string dec_dump = j.contains("decoder") ? j["decoder"].dump() : "null";
  auto normalizer = Normalizer::parse(j.contains("normalizer") ? j["normalizer"] : json());
  if (!normalizer) return Errf(normalizer.error().code, "{}: {}", path, normalizer.error().message);
  opt.normalizer = std::move(*normalizer);
  const bool byte_fallback = m.value("byte_fallback", false);
  const bool byte_level = pre_dump.find("\"ByteLevel\"") != std::string::npos ||
                          (dec_dump.find("\"ByteLevel\"") != std::string::npos && !byte_fallback);
  const std::string meta(kSpmSpace);
  const bool spm_style = !byte_level && (byte_fallback || norm_dump.find(meta) != std::string::npos ||
                                         pre_dump.find("Metaspace") != std::string::npos);
  if (spm_style) {
    // The SentencePiece path itself adds the "▁" prefix and turns spaces into "▁".
    opt.normalizer.remove_if_matches(Normalizer::Kind::kPrepend, meta);
    opt.normalizer.remove_if_matches(Normalizer::Kind::kReplace, " ", meta);
    v.model = TokenizerModel::kSentencePieceBpe;
    opt.spm_use_ranks = true;
    opt.prefix_only_at_start = pre_dump.find("\"prepend_scheme\":\"first\"") != std::string::npos;
    if (j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object() &&
        j["pre_tokenizer"].value("type", "") == "Metaspace")
      opt.split_on_space = j["pre_tokenizer"].value("split", true);
    v.add_space_prefix = norm_dump.find("Prepend") != std::string::npos ||
                         (pre_dump.find("Metaspace") != std::string::npos &&
                          pre_dump.find("\"never\"") == std::string::npos &&
                          pre_dump.find("\"add_prefix_space\":false") == std::string::npos);
    if (m.contains("unk_token") && m["unk_token"].is_string()) {
      auto it = m["vocab"].find(m["unk_token"].get<std::string>());
      if (it != m["vocab"].end()) {
        v.unk = it.value().get<TokenId>();
        if (v.types[*v.unk] == TokenType::kNormal) v.types[*v.unk] = TokenType::kUnknown;
      }
    }
  } else {
    v.model = TokenizerModel::kByteLevelBpe;
    if (j.contains("pre_tokenizer")) {
      auto r = collect_pre(j["pre_tokenizer"], opt);
      if (!r) return Errf(r.error().code, "{}: {}", path, r.error().message);
    }
  }

  // tokenizer_config.json (optional).
  const std::string cpath = dir + "/tokenizer_config.json";
  std::optional<std::string> bos_text, eos_text, pad_text, unk_text;
  std::optional<bool> add_bos;
  if (auto ctext = read_file(cpath); ctext) {
    json c = json::parse(*ctext, nullptr, false);
    if (c.is_discarded() || !c.is_object()) return Errf(Code::kCorrupt, "{}: not a valid JSON object", cpath);
    if (c.contains("chat_template")) {
      const json& t = c["chat_template"];
      if (t.is_string()) {
        v.chat_template = t.get<std::string>();
      } else if (t.is_array()) {
        for (const auto& e : t) {
          if (!e.is_object() || !e.contains("template") || !e["template"].is_string())
            return Errf(Code::kCorrupt, "{}: chat_template list entries need a \"template\" string", cpath);
          const bool is_default = e.value("name", "") == "default";
          if (is_default || v.chat_template.empty()) v.chat_template = e["template"].get<std::string>();
          if (is_default) break;
        }
      } else if (!t.is_null()) {
        return Errf(Code::kCorrupt, "{}: chat_template is neither a string nor a list", cpath);
      }
    }
    bos_text = token_content(c, "bos_token");
    eos_text = token_content(c, "eos_token");
    pad_text = token_content(c, "pad_token");
    unk_text = token_content(c, "unk_token");
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) add_bos = c["add_bos_token"].get<bool>();
  } else if (ctext.error().code != Code::kNotFound) {
    return std::unexpected(ctext.error());
  }
  if (auto r = resolve_hf_chat_template(dir, v); !r) return std::unexpected(r.error());  // + chat_template.jinja

  auto id_of = [&](const std::optional<std::string>& t) -> std::optional<TokenId> {
    if (!t) return std::nullopt;
    for (size_t i = 0; i < v.tokens.size(); ++i)
      if (v.tokens[i] == *t) return static_cast<TokenId>(i);
    return std::nullopt;
  };
  v.bos = id_of(bos_text);
  v.eos = id_of(eos_text);
  v.pad = id_of(pad_text);
  if (auto u = id_of(unk_text)) v.unk = u;
  if (add_bos) {
    v.add_bos = *add_bos;
  } else if (v.bos && j.contains("post_processor") && !j["post_processor"].is_null()) {
    // HF adds BOS through a TemplateProcessing post-processor when the config does not say.
    const std::string pp = j["post_processor"].dump();
    v.add_bos = pp.find("TemplateProcessing") != std::string::npos &&
                pp.find(json(v.tokens[*v.bos]).dump()) != std::string::npos;
  }
  return TokenizerImpl::build(std::move(v), std::move(opt));
}

}  // namespace

Result<std::shared_ptr<const Tokenizer>> Tokenizer::from_hf_dir(const std::string& dir) {
  try {
    return load_hf(dir);
  } catch (const std::exception& e) {
    // Defensive: a JSON value of an unexpected type that slipped past the checks above.
    return Errf(Code::kCorrupt, "{}/tokenizer.json: {}", dir, e.what());
  }
}

}  // namespace merlin
