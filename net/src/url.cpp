#include "net/url.hpp"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <fmt/format.h>
#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <memory>

#include "core/encoding.hpp"

namespace tokend::net {

namespace {

struct UrlDeleter {
  void operator()(CURLU* u) const noexcept { curl_url_cleanup(u); }
};

// A part of a parsed URL; empty when absent.
std::string part(CURLU* u, CURLUPart which, unsigned flags = 0) {
  char* out = nullptr;
  if (curl_url_get(u, which, &out, flags) != CURLUE_OK || out == nullptr) return {};
  std::string s(out);
  curl_free(out);
  return s;
}

}  // namespace

std::string Url::origin() const {
  return explicit_port ? fmt::format("{}://{}:{}", scheme, host, port)
                       : fmt::format("{}://{}", scheme, host);
}

std::string origin_key(std::string_view text) {
  auto u = parse_url(text, "site");
  if (!u) return std::string(text);
  return fmt::format("{}://{}:{}", u->scheme, ascii_lower(u->host), u->port);
}

bool is_loopback_host(std::string_view host) {
  // Parsed, not matched as text: "127.0.0.1." or "127.evil.example" are
  // names that go through DNS, not loopback addresses.
  if (host.size() > 64) return false;
  if (host.starts_with('[') && host.ends_with(']')) {
    const std::string inner(host.substr(1, host.size() - 2));
    in6_addr a{};
    return ::inet_pton(AF_INET6, inner.c_str(), &a) == 1 && IN6_IS_ADDR_LOOPBACK(&a);
  }
  const std::string lowered = ascii_lower(host);
  if (lowered == "localhost") return true;
  in_addr a{};
  return ::inet_pton(AF_INET, lowered.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

Result<Url> parse_url(std::string_view text, std::string_view what) {
  if (text.size() > 8192) return fail(Errc::invalid_argument, fmt::format("{} is too long", what));
  std::unique_ptr<CURLU, UrlDeleter> u(curl_url());
  if (!u) return fail(Errc::internal, "curl_url failed");
  const std::string s(text);
  if (curl_url_set(u.get(), CURLUPART_URL, s.c_str(), 0) != CURLUE_OK) {
    return fail(Errc::invalid_argument, fmt::format("{} is not a valid URL", what));
  }
  Url url;
  url.scheme = ascii_lower(part(u.get(), CURLUPART_SCHEME));
  if (url.scheme != "http" && url.scheme != "https") {
    return fail(Errc::invalid_argument, fmt::format("{} must be an http or https URL", what));
  }
  if (!part(u.get(), CURLUPART_USER).empty()) {
    return fail(Errc::invalid_argument,
                fmt::format("{} must not contain credentials (user@host)", what));
  }
  url.host = part(u.get(), CURLUPART_HOST);
  if (url.host.empty()) return fail(Errc::invalid_argument, fmt::format("{} has no host", what));
  const std::string explicit_port = part(u.get(), CURLUPART_PORT);
  const std::string port =
      explicit_port.empty() ? part(u.get(), CURLUPART_PORT, CURLU_DEFAULT_PORT) : explicit_port;
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc{} || end != port.data() + port.size() || value == 0 || value > 65535) {
    return fail(Errc::invalid_argument, fmt::format("{} has an invalid port", what));
  }
  url.port = static_cast<std::uint16_t>(value);
  url.explicit_port = !explicit_port.empty();
  // (Assigning a literal to a fresh string trips GCC 12's -Wrestrict false
  // positive; constructing it does not.)
  std::string path = part(u.get(), CURLUPART_PATH);
  url.path = path.empty() ? std::string(1, '/') : std::move(path);
  url.query = part(u.get(), CURLUPART_QUERY);
  return url;
}

}  // namespace tokend::net
