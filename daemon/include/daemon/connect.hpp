// Server mode's connect page (docs/server-mode.md, "Connect page").
//
// The operator names the providers a user may connect in the server's config
// file, one [provider.NAME] section each, with the settings a profile has;
// their redirect URI is fixed to {public-url}/connect/callback. A user's
// profile NAME is made from the template on their first Connect (and brought
// up to the template's current settings on every later one).
//
// The page itself is plain HTML, CSS and JavaScript from web/connect/,
// embedded in the binary at build time. Its routes belong to a user's part
// of the server (registered in each tenant's router, like the /v1 API), so a
// request reaches only the caller's own profiles and login flows; the
// callback finds the caller's own pending flow by its state and finishes it
// through the login manager's pasted-redirect path.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"
#include "core/secret.hpp"
#include "ipc/router.hpp"

namespace tokend::tokens {
class TokenService;
}
namespace tokend::login {
class LoginManager;
}

namespace tokend::daemon {

// A [provider.NAME] section: what a user's profile NAME is made from.
struct ProviderTemplate {
  std::string name;          // the profile's name
  std::string display_name;  // shown on the page (default: the name)
  // The body of PUT /v1/profiles/NAME, redirect_uri included, without the
  // client secret.
  json::Json body = json::Json::object();
  Secret client_secret;  // from client-secret-file; empty: a public client
};

struct ConnectSettings {
  // https://HOST[/PREFIX], without a trailing slash: where browsers reach
  // tokend through the reverse proxy.
  std::string public_url;
  std::vector<ProviderTemplate> providers;

  // {public-url}/connect/callback: the redirect URI to register at every
  // provider.
  [[nodiscard]] std::string redirect_uri() const { return public_url + "/connect/callback"; }
  [[nodiscard]] const ProviderTemplate* find(std::string_view name) const;
};

// public-url checked and normalised: an https URL with a host, no query,
// fragment or user info; the trailing slash dropped.
Result<std::string> parse_public_url(std::string_view text);

// One [provider.NAME] section's raw settings (INI key, value) made into a
// template and validated as a profile would be (PUT /v1/profiles); the
// client secret is read from its file. Errors are Errc::config, name the
// section and setting, and never hold the secret.
Result<ProviderTemplate> make_provider_template(
    const std::string& name, const std::vector<std::pair<std::string, std::string>>& settings,
    const std::string& public_url);

// Whether a request that changes something comes from another site's page:
// a `Sec-Fetch-Site` other than same-origin or none, or an `Origin` that is
// not public-url's. Behind a proxy that signs users in with a cookie, such a
// request would act for the signed-in user (cross-site request forgery);
// server mode refuses it (403 cross_origin) on every route. GET and HEAD
// change nothing and pass; services (no browser) send neither header.
bool cross_site_write(const ipc::Request& req, const ConnectSettings& settings);

// One user's connect page.
class ConnectPage {
 public:
  // `settings` is the server's current settings (replaced on SIGHUP); it
  // outlives the page.
  ConnectPage(tokens::TokenService& tokens, login::LoginManager& login,
              const std::shared_ptr<const ConnectSettings>& settings);

  void register_routes(ipc::Router& router);
  // The same routes, every one to `handler` (server mode's front router).
  static void register_route_shapes(ipc::Router& router, const ipc::Handler& handler);

 private:
  void list_providers(const std::shared_ptr<ipc::Exchange>& ex);
  void connect(const std::shared_ptr<ipc::Exchange>& ex);
  void callback(const std::shared_ptr<ipc::Exchange>& ex);

  tokens::TokenService& m_tokens;
  login::LoginManager& m_login;
  const std::shared_ptr<const ConnectSettings>& m_settings;
};

}  // namespace tokend::daemon
