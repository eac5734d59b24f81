// Text put into an HTML page: the five characters that could end an element
// or an attribute value, escaped. The login's "you can close this tab" page
// and the connect page's callback both use it.
#pragma once

#include <string>
#include <string_view>

namespace tokend {

inline std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace tokend
