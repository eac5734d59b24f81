// Discovery documents from hostile servers: RFC 8414 / OIDC authorization
// server metadata and RFC 9728 protected-resource metadata. The first input
// line picks what the document is checked against; the rest is the document.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.hpp"
#include "net/url.hpp"
#include "oauth/discovery.hpp"

using namespace tokend;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto which = in.byte();
  const std::string expected =
      (which & 1) != 0 ? "https://as.example.com/tenant" : "http://127.0.0.1:8080";
  const auto doc = json::parse(in.rest(), "metadata");
  if (!doc) return 0;
  if ((which & 2) != 0) {
    if (const auto as = oauth::check_server_metadata(*doc, expected); as) {
      // Whatever is accepted names the expected issuer (a trailing '/' aside,
      // which tokend tolerates on purpose: issuers are written both ways).
      auto bare = [](std::string_view v) {
        return v.ends_with('/') ? v.substr(0, v.size() - 1) : v;
      };
      if (bare(as->issuer) != bare(expected)) std::abort();
    }
  } else if (const auto pr = oauth::check_resource_metadata(*doc, expected); pr) {
    if (!oauth::same_resource(pr->resource, expected)) std::abort();
    for (const auto& server : pr->authorization_servers) (void)oauth::metadata_urls(server);
  }
  return 0;
}
