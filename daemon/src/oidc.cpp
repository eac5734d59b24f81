#include "daemon/oidc.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <set>
#include <utility>
#include <vector>

#include "core/encoding.hpp"
#include "core/json.hpp"
#include "core/random.hpp"
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

// base64url without padding (JWS compact serialisation) to bytes.
std::optional<std::string> base64url_decode(std::string_view text) {
  std::string s(text);
  std::replace(s.begin(), s.end(), '-', '+');
  std::replace(s.begin(), s.end(), '_', '/');
  while (s.size() % 4 != 0) s.push_back('=');
  return base64_decode(s);
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
        m_pkce_key(db.derive_key("tokend oidc pkce")) {}

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
    if (auto id = cookie_value(req, k_session_cookie)) {
      if (auto r = m_db.delete_session(sha256(*id)); !r) {
        return ex->respond(ipc::error_response(r.error()));
      }
    }
    ipc::Response r = ipc::Response::json(200, {{"signed_out", true}});
    r.headers.emplace_back("Set-Cookie", cookie(k_session_cookie, "", 0));
    r.headers.emplace_back("Cache-Control", "no-store");
    ex->respond(std::move(r));
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
  static void tls_only(const std::shared_ptr<ipc::Exchange>& ex) {
    ex->respond(ipc::Response::error(403, "tls_only",
                                     "sign-in is served on the TLS listener (public-url) only"));
  }

  [[nodiscard]] std::string callback_url() const {
    return m_settings.public_url + "/auth/callback";
  }

  // Runs `next` once the provider's metadata is known (OIDC Discovery, the
  // URLs tried in order; the answer kept for the process's life).
  void with_metadata(const std::shared_ptr<ipc::Exchange>& ex, std::function<void()> next) {
    if (m_metadata) return next();
    auto urls = oauth::metadata_urls(m_settings.issuer);
    if (!urls) return ex->respond(ipc::error_response(urls.error()));
    fetch_metadata(ex, std::move(*urls), 0, std::move(next));
  }

  void fetch_metadata(const std::shared_ptr<ipc::Exchange>& ex, std::vector<std::string> urls,
                      std::size_t i, std::function<void()> next) {
    if (i >= urls.size()) {
      return ex->respond(ipc::Response::error(
          502, "idp_unavailable",
          fmt::format("no OpenID Connect metadata found for oidc-issuer {}", m_settings.issuer)));
    }
    net::HttpRequest req;
    req.url = urls[i];
    req.timeout = m_http_timeout;
    req.headers.emplace_back("Accept", "application/json");
    start(std::move(req),
          [this, ex, urls, i, next = std::move(next)](Result<net::HttpResponse> r) mutable {
            if (!r || r->status != 200)
              return fetch_metadata(ex, std::move(urls), i + 1, std::move(next));
            auto doc = json::parse(r->body.reveal(), "OpenID Connect metadata");
            if (!doc) return fetch_metadata(ex, std::move(urls), i + 1, std::move(next));
            auto meta = oauth::check_server_metadata(*doc, m_settings.issuer);
            if (!meta || meta->authorization_endpoint.empty() || meta->token_endpoint.empty()) {
              return ex->respond(ipc::Response::error(
                  502, "idp_unavailable",
                  fmt::format("the metadata of {} is unusable: {}", m_settings.issuer,
                              meta ? std::string("no authorization or token endpoint")
                                   : meta.error().message)));
            }
            m_metadata = std::move(*meta);
            next();
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
    start(std::move(req), [this, ex, pending = std::move(pending)](Result<net::HttpResponse> r) {
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
      const std::string id_token = body ? json::string_or(*body, "id_token") : std::string();
      if (id_token.empty()) {
        return ex->respond(ipc::Response::error(
            502, "idp_unavailable", "the identity provider's token answer has no id_token"));
      }
      auto user = check_id_token(id_token, {.issuer = m_settings.issuer,
                                            .client_id = m_settings.client_id,
                                            .nonce = pending.nonce,
                                            .user_claim = m_settings.user_claim,
                                            .now = m_clock.wall_now()});
      if (!user) {
        spdlog::warn("sign-in refused: {}", user.error().message);
        return ex->respond(ipc::Response::error(401, "invalid_id_token", user.error().message));
      }
      start_session(ex, *user, pending.return_to);
    });
  }

  void start_session(const std::shared_ptr<ipc::Exchange>& ex, const std::string& user,
                     const std::string& return_to) {
    auto id = oauth::random_urlsafe(32);
    if (!id) return ex->respond(ipc::Response::error(500, "internal", "no randomness"));
    const auto expires = to_unix_ms(m_clock.wall_now()) +
                         static_cast<std::int64_t>(m_settings.session_lifetime.count());
    if (auto r = m_db.put_session(sha256(id->reveal()), user, expires); !r) {
      return ex->respond(ipc::error_response(r.error()));
    }
    spdlog::info("user '{}' signed in", user);
    auto r = redirect(303, return_to);
    r.headers.emplace_back(
        "Set-Cookie",
        cookie(
            k_session_cookie, id->reveal(),
            std::chrono::duration_cast<std::chrono::seconds>(m_settings.session_lifetime).count()));
    r.headers.emplace_back("Set-Cookie", cookie(k_signin_cookie, "", 0));
    ex->respond(std::move(r));
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
  std::optional<store::ProviderMetadata> m_metadata;
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
