#include "oauth/atlassian.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "core/json.hpp"
#include "net/url.hpp"
#include "oauth/protocol.hpp"

namespace tokend::oauth {

namespace {

// Cloud ids are UUIDs; anything that could change the URL they go into is refused.
bool usable_cloud_id(std::string_view id) {
  return !id.empty() && id.size() <= 64 && std::ranges::all_of(id, [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
  });
}

}  // namespace

std::string accessible_resources_url(std::string_view api_base) {
  std::string url(api_base);
  while (!url.empty() && url.back() == '/') url.pop_back();
  return url + "/oauth/token/accessible-resources";
}

Result<std::vector<AtlassianSite>> parse_accessible_resources(std::string_view body) {
  auto list = json::parse(body, "accessible resources");
  if (!list) return std::unexpected(list.error());
  return sites_of(*list);
}

Result<std::vector<AtlassianSite>> sites_of(const json::Json& list) {
  if (!list.is_array()) {
    return std::unexpected(Error{Errc::transient, "the accessible resources are not a JSON list"});
  }
  std::vector<AtlassianSite> sites;
  for (const auto& entry : list) {
    if (!entry.is_object()) continue;
    AtlassianSite site{json::string_or(entry, "id"), json::string_or(entry, "url"),
                       json::string_or(entry, "name")};
    if (!usable_cloud_id(site.id) || site.url.empty()) continue;
    sites.push_back(std::move(site));
  }
  return sites;
}

SiteChoice choose_site(const std::vector<AtlassianSite>& sites, std::string_view configured_site) {
  if (!configured_site.empty()) {
    const std::string wanted = net::origin_key(configured_site);
    for (const auto& site : sites) {
      if (net::origin_key(site.url) == wanted) return {site, SiteProblem::none};
    }
    return {std::nullopt, SiteProblem::not_reachable};
  }
  if (sites.size() == 1) return {sites.front(), SiteProblem::none};
  return {std::nullopt, sites.empty() ? SiteProblem::no_site : SiteProblem::ambiguous};
}

std::string describe_sites(const std::vector<AtlassianSite>& sites) {
  if (sites.empty()) return "none";
  std::string out;
  for (const auto& site : sites) {
    if (!out.empty()) out += ", ";
    out +=
        fmt::format("{} ({})", printable_excerpt(site.name, 100), printable_excerpt(site.url, 200));
  }
  return out;
}

}  // namespace tokend::oauth
