// Where a proxied call goes and whether it may go there, as pure
// functions: the upstream URL from the profile and the caller's path, header
// filtering both ways, the profile's policy, and a rate limiter on an
// injected clock.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "store/types.hpp"

namespace tokend::proxy {

using Headers = std::vector<std::pair<std::string, std::string>>;

// `rest`: the decoded path after /v1/proxy/{profile}/ ("jira/rest/api/3/myself");
// `raw_query`: the caller's query string, passed through unchanged.
// Errc::invalid_argument for anything that could escape the profile's hosts
// (dot segments, "//", backslashes, control characters, a query that is not
// plain); Errc::config when the profile lacks what the route needs.
Result<std::string> upstream_url(const store::Profile& profile, std::string_view rest,
                                 std::string_view raw_query);

// Where jira/... or confluence/... goes for a profile that reaches the site
// itself (API token, PAT, atlassian-dc OAuth): the product's configured base
// (jira_base, confluence_base), else the site (Confluence Cloud under
// /wiki). Errc::config without a site.
Result<std::string> site_base(const store::Profile& profile, std::string_view product);

// Whether the Atlassian cloud id is needed (and missing) for this call.
bool needs_cloud_id(const store::Profile& profile, std::string_view rest);

// The caller's headers minus Authorization, Cookie, Host, Proxy-*, hop-by-hop
// and X-Tokend-*; Errc::invalid_argument on CR, LF or NUL anywhere.
Result<Headers> request_headers(const Headers& in);
// Upstream headers minus hop-by-hop ones, Set-Cookie and X-Tokend-* (tokend's own).
Headers response_headers(const Headers& in);

// The names the profile's policy judges a call by, one list per reading of
// the path: as given, and without ";params" (what Tomcat-based Jira and
// Confluence route by). Each list holds every jira/... and confluence/...
// name of the upstream URL the reading reaches (for API tokens and PATs one
// URL can have both: "jira/wiki/x" is "confluence/x" on Confluence Cloud).
// Errc::invalid_argument for dot segments, path parameters included ("..;").
Result<std::vector<std::vector<std::string>>> policy_paths(const store::Profile& profile,
                                                           std::string_view rest);

// Errc::permission naming the rule when the profile's policy (config
// "policy") refuses the call: denied when any name of any reading matches a
// deny prefix; with allow prefixes, every reading needs a name under one.
Result<> check_policy(const store::Profile& profile, std::string_view method,
                      std::string_view rest);
Result<> check_policy(const store::ProxyPolicy& policy, std::string_view method,
                      const std::vector<std::vector<std::string>>& readings);

// A token bucket per profile: `rate_per_minute` calls, bursts up to that many.
class RateLimiter {
 public:
  // nullopt: allowed now; else how long until the next call would be.
  std::optional<Millis> take(double rate_per_minute, MonoTime now);

 private:
  double m_tokens = -1;
  MonoTime m_last{};
};

}  // namespace tokend::proxy
