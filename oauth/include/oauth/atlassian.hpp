// Atlassian specifics: which site (cloud) a 3LO token is used for.
//
// A 3LO token reaches every site the user granted; API calls go to
// https://api.atlassian.com/ex/{jira|confluence}/{cloud id}/..., so the
// profile needs the cloud id of one site. Login and the proxy (for profiles
// imported without one) both choose it here, the same way.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"

namespace tokend::oauth {

struct AtlassianSite {
  std::string id;    // the cloud id, checked to be URL-safe
  std::string url;   // https://example.atlassian.net
  std::string name;  // "example"
};

// GET {api_base}/oauth/token/accessible-resources.
std::string accessible_resources_url(std::string_view api_base);

// The answer of accessible-resources. Entries without a usable id or url are
// skipped; an answer that is not a JSON list is an error (never quoted).
Result<std::vector<AtlassianSite>> parse_accessible_resources(std::string_view body);
Result<std::vector<AtlassianSite>> sites_of(const json::Json& list);

enum class SiteProblem {
  none,
  not_reachable,  // a site is configured, and the token does not reach it
  ambiguous,      // no site configured, and the token reaches several
  no_site,        // the token reaches no site at all
};

struct SiteChoice {
  std::optional<AtlassianSite> site;  // set when problem is none
  SiteProblem problem = SiteProblem::none;
};

// The configured site (compared by origin) or else the only one.
SiteChoice choose_site(const std::vector<AtlassianSite>& sites, std::string_view configured_site);

// "name (url), name (url)" for messages; "none" for an empty list.
std::string describe_sites(const std::vector<AtlassianSite>& sites);

}  // namespace tokend::oauth
