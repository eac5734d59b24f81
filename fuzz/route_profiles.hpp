// One profile for each way the proxy builds an upstream URL (Atlassian
// OAuth, Atlassian Cloud API token, Data Center PAT, a generic OAuth API),
// with the host and path prefix every URL built for it must keep. The targets
// that route a stranger's path through proxy::upstream_url check against them.
#pragma once

#include <cstdint>
#include <string_view>

#include "store/types.hpp"

namespace tokend::fuzz {

struct RouteTarget {
  std::string_view host;
  std::string_view base;  // every upstream path starts with it
};
inline constexpr RouteTarget k_route_targets[] = {{"api.atlassian.com", "/ex/"},
                                                  {"example.atlassian.net", "/"},
                                                  {"jira.example.com", "/jira/"},
                                                  {"api.example.com", "/v2/"}};

// The profile whose URLs k_route_targets[which % 4] describes.
inline store::Profile route_profile(std::uint8_t which) {
  store::Profile p;
  p.name = "fuzz";
  switch (which % 4) {
    case 0:
      p.kind = store::CredentialKind::oauth2;
      p.provider = "atlassian";
      p.config.api_base = "https://api.atlassian.com";
      p.config.cloud_id = "11111111-2222-3333-4444-555555555555";
      break;
    case 1:
      p.kind = store::CredentialKind::api_token;
      p.config.site = "https://example.atlassian.net";
      p.config.email = "me@example.com";
      break;
    case 2:
      p.kind = store::CredentialKind::pat;
      p.config.site = "https://jira.example.com/jira";
      break;
    default:
      p.kind = store::CredentialKind::oauth2;
      p.provider = "generic";
      p.config.api_base = "https://api.example.com/v2";
      break;
  }
  return p;
}

}  // namespace tokend::fuzz
