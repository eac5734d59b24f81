// A stand-in endpoint's request checks and URL layout: every header value and
// path is a local stranger's. Whatever passes the checks must carry the
// stand-in and name the endpoint in Host; whatever path maps to a proxy path
// must, through upstream_url, stay on the profile's host, under its base.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.hpp"
#include "gateway/endpoint.hpp"
#include "gateway/mirror.hpp"
#include "net/url.hpp"
#include "proxy/route.hpp"

using namespace tokend;

namespace {

constexpr std::uint16_t k_port = 40123;

struct Target {
  std::string_view host;
  std::string_view base;
};
constexpr Target k_targets[] = {{"api.atlassian.com", "/ex/"},
                                {"example.atlassian.net", "/"},
                                {"jira.example.com", "/jira/"},
                                {"api.example.com", "/v2/"}};

store::Profile profile_of(std::uint8_t which) {
  store::Profile p;
  p.name = "fuzz";
  switch (which % 4) {
    case 0:
      p.kind = store::CredentialKind::oauth2;
      p.provider = "atlassian";
      p.config = {{"api_base", "https://api.atlassian.com"},
                  {"cloud_id", "11111111-2222-3333-4444-555555555555"}};
      break;
    case 1:
      p.kind = store::CredentialKind::api_token;
      p.config = {{"site", "https://example.atlassian.net"}, {"email", "me@example.com"}};
      break;
    case 2:
      p.kind = store::CredentialKind::pat;
      p.config = {{"site", "https://jira.example.com/jira"}};
      break;
    default:
      p.kind = store::CredentialKind::oauth2;
      p.provider = "generic";
      p.config = {{"api_base", "https://api.example.com/v2"}};
      break;
  }
  return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const Secret standin("c3RhbmQtaW4tZm9yLXRoZS1mdXp6ZXI");
  fuzz::Input in(data, size);
  const auto which = in.byte();
  ipc::Request req;
  req.method = "GET";
  for (const char* name : {"Host", "Origin", "Sec-Fetch-Site", "Authorization"}) {
    const auto value = in.line();
    if (!value.empty()) req.headers.emplace_back(name, std::string(value));
  }
  req.path = std::string(in.rest());
  if (!gateway::check_standin_request(req, k_port, standin)) {
    const auto host = req.header("host");
    const auto auth = req.header("authorization");
    if (!host || host->find(":40123") == std::string_view::npos || !auth) std::abort();
  }
  const auto profile = profile_of(which);
  const auto rest = gateway::mirrored_rest(profile, req.path);
  if (!rest) return 0;
  const auto url = proxy::upstream_url(profile, *rest, "");
  if (!url) return 0;
  const auto parsed = net::parse_url(*url, "upstream");
  const auto& target = k_targets[which % 4];
  if (!parsed || parsed->scheme != "https" || parsed->host != target.host ||
      !parsed->path.starts_with(target.base)) {
    std::abort();
  }
  return 0;
}
