// The authorization code flow with PKCE: the authorize URL, the loopback
// redirect or a pasted URL or code, and the code exchange.
#include "flow.hpp"

namespace tokend::login {

void LoginManager::begin_code(Flow& f, JsonCallback done) {
  const store::Profile& p = f.resolved;
  const oauth::ProviderEndpoints ep = oauth::endpoints_of(p);
  const std::string& name = f.profile;
  auto fail_start = [&](Error e) {
    const std::string profile = f.profile;
    m_flows.erase(profile);
    done(std::unexpected(std::move(e)));
  };
  if (ep.authorize_url.empty()) {
    fail_start(Error{
        Errc::invalid_argument,
        fmt::format(
            "profile '{}' has no authorize_url; set it with tokenctl add {} --authorize-url URL "
            "(or --issuer URL for discovery)",
            name, name)});
    return;
  }
  f.redirect_uri = p.config.redirect_uri;
  if (f.redirect_uri.empty()) f.redirect_uri = k_default_redirect_uri;
  auto redirect = net::parse_url(f.redirect_uri, "the redirect URI");
  if (!redirect) {
    fail_start(redirect.error());
    return;
  }
  f.callback_path = redirect->path;

  using store::PkceMode;
  const PkceMode pkce_mode = p.config.pkce.value_or(PkceMode::s256);
  // Without a client secret, PKCE is all that binds the code to this login
  // (RFC 8252 §8.1, OAuth 2.1): a public client never goes without it.
  if (pkce_mode == PkceMode::off && f.endpoint.client_secret.empty()) {
    fail_start(
        Error{Errc::invalid_argument,
              fmt::format(
                  "profile '{}' is a public client (no client secret) and sets pkce: off; a public "
                  "client needs PKCE — remove the pkce setting",
                  name)});
    return;
  }
  const std::vector<std::string> methods =
      p.config.discovered ? p.config.discovered->code_challenge_methods_supported.value_or(
                                std::vector<std::string>{})
                          : std::vector<std::string>{};
  if (pkce_mode == PkceMode::required && !methods.empty() && !contains(methods, "S256")) {
    fail_start(Error{
        Errc::invalid_argument,
        fmt::format("profile '{}' requires PKCE but the provider does not offer S256", name)});
    return;
  }
  auto state = m_options.random(32);
  auto entropy = m_options.random(32);
  if (!state || !entropy) {
    fail_start(Error{Errc::internal, "no randomness for the login"});
    return;
  }
  f.state_value = std::move(*state);
  if (pkce_mode != PkceMode::off) {
    // 32 bytes of entropy as base64url: 43 characters, the RFC's minimum.
    f.pkce = oauth::Pkce{Secret(entropy->reveal().substr(0, 43)), {}};
    f.pkce->challenge = oauth::pkce_challenge(f.pkce->verifier.reveal());
  }

  std::vector<std::pair<std::string, std::string>> q;
  if (p.provider == "atlassian") q.emplace_back("audience", "api.atlassian.com");
  q.emplace_back("client_id", f.endpoint.client_id);
  const auto scopes = scopes_for(p);
  if (!scopes.empty()) q.emplace_back("scope", join(scopes, " "));
  q.emplace_back("redirect_uri", f.redirect_uri);
  q.emplace_back("state", std::string(f.state_value.reveal()));
  q.emplace_back("response_type", "code");
  // OIDC Core §11: offline_access needs prompt=consent, or servers drop it
  // silently and issue no refresh token. The profile's own prompt wins.
  if (!p.config.prompt.empty()) {
    q.emplace_back("prompt", p.config.prompt);
  } else if (p.provider == "atlassian" || contains(scopes, "offline_access")) {
    q.emplace_back("prompt", "consent");
  }
  if (f.pkce) {
    q.emplace_back("code_challenge", f.pkce->challenge);
    q.emplace_back("code_challenge_method", "S256");
  }
  if (p.provider != "atlassian" && !p.config.audience.empty())
    q.emplace_back("audience", p.config.audience);
  if (!f.endpoint.resource.empty()) q.emplace_back("resource", f.endpoint.resource);
  // Extra parameters (Google's access_type=offline, login_hint, ...); the
  // profile check refused the ones tokend sets itself.
  if (p.config.authorize_params) {
    for (const auto& [k, v] : *p.config.authorize_params) q.emplace_back(k, v);
  }
  f.asked_scopes = scopes;
  std::string url = ep.authorize_url;
  url += url.find('?') == std::string::npos ? '?' : '&';
  bool first = true;
  for (const auto& [k, v] : q) {
    if (!first) url += '&';
    first = false;
    url += form_encode(k) + "=" + form_encode(v);
  }
  f.authorize_url = std::move(url);

  const bool loopback = redirect->scheme == "http" && net::is_loopback_host(redirect->host);
  if (f.extra.value("listen", true) && loopback && m_callbacks != nullptr) {
    // "localhost" goes to the port as it is: the listener binds both of its
    // addresses (browsers try ::1 first).
    std::string host = redirect->host;
    if (host.starts_with('[')) host = host.substr(1, host.size() - 2);
    const std::string profile = f.profile;
    const std::uint64_t id = f.id;
    auto alive = m_alive;
    auto listener =
        m_callbacks->listen(host, redirect->port,
                            [this, alive, profile, id](const CallbackRequest& req,
                                                       std::function<void(CallbackReply)> reply) {
                              if (!*alive) return;
                              on_callback(profile, id, req, std::move(reply));
                            });
    if (!listener) {
      Error e = listener.error();
      if (e.code == Errc::conflict) {
        e.message += fmt::format(
            "; free it, or register another redirect URI with the provider and run "
            "tokenctl add {} --redirect-uri http://127.0.0.1:PORT{}",
            name, f.callback_path);
      }
      fail_start(std::move(e));
      return;
    }
    f.listener = std::move(*listener);
  }
  f.expected_issuer = ep.issuer;
  f.issuer_required =
      p.config.discovered && p.config.discovered->authorization_response_iss_parameter_supported;
  if (m_flow_store != nullptr) {
    // Server mode: kept where every replica finds it (replacing the
    // profile's previous one), so any of them can complete it.
    store::PendingLogin pending;
    pending.profile = name;
    if (f.pkce) pending.code_verifier = Secret(f.pkce->verifier.reveal());
    pending.redirect_uri = f.redirect_uri;
    pending.issuer = f.expected_issuer;
    pending.issuer_required = f.issuer_required;
    pending.resource = f.endpoint.resource;
    pending.scopes = f.asked_scopes;
    pending.started_at_ms = f.started_at_ms;
    pending.expires_at_ms = f.expires_at_ms;
    pending.replica = m_options.replica_id;
    pending.flow_id = static_cast<std::int64_t>(f.id);
    if (auto r = m_flow_store->put_login_flow(f.state_value, pending); !r) {
      fail_start(r.error().context("keeping the login where every replica finds it"));
      return;
    }
    f.shared = true;
  }
  f.phase = Flow::Phase::awaiting;
  m_events.publish(tokens::EventKind::login_started, name, to_unix_ms(m_clock.wall_now()),
                   {{"flow", "code"}});
  rearm();
  done(status(name));
}

void LoginManager::on_callback(const std::string& profile, std::uint64_t id,
                               const CallbackRequest& req,
                               std::function<void(CallbackReply)> reply) {
  Flow* fp = find(profile, id);
  if (fp == nullptr || fp->state != FlowState::pending) {
    reply({409,
           page("Sign-in not pending",
                "This sign-in is no longer pending. Run tokenctl login " + profile + " again.")});
    return;
  }
  Flow& fl = *fp;
  if (req.path != fl.callback_path) {
    reply({404, page("Not found", "Nothing here.")});
    return;
  }
  if (req.method != "GET") {
    reply({405, page("Method not allowed", "The sign-in redirect is a GET.")});
    return;
  }
  if (fl.phase != Flow::Phase::awaiting) {
    reply({409, page("Already signed in",
                     "This sign-in was already completed; a repeated redirect is ignored.")});
    return;
  }
  auto q = parse_query(req.query);
  if (!q) {
    reply({400, page("Bad redirect", "The redirect's query is malformed.")});
    return;
  }
  auto r = redirect_of(std::move(*q));
  // Any web page can make the browser send a request here (an <img> to
  // http://127.0.0.1:PORT/callback). One that does not carry this flow's
  // state is not the provider's redirect: refused, and the flow keeps
  // waiting for the real one (an error= without the state included).
  if (!r.state || !constant_time_equal(*r.state, fl.state_value.reveal())) {
    secure_wipe(r.code);
    reply({400, page("Not this sign-in",
                     "This request does not carry the state of the sign-in tokend is waiting "
                     "for, so it was ignored. The sign-in is still waiting.")});
    return;
  }
  // The browser is answered when the flow ends (after the exchange).
  fl.browser_reply = std::move(reply);
  accept_code(fl, std::move(r), nullptr);
}

std::optional<std::string> LoginManager::awaiting_state(std::string_view state) const {
  if (state.empty()) return std::nullopt;
  std::optional<std::string> found;
  // Every flow is compared, so the time taken says nothing of which matched.
  for (const auto& [name, f] : m_flows) {
    const bool awaiting = f->state == FlowState::pending && !f->device &&
                          f->phase == Flow::Phase::awaiting && !f->elsewhere &&
                          !f->state_value.reveal().empty();
    if (constant_time_equal(state, f->state_value.reveal()) && awaiting) found = name;
  }
  return found;
}

std::optional<std::string> LoginManager::claim_state(std::string_view state) {
  if (auto local = awaiting_state(state)) return local;
  if (m_flow_store == nullptr || state.empty() || m_shut_down) return std::nullopt;
  const Secret presented{state};
  auto taken = m_flow_store->take_login_flow(std::nullopt, &presented);
  if (!taken) {
    spdlog::warn("looking up a login another replica started: {}", taken.error().message);
    return std::nullopt;
  }
  if (!*taken) return std::nullopt;
  std::string profile = (*taken)->profile;
  if (adopt(std::move(**taken), std::string(state)) == nullptr) return std::nullopt;
  return profile;
}

LoginManager::Flow* LoginManager::adopt(store::PendingLogin pending,
                                        std::optional<std::string> state) {
  const std::string name = pending.profile;
  auto profile = m_tokens.profile_of(name);
  if (!profile) {
    spdlog::warn("profile {}: a login started on replica {} cannot be completed here: {}", name,
                 pending.replica, profile.error().message);
    return nullptr;
  }
  auto endpoint = oauth::token_endpoint_of(*profile);
  if (!endpoint) {
    spdlog::warn("profile {}: a login started on replica {} cannot be completed here: {}", name,
                 pending.replica, endpoint.error().message);
    return nullptr;
  }
  // A flow of the profile this manager holds is older than the one the
  // store kept (which replaced it there).
  if (auto it = m_flows.find(name); it != m_flows.end() && it->second->state == FlowState::pending)
    fail_flow(*it->second, FlowState::cancelled, "replaced",
              "a newer login for this profile, started on another replica, replaced it");
  auto flow = std::make_unique<Flow>();
  Flow& f = *flow;
  f.id = m_next_flow++;
  f.profile = name;
  f.phase = Flow::Phase::awaiting;
  const std::int64_t now_ms = to_unix_ms(m_clock.wall_now());
  f.started_at_ms = pending.started_at_ms;
  f.expires_at_ms = pending.expires_at_ms;
  f.deadline =
      m_clock.mono_now() + Millis(std::max<std::int64_t>(0, pending.expires_at_ms - now_ms));
  f.resolved = std::move(*profile);
  f.endpoint = std::move(*endpoint);
  f.endpoint.resource = pending.resource;
  if (!pending.code_verifier.empty()) {
    f.pkce = oauth::Pkce{std::move(pending.code_verifier), {}};
    f.pkce->challenge = oauth::pkce_challenge(f.pkce->verifier.reveal());
  }
  f.redirect_uri = pending.redirect_uri;
  f.asked_scopes = std::move(pending.scopes);
  f.expected_issuer = pending.issuer;
  f.issuer_required = pending.issuer_required;
  if (state) f.state_value = Secret(*state);
  f.extra["listen"] = false;
  f.shared = true;
  f.claimed = true;
  f.origin_replica = pending.replica;
  f.origin_id = static_cast<std::uint64_t>(pending.flow_id);
  spdlog::info("profile {}: completing a login started on replica {}", name, pending.replica);
  Flow* out = &f;
  m_flows.insert_or_assign(name, std::move(flow));
  rearm();
  return out;
}

void LoginManager::refuse_completion(Flow& f, const Error& e) {
  auto completions = std::move(f.completions);
  f.completions.clear();
  for (auto& c : completions) c(std::unexpected(e));
  if (f.browser_reply) {
    f.browser_reply({409, page("Sign-in not pending", e.message)});
    f.browser_reply = nullptr;
  }
}

void LoginManager::complete(const std::string& name, const Json& body, JsonCallback done) {
  auto it = m_flows.find(name);
  const bool here = it != m_flows.end() && it->second->state == FlowState::pending &&
                    !it->second->device && it->second->phase == Flow::Phase::awaiting &&
                    !it->second->elsewhere;
  if (!here && m_flow_store == nullptr) {
    done(fail(
        Errc::conflict,
        fmt::format("no login is waiting for a code for '{}'; start one with tokenctl login {}",
                    name, name)));
    return;
  }
  if (!body.is_object()) {
    done(fail(Errc::invalid_argument,
              "the body must be {\"redirect_url\": ...} or {\"code\": ...}"));
    return;
  }
  // The flow held here, or (server mode) the profile's flow another replica
  // started, claimed now: by its state when the redirect has one.
  const auto accept_or_claim = [&](Redirect r, JsonCallback then) {
    if (here) {
      accept_code(*it->second, std::move(r), std::move(then));
      return;
    }
    const Secret presented{r.state.value_or(std::string())};
    auto taken = m_flow_store->take_login_flow(name, presented.empty() ? nullptr : &presented);
    if (!taken) {
      secure_wipe(r.code);
      then(std::unexpected(taken.error()));
      return;
    }
    Flow* f = *taken ? adopt(std::move(**taken), r.state) : nullptr;
    if (f == nullptr) {
      secure_wipe(r.code);
      then(fail(
          Errc::conflict,
          fmt::format("no login is waiting for a code for '{}'; start one with tokenctl login {}",
                      name, name)));
      return;
    }
    accept_code(*f, std::move(r), std::move(then));
  };
  const std::string redirect_url = json::string_or(body, "redirect_url");
  const std::string bare = json::string_or(body, "code");
  if (!redirect_url.empty()) {
    // What the browser's address bar showed: take the query apart.
    std::string_view u = redirect_url;
    const auto qpos = u.find('?');
    // A bare "code=...&state=..." (the query alone) is taken too.
    std::string_view query = qpos != std::string_view::npos            ? u.substr(qpos + 1)
                             : u.find("://") == std::string_view::npos ? u
                                                                       : std::string_view{};
    if (const auto hash = query.find('#'); hash != std::string_view::npos)
      query = query.substr(0, hash);
    auto q = parse_query(query);
    if (!q) {
      done(fail(Errc::invalid_argument,
                "the pasted URL's query is malformed; paste the whole address of the page "
                "the browser ended on"));
      return;
    }
    auto r = redirect_of(std::move(*q));
    if (r.code.empty() && !r.error) {
      done(fail(Errc::invalid_argument,
                "the pasted URL has neither a code nor an error; paste the whole address "
                "of the page the browser ended on (it contains ?code=...)"));
      return;
    }
    accept_or_claim(std::move(r), std::move(done));
    return;
  }
  if (bare.empty() || bare.size() > 4096) {
    done(fail(Errc::invalid_argument,
              "the body must be {\"redirect_url\": ...} or {\"code\": ...}"));
    return;
  }
  // A bare code carries neither state nor iss: the user typed it here.
  Redirect r;
  r.code = bare;
  r.state = std::nullopt;
  r.bare = true;
  accept_or_claim(std::move(r), std::move(done));
}

void LoginManager::accept_code(Flow& f, Redirect r, JsonCallback done) {
  if (done) f.completions.push_back(std::move(done));
  std::string& code = r.code;
  if (r.state && !constant_time_equal(*r.state, f.state_value.reveal())) {
    secure_wipe(code);
    fail_flow(
        f, FlowState::failed, "state_mismatch",
        fmt::format(
            "the state in the redirect does not match this login (a stale or forged redirect); "
            "nothing was stored — run tokenctl login {} again",
            f.profile));
    return;
  }
  if (f.shared && !f.claimed) {
    // Server mode: the flow is claimed from the store first, so that of
    // the replicas a redirect (or a replay of it) reaches, one redeems it.
    auto taken = m_flow_store->take_login_flow(f.profile, &f.state_value);
    if (!taken || !*taken) {
      secure_wipe(code);
      if (taken) f.elsewhere = true;  // its outcome comes as the other replica's event
      refuse_completion(
          f, taken ? Error{Errc::conflict,
                           fmt::format("the login for '{}' is no longer waiting here: another "
                                       "replica took its code (or it was replaced, cancelled or "
                                       "expired there); nothing was redeemed by this request",
                                       f.profile)}
                   : taken.error());
      return;
    }
    f.claimed = true;
  }
  // RFC 9207: where the server says it sends iss, or whenever iss is there,
  // it must be the issuer this login is for (a mix-up attack otherwise).
  // Checked before the code (or an error) is acted on.
  const std::string& issuer = f.expected_issuer;
  const bool advertised = f.issuer_required;
  if (!r.bare && !issuer.empty() && (r.iss || advertised)) {
    if (!r.iss) {
      secure_wipe(code);
      fail_flow(
          f, FlowState::failed, "iss_missing",
          fmt::format(
              "the authorization server {} says it sends iss in its redirect (RFC 9207), but this "
              "redirect has none; nothing was redeemed or stored — run tokenctl login {} again",
              issuer, f.profile));
      return;
    }
    if (*r.iss != issuer) {
      secure_wipe(code);
      fail_flow(f, FlowState::failed, "iss_mismatch",
                fmt::format("the redirect comes from issuer '{}', not from {} that this login is "
                            "for (RFC 9207: a "
                            "mix-up or forged redirect); nothing was redeemed or stored — run "
                            "tokenctl login {} again",
                            oauth::printable_excerpt(*r.iss, 200), issuer, f.profile));
      return;
    }
  }
  if (r.error) {
    const std::string e = oauth::printable_excerpt(*r.error, 64);
    const std::string d = oauth::printable_excerpt(r.description, 200);
    fail_flow(f, FlowState::failed, e.empty() ? "error" : e,
              fmt::format("the provider refused the authorization: {}{}", e,
                          d.empty() ? "" : " (" + d + ")"));
    return;
  }
  if (code.empty() || code.size() > 4096) {
    fail_flow(f, FlowState::failed, "no_code", "the redirect carries no authorization code");
    return;
  }
  f.phase = Flow::Phase::exchanging;
  exchange(f, std::move(code));
}

void LoginManager::exchange(Flow& f, std::string code) {
  oauth::TokenParams params = {
      {"grant_type", "authorization_code"}, {"code", code}, {"redirect_uri", f.redirect_uri}};
  if (f.pkce) params.emplace_back("code_verifier", f.pkce->verifier.reveal());
  const WallTime sent_at = m_clock.wall_now();
  auto request = oauth::make_token_request(f.endpoint, params, m_options.http_timeout);
  secure_wipe(code);
  send_for(f, std::move(request),
           [this, name = f.profile, sent_at, lifetime = f.endpoint.default_lifetime](
               Flow& fl, Result<net::HttpResponse> res) {
             auto tokens = oauth::interpret_token_response(res, sent_at, lifetime);
             if (!tokens) {
               const auto err = res ? oauth::oauth_error_of(*res) : oauth::OAuthError{};
               if (err.error == "invalid_grant") {
                 fail_flow(
                     fl, FlowState::failed, "invalid_grant",
                     fmt::format("the provider rejected the authorization code (invalid_grant{}): "
                                 "it was used already, "
                                 "expired, or the PKCE verifier did not match; nothing was stored "
                                 "— run tokenctl login {} again",
                                 err.description.empty() ? "" : ": " + err.description, name));
               } else {
                 fail_flow(fl, FlowState::failed, "token_endpoint",
                           "exchanging the code failed: " + tokens.error().message);
               }
               return;
             }
             on_tokens(fl, *tokens);
           });
}

// --- the device flow's polling -------------------------------------------------

}  // namespace tokend::login
