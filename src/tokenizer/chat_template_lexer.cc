// Chat-template lexer: template source to tokens, with trim_blocks, lstrip_blocks and `-`
// whitespace control exactly as Jinja2's lexer applies them.
#include "tokenizer/chat_template_ast.h"

namespace merlin::jinja {
namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  explicit Lexer(std::string src) : src_(std::move(src)) {}

  std::vector<Token> run() {
    normalize();
    const size_t n = src_.size();
    bool line_starting = true;
    while (pos_ < n) {
      size_t k = pos_;
      while (true) {
        k = src_.find('{', k);
        if (k == std::string::npos || k + 1 >= n) { k = std::string::npos; break; }
        char c2 = src_[k + 1];
        if (c2 == '{' || c2 == '%' || c2 == '#') break;
        ++k;
      }
      if (k == std::string::npos) {
        emit_text(src_.substr(pos_), line_);
        advance_to(n);
        break;
      }
      std::string text = src_.substr(pos_, k - pos_);
      int text_line = line_;
      char kind = src_[k + 1];
      char sign = k + 2 < n ? src_[k + 2] : 0;
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop the indentation before a block or comment tag alone on its line.
        size_t l_pos = text.rfind('\n');
        l_pos = l_pos == std::string::npos ? 0 : l_pos + 1;
        if (l_pos > 0 || line_starting) {
          bool all_ws = true;
          for (size_t q = l_pos; q < text.size(); ++q)
            if (!is_ws(text[q])) { all_ws = false; break; }
          if (all_ws) text.resize(l_pos);
        }
      }
      emit_text(std::move(text), text_line);
      advance_to(k);
      int tag_line = line_;
      advance_to(k + 2 + ((sign == '-' || sign == '+') ? 1 : 0));
      if (kind == '#') {
        size_t e = src_.find("#}", pos_);
        if (e == std::string::npos) fail(tag_line, "unterminated comment '{{#' (missing '#}}')");
        bool minus = e > pos_ && src_[e - 1] == '-';
        bool plus = e > pos_ && src_[e - 1] == '+';
        advance_to(e + 2);
        line_starting = finish_tag(minus, !plus && !minus);
      } else if (kind == '%') {
        if (try_raw(tag_line, line_starting)) continue;
        tokens_.push_back({Tok::kBlockBegin, "", 0, 0, tag_line});
        line_starting = lex_tag(true, tag_line);
      } else {
        tokens_.push_back({Tok::kVarBegin, "", 0, 0, tag_line});
        line_starting = lex_tag(false, tag_line);
      }
    }
    tokens_.push_back({Tok::kEof, "", 0, 0, line_});
    return std::move(tokens_);
  }

 private:
  void normalize() {
    // Jinja2 splits on \r\n|\r|\n and rejoins with \n, dropping one trailing newline
    // (keep_trailing_newline=False).
    if (src_.find('\r') == std::string::npos) {
      if (!src_.empty() && src_.back() == '\n') src_.pop_back();
      return;
    }
    std::string out;
    out.reserve(src_.size());
    for (size_t i = 0; i < src_.size(); ++i) {
      if (src_[i] == '\r') {
        out += '\n';
        if (i + 1 < src_.size() && src_[i + 1] == '\n') ++i;
      } else {
        out += src_[i];
      }
    }
    if (!out.empty() && out.back() == '\n') out.pop_back();
    src_ = std::move(out);
  }

  void advance_to(size_t p) {
    for (size_t i = pos_; i < p && i < src_.size(); ++i)
      if (src_[i] == '\n') ++line_;
    pos_ = p;
  }

  void emit_text(std::string text, int line) {
    if (!text.empty()) tokens_.push_back({Tok::kText, std::move(text), 0, 0, line});
  }

  // After a closing tag: `-` eats all following whitespace, trim_blocks eats one newline.
  // Returns Jinja's line_starting: whether what the closing tag consumed ended in a newline.
  bool finish_tag(bool minus, bool trim) {
    const size_t n = src_.size();
    if (minus) {
      size_t e = pos_;
      while (e < n && is_ws(src_[e])) ++e;
      bool nl = e > pos_ && src_[e - 1] == '\n';
      advance_to(e);
      return nl;
    }
    if (trim && pos_ < n && src_[pos_] == '\n') {
      advance_to(pos_ + 1);
      return true;
    }
    return false;
  }

  bool try_raw(int tag_line, bool& line_starting) {
    size_t p = pos_;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0) return false;
    p += 3;
    while (p < src_.size() && is_ws(src_[p])) ++p;
    bool minus = src_.compare(p, 3, "-%}") == 0;
    if (!minus && src_.compare(p, 2, "%}") != 0) return false;
    advance_to(p + (minus ? 3 : 2));
    if (minus) finish_tag(true, false);
    // Find {% endraw %} with optional whitespace control.
    size_t q = pos_;
    while (true) {
      q = src_.find("{%", q);
      if (q == std::string::npos) fail(tag_line, "unterminated 'raw' block (missing endraw)");
      size_t r = q + 2;
      bool lminus = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) { q += 2; continue; }
      r += 6;
      while (r < src_.size() && is_ws(src_[r])) ++r;
      bool rminus = src_.compare(r, 3, "-%}") == 0;
      bool rplus = src_.compare(r, 3, "+%}") == 0;
      if (!rminus && !rplus && src_.compare(r, 2, "%}") != 0) { q += 2; continue; }
      std::string body = src_.substr(pos_, q - pos_);
      if (lminus) {
        while (!body.empty() && is_ws(body.back())) body.pop_back();
      }
      emit_text(std::move(body), line_);
      advance_to(r + (rminus || rplus ? 3 : 2));
      line_starting = finish_tag(rminus, !rplus && !rminus);
      return true;
    }
  }

  // Tokenizes an expression up to the tag's end; returns line_starting for the next text.
  bool lex_tag(bool block, int tag_line) {
    const size_t n = src_.size();
    int depth = 0;
    while (true) {
      while (pos_ < n && is_ws(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= n) fail(tag_line, "unterminated '{}' tag (missing '{}')", block ? "{%" : "{{", block ? "%}" : "}}");
      char c = src_[pos_];
      if (depth == 0 && (c == '-' || c == '+' || c == '%' || c == '}')) {
        if (block) {
          if (src_.compare(pos_, 3, "-%}") == 0) { advance_to(pos_ + 3); end(Tok::kBlockEnd); return finish_tag(true, false); }
          if (src_.compare(pos_, 3, "+%}") == 0) { advance_to(pos_ + 3); end(Tok::kBlockEnd); return false; }
          if (src_.compare(pos_, 2, "%}") == 0) { advance_to(pos_ + 2); end(Tok::kBlockEnd); return finish_tag(false, true); }
        } else {
          if (src_.compare(pos_, 3, "-}}") == 0) { advance_to(pos_ + 3); end(Tok::kVarEnd); return finish_tag(true, false); }
          if (src_.compare(pos_, 2, "}}") == 0) { advance_to(pos_ + 2); end(Tok::kVarEnd); return false; }
        }
      }
      if (c == '\'' || c == '"') {
        lex_string(c);
      } else if (c >= '0' && c <= '9') {
        lex_number();
      } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos_;
        while (e < n && (std::isalnum(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e;
        tokens_.push_back({Tok::kName, src_.substr(pos_, e - pos_), 0, 0, line_});
        advance_to(e);
      } else {
        std::string op;
        char c2 = pos_ + 1 < n ? src_[pos_ + 1] : 0;
        if ((c == '/' && c2 == '/') || (c == '*' && c2 == '*') || (c2 == '=' && (c == '=' || c == '!' || c == '<' || c == '>')))
          op = std::string{c, c2};
        if (op.empty()) {
          if (std::string_view("+-*/%~<>=()[]{},.:|").find(c) == std::string_view::npos)
            fail(line_, "unexpected character '{}' in tag", c);
          op = std::string(1, c);
          if (c == '(' || c == '[' || c == '{') ++depth;
          if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
        }
        tokens_.push_back({Tok::kOp, op, 0, 0, line_});
        advance_to(pos_ + op.size());
      }
    }
  }

  void end(Tok t) { tokens_.push_back({t, "", 0, 0, line_}); }

  void lex_string(char q) {
    int start_line = line_;
    size_t p = pos_ + 1;
    std::string out;
    const size_t n = src_.size();
    while (true) {
      if (p >= n) fail(start_line, "unterminated string literal");
      char c = src_[p];
      if (c == q) break;
      if (c != '\\') {
        size_t e = p + 1;
        while (e < n && src_[e] != q && src_[e] != '\\') ++e;
        out.append(src_, p, e - p);
        p = e;
        continue;
      }
      if (p + 1 >= n) fail(start_line, "unterminated string literal");
      char e = src_[p + 1];
      p += 2;
      auto hex = [&](int digits) {
        if (p + size_t(digits) > n) fail(start_line, "truncated \\x/\\u escape in string literal");
        uint32_t v = 0;
        for (int d = 0; d < digits; ++d) {
          char h = src_[p + size_t(d)];
          int x = std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                  : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
          if (x < 0) fail(start_line, "bad \\x/\\u escape in string literal");
          v = v * 16 + uint32_t(x);
        }
        p += size_t(digits);
        utf8_append(out, char32_t(v));
      };
      switch (e) {
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case '0': out += '\0'; break;
        case '\n': break;  // line continuation
        case 'x': hex(2); break;
        case 'u': hex(4); break;
        case 'U': hex(8); break;
        default: out += '\\'; out += e; break;  // Python keeps unknown escapes verbatim
      }
    }
    tokens_.push_back({Tok::kString, std::move(out), 0, 0, start_line});
    advance_to(p + 1);
  }

  void lex_number() {
    const size_t n = src_.size();
    size_t e = pos_;
    auto digits = [&] { while (e < n && (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_')) ++e; };
    digits();
    bool is_float = false;
    // After '.', as in `messages.0`, only an integer may follow (Jinja's lookbehind).
    bool after_dot = !tokens_.empty() && tokens_.back().type == Tok::kOp && tokens_.back().text == ".";
    if (!after_dot) {
      if (e + 1 < n && src_[e] == '.' && std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
        is_float = true;
        ++e;
        digits();
      }
      if (e < n && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t f = e + 1;
        if (f < n && (src_[f] == '+' || src_[f] == '-')) ++f;
        if (f < n && std::isdigit(static_cast<unsigned char>(src_[f]))) {
          is_float = true;
          e = f;
          digits();
        }
      }
    }
    std::string text;
    for (size_t i = pos_; i < e; ++i)
      if (src_[i] != '_') text += src_[i];
    Token t{is_float ? Tok::kFloat : Tok::kInt, text, 0, 0, line_};
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      t.ival = std::strtoll(text.c_str(), nullptr, 10);
      if (errno == ERANGE) fail(line_, "integer literal {} is too large", text);
    }
    tokens_.push_back(std::move(t));
    advance_to(e);
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> lex(std::string source) {
  Lexer lexer(std::move(source));
  return lexer.run();
}

}  // namespace merlin::jinja
