#include "daemon/oidc.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <set>
#include <utility>
#include <vector>

#include "core/encoding.hpp"
#include "core/json.hpp"
#include "core/random.hpp"
#include "daemon/jws.hpp"
#include "net/http_client.hpp"
#include "net/url.hpp"
#include "oauth/discovery.hpp"
#include "oauth/pkce.hpp"
#include "oauth/protocol.hpp"
#include "store/pg_store.hpp"

namespace tokend::daemon {

namespace {

std::unexpected<Error> id_token_error(std::string message) {
  return std::unexpected(Error{Errc::login_failed, "the ID token: " + std::move(message)});
}

std::string sha256(std::string_view bytes) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int size = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), out.data(), &size, EVP_sha256(), nullptr) != 1) {
    size = 0;
  }
  return {reinterpret_cast<const char*>(out.data()), size};
}

std::string hmac(const Secret& key, std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int size = 0;
  const auto k = key.reveal();
  if (HMAC(EVP_sha256(), k.data(), static_cast<int>(k.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out.data(),
           &size) == nullptr) {
    size = 0;
  }
  return {reinterpret_cast<const char*>(out.data()), size};
}

std::string cookie(std::string_view name, std::string_view value, std::int64_t max_age_s) {
  return fmt::format("{}={}; Secure; HttpOnly; SameSite=Lax; Path=/; Max-Age={}", name, value,
                     max_age_s);
}

ipc::Response redirect(int status, const std::string& location) {
  ipc::Response r;
  r.status = status;
  r.headers.emplace_back("Location", location);
  r.headers.emplace_back("Cache-Control", "no-store");
  return r;
}

std::optional<std::int64_t> int_claim(const json::Json& claims, const char* name) {
  auto it = claims.find(name);
  if (it == claims.end() || !it->is_number()) return std::nullopt;
  if (it->is_number_integer()) return it->get<std::int64_t>();
  return static_cast<std::int64_t>(it->get<double>());
}

}  // namespace

Result<std::string> check_id_token(std::string_view id_token, const IdTokenExpectations& e) {
  const auto dot1 = id_token.find('.');
  const auto dot2 = dot1 == std::string_view::npos ? dot1 : id_token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || id_token.find('.', dot2 + 1) != std::string_view::npos) {
    return id_token_error("is not a compact JWT (three base64url parts)");
  }
  auto payload = base64url_decode(id_token.substr(dot1 + 1, dot2 - dot1 - 1));
  if (!payload) return id_token_error("its payload is not base64url");
  auto parsed = json::parse(*payload, "the ID token's claims");
  if (!parsed || !parsed->is_object()) return id_token_error("its payload is not a JSON object");
  const json::Json& c = *parsed;

  if (json::string_or(c, "iss") != e.issuer) {
    return id_token_error(fmt::format("iss is '{}', not the issuer '{}'",
                                      oauth::printable_excerpt(json::string_or(c, "iss"), 100),
                                      e.issuer));
  }
  std::vector<std::string> aud;
  if (auto it = c.find("aud"); it != c.end()) {
    if (it->is_string()) aud.push_back(it->get<std::string>());
    if (it->is_array()) {
      for (const auto& a : *it) {
        if (a.is_string()) aud.push_back(a.get<std::string>());
      }
    }
  }
  if (std::find(aud.begin(), aud.end(), e.client_id) == aud.end()) {
    return id_token_error(fmt::format("aud does not hold the client id '{}'", e.client_id));
  }
  const bool has_azp = c.contains("azp");
  if ((has_azp || aud.size() > 1) && json::string_or(c, "azp") != e.client_id) {
    return id_token_error(fmt::format("azp is not the client id '{}'", e.client_id));
  }
  const auto now_s =
      std::chrono::duration_cast<std::chrono::seconds>(e.now.time_since_epoch()).count();
  const auto exp = int_claim(c, "exp");
  if (!exp) return id_token_error("exp is missing");
  if (*exp + e.skew.count() <= now_s) return id_token_error("it has expired (exp)");
  const auto iat = int_claim(c, "iat");
  if (!iat) return id_token_error("iat is missing");
  if (*iat > now_s + e.skew.count()) return id_token_error("it was issued in the future (iat)");
  const std::string nonce = json::string_or(c, "nonce");
  if (nonce.empty() || !constant_time_equal(nonce, e.nonce)) {
    return id_token_error("nonce is not the one this sign-in sent");
  }
  std::string user = json::string_or(c, e.user_claim.c_str());
  if (user.empty() && e.user_claim_elsewhere) return std::string();
  if (user.empty()) {
    return id_token_error(fmt::format(
        "it has no '{}' claim (oidc-user-claim); the identity provider must put it in the ID "
        "token",
        e.user_claim));
  }
  if (e.user_claim == "email") {
    if (auto v = c.find("email_verified"); v != c.end() && v->is_boolean() && !v->get<bool>()) {
      return id_token_error("email_verified is false");
    }
  }
  if (auto ok = store::check_user_id(user); !ok) {
    return id_token_error(fmt::format("its '{}' claim is not a valid user id", e.user_claim));
  }
  return user;
}

Result<std::string> user_from_userinfo(std::string_view body, std::string_view id_token_sub,
                                       std::string_view user_claim) {
  const auto error = [](std::string message) {
    return std::unexpected(Error{Errc::login_failed, "the userinfo answer: " + std::move(message)});
  };
  auto parsed = json::parse(body, "the userinfo answer", 16);
  if (!parsed || !parsed->is_object()) return error("it is not a JSON object");
  const json::Json& c = *parsed;
  const std::string sub = json::string_or(c, "sub");
  if (sub.empty() || id_token_sub.empty() || sub != id_token_sub) {
    return error("its sub is not the ID token's (OpenID Connect Core 5.3.4)");
  }
  const std::string claim(user_claim);
  std::string user = json::string_or(c, claim);
  if (user.empty()) {
    return error(fmt::format("it has no '{}' claim either (oidc-user-claim)", claim));
  }
  if (claim == "email") {
    if (auto v = c.find("email_verified"); v != c.end() && v->is_boolean() && !v->get<bool>()) {
      return error("email_verified is false");
    }
  }
  if (auto ok = store::check_user_id(user); !ok) {
    return error(fmt::format("its '{}' claim is not a valid user id", claim));
  }
  return user;
}

Result<std::string> checked_return_to(std::string_view value) {
  if (value.empty()) return std::string("/");
  const bool control = std::any_of(value.begin(), value.end(), [](char ch) {
    return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
  });
  if (value.front() != '/' || value.starts_with("//") || value.starts_with("/\\") ||
      value.find('\\') != std::string_view::npos || control || value.size() > 2048) {
    return fail(Errc::invalid_argument,
                "return_to must be a path on tokend starting with a single '/'");
  }
  return std::string(value);
}

std::optional<std::string> cookie_value(const ipc::Request& request, std::string_view name) {
  std::optional<std::string> found;
  int count = 0;
  for (const auto& [k, v] : request.headers) {
    if (!ascii_iequals(k, "cookie")) continue;
    std::string_view rest = v;
    while (!rest.empty()) {
      const auto semi = rest.find(';');
      std::string_view item = rest.substr(0, semi);
      while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
      while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
      const auto eq = item.find('=');
      if (eq != std::string_view::npos && item.substr(0, eq) == name) {
        ++count;
        found = std::string(item.substr(eq + 1));
      }
      if (semi == std::string_view::npos) break;
      rest.remove_prefix(semi + 1);
    }
  }
  if (count != 1) return std::nullopt;
  return found;
}

bool same_origin(std::string_view origin, std::string_view public_url) {
  const auto scheme_end = public_url.find("://");
  if (origin.empty() || scheme_end == std::string_view::npos) return false;
  const auto path = public_url.find('/', scheme_end + 3);  // npos: no path
  return ascii_iequals(origin, public_url.substr(0, path));
}

bool state_changing(std::string_view method) {
  return method != "GET" && method != "HEAD" && method != "OPTIONS";
}

// ---------------------------------------------------------------------------

class OidcSignin::Impl {
 public:
  Impl(net::HttpTransport& http, store::PgDatabase& db, const Clock& clock, OidcSettings settings,
       Secret client_secret, std::chrono::milliseconds http_timeout)
      : m_http(http),
        m_db(db),
        m_clock(clock),
        m_settings(std::move(settings)),
        m_client_secret(std::move(client_secret)),
        m_http_timeout(http_timeout),
        m_pkce_key(db.derive_key("tokend oidc pkce")),
        m_logout_key(db.derive_key("tokend oidc id_token_hint")) {
    if (m_settings.post_logout_redirect_uri.empty()) {
      m_settings.post_logout_redirect_uri = m_settings.public_url;
    }
    // Discovery and the JWKS at start; a provider down now is asked again
    // by the first sign-in.
    discover([issuer = m_settings.issuer](const Result<>& r) {
      if (!r) spdlog::warn("OIDC discovery of {} at start: {}", issuer, r.error().message);
    });
  }

  ~Impl() {
    for (const auto id : m_in_flight) m_http.cancel(id);
  }

  void login(const std::shared_ptr<ipc::Exchange>& ex) {
    if (!ex->peer().tls) return tls_only(ex);
    auto return_to = checked_return_to(ex->request().query_param("return_to").value_or(""));
    if (!return_to) {
      return ex->respond(ipc::Response::error(400, "invalid_request", return_to.error().message));
    }
    with_metadata(ex, [this, ex, to = std::move(*return_to)] { redirect_to_provider(ex, to); });
  }

  void callback(const std::shared_ptr<ipc::Exchange>& ex) {
    if (!ex->peer().tls) return tls_only(ex);
    const auto& req = ex->request();
    if (auto err = req.query_param("error")) {
      return ex->respond(ipc::Response::error(
          401, "signin_denied",
          fmt::format(
              "the identity provider refused the sign-in: {} {}",
              oauth::printable_excerpt(*err, 64),
              oauth::printable_excerpt(req.query_param("error_description").value_or(""), 200))));
    }
    const auto state = req.query_param("state");
    const auto code = req.query_param("code");
    if (!state || !code || state->empty() || code->empty()) {
      return ex->respond(ipc::Response::error(
          400, "invalid_request", "the sign-in callback needs code and state; sign in again"));
    }
    auto pending = m_db.take_signin(sha256(*state));
    if (!pending) return ex->respond(ipc::error_response(pending.error()));
    const auto browser = cookie_value(req, k_signin_cookie);
    if (!*pending || !browser || !constant_time_equal(sha256(*browser), (*pending)->browser_hash)) {
      return ex->respond(ipc::Response::error(
          400, "invalid_state",
          "this sign-in is unknown, used, expired or was started in another browser; sign in "
          "again"));
    }
    // RFC 9207: the authorization response names its issuer.
    if (auto iss = req.query_param("iss"); iss && *iss != m_settings.issuer) {
      return ex->respond(ipc::Response::error(
          400, "issuer_mismatch",
          fmt::format("the sign-in answer came from issuer '{}', not '{}'",
                      oauth::printable_excerpt(*iss, 100), m_settings.issuer)));
    }
    with_metadata(ex, [this, ex, state = std::string(*state), code = std::string(*code),
                       pending = std::move(**pending)]() mutable {
      redeem(ex, state, code, std::move(pending));
    });
  }

  void logout(const std::shared_ptr<ipc::Exchange>& ex) {
    if (!ex->peer().tls) return tls_only(ex);
    const auto& req = ex->request();
    if (!same_origin(req.header("Origin").value_or(""), m_settings.public_url)) {
      return ex->respond(ipc::Response::error(
          403, "cross_origin",
          "a request signed in by cookie that changes something must come from tokend's own "
          "pages (Origin must be public-url)"));
    }
    std::string hint;
    if (auto id = cookie_value(req, k_session_cookie)) {
      if (auto r = m_db.delete_session(sha256(*id)); !r) {
        return ex->respond(ipc::error_response(r.error()));
      }
      if (auto sealed = cookie_value(req, k_logout_cookie)) hint = open_hint(*sealed, *id);
    }
    // The provider's session ends too (OpenID Connect RP-Initiated Logout
    // 1.0) when it has an end_session_endpoint.
    discover([this, ex, hint = std::move(hint)](const Result<>& known) {
      ipc::Response r;
      if (!known || m_end_session.empty()) {
        r = ipc::Response::json(200, {{"signed_out", true}});
      } else {
        auto state = oauth::random_urlsafe(16);
        std::string url = m_end_session;
        url += url.find('?') == std::string::npos ? '?' : '&';
        if (!hint.empty()) url += "id_token_hint=" + percent_encode(hint) + "&";
        url += "client_id=" + percent_encode(m_settings.client_id) +
               "&post_logout_redirect_uri=" + percent_encode(m_settings.post_logout_redirect_uri);
        if (state) url += "&state=" + percent_encode(state->reveal());
        r = ipc::Response::json(303, {{"signed_out", true}, {"end_session_url", url}});
        r.headers.emplace_back("Location", url);
      }
      r.headers.emplace_back("Set-Cookie", cookie(k_session_cookie, "", 0));
      r.headers.emplace_back("Set-Cookie", cookie(k_logout_cookie, "", 0));
      r.headers.emplace_back("Cache-Control", "no-store");
      ex->respond(std::move(r));
    });
  }

  std::optional<std::string> session_of(const ipc::Request& request, const ipc::Peer& peer) {
    if (!peer.tls) return std::nullopt;
    auto id = cookie_value(request, k_session_cookie);
    if (!id) return std::nullopt;
    auto user = m_db.session_user(sha256(*id));
    if (!user) {
      spdlog::warn("reading a session: {}", user.error().message);
      return std::string();
    }
    return user->value_or(std::string());
  }

  const OidcSettings& settings() const { return m_settings; }

 private:
  // The JWKS is fetched again for an unknown kid at most this often (a
  // token naming keys that do not exist cannot make tokend hammer the
  // provider).
  static constexpr std::chrono::seconds k_jwks_refetch_interval{60};
  // An ID token longer than this is not kept for the logout (the cookie
  // would pass browsers' 4 KiB): the provider's logout gets client_id only.
  static constexpr std::size_t k_max_hint_size = 2800;

  static void tls_only(const std::shared_ptr<ipc::Exchange>& ex) {
    ex->respond(ipc::Response::error(403, "tls_only",
                                     "sign-in is served on the TLS listener (public-url) only"));
  }

  [[nodiscard]] std::string callback_url() const {
    return m_settings.public_url + "/auth/callback";
  }

  // Runs `next` once the provider's metadata and keys are known.
  void with_metadata(const std::shared_ptr<ipc::Exchange>& ex, std::function<void()> next) {
    discover([ex, next = std::move(next)](const Result<>& r) {
      if (!r) return ex->respond(ipc::Response::error(502, "idp_unavailable", r.error().message));
      next();
    });
  }

  // OIDC Discovery from the issuer (the URLs tried in order), then its JWK
  // Set; both kept for the process's life (the keys fetched again for a kid
  // they lack). `done` at once when known.
  void discover(std::function<void(const Result<>&)> done) {
    if (m_metadata && m_keys) return done({});
    auto urls = oauth::metadata_urls(m_settings.issuer);
    if (!urls) return done(std::unexpected(urls.error()));
    fetch_metadata(std::move(*urls), 0, std::move(done));
  }

  void fetch_metadata(std::vector<std::string> urls, std::size_t i,
                      std::function<void(const Result<>&)> done) {
    if (i >= urls.size()) {
      return done(fail(
          Errc::unavailable,
          fmt::format("no OpenID Connect metadata found for oidc-issuer {}", m_settings.issuer)));
    }
    net::HttpRequest req;
    req.url = urls[i];
    req.timeout = m_http_timeout;
    req.headers.emplace_back("Accept", "application/json");
    start(std::move(req),
          [this, urls, i, done = std::move(done)](Result<net::HttpResponse> r) mutable {
            if (!r || r->status != 200)
              return fetch_metadata(std::move(urls), i + 1, std::move(done));
            auto doc = json::parse(r->body.reveal(), "OpenID Connect metadata");
            if (!doc) return fetch_metadata(std::move(urls), i + 1, std::move(done));
            auto meta = oauth::check_server_metadata(*doc, m_settings.issuer);
            if (!meta || meta->authorization_endpoint.empty() || meta->token_endpoint.empty()) {
              return done(fail(Errc::unavailable,
                               fmt::format("the metadata of {} is unusable: {}", m_settings.issuer,
                                           meta ? std::string("no authorization or token endpoint")
                                                : meta.error().message)));
            }
            auto signing = read_signing_metadata(*doc);
            if (!signing) {
              return done(
                  fail(Errc::unavailable, fmt::format("the metadata of {} is unusable: {}",
                                                      m_settings.issuer, signing.error().message)));
            }
            fetch_keys([this, found = std::move(*meta),
                        done = std::move(done)](Result<jws::KeySet> keys) mutable {
              if (!keys) return done(std::unexpected(keys.error()));
              m_metadata = std::move(found);
              m_keys = std::move(*keys);
              done({});
            });
          });
  }

  // jwks_uri (required), the algorithms ID tokens are signed with (default
  // RS256, OIDC Discovery §3) and end_session_endpoint.
  Result<> read_signing_metadata(const json::Json& doc) {
    const std::string jwks_uri = json::string_or(doc, "jwks_uri");
    if (jwks_uri.empty()) return fail(Errc::protocol, "it has no jwks_uri");
    if (auto ok = oauth::check_discovered_url("jwks_uri", jwks_uri, m_settings.issuer); !ok) {
      return std::unexpected(ok.error());
    }
    std::string end_session = json::string_or(doc, "end_session_endpoint");
    if (!end_session.empty()) {
      if (auto ok =
              oauth::check_discovered_url("end_session_endpoint", end_session, m_settings.issuer);
          !ok) {
        return std::unexpected(ok.error());
      }
    }
    std::vector<std::string> algs;
    bool listed = false;
    if (auto it = doc.find("id_token_signing_alg_values_supported");
        it != doc.end() && it->is_array()) {
      listed = true;
      for (const auto& a : *it) {
        if (a.is_string() && jws::supported_alg(a.get_ref<const std::string&>())) {
          algs.push_back(a.get<std::string>());
        }
      }
    }
    if (!listed) algs = {"RS256"};
    if (algs.empty()) {
      return fail(Errc::protocol,
                  "its id_token_signing_alg_values_supported has none of RS256, PS256, ES256, "
                  "EdDSA");
    }
    m_jwks_uri = jwks_uri;
    m_end_session = std::move(end_session);
    m_algs = std::move(algs);
    return {};
  }

  void fetch_keys(std::function<void(Result<jws::KeySet>)> done) {
    net::HttpRequest req;
    req.url = m_jwks_uri;
    req.timeout = m_http_timeout;
    req.max_response_bytes = jws::k_max_jwks_size;
    req.headers.emplace_back("Accept", "application/jwk-set+json, application/json");
    start(std::move(req), [done = std::move(done)](Result<net::HttpResponse> r) {
      if (!r) {
        return done(fail(Errc::unavailable,
                         "the identity provider's JWK Set (jwks_uri): " + r.error().message));
      }
      if (r->status != 200) {
        return done(
            fail(Errc::unavailable,
                 fmt::format("the identity provider's JWK Set (jwks_uri) answered {}", r->status)));
      }
      auto keys = jws::KeySet::parse(r->body.reveal());
      if (!keys) {
        return done(fail(Errc::unavailable,
                         "the identity provider's JWK Set (jwks_uri): " + keys.error().message));
      }
      done(std::move(*keys));
    });
  }

  void redirect_to_provider(const std::shared_ptr<ipc::Exchange>& ex, const std::string& to) {
    auto state = oauth::random_urlsafe(32);
    auto nonce = oauth::random_urlsafe(24);
    auto browser = oauth::random_urlsafe(32);
    if (!state || !nonce || !browser) {
      return ex->respond(ipc::Response::error(500, "internal", "no randomness"));
    }
    const auto verifier = pkce_verifier(state->reveal());
    store::PgDatabase::PendingSignin pending;
    pending.browser_hash = sha256(browser->reveal());
    pending.nonce = std::string(nonce->reveal());
    pending.return_to = to;
    pending.expires_at_ms = to_unix_ms(m_clock.wall_now()) +
                            static_cast<std::int64_t>(m_settings.signin_timeout.count());
    if (auto r = m_db.put_signin(sha256(state->reveal()), pending); !r) {
      return ex->respond(ipc::error_response(r.error()));
    }
    std::string url = m_metadata->authorization_endpoint;
    url += url.find('?') == std::string::npos ? '?' : '&';
    url +=
        "response_type=code&client_id=" + percent_encode(m_settings.client_id) +
        "&redirect_uri=" + percent_encode(callback_url()) +
        "&scope=" + percent_encode(m_settings.user_claim == "email" ? "openid email" : "openid") +
        "&state=" + percent_encode(state->reveal()) + "&nonce=" + percent_encode(nonce->reveal()) +
        "&code_challenge=" + oauth::pkce_challenge(verifier.reveal()) +
        "&code_challenge_method=S256";
    auto r = redirect(302, url);
    r.headers.emplace_back(
        "Set-Cookie",
        cookie(
            k_signin_cookie, browser->reveal(),
            std::chrono::duration_cast<std::chrono::seconds>(m_settings.signin_timeout).count()));
    ex->respond(std::move(r));
  }

  // The PKCE verifier of a sign-in, derived from its state with a key every
  // replica shares: nothing secret is stored for a sign-in in progress.
  [[nodiscard]] Secret pkce_verifier(std::string_view state) const {
    return Secret(base64url_encode(hmac(m_pkce_key, state)));
  }

  void redeem(const std::shared_ptr<ipc::Exchange>& ex, const std::string& state,
              const std::string& code, store::PgDatabase::PendingSignin pending) {
    oauth::TokenEndpoint endpoint;
    endpoint.token_url = m_metadata->token_endpoint;
    endpoint.client_id = m_settings.client_id;
    endpoint.client_secret = m_client_secret;
    endpoint.auth = oauth::ClientAuth::basic;
    const auto verifier = pkce_verifier(state);
    const std::string redirect_uri = callback_url();
    auto req = oauth::make_token_request(endpoint,
                                         {{"grant_type", "authorization_code"},
                                          {"code", code},
                                          {"redirect_uri", redirect_uri},
                                          {"code_verifier", verifier.reveal()}},
                                         m_http_timeout);
    start(std::move(req), [this, ex,
                           pending = std::move(pending)](Result<net::HttpResponse> r) mutable {
      if (!r) {
        return ex->respond(
            ipc::Response::error(502, "idp_unavailable",
                                 "the identity provider's token endpoint: " + r.error().message));
      }
      if (r->status != 200) {
        const auto e = oauth::oauth_error_of(*r);
        return ex->respond(ipc::Response::error(
            401, "signin_failed",
            fmt::format("the identity provider did not redeem the sign-in code ({} {} {}); sign "
                        "in again",
                        r->status, e.error, e.description)));
      }
      auto body = json::parse(r->body.reveal(), "the token answer");
      std::string id_token = body ? json::string_or(*body, "id_token") : std::string();
      if (id_token.empty()) {
        return ex->respond(ipc::Response::error(
            502, "idp_unavailable", "the identity provider's token answer has no id_token"));
      }
      Secret access_token(body ? json::string_or(*body, "access_token") : std::string());
      auto compact = jws::parse_compact(id_token);
      if (!compact) return refuse_token(ex, compact.error().message);
      Signed token{std::move(id_token), std::move(*compact), std::move(access_token),
                   std::move(pending)};
      // A kid the cached keys lack: the provider may have rotated its keys.
      const bool stale =
          !m_keys->has_key(token.jws.kid, token.jws.alg) && jws::supported_alg(token.jws.alg) &&
          (!m_keys_refetched || m_clock.mono_now() - *m_keys_refetched >= k_jwks_refetch_interval);
      if (!stale) return check_token(ex, std::move(token));
      m_keys_refetched = m_clock.mono_now();
      spdlog::info("the ID token names key '{}', not in the cached JWK Set: fetching it again",
                   oauth::printable_excerpt(token.jws.kid, 64));
      fetch_keys([this, ex, token = std::move(token)](Result<jws::KeySet> keys) mutable {
        if (keys) {
          m_keys = std::move(*keys);
        } else {
          spdlog::warn("{}", keys.error().message);
        }
        check_token(ex, std::move(token));
      });
    });
  }

  struct Signed {
    std::string id_token;
    jws::Compact jws;
    Secret access_token;
    store::PgDatabase::PendingSignin pending;
  };

  static void refuse_token(const std::shared_ptr<ipc::Exchange>& ex, const std::string& why) {
    const std::string message = "the ID token: " + why;
    spdlog::warn("sign-in refused: {}", message);
    ex->respond(ipc::Response::error(401, "invalid_id_token", message));
  }

  // The signature first, then the claims; userinfo for a user claim the ID
  // token lacks.
  void check_token(const std::shared_ptr<ipc::Exchange>& ex, Signed token) {
    if (auto ok = m_keys->verify(token.jws, m_algs); !ok) {
      return refuse_token(ex, ok.error().message);
    }
    spdlog::debug("the ID token's {} signature verified with key '{}'", token.jws.alg,
                  oauth::printable_excerpt(token.jws.kid, 64));
    const bool userinfo = !m_metadata->userinfo_endpoint.empty() && !token.access_token.empty();
    auto user = check_id_token(token.id_token, {.issuer = m_settings.issuer,
                                                .client_id = m_settings.client_id,
                                                .nonce = token.pending.nonce,
                                                .user_claim = m_settings.user_claim,
                                                .now = m_clock.wall_now(),
                                                .user_claim_elsewhere = userinfo});
    if (!user) {
      spdlog::warn("sign-in refused: {}", user.error().message);
      return ex->respond(ipc::Response::error(401, "invalid_id_token", user.error().message));
    }
    if (!user->empty()) {
      return start_session(ex, *user, token.pending.return_to, token.id_token);
    }
    auto claims = json::parse(token.jws.payload, "the ID token's claims");
    const std::string sub = claims ? json::string_or(*claims, "sub") : std::string();
    net::HttpRequest req;
    req.url = m_metadata->userinfo_endpoint;
    req.timeout = m_http_timeout;
    req.max_response_bytes = 64 * 1024;
    req.headers.emplace_back("Accept", "application/json");
    req.headers.emplace_back("Authorization", "Bearer " + std::string(token.access_token.reveal()));
    start(std::move(req), [this, ex, sub, token = std::move(token)](Result<net::HttpResponse> r) {
      if (!r || r->status != 200) {
        return ex->respond(ipc::Response::error(
            502, "idp_unavailable",
            r ? fmt::format("the identity provider's userinfo endpoint answered {}", r->status)
              : "the identity provider's userinfo endpoint: " + r.error().message));
      }
      auto named = user_from_userinfo(r->body.reveal(), sub, m_settings.user_claim);
      if (!named) {
        spdlog::warn("sign-in refused: {}", named.error().message);
        return ex->respond(ipc::Response::error(401, "invalid_userinfo", named.error().message));
      }
      spdlog::debug("the user claim '{}' from the userinfo endpoint", m_settings.user_claim);
      start_session(ex, *named, token.pending.return_to, token.id_token);
    });
  }

  void start_session(const std::shared_ptr<ipc::Exchange>& ex, const std::string& user,
                     const std::string& return_to, const std::string& id_token) {
    auto id = oauth::random_urlsafe(32);
    if (!id) return ex->respond(ipc::Response::error(500, "internal", "no randomness"));
    const auto expires = to_unix_ms(m_clock.wall_now()) +
                         static_cast<std::int64_t>(m_settings.session_lifetime.count());
    if (auto r = m_db.put_session(sha256(id->reveal()), user, expires); !r) {
      return ex->respond(ipc::error_response(r.error()));
    }
    spdlog::info("user '{}' signed in", user);
    const auto max_age =
        std::chrono::duration_cast<std::chrono::seconds>(m_settings.session_lifetime).count();
    auto r = redirect(303, return_to);
    r.headers.emplace_back("Set-Cookie", cookie(k_session_cookie, id->reveal(), max_age));
    r.headers.emplace_back("Set-Cookie", cookie(k_signin_cookie, "", 0));
    if (!m_end_session.empty() && id_token.size() <= k_max_hint_size) {
      if (auto sealed = seal_hint(id_token, id->reveal())) {
        r.headers.emplace_back("Set-Cookie", cookie(k_logout_cookie, *sealed, max_age));
      }
    }
    ex->respond(std::move(r));
  }

  // The ID token for the provider's logout: AES-256-GCM under a key derived
  // from the key-encryption key (every replica opens it), the session id's
  // SHA-256 as additional data (it opens only with its own session).
  std::optional<std::string> seal_hint(std::string_view id_token, std::string_view session_id) {
    std::array<unsigned char, 12> iv{};
    if (!fill_random(iv.data(), iv.size())) return std::nullopt;
    const auto aad = sha256(session_id);
    std::string out(iv.size() + id_token.size() + 16, '\0');
    std::memcpy(out.data(), iv.data(), iv.size());
    auto* ct = reinterpret_cast<unsigned char*>(out.data() + iv.size());
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                        EVP_CIPHER_CTX_free);
    int len = 0;
    int total = 0;
    const auto key = m_logout_key.reveal();
    if (!ctx || key.size() < 32 ||
        EVP_EncryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr,
                           reinterpret_cast<const unsigned char*>(key.data()), iv.data()) != 1 ||
        EVP_EncryptUpdate(ctx.get(), nullptr, &len,
                          reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_EncryptUpdate(ctx.get(), ct, &len,
                          reinterpret_cast<const unsigned char*>(id_token.data()),
                          static_cast<int>(id_token.size())) != 1) {
      return std::nullopt;
    }
    total = len;
    if (EVP_EncryptFinal_ex(ctx.get(), ct + total, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, 16, ct + id_token.size()) != 1) {
      return std::nullopt;
    }
    return base64url_encode(out);
  }

  // The ID token sealed by seal_hint, or "" when it does not open.
  std::string open_hint(std::string_view sealed, std::string_view session_id) {
    auto bytes = base64url_decode(sealed);
    if (!bytes || bytes->size() < 12 + 16 + 1 || bytes->size() > 12 + 16 + k_max_hint_size) {
      return {};
    }
    const auto aad = sha256(session_id);
    const std::size_t size = bytes->size() - 12 - 16;
    auto* iv = reinterpret_cast<unsigned char*>(bytes->data());
    auto* ct = iv + 12;
    std::string plain(size, '\0');
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(),
                                                                        EVP_CIPHER_CTX_free);
    int len = 0;
    const auto key = m_logout_key.reveal();
    if (!ctx || key.size() < 32 ||
        EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr,
                           reinterpret_cast<const unsigned char*>(key.data()), iv) != 1 ||
        EVP_DecryptUpdate(ctx.get(), nullptr, &len,
                          reinterpret_cast<const unsigned char*>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()), &len, ct,
                          static_cast<int>(size)) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, 16, ct + size) != 1 ||
        EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(plain.data()) + len,
                            &len) != 1) {
      return {};
    }
    return plain;
  }

  // Starts a transfer whose callback uses this object: one still in flight
  // when it goes away is cancelled.
  void start(net::HttpRequest req, net::HttpTransport::Callback done) {
    auto id = std::make_shared<std::uint64_t>(0);
    const auto started = m_http.start(
        std::move(req), [this, id, done = std::move(done)](Result<net::HttpResponse> r) {
          m_in_flight.erase(*id);
          done(std::move(r));
        });
    *id = started;
    m_in_flight.insert(started);
  }

  net::HttpTransport& m_http;
  store::PgDatabase& m_db;
  const Clock& m_clock;
  OidcSettings m_settings;
  Secret m_client_secret;
  std::chrono::milliseconds m_http_timeout;
  Secret m_pkce_key;
  Secret m_logout_key;
  std::optional<store::ProviderMetadata> m_metadata;
  std::string m_jwks_uri;
  std::string m_end_session;
  std::vector<std::string> m_algs;
  std::optional<jws::KeySet> m_keys;
  std::optional<MonoTime> m_keys_refetched;  // the last fetch for an unknown kid
  std::set<std::uint64_t> m_in_flight;
};

OidcSignin::OidcSignin(net::HttpTransport& http, store::PgDatabase& db, const Clock& clock,
                       OidcSettings settings, Secret client_secret,
                       std::chrono::milliseconds http_timeout)
    : m_impl(std::make_unique<Impl>(http, db, clock, std::move(settings), std::move(client_secret),
                                    http_timeout)) {}

OidcSignin::~OidcSignin() = default;

void OidcSignin::register_routes(ipc::Router& router) {
  router.add("GET", "/auth/login",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { m_impl->login(ex); });
  router.add("GET", "/auth/callback",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { m_impl->callback(ex); });
  router.add("POST", "/auth/logout",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { m_impl->logout(ex); });
}

std::optional<std::string> OidcSignin::session_of(const ipc::Request& request,
                                                  const ipc::Peer& peer) {
  return m_impl->session_of(request, peer);
}

const OidcSettings& OidcSignin::settings() const {
  return m_impl->settings();
}

}  // namespace tokend::daemon
