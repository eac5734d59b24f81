// A token set arriving from either grant: stored, then the Atlassian site.
#include "flow.hpp"

namespace tokend::login {

namespace {

// After a login without a refresh token: what was asked, what was granted,
// and what to try.
std::string no_refresh_token_warning(const LoginManager::Flow& f, const store::TokenSet& tokens,
                                     const std::vector<std::string>& asked,
                                     const store::Profile& p) {
  const bool offline = contains(asked, "offline_access");
  const std::string asked_text = asked.empty() ? "no scope" : "scope \"" + join(asked, " ") + "\"";
  const std::string granted =
      tokens.scope.empty() ? "the provider did not say which scopes it granted"
                           : "it granted \"" + oauth::printable_excerpt(tokens.scope, 300) + "\"";
  std::string out = fmt::format(
      "the provider issued no refresh token, so this login must be repeated when the token "
      "expires; tokend asked for {}{} and {}. ",
      asked_text,
      p.config.prompt.empty() ? (offline ? " with prompt=consent" : "")
                              : " with prompt=" + p.config.prompt,
      granted);
  if (!offline) {
    out += fmt::format(
        "Most OIDC servers issue one only for the offline_access scope: tokenctl add {} ... "
        "--scopes "
        "\"{}{}offline_access\"",
        f.profile, join(asked, " "), asked.empty() ? "" : " ");
  } else {
    out +=
        "offline_access was asked for but not honoured: check that the client may use the "
        "refresh_token grant at "
        "the provider; Google needs --authorize-param access_type=offline";
  }
  if (p.provider == "mcp")
    out += "; the MCP server's authorization server may not issue refresh tokens at all";
  return out;
}

}  // namespace

void LoginManager::on_tokens(Flow& f, const store::TokenSet& tokens) {
  if (tokens.refresh_token.empty())
    f.warning = no_refresh_token_warning(f, tokens, f.asked_scopes, f.resolved);
  if (auto r = m_tokens.install_tokens(f.profile, tokens); !r) {
    fail_flow(f, FlowState::failed, "store",
              "the new token could not be stored: " + r.error().message);
    return;
  }
  // The consent asked for is given: a later insufficient_scope starts over.
  if (auto current = m_tokens.profile_of(f.profile);
      current && !current->config.step_up_scopes.empty() &&
      current->config.step_up_scopes == f.asked_scopes) {
    current->config.step_up_scopes.clear();
    if (auto r = m_tokens.update_profile(*current); !r)
      f.warning = "the step-up scopes were not cleared: " + r.error().message;
  }
  f.token_expires_at_ms = tokens.expires_at_ms;
  f.phase = Flow::Phase::finishing;
  if (f.resolved.provider == "atlassian") {
    pick_cloud(f);
    return;
  }
  succeed(f);
}

void LoginManager::pick_cloud(Flow& f) {
  const std::string name = f.profile;
  const std::uint64_t id = f.id;
  auto grant = m_tokens.token(name, tokens::TokenRequest{0});
  if (!grant) {
    succeed(f);
    return;
  }
  const std::string url = oauth::accessible_resources_url(oauth::endpoints_of(f.resolved).api_base);
  fetch_json(url,
             [this, name, id, url](Result<Json> j, const net::HttpResponse*) {
               Flow* fp = find(name, id);
               if (fp == nullptr || fp->state != FlowState::pending) return;  // cancelled meanwhile
               Flow& fl = *fp;
               auto sites = j ? oauth::sites_of(*j) : std::unexpected(j.error());
               if (!sites) {
                 fl.warning = fmt::format(
                     "the cloud id could not be looked up ({}); it is looked up again when needed",
                     sites.error().message);
                 succeed(fl);
                 return;
               }
               const auto site_json = [](const oauth::AtlassianSite& s) {
                 return Json{{"id", s.id}, {"url", s.url}, {"name", s.name}};
               };
               const std::string site = fl.resolved.config.site;
               const oauth::SiteChoice choice = oauth::choose_site(*sites, site);
               if (choice.problem != oauth::SiteProblem::none) {
                 Json listed = Json::array();
                 for (const auto& s : *sites) listed.push_back(site_json(s));
                 fl.extra["sites"] = std::move(listed);
               }
               switch (choice.problem) {
                 case oauth::SiteProblem::none:
                   break;
                 case oauth::SiteProblem::not_reachable:
                   fail_flow(fl, FlowState::failed, "site",
                             fmt::format("the token was stored, but the configured site {} is not "
                                         "among the sites it can reach: {}; "
                                         "fix the profile's --site (tokenctl add {} ... --site "
                                         "URL) and run tokenctl login {} again",
                                         site, oauth::describe_sites(*sites), name, name));
                   return;
                 case oauth::SiteProblem::no_site:
                   fail_flow(fl, FlowState::failed, "site",
                             "the token was stored, but it reaches no Atlassian site; check the "
                             "app's permissions and the sites "
                             "you granted");
                   return;
                 case oauth::SiteProblem::ambiguous:
                   fail_flow(fl, FlowState::failed, "site",
                             fmt::format("the token was stored, but it reaches several sites: {}; "
                                         "choose one by adding --site URL "
                                         "to the profile (tokenctl add {} ... --site URL) and run "
                                         "tokenctl login {} again",
                                         oauth::describe_sites(*sites), name, name));
                   return;
               }
               const oauth::AtlassianSite& chosen = *choice.site;
               auto profile = m_tokens.profile_of(name);
               if (profile) {
                 profile->config.cloud_id = chosen.id;
                 profile->config.cloud_url = chosen.url;
                 if (auto r = m_tokens.update_profile(*profile); !r)
                   fl.warning = "the cloud id was not stored: " + r.error().message;
               }
               fl.extra["cloud_id"] = chosen.id;
               fl.extra["cloud_url"] = chosen.url;
               succeed(fl);
             },
             {{"Authorization", std::string(grant->authorization())}});
}

}  // namespace tokend::login
