// The proxy's routing: a caller's path and query become an upstream URL for
// each credential kind, and the policy is judged on them. Whatever URL comes
// out must stay on the profile's host, under its base.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.hpp"
#include "net/url.hpp"
#include "proxy/route.hpp"
#include "route_profiles.hpp"

using namespace tokend;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const auto which = in.byte();
  const auto profile = fuzz::route_profile(which);
  const auto& target = fuzz::k_route_targets[which % 4];
  const auto method = in.line();
  const auto query = in.line();
  const auto rest = in.rest();
  const auto url = proxy::upstream_url(profile, rest, query);
  if (url) {
    const auto parsed = net::parse_url(*url, "upstream");
    if (!parsed) std::abort();  // we built it: it must parse
    // No open proxy: the profile's host, under its base path.
    if (parsed->scheme != "https" || parsed->host != target.host ||
        !parsed->path.starts_with(target.base))
      std::abort();
  }
  // The policy is judged on every name the upstream path can have.
  auto with_policy = profile;
  store::ProxyPolicy policy;
  policy.read_only = false;
  policy.allow = std::vector<std::string>{"jira/rest/api/3/issue", "confluence/wiki/spaces/DOC"};
  policy.deny = std::vector<std::string>{"confluence", "jira/rest/api/3/user"};
  with_policy.config.policy = std::move(policy);
  (void)proxy::policy_paths(with_policy, rest);
  (void)proxy::check_policy(with_policy, method, rest);
  return 0;
}
