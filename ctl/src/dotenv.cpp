#include "ctl/dotenv.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>

#include "core/fd.hpp"

namespace tokend::ctl {

namespace {

constexpr std::size_t k_max_dotenv_bytes = 1024 * 1024;

bool is_key_start(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}
bool is_key_char(char c) {
  return is_key_start(c) || (c >= '0' && c <= '9') || c == '.' || c == '-';
}
bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

// A cursor over the text that counts lines. "\r\n" and "\n" end a line; a
// lone '\r' is an ordinary character.
class Cursor {
 public:
  explicit Cursor(std::string_view text) : m_text(text) {}
  [[nodiscard]] bool done() const { return m_pos >= m_text.size(); }
  [[nodiscard]] char peek(std::size_t ahead = 0) const {
    return m_pos + ahead < m_text.size() ? m_text[m_pos + ahead] : '\0';
  }
  [[nodiscard]] bool at_eol() const {
    return done() || peek() == '\n' || (peek() == '\r' && peek(1) == '\n');
  }
  [[nodiscard]] std::size_t line() const { return m_line; }
  [[nodiscard]] std::string_view rest() const { return m_text.substr(m_pos); }
  void advance(std::size_t n = 1) {
    for (std::size_t i = 0; i < n && !done(); ++i) {
      if (m_text[m_pos] == '\n') ++m_line;
      ++m_pos;
    }
  }
  void skip_blanks() {
    while (!done() && is_blank(peek())) advance();
  }
  // Moves past the end of the current line (and its line break).
  void skip_line() {
    while (!done() && peek() != '\n') advance();
    advance();
  }

 private:
  std::string_view m_text;
  std::size_t m_pos = 0;
  std::size_t m_line = 1;
};

// Reads one quoted part starting at the opening quote into `out`; false when
// the closing quote is missing.
bool read_quoted(Cursor& c, std::string& out) {
  const char quote = c.peek();
  c.advance();
  while (!c.done()) {
    const char ch = c.peek();
    if (ch == quote) {
      c.advance();
      return true;
    }
    if (ch == '\r' && c.peek(1) == '\n') {  // a CRLF inside a multi-line value is a newline
      c.advance();
      continue;
    }
    if (ch == '\\') {
      const char next = c.peek(1);
      if (quote == '\'') {
        if (next == '\'' || next == '\\') {
          out += next;
          c.advance(2);
          continue;
        }
      } else {
        char decoded = '\0';
        switch (next) {
          case 'n':
            decoded = '\n';
            break;
          case 't':
            decoded = '\t';
            break;
          case 'r':
            decoded = '\r';
            break;
          case 'a':
            decoded = '\a';
            break;
          case 'b':
            decoded = '\b';
            break;
          case 'f':
            decoded = '\f';
            break;
          case 'v':
            decoded = '\v';
            break;
          case '"':
            decoded = '"';
            break;
          case '\'':
            decoded = '\'';
            break;
          case '\\':
            decoded = '\\';
            break;
          default:
            break;
        }
        if (decoded != '\0') {
          out += decoded;
          c.advance(2);
          continue;
        }
      }
    }
    out += ch;
    c.advance();
  }
  return false;
}

}  // namespace

Result<DotenvValues> parse_dotenv(std::string_view text, std::string_view source) {
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  DotenvValues values;
  Cursor c(text);
  std::string value;
  auto malformed = [&](std::size_t line, std::string_view what) {
    secure_wipe(value);
    return fail(Errc::invalid_argument, fmt::format("{} line {}: {}", source, line, what));
  };
  constexpr std::string_view k_expected = "expected KEY=VALUE";

  while (!c.done()) {
    c.skip_blanks();
    if (c.at_eol() || c.peek() == '#') {
      c.skip_line();
      continue;
    }
    const std::size_t line = c.line();
    if (c.rest().starts_with("export") && is_blank(c.peek(6))) {
      c.advance(6);
      c.skip_blanks();
    }
    if (!is_key_start(c.peek())) return malformed(line, k_expected);
    std::string key;
    while (!c.done() && is_key_char(c.peek())) {
      key += c.peek();
      c.advance();
    }
    c.skip_blanks();
    if (c.peek() != '=') return malformed(line, k_expected);
    c.advance();
    const bool space_after_equals = is_blank(c.peek());
    c.skip_blanks();

    value.clear();
    if (c.peek() == '\'' || c.peek() == '"') {
      // One or more adjacent quoted parts (shell style), with \' between them
      // allowed the way a shell quotes a quote: 'it'\''s'.
      for (;;) {
        if (c.peek() == '\'' || c.peek() == '"') {
          if (!read_quoted(c, value)) return malformed(line, "the quoted value is not closed");
        } else if (c.peek() == '\\' && c.peek(1) == '\'') {
          value += '\'';
          c.advance(2);
        } else {
          break;
        }
      }
      c.skip_blanks();
      if (!c.at_eol() && c.peek() != '#')
        return malformed(c.line(), "unexpected text after the closing quote");
      c.skip_line();
    } else if (space_after_equals && c.peek() == '#') {
      c.skip_line();  // KEY= # comment: an empty value
    } else {
      while (!c.at_eol()) {
        if (c.peek() == '#' && !value.empty() && is_blank(value.back())) break;
        value += c.peek();
        c.advance();
      }
      while (!value.empty() && is_blank(value.back())) value.pop_back();
      c.skip_line();
    }
    values.insert_or_assign(std::move(key), Secret::adopt(std::move(value)));
    value = std::string();
  }
  return values;
}

Result<DotenvValues> read_dotenv_file(const std::string& path) {
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid())
    return fail(Errc::io, fmt::format("cannot read {}: {}", path, errno_text(errno)));
  std::string text;
  char chunk[8192];
  Result<DotenvValues> out = fail(Errc::internal, "unreachable");
  for (;;) {
    const ssize_t n = ::read(fd.get(), chunk, sizeof chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      out = fail(Errc::io, fmt::format("cannot read {}: {}", path, errno_text(errno)));
      break;
    }
    if (n == 0) {
      out = parse_dotenv(text, path);
      break;
    }
    text.append(chunk, static_cast<std::size_t>(n));
    if (text.size() > k_max_dotenv_bytes) {
      out = fail(Errc::invalid_argument,
                 fmt::format("{} is larger than 1 MiB; is it really a .env file?", path));
      break;
    }
  }
  secure_wipe(chunk, sizeof chunk);
  secure_wipe(text);
  return out;
}

}  // namespace tokend::ctl
