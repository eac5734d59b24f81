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
#include "route_profiles.hpp"

using namespace tokend;

namespace {

constexpr std::uint16_t k_port = 40123;

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
  const auto profile = fuzz::route_profile(which);
  const auto rest = gateway::mirrored_rest(profile, req.path);
  if (!rest) return 0;
  const auto url = proxy::upstream_url(profile, *rest, "");
  if (!url) return 0;
  const auto parsed = net::parse_url(*url, "upstream");
  const auto& target = fuzz::k_route_targets[which % 4];
  if (!parsed || parsed->scheme != "https" || parsed->host != target.host ||
      !parsed->path.starts_with(target.base)) {
    std::abort();
  }
  return 0;
}
