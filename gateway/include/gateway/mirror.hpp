// The URL layout of a stand-in endpoint (tokenctl exec --endpoint), as pure
// functions: the endpoint answers on the upstream's own paths,
// so a command that builds its URLs from a base URL keeps working when that
// base is the endpoint instead of the upstream.
//
//   Atlassian Cloud OAuth (3LO)  /ex/jira/{cloudId}/...  /ex/confluence/{cloudId}/...
//                                (api.atlassian.com's layout; the default base is the root)
//   API token, PAT, atlassian-dc the site's paths: /rest/... for Jira, /wiki/... for
//                                Confluence Cloud, the context path for Data Center
//                                (https://corp.example/jira -> /jira/...)
//   generic OAuth                the api_base's path (https://api.example/v2 -> /v2/...)
//
// A product whose base lies on another host than the site (Data Center with
// separate Jira and Confluence hosts) is mirrored under /{product} plus its
// base's path.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "store/types.hpp"

namespace tokend::gateway {

struct MirrorLayout {
  // The path under the endpoint's origin that stands for the profile's
  // upstream as a whole: "" (the root) or "/path" without a trailing slash.
  std::string base;
  // The same per product the profile reaches ("jira", "confluence"); empty
  // for generic profiles. Paths are mapped by the longest of these.
  std::map<std::string, std::string, std::less<>> products;
  // The base a command is given per product, where clients expect it: like
  // a Cloud CONFLUENCE_URL, Confluence's ends in /wiki (3LO:
  // /ex/confluence/{cloudId}/wiki); otherwise the same as `products`.
  std::map<std::string, std::string, std::less<>> urls;
};

// Errc::config when the profile lacks what the layout needs (a cloud id, a
// site, an api_base), with the command that fixes it.
Result<MirrorLayout> mirror_layout(const store::Profile& profile);

// The proxy path (what follows /v1/proxy/{profile}/, see upstream_url) for a
// decoded request path on the endpoint. Errc::not_found for a path outside
// the layout, naming the paths the endpoint serves; Errc::config as above.
// The result is checked by upstream_url and the policy like any proxy path.
Result<std::string> mirrored_rest(const store::Profile& profile, std::string_view path);

}  // namespace tokend::gateway
