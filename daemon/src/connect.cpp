#include "daemon/connect.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <set>

#include "core/clock.hpp"
#include "core/fs.hpp"
#include "core/html.hpp"
#include "daemon/web_assets.hpp"
#include "ipc/http.hpp"
#include "login/login.hpp"
#include "net/url.hpp"
#include "tokens/profile_spec.hpp"
#include "tokens/token_service.hpp"

namespace tokend::daemon {

namespace connect_detail {
namespace {

// Template settings and the profile fields they become. Secrets never sit in
// the config file itself: the client secret comes from its own file.
constexpr std::array<std::pair<std::string_view, std::string_view>, 19> k_fields = {{
    {"kind", "kind"},
    {"provider", "provider"},
    {"description", "description"},
    {"client-id", "client_id"},
    {"scopes", "scopes"},
    {"issuer", "issuer"},
    {"authorize-url", "authorize_url"},
    {"token-url", "token_url"},
    {"revocation-url", "revocation_url"},
    {"userinfo-url", "userinfo_url"},
    {"mcp-server", "mcp_server"},
    {"audience", "audience"},
    {"resource", "resource"},
    {"pkce", "pkce"},
    {"token-endpoint-auth", "token_endpoint_auth"},
    {"prompt", "prompt"},
    {"site", "site"},
    {"api-base", "api_base"},
    {"refresh-buffer", "refresh_buffer"},
}};

std::vector<std::string> split_scopes(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  for (const char c : text) {
    if (c == ' ' || c == ',' || c == '\t') {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

// Every answer of the page: no framing, no sniffing, no referrer (the
// callback's URL holds a code), only its own scripts and styles.
constexpr std::string_view k_csp =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

ipc::Response page_response(int status, std::string_view type, std::string body,
                            std::string_view cache) {
  ipc::Response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", std::string(type));
  r.headers.emplace_back("Cache-Control", std::string(cache));
  r.headers.emplace_back("Content-Security-Policy", std::string(k_csp));
  r.headers.emplace_back("X-Frame-Options", "DENY");
  r.headers.emplace_back("X-Content-Type-Options", "nosniff");
  r.headers.emplace_back("Referrer-Policy", "no-referrer");
  // No Cross-Origin-Opener-Policy: the popup goes to the provider and back,
  // and a policy on either end would cut it from its opener, so the callback
  // could not tell the page it is done.
  r.body = std::move(body);
  return r;
}

ipc::Handler asset(std::string_view type, std::string_view body, std::string_view cache) {
  return [type, body, cache](const std::shared_ptr<ipc::Exchange>& ex) {
    ex->respond(page_response(200, type, std::string(body), cache));
  };
}

// The login manager's messages end with the command to run in a terminal;
// on the page, Connect is what to press.
std::string for_page(std::string message) {
  if (const auto at = message.find(" — run tokenctl login "); at != std::string::npos) {
    message.erase(at);
  }
  return message;
}

// The page the provider's redirect ends on: its script (callback.js) tells
// the opener and closes the window; without an opener it stays, readable.
ipc::Response callback_page(int status, const std::string& profile, bool ok,
                            const std::string& reason, const std::string& message) {
  std::string body = fmt::format(
      "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<title>{}</title><link rel=\"icon\" href=\"icon.svg\" type=\"image/svg+xml\">"
      "<link rel=\"stylesheet\" href=\"app.css\">"
      "<script src=\"callback.js\" defer></script></head>\n"
      "<body><main id=\"result\" data-profile=\"{}\" data-ok=\"{}\" data-reason=\"{}\" "
      "data-message=\"{}\"><h1>{}</h1><p>{}</p><p>You can close this window.</p></main>"
      "</body></html>\n",
      ok ? "Connected" : "Not connected", html_escape(profile), ok ? "true" : "false",
      html_escape(reason), html_escape(for_page(message)), ok ? "Connected" : "Not connected",
      html_escape(for_page(message)));
  return page_response(status, "text/html; charset=utf-8", std::move(body), "no-store");
}

}  // namespace
}  // namespace connect_detail

using namespace connect_detail;

bool cross_site_write(const ipc::Request& req, const ConnectSettings& settings) {
  if (req.method == "GET" || req.method == "HEAD") return false;
  if (auto site = req.header("Sec-Fetch-Site"); site && *site != "same-origin" && *site != "none") {
    return true;
  }
  auto origin = req.header("Origin");
  if (!origin || settings.public_url.empty()) return false;
  auto url = net::parse_url(settings.public_url, "public-url");
  return !url || *origin != url->origin();
}

const ProviderTemplate* ConnectSettings::find(std::string_view name) const {
  for (const auto& p : providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

Result<std::string> parse_public_url(std::string_view text) {
  std::string url(text);
  while (url.size() > 1 && url.back() == '/') url.pop_back();
  auto bad = [&](std::string_view why) {
    return fail(Errc::config,
                fmt::format("public-url '{}' {}: give the https address browsers reach tokend at "
                            "through the reverse proxy, e.g. https://tokend.example.com",
                            text, why));
  };
  if (url.find_first_of("?#@") != std::string::npos) return bad("has a query, fragment or user");
  auto parsed = net::parse_url(url, "public-url");
  if (!parsed) return bad("is not a URL");
  if (parsed->scheme != "https") return bad("is not https");
  if (parsed->host.empty()) return bad("has no host");
  return url;
}

Result<ProviderTemplate> make_provider_template(
    const std::string& name, const std::vector<std::pair<std::string, std::string>>& settings,
    const std::string& public_url) {
  auto bad = [&](const std::string& what) {
    return fail(Errc::config, fmt::format("[provider.{}] {}", name, what));
  };
  if (public_url.empty()) {
    return bad(
        "needs public-url: the https address browsers reach tokend at; the provider's redirect "
        "URI is {public-url}/connect/callback");
  }
  ProviderTemplate t;
  t.name = name;
  t.display_name = name;
  json::Json& body = t.body;
  body["kind"] = "oauth2";
  std::set<std::string, std::less<>> seen;
  for (const auto& [key, value] : settings) {
    if (!seen.insert(key).second) return bad(fmt::format("sets '{}' twice", key));
    if (key == "display-name") {
      if (value.empty() || value.size() > 100) return bad("display-name must be 1-100 characters");
      t.display_name = value;
      continue;
    }
    if (key == "client-secret-file") {
      auto secret = fs::read_private_file(value, 16 * 1024);
      if (!secret) return bad("client-secret-file: " + secret.error().message);
      std::string_view v = secret->reveal();
      while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.remove_suffix(1);
      if (v.empty()) return bad(fmt::format("client-secret-file {} is empty", value));
      t.client_secret = Secret(v);
      continue;
    }
    if (key == "redirect-uri") {
      return bad(fmt::format(
          "sets redirect-uri, which the connect page fixes to {}/connect/callback: register that "
          "at the provider and remove the setting",
          public_url));
    }
    if (key == "client-secret" || key == "token" || key == "access-token" ||
        key == "refresh-token") {
      return bad(
          fmt::format("sets '{}': secrets stay out of the config file; put the client "
                      "secret in a file (0600) named by client-secret-file",
                      key));
    }
    const auto* field =
        std::ranges::find_if(k_fields, [&](const auto& f) { return f.first == key; });
    if (field == k_fields.end()) {
      std::string known = "display-name, client-secret-file";
      for (const auto& f : k_fields) known += ", " + std::string(f.first);
      return bad(fmt::format("has no setting '{}' (known: {})", key, known));
    }
    if (key == "scopes") {
      body["scopes"] = split_scopes(value);
    } else if (key == "refresh-buffer") {
      auto n = json::Json::parse(value, nullptr, false);
      if (!n.is_number_integer()) return bad("refresh-buffer must be a number of seconds");
      body["refresh_buffer"] = n;
    } else {
      body[std::string(field->second)] = value;
    }
  }
  if (json::string_or(body, "kind") != "oauth2") {
    return bad("kind must be oauth2: the connect page signs users in at the provider");
  }
  body["redirect_uri"] = public_url + "/connect/callback";
  // Validated as PUT /v1/profiles/NAME would, with the secret in place.
  json::Json full = body;
  if (!t.client_secret.empty()) full["client_secret"] = std::string(t.client_secret.reveal());
  auto spec = tokens::parse_profile_spec(name, full, 0);
  if (full.contains("client_secret")) secure_wipe(full["client_secret"].get_ref<std::string&>());
  if (!spec) return bad(spec.error().message);
  return t;
}

ConnectPage::ConnectPage(tokens::TokenService& tokens, login::LoginManager& login,
                         const std::shared_ptr<const ConnectSettings>& settings)
    : m_tokens(tokens), m_login(login), m_settings(settings) {}

namespace connect_detail {
namespace {

struct RouteShape {
  std::string_view method;
  std::string_view pattern;
};
constexpr std::array<RouteShape, 8> k_routes = {{
    {"GET", "/connect"},
    {"GET", "/connect/app.js"},
    {"GET", "/connect/app.css"},
    {"GET", "/connect/callback.js"},
    {"GET", "/connect/icon.svg"},
    {"GET", "/connect/callback"},
    {"GET", "/connect/providers"},
    {"POST", "/connect/providers/{name}"},
}};

}  // namespace
}  // namespace connect_detail

void ConnectPage::register_route_shapes(ipc::Router& router, const ipc::Handler& handler) {
  for (const auto& r : k_routes) router.add(std::string(r.method), std::string(r.pattern), handler);
}

void ConnectPage::register_routes(ipc::Router& router) {
  // Static files may be revalidated; the rest is per user and never stored.
  router.add("GET", "/connect", asset("text/html; charset=utf-8", web::k_connect_html, "no-store"));
  router.add("GET", "/connect/app.js",
             asset("text/javascript; charset=utf-8", web::k_app_js, "no-cache"));
  router.add("GET", "/connect/app.css",
             asset("text/css; charset=utf-8", web::k_app_css, "no-cache"));
  router.add("GET", "/connect/callback.js",
             asset("text/javascript; charset=utf-8", web::k_callback_js, "no-cache"));
  router.add("GET", "/connect/icon.svg", asset("image/svg+xml", web::k_icon_svg, "no-cache"));
  router.add("GET", "/connect/callback",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { callback(ex); });
  router.add("GET", "/connect/providers",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { list_providers(ex); });
  router.add("POST", "/connect/providers/{name}",
             [this](const std::shared_ptr<ipc::Exchange>& ex) { connect(ex); });
}

// GET /connect/providers: the providers this server offers.
void ConnectPage::list_providers(const std::shared_ptr<ipc::Exchange>& ex) {
  const ConnectSettings& s = *m_settings;
  json::Json list = json::Json::array();
  for (const auto& p : s.providers) {
    list.push_back({{"name", p.name},
                    {"display_name", p.display_name},
                    {"provider", json::string_or(p.body, "provider")},
                    {"description", json::string_or(p.body, "description")}});
  }
  auto r = ipc::Response::json(
      200, {{"user", ex->peer().user}, {"redirect_uri", s.redirect_uri()}, {"providers", list}});
  r.headers.emplace_back("Cache-Control", "no-store");
  ex->respond(std::move(r));
}

// POST /connect/providers/{name}: makes (or brings up to date) the caller's
// profile from the template; the page then starts the login.
void ConnectPage::connect(const std::shared_ptr<ipc::Exchange>& ex) {
  const ConnectSettings& s = *m_settings;
  const std::string name(ex->param("name"));
  const ProviderTemplate* t = s.find(name);
  if (t == nullptr) {
    return ex->respond(ipc::Response::error(
        404, "not_found", fmt::format("this server offers no provider '{}'", name)));
  }
  json::Json body = t->body;
  if (!t->client_secret.empty()) body["client_secret"] = std::string(t->client_secret.reveal());
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  auto spec = tokens::parse_profile_spec(name, body, now_ms);
  if (body.contains("client_secret")) secure_wipe(body["client_secret"].get_ref<std::string&>());
  if (!spec) return ex->respond(ipc::error_response(spec.error()));
  auto created = m_tokens.put_profile(std::move(*spec));
  if (!created) return ex->respond(ipc::error_response(created.error()));
  ex->respond(ipc::Response::json(
      *created ? 201 : 200,
      {{"profile", name}, {"created", *created}, {"redirect_uri", s.redirect_uri()}}));
}

// GET /connect/callback?code=...&state=... (or error=...): the provider's
// redirect, through the reverse proxy, as the signed-in user. Only this
// user's own flows are looked at: a state from anyone else's flow finds
// nothing and completes nothing.
void ConnectPage::callback(const std::shared_ptr<ipc::Exchange>& ex) {
  const ipc::Request& req = ex->request();
  const auto state = req.query_param("state");
  if (!state || state->empty()) {
    return ex->respond(callback_page(400, "", false, "no_state",
                                     "This address is the end of a sign-in at a provider, and "
                                     "this request carries no sign-in state: nothing was done."));
  }
  // This replica's flow, or one another replica started, claimed here.
  auto profile = m_login.claim_state(*state);
  if (!profile) {
    spdlog::warn("user '{}': the connect callback's state is no pending sign-in of theirs",
                 ex->peer().user);
    return ex->respond(callback_page(
        400, "", false, "not_pending",
        "No sign-in of yours is waiting for this answer (it finished, expired, was cancelled, or "
        "was started by someone else), so nothing was completed. Start again from the connect "
        "page."));
  }
  const auto q = req.target.find('?');
  json::Json body = {{"redirect_url", req.target.substr(q == std::string::npos ? 0 : q)}};
  m_login.complete(*profile, body, [ex, name = *profile](Result<json::Json> r) {
    if (!r) {
      return ex->respond(callback_page(400, name, false, "error", r.error().message));
    }
    const std::string st = json::string_or(*r, "state");
    if (st == "succeeded") {
      return ex->respond(
          callback_page(200, name, true, "", fmt::format("'{}' is connected.", name)));
    }
    const json::Json err = r->value("error", json::Json::object());
    ex->respond(callback_page(400, name, false, json::string_or(err, "reason"),
                              json::string_or(err, "message")));
  });
  secure_wipe(body["redirect_url"].get_ref<std::string&>());
}

}  // namespace tokend::daemon
