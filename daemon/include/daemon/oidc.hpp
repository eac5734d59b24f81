// Server mode's sign-in for people: tokend as an OpenID Connect client of the
// organisation's identity provider (docs/server-mode.md, "Signing in with
// OIDC"), over the TLS listener only.
//
//   GET  /auth/login?return_to=PATH  -> 302 to the provider (code, PKCE S256,
//                                       state, nonce), a sign-in cookie
//   GET  /auth/callback              -> code exchange, ID token checked (its
//                                       JWS signature with the issuer's JWKS,
//                                       then its claims; userinfo for a user
//                                       claim the token lacks), a session;
//                                       303 to return_to
//   POST /auth/logout                -> the session ends; 303 to the
//                                       provider's end_session_endpoint when
//                                       it has one (RP-initiated logout)
//
// The pure parts (ID token claims, return_to, cookies, origins) are free
// functions tested on their own; OidcSignin holds the routes.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/secret.hpp"
#include "ipc/http.hpp"
#include "ipc/router.hpp"

namespace tokend::net {
class HttpTransport;
}
namespace tokend::store {
class PgDatabase;
}

namespace tokend::daemon {

inline constexpr std::string_view k_session_cookie = "__Host-tokend-session";
inline constexpr std::string_view k_signin_cookie = "__Host-tokend-signin";
// The ID token, encrypted and bound to the session, for the provider's
// logout (id_token_hint).
inline constexpr std::string_view k_logout_cookie = "__Host-tokend-logout";

struct OidcSettings {
  std::string issuer;
  std::string client_id;
  std::filesystem::path client_secret_file;
  std::string user_claim = "sub";  // or "email"
  std::string public_url;          // https://HOST[:PORT], the base users reach tokend at
  std::chrono::milliseconds session_lifetime{8 * 3600 * 1000};  // session-lifetime
  std::string post_logout_redirect_uri;                         // empty: public_url
  std::chrono::milliseconds signin_timeout{10 * 60 * 1000};
  [[nodiscard]] bool enabled() const { return !issuer.empty(); }
};

// What the ID token must say (OIDC Core §3.1.3.7): `iss` equals the issuer,
// `aud` holds the client id (and `azp`, when present or when `aud` holds
// more than one, equals it), `exp` is after now and `iat` not in the future
// (with `skew` both ways), `nonce` equals the one sent. Returns the user id
// from `user_claim` (`email` only when `email_verified` is not false), or an
// Errc::login_failed error naming the claim that failed. Only the claims:
// OidcSignin checks the token's signature first (daemon/jws.hpp).
struct IdTokenExpectations {
  std::string issuer;
  std::string client_id;
  std::string nonce;
  std::string user_claim = "sub";
  WallTime now;
  std::chrono::seconds skew{120};
  // A token without `user_claim` gives "" instead of an error: the caller
  // asks the userinfo endpoint.
  bool user_claim_elsewhere = false;
};
Result<std::string> check_id_token(std::string_view id_token, const IdTokenExpectations& expect);

// The user id from a userinfo answer (OIDC Core §5.3.2): a JSON object whose
// `sub` equals the ID token's (§5.3.4; else the answer is not about this
// user) and which holds `user_claim` (`email` not with `email_verified`
// false), a valid user id. Errc::login_failed otherwise.
Result<std::string> user_from_userinfo(std::string_view body, std::string_view id_token_sub,
                                       std::string_view user_claim);

// return_to: a path on tokend ("/", "/connect?x=1"), never another origin
// ("//evil", "/\\evil", "https://..."), no control characters. Empty: "/".
Result<std::string> checked_return_to(std::string_view value);

// The value of cookie `name` in the request's Cookie headers; nullopt when
// absent (a repeated cookie is treated as absent: ambiguous).
std::optional<std::string> cookie_value(const ipc::Request& request, std::string_view name);

// Whether `origin` (an Origin header) is the origin of `public_url` (which
// may end in the reverse proxy's path prefix; parse_public_url checks it).
bool same_origin(std::string_view origin, std::string_view public_url);

// Whether a method changes state (anything but GET, HEAD, OPTIONS).
bool state_changing(std::string_view method);

// The routes. Discovery on first use (OIDC Discovery from the issuer, via
// oauth/discovery); sign-ins in progress and sessions in PostgreSQL, so any
// replica finishes a sign-in another started and knows every session.
class OidcSignin {
 public:
  OidcSignin(net::HttpTransport& http, store::PgDatabase& db, const Clock& clock,
             OidcSettings settings, Secret client_secret, std::chrono::milliseconds http_timeout);
  ~OidcSignin();
  OidcSignin(const OidcSignin&) = delete;
  OidcSignin& operator=(const OidcSignin&) = delete;

  void register_routes(ipc::Router& router);

  // The session a request's cookie names, over TLS: nullopt without a
  // cookie; else the user, or an empty string for an unknown or expired
  // session.
  std::optional<std::string> session_of(const ipc::Request& request, const ipc::Peer& peer);

  [[nodiscard]] const OidcSettings& settings() const;

  class Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace tokend::daemon
