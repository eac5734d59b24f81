// Resolving a provider before a flow: discovery, the MCP server's metadata, and
// the client (pre-registered, client ID metadata document, dynamic registration).
#include "flow.hpp"

namespace tokend::login {

// --- resolving: discovery and registration ------------------------------------

// Tries `urls` in order: the first JSON answer wins, and an answer with one
// of the `skip` statuses moves on to the next URL. A loop over callbacks
// through a member function, not a self-capturing std::function.
void LoginManager::fetch_first_json(std::shared_ptr<UrlTrial> trial, std::vector<int> skip,
                                    TrialDone done) {
  if (trial->next >= trial->urls.size()) {
    done(std::nullopt, trial->tried);
    return;
  }
  const std::string url = trial->urls[trial->next++];
  trial->tried.push_back(url);
  fetch_json(url, [this, trial, skip = std::move(skip), done = std::move(done)](
                      Result<Json> j, const net::HttpResponse* res) mutable {
    if (!j && res != nullptr && std::ranges::find(skip, res->status) != skip.end()) {
      fetch_first_json(std::move(trial), std::move(skip), std::move(done));
      return;
    }
    done(std::move(j), trial->tried);
  });
}

// What the resolver found goes into the profile as it is now, not as it was
// when the login started: only the settings the resolver owns (`what`) are
// written, and nothing at all when the profile was changed meanwhile so that
// the discovery no longer applies (a PUT wins; the login stops).
Result<> LoginManager::store_resolved(const store::Profile& found, Resolved what,
                                      const std::string* replaces_client_id) {
  auto current = m_tokens.profile_of(found.name);
  if (!current) return std::unexpected(current.error());
  store::ProfileConfig& to = current->config;
  const store::ProfileConfig& from = found.config;
  const bool client_changed = !from.client_registered && to.client_id != from.client_id;
  if (current->kind != found.kind || current->provider != found.provider ||
      to.issuer != from.issuer || to.mcp_server != from.mcp_server ||
      to.authorization_server != from.authorization_server ||
      (client_changed && !to.client_id.empty() &&
       (replaces_client_id == nullptr || to.client_id != *replaces_client_id))) {
    return fail(Errc::conflict, fmt::format("profile '{}' was changed while its login was starting "
                                            "(provider, issuer, MCP server or "
                                            "client id); nothing found for the old settings was "
                                            "stored — run tokenctl login {} again",
                                            found.name, found.name));
  }
  if (what == Resolved::discovery) {
    to.discovered = from.discovered;
  } else {
    to.client_id = from.client_id;
    to.client_registered = from.client_registered;
    to.client_registered_for = from.client_registered_for;
    to.token_endpoint_auth = from.token_endpoint_auth;
    current->client_secret = found.client_secret;
    if (what == Resolved::registered_client) {
      to.redirect_uri = from.redirect_uri;
      to.client_id_metadata_document = from.client_id_metadata_document;
    }
  }
  return m_tokens.update_profile(*current);
}

// A client ID metadata document: fetched before the flow starts; its
// client_id must be its own URL and its redirect_uris must hold the one this
// login uses.
void LoginManager::check_metadata_document(
    const std::shared_ptr<store::Profile>& profile,
    const std::function<void(Result<store::Profile>)>& next) {
  const std::string url = profile->config.client_id;
  std::string redirect = profile->config.redirect_uri;
  if (redirect.empty()) redirect = std::string(k_default_redirect_uri);
  fetch_json(url, [profile, next, url, redirect](Result<Json> j, const net::HttpResponse*) {
    if (!j) {
      next(fail(
          Errc::invalid_argument,
          fmt::format("the client ID metadata document could not be read: {}", j.error().message)));
      return;
    }
    if (!j->is_object() || json::string_or(*j, "client_id") != url) {
      next(fail(Errc::invalid_argument, fmt::format("the client ID metadata document {} must be a "
                                                    "JSON object whose client_id is its own URL",
                                                    url)));
      return;
    }
    const auto uris = list_of(*j, "redirect_uris");
    if (!contains(uris, redirect)) {
      std::vector<std::string> shown;
      for (const auto& u : uris) shown.push_back(oauth::printable_excerpt(u, 200));
      next(fail(
          Errc::invalid_argument,
          fmt::format("the redirect URI {} is not listed in the client ID metadata document {}; it "
                      "allows {}. "
                      "Use one of them: tokenctl add {} ... --redirect-uri URI",
                      redirect, url, shown.empty() ? "none" : join(shown, ", "), profile->name)));
      return;
    }
    const std::string method = json::string_or(*j, "token_endpoint_auth_method", "none");
    if (method != "none") {
      next(fail(Errc::invalid_argument,
                fmt::format("the client ID metadata document {} asks for "
                            "token_endpoint_auth_method {}; tokend can "
                            "use such a document only as a public client (none)",
                            url, oauth::printable_excerpt(method, 64))));
      return;
    }
    profile->config.token_endpoint_auth = store::ClientAuthMethod::none;
    profile->config.redirect_uri = redirect;
    next(*profile);
  });
}

void LoginManager::resolve(const std::string& name,
                           const std::function<void(Result<store::Profile>)>& next) {
  auto p = m_tokens.profile_of(name);
  if (!p) {
    next(std::unexpected(p.error()));
    return;
  }
  if (p->kind != store::CredentialKind::oauth2) {
    next(fail(
        Errc::invalid_argument,
        fmt::format(
            "profile '{}' holds a static {}; there is nothing to log in to (replace it with "
            "tokenctl add)",
            name, p->kind == store::CredentialKind::pat ? "personal access token" : "API token")));
    return;
  }
  const std::string mcp_server = p->config.mcp_server;
  const std::string issuer = p->config.issuer;
  const std::string wanted_as = p->config.authorization_server;
  // What discovery found for this issuer is still there.
  const bool fresh = p->config.discovered && p->config.discovered->issuer == issuer &&
                     !p->config.discovered->token_endpoint.empty();
  auto profile = std::make_shared<store::Profile>(std::move(*p));
  auto alive = m_alive;

  // Step 3: dynamic client registration when there is no client id.
  // The order of choice (MCP 2026-07-28): a pre-registered client id, then a
  // client ID metadata document where the server supports it, then DCR.
  auto register_client = [this, alive, name, profile, next]() {
    const oauth::ProviderEndpoints ep = oauth::endpoints_of(*profile);
    store::ProfileConfig& config = profile->config;
    const bool documents_supported =
        config.discovered && config.discovered->client_id_metadata_document_supported;
    if (config.client_registered && config.client_registered_for.value_or("") != ep.issuer) {
      // Registrations are keyed by the authorization server's issuer: a
      // client registered with another one means nothing here.
      spdlog::info(
          "profile {}: the authorization server changed (client registered with {}, now {}); "
          "registering again",
          name, config.client_registered_for.value_or("an unknown issuer"), ep.issuer);
      config.client_id.clear();
      config.client_registered = false;
      config.client_registered_for.reset();
      config.token_endpoint_auth.reset();
      profile->client_secret = Secret();
    }
    const std::string configured_id = config.client_id;
    if (is_client_id_metadata_url(configured_id)) {
      if (documents_supported) {
        check_metadata_document(profile, next);
        return;
      }
      if (ep.registration_url.empty()) {
        next(fail(
            Errc::invalid_argument,
            fmt::format(
                "profile '{}' uses the client ID metadata document {}, but the authorization "
                "server {} "
                "does not advertise client_id_metadata_document_supported and offers no dynamic "
                "registration; use a client id registered there (tokenctl add {} --client-id ID)",
                name, configured_id, ep.issuer.empty() ? "(unknown)" : ep.issuer, name)));
        return;
      }
      // Next in the order: dynamic registration. The document URL is kept
      // for a server that supports it later.
      config.client_id_metadata_document = configured_id;
      config.client_id.clear();
    } else if (!configured_id.empty()) {
      const std::string doc = config.client_id_metadata_document;
      if (config.client_registered && !doc.empty() && documents_supported) {
        // Registered only because the server did not take the document
        // then; now it does, and the document comes first.
        spdlog::info(
            "profile {}: the authorization server now supports client ID metadata documents; using "
            "{}",
            name, doc);
        config.client_registered = false;
        config.client_registered_for.reset();
        config.token_endpoint_auth.reset();
        profile->client_secret = Secret();
        config.client_id = doc;
        check_metadata_document(profile, [this, alive, registered = configured_id,
                                          next](Result<store::Profile> checked) {
          if (!*alive) return;
          if (checked) {
            if (auto stored = store_resolved(*checked, Resolved::document_client, &registered);
                !stored) {
              return next(std::unexpected(stored.error()));
            }
          }
          next(std::move(checked));
        });
        return;
      }
      next(*profile);
      return;
    } else if (const std::string doc = config.client_id_metadata_document;
               !doc.empty() && documents_supported) {
      config.client_id = doc;
      check_metadata_document(profile, next);
      return;
    }
    if (ep.registration_url.empty()) {
      next(fail(
          Errc::invalid_argument,
          fmt::format("profile '{}' has no client_id and the provider offers no dynamic client "
                      "registration; "
                      "register an app with the provider and run tokenctl add {} --client-id ID",
                      name, name)));
      return;
    }
    const std::string redirect =
        config.redirect_uri.empty() ? std::string(k_default_redirect_uri) : config.redirect_uri;
    const std::vector<std::string> methods =
        config.discovered ? config.discovered->token_endpoint_auth_methods_supported.value_or(
                                std::vector<std::string>{})
                          : std::vector<std::string>{};
    const std::string auth = methods.empty() || contains(methods, "none") ? "none"
                             : contains(methods, "client_secret_basic")   ? "client_secret_basic"
                                                                          : "client_secret_post";
    // application_type native (OIDC Dynamic Registration §2, asked for by
    // MCP 2026-07-28): a loopback http redirect is only valid for native
    // clients, which is what tokend is.
    Json body = {
        {"client_name", "tokend"},     {"application_type", "native"},
        {"redirect_uris", {redirect}}, {"grant_types", {"authorization_code", "refresh_token"}},
        {"response_types", {"code"}},  {"token_endpoint_auth_method", auth}};
    if (config.scopes && !config.scopes->empty()) body["scope"] = join(*config.scopes, " ");
    net::HttpRequest r;
    r.method = "POST";
    r.url = ep.registration_url;
    r.timeout = m_options.http_timeout;
    r.headers = {{"Content-Type", "application/json"}, {"Accept", "application/json"}};
    r.body = Secret::adopt(body.dump());
    m_requests.start(std::move(r), [this, alive, name, profile, next, redirect,
                                    url = ep.registration_url,
                                    as_issuer = ep.issuer](Result<net::HttpResponse> res) {
      if (!*alive) return;
      if (!res) {
        next(fail(Errc::transient,
                  fmt::format("client registration at {} failed: {}", url, res.error().message)));
        return;
      }
      if (res->status != 201 && res->status != 200) {
        const auto err = oauth::oauth_error_of(*res);
        next(fail(Errc::protocol,
                  fmt::format("client registration at {} was refused ({}{}{})", url, res->status,
                              err.error.empty() ? "" : ": " + err.error,
                              err.description.empty() ? "" : ": " + err.description)));
        return;
      }
      auto j = json::parse(res->body.reveal(), "the registration answer");
      const std::string client_id = j ? json::string_or(*j, "client_id") : std::string();
      if (client_id.empty() || client_id.size() > 1024) {
        next(fail(Errc::protocol,
                  fmt::format("client registration at {} answered without a client_id", url)));
        return;
      }
      store::ProfileConfig& registered = profile->config;
      registered.client_id = client_id;
      registered.client_registered = true;
      registered.client_registered_for = as_issuer;
      registered.redirect_uri = redirect;
      // A method tokend does not implement (private_key_jwt, ...) is kept as
      // client_secret_basic: the token request has always sent it that way.
      const std::string method = json::string_or(*j, "token_endpoint_auth_method");
      registered.token_endpoint_auth = method.empty()
                                           ? store::ClientAuthMethod::none
                                           : store::parse_client_auth_method(method).value_or(
                                                 store::ClientAuthMethod::client_secret_basic);
      std::string secret = json::string_or(*j, "client_secret");
      if (!secret.empty()) {
        profile->client_secret = Secret::adopt(std::move(secret));
      } else {
        registered.token_endpoint_auth = store::ClientAuthMethod::none;
      }
      // Kept so the next login (and the next start) reuses it.
      if (auto stored = store_resolved(*profile, Resolved::registered_client); !stored) {
        next(std::unexpected(stored.error()));
        return;
      }
      spdlog::info("profile {}: registered client {} at {}", name, client_id, url);
      m_events.publish(tokens::EventKind::client_registered, name, to_unix_ms(m_clock.wall_now()),
                       {{"client_id", client_id}});
      next(*profile);
    });
  };

  // Step 2: authorization server metadata for `as_issuer`.
  // `from_resource`: for MCP, what the protected resource metadata said
  // (kept with the authorization server's own metadata).
  auto discover_as = [this, alive, name, profile, register_client, next](
                         const std::string& as_issuer,
                         const store::ProviderMetadata& from_resource) {
    auto urls = oauth::metadata_urls(as_issuer);
    if (!urls) {
      next(std::unexpected(urls.error()));
      return;
    }
    auto trial = std::make_shared<UrlTrial>(UrlTrial{std::move(*urls), 0, {}});
    fetch_first_json(
        trial, {404, 400, 405},
        [this, as_issuer, from_resource, name, profile, register_client, next](
            std::optional<Result<Json>> j, const std::vector<std::string>& tried) {
          if (!j) {
            next(fail(Errc::protocol,
                      fmt::format("no authorization server metadata found for issuer {} (tried {})",
                                  as_issuer, join(tried, ", "))));
            return;
          }
          if (!*j) {
            next(std::unexpected(j->error()));
            return;
          }
          auto checked = oauth::check_server_metadata(**j, as_issuer);
          if (!checked) {
            next(std::unexpected(checked.error()));
            return;
          }
          store::ProviderMetadata found = std::move(*checked);
          found.resource = from_resource.resource;
          found.authorization_server = from_resource.authorization_server;
          found.authorization_servers = from_resource.authorization_servers;
          found.resource_scopes = from_resource.resource_scopes;
          found.at = to_unix_ms(m_clock.wall_now()) / 1000;
          profile->config.discovered = std::move(found);
          if (auto stored = store_resolved(*profile, Resolved::discovery); !stored) {
            next(std::unexpected(stored.error()));
            return;
          }
          spdlog::info("profile {}: discovered the authorization server {}", name, as_issuer);
          register_client();
        });
  };

  if (profile->provider == "mcp") {
    // Discovery runs again at every login (a few small GETs; logins are
    // rare): an MCP server may move to another authorization server, and
    // registrations are keyed by its issuer (register_client redoes one
    // made with another).
    // Step 1: the protected resource metadata, from the server's 401
    // challenge or the well-known paths.
    auto with_prm = [alive, name, mcp_server, wanted_as, discover_as, next](Result<Json> j) {
      if (!j) {
        next(std::unexpected(j.error()));
        return;
      }
      auto prm = oauth::check_resource_metadata(*j, mcp_server);
      if (!prm) {
        next(std::unexpected(prm.error()));
        return;
      }
      // Several authorization servers: the profile's choice, else the first
      // listed; login states which (and how to choose).
      std::string chosen = prm->authorization_servers.front();
      if (!wanted_as.empty()) {
        auto it = std::find_if(
            prm->authorization_servers.begin(), prm->authorization_servers.end(),
            [&](const std::string& as) { return oauth::same_resource(as, wanted_as); });
        if (it == prm->authorization_servers.end()) {
          next(fail(
              Errc::invalid_argument,
              fmt::format(
                  "profile '{}' asks for the authorization server {}, but the MCP server names {}; "
                  "choose one of them with tokenctl add {} ... --authorization-server URL",
                  name, wanted_as, join(prm->authorization_servers, ", "), name)));
          return;
        }
        chosen = *it;
      }
      store::ProviderMetadata from_resource;
      from_resource.resource = prm->resource;
      from_resource.authorization_server = chosen;
      from_resource.authorization_servers = prm->authorization_servers;
      from_resource.resource_scopes = prm->scopes_supported;
      discover_as(chosen, from_resource);
    };
    auto from_well_known = [this, alive, mcp_server, with_prm, next]() {
      auto urls = oauth::protected_resource_urls(mcp_server);
      if (!urls) {
        next(std::unexpected(urls.error()));
        return;
      }
      auto trial = std::make_shared<UrlTrial>(UrlTrial{std::move(*urls), 0, {}});
      fetch_first_json(
          trial, {404, 405},
          [mcp_server, with_prm](std::optional<Result<Json>> j,
                                 const std::vector<std::string>& tried) {
            if (!j) {
              with_prm(fail(Errc::protocol,
                            fmt::format("no protected resource metadata found for {} (tried {})",
                                        mcp_server, join(tried, ", "))));
              return;
            }
            with_prm(std::move(*j));
          });
    };
    // An unauthenticated call to the MCP server; its 401 names the metadata.
    net::HttpRequest probe;
    probe.method = "GET";
    probe.url = mcp_server;
    probe.timeout = m_options.http_timeout;
    probe.headers = {{"Accept", "application/json, text/event-stream"}};
    m_requests.start(std::move(probe), [this, alive, mcp_server, with_prm,
                                        from_well_known](Result<net::HttpResponse> res) {
      if (!*alive) return;
      std::optional<std::string> metadata_url;
      if (res && res->status == 401)
        metadata_url = oauth::resource_metadata_of(res->header("www-authenticate"));
      if (metadata_url) {
        if (auto ok = oauth::check_discovered_url("resource_metadata", *metadata_url, mcp_server);
            !ok) {
          with_prm(fail(Errc::protocol,
                        fmt::format("the MCP server's challenge names an unusable metadata URL: {}",
                                    ok.error().message)));
          return;
        }
        fetch_json(*metadata_url, [with_prm](Result<Json> j, const net::HttpResponse*) {
          with_prm(std::move(j));
        });
        return;
      }
      from_well_known();
    });
    return;
  }

  const oauth::ProviderEndpoints ep = oauth::endpoints_of(*profile);
  const bool have_endpoints = !ep.token_url.empty() && !ep.authorize_url.empty();
  if (!issuer.empty() && (!fresh || !have_endpoints)) {
    discover_as(issuer, {});
    return;
  }
  register_client();
}

// --- starting ----------------------------------------------------------------

}  // namespace tokend::login
