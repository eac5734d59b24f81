// URL parsing with libcurl's URL API (RFC 3986 as curl understands it), for
// the places that must take a URL apart: redirect URIs, discovery paths,
// callback URLs pasted by a person.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace tokend::net {

struct Url {
  std::string scheme;      // lower case
  std::string host;        // as written; IPv6 with its brackets ("[::1]")
  std::uint16_t port = 0;  // explicit or the scheme's default
  bool explicit_port = false;
  std::string path;   // "/" when empty; still percent-encoded
  std::string query;  // without '?'; still percent-encoded

  // scheme://host[:port] (the port only when explicit)
  [[nodiscard]] std::string origin() const;
};

// Only http and https URLs; Errc::invalid_argument naming `what` otherwise.
Result<Url> parse_url(std::string_view url, std::string_view what);

// scheme://host:port with the host lower-cased and the port explicit, for
// comparing sites ("https://Acme.atlassian.net/" == "https://acme.atlassian.net:443").
// An unparsable URL is returned as given.
std::string origin_key(std::string_view url);

// 127.0.0.0/8 as a dotted quad, [::1] (any spelling of it) and localhost;
// parsed as addresses, so "127.0.0.1." (a DNS name) is not loopback.
bool is_loopback_host(std::string_view host);

}  // namespace tokend::net
