// Logout (revocation, RFC 7009, then the tokens forgotten) and tokenctl test.
#include "flow.hpp"

namespace tokend::login {

void LoginManager::logout(const std::string& name, JsonCallback done) {
  auto p = m_tokens.profile_of(name);
  if (!p) {
    done(std::unexpected(p.error()));
    return;
  }
  auto c = m_tokens.credential_of(name);
  if (!c) {
    done(std::unexpected(c.error()));
    return;
  }
  if (pending(name)) (void)cancel(name);
  auto forget = [this, name](bool revoked, const std::string& reason) -> Result<Json> {
    if (auto r = m_tokens.forget_tokens(name); !r) return std::unexpected(r.error());
    Json out = {{"profile", name}, {"revoked", revoked}};
    if (!reason.empty()) out["reason"] = reason;
    m_events.publish(tokens::EventKind::logged_out, name, to_unix_ms(m_clock.wall_now()),
                     {{"revoked", revoked}});
    return out;
  };
  if (p->kind != store::CredentialKind::oauth2) {
    done(forget(
        false,
        "API tokens and personal access tokens are revoked in the account settings of the site"));
    return;
  }
  const Secret& token = c->refresh_token.empty() ? c->access_token : c->refresh_token;
  const oauth::ProviderEndpoints ep = oauth::endpoints_of(*p);
  auto endpoint = oauth::token_endpoint_of(*p);
  if (token.empty()) {
    done(forget(false, "there was no token to revoke"));
    return;
  }
  if (ep.revocation_url.empty() || !endpoint) {
    done(forget(false, "the provider has no revocation endpoint"));
    return;
  }
  endpoint->token_url = ep.revocation_url;
  endpoint->resource.clear();
  endpoint->json_body = false;
  const oauth::TokenParams params = {
      {"token", token.reveal()},
      {"token_type_hint", c->refresh_token.empty() ? "access_token" : "refresh_token"}};
  auto alive = m_alive;
  m_requests.start(
      oauth::make_token_request(*endpoint, params, m_options.http_timeout),
      [alive, forget, url = ep.revocation_url,
       done = std::move(done)](Result<net::HttpResponse> res) {
        if (!*alive) return;
        if (!res) {
          done(forget(false, fmt::format("revocation at {} failed: {}", url, res.error().message)));
        } else if (res->status != 200) {
          done(forget(false, fmt::format("the revocation endpoint answered {}", res->status)));
        } else {
          done(forget(true, ""));
        }
      });
}

void LoginManager::test(const std::string& name, JsonCallback done) {
  auto p = m_tokens.profile_of(name);
  if (!p) {
    done(std::unexpected(p.error()));
    return;
  }
  const oauth::ProviderEndpoints ep = oauth::endpoints_of(*p);
  std::string url;
  std::string what;
  if (p->kind != store::CredentialKind::oauth2) {
    std::string site = p->config.site;
    while (!site.empty() && site.back() == '/') site.pop_back();
    url = site + "/rest/api/2/myself";
    what = "myself";
  } else if (p->provider == "atlassian") {
    url = oauth::accessible_resources_url(ep.api_base);
    what = "resources";
  } else if (!ep.userinfo_url.empty()) {
    url = ep.userinfo_url;
    what = "userinfo";
  } else {
    done(fail(
        Errc::invalid_argument,
        fmt::format(
            "profile '{}' has no userinfo endpoint to test against; set one with tokenctl add {} "
            "--userinfo-url URL",
            name, name)));
    return;
  }
  auto alive = m_alive;
  m_tokens.token_async(
      name, tokens::TokenRequest{10},
      [this, alive, name, url, what,
       done = std::move(done)](Result<tokens::TokenGrant> grant) mutable {
        if (!*alive) return;
        if (!grant) {
          done(std::unexpected(grant.error()));
          return;
        }
        net::HttpRequest r;
        r.url = url;
        r.timeout = m_options.http_timeout;
        r.headers = {{"Accept", "application/json"},
                     {"Authorization", std::string(grant->authorization())}};
        m_requests.start(std::move(r), [alive, name, url, what,
                                        done = std::move(done)](Result<net::HttpResponse> res) {
          if (!*alive) return;
          if (!res) {
            done(fail(Errc::transient,
                      fmt::format("{} could not be reached: {}", url, res.error().message)));
            return;
          }
          Json out = {
              {"profile", name}, {"ok", res->status < 400}, {"status", res->status}, {"url", url}};
          auto j = json::parse(res->body.reveal(), "the answer");
          std::string summary;
          if (j && res->status < 400) {
            auto sites =
                what == "resources" ? oauth::sites_of(*j) : std::vector<oauth::AtlassianSite>{};
            if (what == "resources" && sites) {
              summary = fmt::format("{} site{}: {}", sites->size(), sites->size() == 1 ? "" : "s",
                                    oauth::describe_sites(*sites));
            } else if (what == "myself") {
              summary = fmt::format("signed in as {} {}", json::string_or(*j, "displayName"),
                                    json::string_or(*j, "emailAddress"));
            } else {
              std::vector<std::string> parts;
              for (const char* k : {"name", "email", "preferred_username", "sub"}) {
                if (!json::string_or(*j, k).empty())
                  parts.push_back(fmt::format("{}={}", k, json::string_or(*j, k)));
              }
              summary = parts.empty() ? "answered" : join(parts, " ");
            }
            out["body"] = *j;
          } else {
            const auto err = oauth::oauth_error_of(*res);
            summary =
                fmt::format("HTTP {}{}", res->status, err.error.empty() ? "" : " " + err.error);
          }
          out["summary"] = oauth::printable_excerpt(summary, 400);
          done(out);
        });
      });
}

}  // namespace tokend::login
