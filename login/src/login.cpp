#include "login/login.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "core/encoding.hpp"
#include "net/url.hpp"
#include "oauth/atlassian.hpp"
#include "oauth/discovery.hpp"
#include "oauth/protocol.hpp"
#include "oauth/pkce.hpp"
#include "tokens/profile_spec.hpp"

namespace tokend::login {

using json::Json;

// The parameters of an authorization response (RFC 6749 §4.1.2). A missing
// state is kept as "" so that it fails the comparison.
struct Redirect {
  std::string code;
  std::optional<std::string> state = std::string();
  std::optional<std::string> error;
  std::string description;
  std::optional<std::string> iss;  // RFC 9207
  bool bare = false;                // a bare code, typed in
};


namespace {

constexpr std::string_view k_default_redirect_uri = "http://127.0.0.1:8976/callback";
constexpr std::string_view k_device_grant = "urn:ietf:params:oauth:grant-type:device_code";
constexpr Millis k_default_device_interval{5'000};
constexpr Millis k_slow_down_step{5'000};  // RFC 8628 §3.5
constexpr Millis k_max_device_lifetime{1'800'000};


std::vector<std::string> list_of(const Json& j, const char* key) {
  std::vector<std::string> out;
  if (!j.is_object()) return out;
  if (auto it = j.find(key); it != j.end() && it->is_array()) {
    for (const auto& v : *it) {
      if (v.is_string()) out.push_back(v.get<std::string>());
    }
  }
  return out;
}

bool contains(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (const auto& s : v) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

Redirect redirect_of(std::vector<std::pair<std::string, std::string>> query) {
  Redirect r;
  for (auto& [k, v] : query) {
    if (k == "code") r.code = std::move(v);
    if (k == "state") r.state = std::move(v);
    if (k == "error") r.error = std::move(v);
    if (k == "error_description") r.description = std::move(v);
    if (k == "iss") r.iss = std::move(v);
  }
  return r;
}

// A client id that is a client ID metadata document URL (MCP 2026-07-28,
// draft-ietf-oauth-client-id-metadata-document): https with a path.
bool is_client_id_metadata_url(std::string_view client_id) {
  if (!client_id.starts_with("https://")) return false;
  const auto slash = client_id.find('/', 8);
  return slash != std::string_view::npos && slash + 1 < client_id.size();
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string page(std::string_view title, std::string_view text) {
  return fmt::format(
      "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tokend: {0}</title></head>\n"
      "<body style=\"font-family: sans-serif; margin: 3em\"><h1>{0}</h1><p>{1}</p></body></html>\n",
      html_escape(title), html_escape(text));
}


}  // namespace

struct LoginManager::Flow {
  std::uint64_t id = 0;
  std::string profile;
  bool device = false;
  enum class Phase { resolving, awaiting, exchanging, finishing, done } phase = Phase::resolving;
  std::string state = "pending";  // pending, succeeded, failed, cancelled, expired
  std::string reason;
  std::string message;
  std::string warning;
  Json extra = Json::object();
  MonoTime deadline{};
  std::int64_t expires_at_ms = 0;
  std::optional<std::int64_t> token_expires_at_ms;
  store::Profile resolved;
  oauth::TokenEndpoint endpoint;
  std::uint64_t http_id = 0;
  bool http_pending = false;
  // code
  Secret state_value;
  std::optional<oauth::Pkce> pkce;
  std::string redirect_uri;
  std::string callback_path;
  std::vector<std::string> asked_scopes;
  std::string authorize_url;
  std::unique_ptr<CallbackListener> listener;
  std::function<void(CallbackReply)> browser_reply;
  std::vector<JsonCallback> completions;
  JsonCallback start_done;  // a start still waiting for the provider
  // device
  Secret device_code;
  std::string user_code;
  std::string verification_uri;
  std::string verification_uri_complete;
  Millis interval{k_default_device_interval};
  std::optional<MonoTime> next_poll;
};

LoginManager::LoginManager(tokens::TokenService& tokens, const Clock& clock, tokens::EventBus& events, tokens::TimerPort& timer,
                           net::HttpTransport& http, CallbackPort* callbacks, LoginOptions options)
    : m_tokens(tokens),
      m_clock(clock),
      m_events(events),
      m_timer(timer),
      m_http(http),
      m_callbacks(callbacks),
      m_options(std::move(options)) {
  if (!m_options.random) m_options.random = [](std::size_t n) { return oauth::random_urlsafe(n); };
}

LoginManager::~LoginManager() { shutdown(); }

void LoginManager::shutdown() {
  if (m_shut_down) return;
  m_shut_down = true;
  *m_alive = false;
  m_timer.disarm();
  for (auto& [id, _] : m_requests) m_http.cancel(id);
  m_requests.clear();
  for (auto& [name, f] : m_flows) {
    if (f->state == "pending") fail_flow(*f, "cancelled", "shutdown", "tokend is shutting down");
  }
}

LoginManager::Flow* LoginManager::find(const std::string& profile, std::uint64_t id) {
  auto it = m_flows.find(profile);
  if (it == m_flows.end() || it->second->id != id) return nullptr;
  return it->second.get();
}

// --- HTTP helpers ------------------------------------------------------------

void LoginManager::fetch_json(std::string url, std::function<void(Result<Json>, const net::HttpResponse*)> done,
                              net::HttpHeaders headers) {
  net::HttpRequest r;
  r.method = "GET";
  r.url = url;
  r.timeout = m_options.http_timeout;
  r.headers = std::move(headers);
  r.headers.emplace_back("Accept", "application/json");
  auto alive = m_alive;
  // The id is known only after start() returns; the callback never runs
  // before that (HttpTransport calls back on a later loop iteration).
  auto id_holder = std::make_shared<std::uint64_t>(0);
  *id_holder = m_http.start(std::move(r), [this, alive, id_holder, url, done = std::move(done)](
                                              Result<net::HttpResponse> res) {
    if (!*alive) return;
    m_requests.erase(*id_holder);
    if (!res) {
      done(fail(res.error().code == Errc::timeout ? Errc::transient : Errc::transient,
                fmt::format("{} could not be reached: {}", url, res.error().message)),
           nullptr);
      return;
    }
    if (res->status != 200) {
      done(fail(res->status >= 500 ? Errc::transient : Errc::protocol,
                fmt::format("{} answered {}", url, res->status)),
           &*res);
      return;
    }
    auto j = json::parse(res->body.reveal(), url);
    if (!j) {
      done(fail(Errc::protocol, fmt::format("{} did not answer JSON", url)), &*res);
      return;
    }
    done(std::move(*j), &*res);
  });
  m_requests.emplace(*id_holder, true);
}

// A request on behalf of a flow: `then` runs only while the flow is still
// the profile's current one and pending (ending a flow cancels its request).
void LoginManager::send_for(Flow& f, net::HttpRequest request, FlowResponse then) {
  auto alive = m_alive;
  f.http_pending = true;
  f.http_id = m_http.start(std::move(request), [this, alive, name = f.profile, id = f.id,
                                                then = std::move(then)](Result<net::HttpResponse> res) {
    if (!*alive) return;
    Flow* fp = find(name, id);
    if (fp == nullptr || fp->state != "pending") return;
    fp->http_pending = false;
    then(*fp, std::move(res));
  });
}

// --- resolving: discovery and registration ------------------------------------

namespace {

// Tries `urls` in order; the first JSON answer wins, 404s move on.
struct UrlTrial {
  std::vector<std::string> urls;
  std::size_t next = 0;
  std::vector<std::string> tried;
};

}  // namespace

// What the resolver found goes into the profile as it is now, not as it was
// when the login started: only the keys the resolver owns are written, and
// nothing at all when the profile was changed meanwhile so that the
// discovery no longer applies (a PUT wins; the login stops).
Result<> LoginManager::store_resolved(const store::Profile& found, std::initializer_list<const char*> keys,
                                      bool client_secret, const std::string* replaces_client_id) {
  auto current = m_tokens.profile_of(found.name);
  if (!current) return std::unexpected(current.error());
  const auto changed = [&](const char* key) {
    return current->config.value(key, Json()) != found.config.value(key, Json());
  };
  const bool client_changed = !found.config.value("client_registered", false) && changed("client_id");
  if (current->kind != found.kind || current->provider != found.provider || changed("issuer") ||
      changed("mcp_server") || changed("authorization_server") ||
      (client_changed && !json::string_or(current->config, "client_id").empty() &&
       (replaces_client_id == nullptr || json::string_or(current->config, "client_id") != *replaces_client_id))) {
    return fail(Errc::conflict,
                fmt::format("profile '{}' was changed while its login was starting (provider, issuer, MCP server or "
                            "client id); nothing found for the old settings was stored — run tokenctl login {} again",
                            found.name, found.name));
  }
  for (const char* key : keys) {
    if (auto it = found.config.find(key); it != found.config.end()) {
      current->config[key] = *it;
    } else {
      current->config.erase(key);
    }
  }
  if (client_secret) {
    Json secrets = Json::object();
    if (!current->secret_config.empty()) {
      if (auto j = json::parse(current->secret_config.reveal(), "stored secret config"); j && j->is_object()) {
        secrets = std::move(*j);
      }
    }
    secrets.erase("client_secret");
    if (!found.secret_config.empty()) {
      if (auto j = json::parse(found.secret_config.reveal(), "registered secret"); j && j->is_object() &&
                                                                                   j->contains("client_secret")) {
        secrets["client_secret"] = (*j)["client_secret"];
      }
    }
    current->secret_config = secrets.empty() ? Secret() : Secret::adopt(secrets.dump());
    if (secrets.contains("client_secret")) secure_wipe(secrets["client_secret"].get_ref<std::string&>());
  }
  return m_tokens.update_profile(*current);
}

// A client ID metadata document: fetched before the flow starts; its
// client_id must be its own URL and its redirect_uris must hold the one this
// login uses.
void LoginManager::check_metadata_document(std::shared_ptr<store::Profile> profile,
                                           std::function<void(Result<store::Profile>)> next) {
  const std::string url = json::string_or(profile->config, "client_id");
  std::string redirect = json::string_or(profile->config, "redirect_uri");
  if (redirect.empty()) redirect = std::string(k_default_redirect_uri);
  fetch_json(url, [profile, next, url, redirect](Result<Json> j, const net::HttpResponse*) {
    if (!j) {
      next(fail(Errc::invalid_argument,
                fmt::format("the client ID metadata document could not be read: {}", j.error().message)));
      return;
    }
    if (!j->is_object() || json::string_or(*j, "client_id") != url) {
      next(fail(Errc::invalid_argument,
                fmt::format("the client ID metadata document {} must be a JSON object whose client_id is its own URL",
                            url)));
      return;
    }
    const auto uris = list_of(*j, "redirect_uris");
    if (!contains(uris, redirect)) {
      std::vector<std::string> shown;
      for (const auto& u : uris) shown.push_back(oauth::printable_excerpt(u, 200));
      next(fail(Errc::invalid_argument,
                fmt::format("the redirect URI {} is not listed in the client ID metadata document {}; it allows {}. "
                            "Use one of them: tokenctl add {} ... --redirect-uri URI",
                            redirect, url, shown.empty() ? "none" : join(shown, ", "), profile->name)));
      return;
    }
    const std::string method = json::string_or(*j, "token_endpoint_auth_method", "none");
    if (method != "none") {
      next(fail(Errc::invalid_argument,
                fmt::format("the client ID metadata document {} asks for token_endpoint_auth_method {}; tokend can "
                            "use such a document only as a public client (none)", url, oauth::printable_excerpt(method, 64))));
      return;
    }
    profile->config["token_endpoint_auth"] = "none";
    profile->config["redirect_uri"] = redirect;
    next(*profile);
  });
}

void LoginManager::resolve(const std::string& name, std::function<void(Result<store::Profile>)> next) {
  auto p = m_tokens.profile_of(name);
  if (!p) {
    next(std::unexpected(p.error()));
    return;
  }
  if (p->kind != store::CredentialKind::oauth2) {
    next(fail(Errc::invalid_argument,
              fmt::format("profile '{}' holds a static {}; there is nothing to log in to (replace it with tokenctl add)",
                          name, p->kind == store::CredentialKind::pat ? "personal access token" : "API token")));
    return;
  }
  const Json& config = p->config;
  const Json discovered = config.value("discovered", Json::object());
  const std::string mcp_server = json::string_or(config, "mcp_server");
  const std::string issuer = json::string_or(config, "issuer");
  const std::string wanted_as = json::string_or(config, "authorization_server");
  auto profile = std::make_shared<store::Profile>(std::move(*p));
  auto alive = m_alive;

  // Step 3: dynamic client registration when there is no client id.
  // The order of choice (MCP 2026-07-28): a pre-registered client id, then a
  // client ID metadata document where the server supports it, then DCR.
  auto register_client = [this, alive, name, profile, next]() {
    const oauth::ProviderEndpoints ep = oauth::endpoints_of(*profile);
    const Json found = profile->config.value("discovered", Json::object());
    if (profile->config.value("client_registered", false) &&
        json::string_or(profile->config, "client_registered_for") != ep.issuer) {
      // Registrations are keyed by the authorization server's issuer: a
      // client registered with another one means nothing here.
      spdlog::info("profile {}: the authorization server changed (client registered with {}, now {}); registering again",
                   name, json::string_or(profile->config, "client_registered_for", "an unknown issuer"), ep.issuer);
      for (const char* key : {"client_id", "client_registered", "client_registered_for", "token_endpoint_auth"}) {
        profile->config.erase(key);
      }
      profile->secret_config = Secret();
    }
    const std::string configured_id = json::string_or(profile->config, "client_id");
    if (is_client_id_metadata_url(configured_id)) {
      if (found.value("client_id_metadata_document_supported", false)) {
        check_metadata_document(profile, next);
        return;
      }
      if (ep.registration_url.empty()) {
        next(fail(Errc::invalid_argument,
                  fmt::format("profile '{}' uses the client ID metadata document {}, but the authorization server {} "
                              "does not advertise client_id_metadata_document_supported and offers no dynamic "
                              "registration; use a client id registered there (tokenctl add {} --client-id ID)",
                              name, configured_id, ep.issuer.empty() ? "(unknown)" : ep.issuer, name)));
        return;
      }
      // Next in the order: dynamic registration. The document URL is kept
      // for a server that supports it later.
      profile->config["client_id_metadata_document"] = configured_id;
      profile->config.erase("client_id");
    } else if (!configured_id.empty()) {
      const std::string doc = json::string_or(profile->config, "client_id_metadata_document");
      if (profile->config.value("client_registered", false) && !doc.empty() &&
          found.value("client_id_metadata_document_supported", false)) {
        // Registered only because the server did not take the document
        // then; now it does, and the document comes first.
        spdlog::info("profile {}: the authorization server now supports client ID metadata documents; using {}",
                     name, doc);
        for (const char* key : {"client_registered", "client_registered_for", "token_endpoint_auth"}) {
          profile->config.erase(key);
        }
        profile->secret_config = Secret();
        profile->config["client_id"] = doc;
        check_metadata_document(profile, [this, alive, registered = configured_id, next](Result<store::Profile> checked) {
          if (!*alive) return;
          if (checked) {
            if (auto stored = store_resolved(*checked, {"client_id", "client_registered", "client_registered_for",
                                                        "token_endpoint_auth"}, true, &registered);
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
    } else if (const std::string doc = json::string_or(profile->config, "client_id_metadata_document");
               !doc.empty() && found.value("client_id_metadata_document_supported", false)) {
      profile->config["client_id"] = doc;
      check_metadata_document(profile, next);
      return;
    }
    if (ep.registration_url.empty()) {
      next(fail(Errc::invalid_argument,
                fmt::format("profile '{}' has no client_id and the provider offers no dynamic client registration; "
                            "register an app with the provider and run tokenctl add {} --client-id ID",
                            name, name)));
      return;
    }
    const std::string redirect = json::string_or(profile->config, "redirect_uri").empty()
                                     ? std::string(k_default_redirect_uri)
                                     : json::string_or(profile->config, "redirect_uri");
    const auto methods = list_of(profile->config.value("discovered", Json::object()),
                                 "token_endpoint_auth_methods_supported");
    const std::string auth = methods.empty() || contains(methods, "none") ? "none"
                             : contains(methods, "client_secret_basic") ? "client_secret_basic"
                                                                         : "client_secret_post";
    // application_type native (OIDC Dynamic Registration §2, asked for by
    // MCP 2026-07-28): a loopback http redirect is only valid for native
    // clients, which is what tokend is.
    Json body = {{"client_name", "tokend"},
                 {"application_type", "native"},
                 {"redirect_uris", {redirect}},
                 {"grant_types", {"authorization_code", "refresh_token"}},
                 {"response_types", {"code"}},
                 {"token_endpoint_auth_method", auth}};
    if (const auto scopes = list_of(profile->config, "scopes"); !scopes.empty()) body["scope"] = join(scopes, " ");
    net::HttpRequest r;
    r.method = "POST";
    r.url = ep.registration_url;
    r.timeout = m_options.http_timeout;
    r.headers = {{"Content-Type", "application/json"}, {"Accept", "application/json"}};
    r.body = Secret::adopt(body.dump());
    auto id = std::make_shared<std::uint64_t>(0);
    *id = m_http.start(std::move(r), [this, alive, id, name, profile, next, redirect, url = ep.registration_url,
                                      as_issuer = ep.issuer](Result<net::HttpResponse> res) {
      if (!*alive) return;
      m_requests.erase(*id);
      if (!res) {
        next(fail(Errc::transient, fmt::format("client registration at {} failed: {}", url, res.error().message)));
        return;
      }
      if (res->status != 201 && res->status != 200) {
        const auto err = oauth::oauth_error_of(*res);
        next(fail(Errc::protocol, fmt::format("client registration at {} was refused ({}{}{})", url, res->status,
                                              err.error.empty() ? "" : ": " + err.error,
                                              err.description.empty() ? "" : ": " + err.description)));
        return;
      }
      auto j = json::parse(res->body.reveal(), "the registration answer");
      const std::string client_id = j ? json::string_or(*j, "client_id") : std::string();
      if (client_id.empty() || client_id.size() > 1024) {
        next(fail(Errc::protocol, fmt::format("client registration at {} answered without a client_id", url)));
        return;
      }
      profile->config["client_id"] = client_id;
      profile->config["client_registered"] = true;
      profile->config["client_registered_for"] = as_issuer;
      profile->config["redirect_uri"] = redirect;
      const std::string method = json::string_or(*j, "token_endpoint_auth_method");
      profile->config["token_endpoint_auth"] = method.empty() ? "none" : method;
      const std::string secret = json::string_or(*j, "client_secret");
      if (!secret.empty()) {
        Json secrets = {{"client_secret", secret}};
        profile->secret_config = Secret::adopt(secrets.dump());
      } else {
        profile->config["token_endpoint_auth"] = "none";
      }
      // Kept so the next login (and the next start) reuses it.
      if (auto stored = store_resolved(*profile, {"client_id", "client_registered", "client_registered_for", "redirect_uri",
                                                  "token_endpoint_auth", "client_id_metadata_document"},
                                       true);
          !stored) {
        next(std::unexpected(stored.error()));
        return;
      }
      spdlog::info("profile {}: registered client {} at {}", name, client_id, url);
      m_events.publish("client_registered", name, to_unix_ms(m_clock.wall_now()), {{"client_id", client_id}});
      next(*profile);
    });
    m_requests.emplace(*id, true);
  };

  // Step 2: authorization server metadata for `as_issuer`.
  auto discover_as = [this, alive, name, profile, register_client, next](std::string as_issuer, Json extra) {
    auto urls = oauth::metadata_urls(as_issuer);
    if (!urls) {
      next(std::unexpected(urls.error()));
      return;
    }
    auto trial = std::make_shared<UrlTrial>(UrlTrial{std::move(*urls), 0, {}});
    auto step = std::make_shared<std::function<void()>>();
    *step = [this, alive, trial, step, as_issuer, extra, name, profile, register_client, next]() {
      if (trial->next >= trial->urls.size()) {
        *step = nullptr;
        next(fail(Errc::protocol, fmt::format("no authorization server metadata found for issuer {} (tried {})",
                                              as_issuer, join(trial->tried, ", "))));
        return;
      }
      const std::string url = trial->urls[trial->next++];
      trial->tried.push_back(url);
      fetch_json(url, [alive, trial, step, url, as_issuer, extra, name, profile, register_client, next, this](
                          Result<Json> j, const net::HttpResponse* res) {
        if (!j) {
          if (res != nullptr && (res->status == 404 || res->status == 400 || res->status == 405)) {
            (*step)();
            return;
          }
          *step = nullptr;
          next(std::unexpected(j.error()));
          return;
        }
        *step = nullptr;
        auto checked = oauth::check_server_metadata(*j, as_issuer);
        if (!checked) {
          next(std::unexpected(checked.error()));
          return;
        }
        Json found = std::move(*checked);
        for (const auto& [k, v] : extra.items()) found[k] = v;
        found["at"] = to_unix_ms(m_clock.wall_now()) / 1000;
        profile->config["discovered"] = std::move(found);
        if (auto stored = store_resolved(*profile, {"discovered"}, false); !stored) {
          next(std::unexpected(stored.error()));
          return;
        }
        spdlog::info("profile {}: discovered the authorization server {}", name, as_issuer);
        register_client();
      });
    };
    (*step)();
  };

  if (profile->provider == "mcp") {
    // Discovery runs again at every login (a few small GETs; logins are
    // rare): an MCP server may move to another authorization server, and
    // registrations are keyed by its issuer (register_client redoes one
    // made with another).
    // Step 1: the protected resource metadata, from the server's 401
    // challenge or the well-known paths.
    auto with_prm = [this, alive, name, mcp_server, wanted_as, discover_as, next](Result<Json> j) {
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
        auto it = std::find_if(prm->authorization_servers.begin(), prm->authorization_servers.end(),
                               [&](const std::string& as) { return oauth::same_resource(as, wanted_as); });
        if (it == prm->authorization_servers.end()) {
          next(fail(Errc::invalid_argument,
                    fmt::format("profile '{}' asks for the authorization server {}, but the MCP server names {}; "
                                "choose one of them with tokenctl add {} ... --authorization-server URL",
                                name, wanted_as, join(prm->authorization_servers, ", "), name)));
          return;
        }
        chosen = *it;
      }
      Json extra = {{"resource", prm->resource}, {"authorization_server", chosen},
                    {"authorization_servers", prm->authorization_servers}};
      if (!prm->scopes_supported.empty()) extra["resource_scopes"] = prm->scopes_supported;
      discover_as(chosen, std::move(extra));
    };
    auto from_well_known = [this, alive, mcp_server, with_prm, next]() {
      auto urls = oauth::protected_resource_urls(mcp_server);
      if (!urls) {
        next(std::unexpected(urls.error()));
        return;
      }
      auto trial = std::make_shared<UrlTrial>(UrlTrial{std::move(*urls), 0, {}});
      auto step = std::make_shared<std::function<void()>>();
      *step = [this, trial, step, mcp_server, with_prm]() {
        if (trial->next >= trial->urls.size()) {
          *step = nullptr;
          with_prm(fail(Errc::protocol, fmt::format("no protected resource metadata found for {} (tried {})", mcp_server,
                                                    join(trial->tried, ", "))));
          return;
        }
        const std::string url = trial->urls[trial->next++];
        trial->tried.push_back(url);
        fetch_json(url, [trial, step, with_prm](Result<Json> j, const net::HttpResponse* res) {
          if (!j && res != nullptr && (res->status == 404 || res->status == 405)) {
            (*step)();
            return;
          }
          *step = nullptr;
          with_prm(std::move(j));
        });
      };
      (*step)();
    };
    // An unauthenticated call to the MCP server; its 401 names the metadata.
    net::HttpRequest probe;
    probe.method = "GET";
    probe.url = mcp_server;
    probe.timeout = m_options.http_timeout;
    probe.headers = {{"Accept", "application/json, text/event-stream"}};
    auto id = std::make_shared<std::uint64_t>(0);
    *id = m_http.start(std::move(probe), [this, alive, id, mcp_server, with_prm, from_well_known](
                                             Result<net::HttpResponse> res) {
      if (!*alive) return;
      m_requests.erase(*id);
      std::optional<std::string> metadata_url;
      if (res && res->status == 401) metadata_url = oauth::resource_metadata_of(res->header("www-authenticate"));
      if (metadata_url) {
        if (auto ok = oauth::check_discovered_url("resource_metadata", *metadata_url, mcp_server); !ok) {
          with_prm(fail(Errc::protocol, fmt::format("the MCP server's challenge names an unusable metadata URL: {}",
                                                    ok.error().message)));
          return;
        }
        fetch_json(*metadata_url, [with_prm](Result<Json> j, const net::HttpResponse*) { with_prm(std::move(j)); });
        return;
      }
      from_well_known();
    });
    m_requests.emplace(*id, true);
    return;
  }

  const oauth::ProviderEndpoints ep = oauth::endpoints_of(*profile);
  const bool have_endpoints = !ep.token_url.empty() && !ep.authorize_url.empty();
  const bool fresh = json::string_or(discovered, "issuer") == issuer && !json::string_or(discovered, "token_endpoint").empty();
  if (!issuer.empty() && (!fresh || !have_endpoints)) {
    discover_as(issuer, Json::object());
    return;
  }
  register_client();
}

// --- starting ----------------------------------------------------------------

void LoginManager::start(const std::string& name, LoginRequest request, JsonCallback done) {
  if (m_shut_down) {
    done(fail(Errc::unavailable, "tokend is shutting down"));
    return;
  }
  // A new start replaces a pending flow (its listener frees the port first).
  if (auto it = m_flows.find(name); it != m_flows.end() && it->second->state == "pending") {
    fail_flow(*it->second, "cancelled", "replaced", "a newer login for this profile replaced it");
  }
  auto flow = std::make_unique<Flow>();
  Flow& f = *flow;
  f.id = m_next_flow++;
  f.profile = name;
  f.device = request.device;
  f.deadline = m_clock.mono_now() + m_options.flow_timeout;
  f.expires_at_ms = to_unix_ms(m_clock.wall_now()) + m_options.flow_timeout.count();
  const std::uint64_t id = f.id;
  const bool listen = request.listen;
  m_flows.insert_or_assign(name, std::move(flow));
  resolve(name, [this, name, id, listen, done = std::move(done)](Result<store::Profile> p) {
    Flow* fp = find(name, id);
    if (fp == nullptr || fp->state != "pending") {
      done(fail(Errc::conflict, fmt::format("the login for '{}' was cancelled", name)));
      return;
    }
    Flow& fl = *fp;
    if (!p) {
      // Nothing to report as a flow: the start itself failed.
      m_flows.erase(name);
      done(std::unexpected(p.error()));
      return;
    }
    fl.resolved = std::move(*p);
    auto endpoint = oauth::token_endpoint_of(fl.resolved);
    if (!endpoint) {
      m_flows.erase(name);
      done(fail(Errc::invalid_argument, endpoint.error().message));
      return;
    }
    fl.endpoint = std::move(*endpoint);
    if (fl.endpoint.client_id.empty()) {
      m_flows.erase(name);
      done(fail(Errc::invalid_argument, fmt::format("profile '{}' has no client_id; set it with tokenctl add {} --client-id ID",
                                                    name, name)));
      return;
    }
    fl.extra["listen"] = listen;
    if (fl.device) {
      begin_device(fl, done);
    } else {
      begin_code(fl, done);
    }
  });
}

namespace {

std::vector<std::string> scopes_for(const store::Profile& p) {
  // After an insufficient_scope answer the login asks for the union of the
  // scopes and the challenged ones (TokenService::require_consent).
  if (auto step_up = list_of(p.config, "step_up_scopes"); !step_up.empty()) return step_up;
  std::vector<std::string> scopes = list_of(p.config, "scopes");
  const Json discovered = p.config.value("discovered", Json::object());
  const auto as_scopes = list_of(discovered, "scopes_supported");
  if (p.provider == "atlassian") {
    if (scopes.empty()) scopes = {"read:jira-work", "read:jira-user"};
    if (!contains(scopes, "offline_access")) scopes.emplace_back("offline_access");
  } else if (p.provider == "mcp" && scopes.empty()) {
    scopes = list_of(discovered, "resource_scopes");
    if (scopes.empty()) scopes = as_scopes;
    // offline_access where offered, so that a refresh token comes back.
    if (contains(as_scopes, "offline_access") && !contains(scopes, "offline_access")) scopes.emplace_back("offline_access");
  }
  return scopes;
}

}  // namespace

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
    fail_start(Error{Errc::invalid_argument,
                     fmt::format("profile '{}' has no authorize_url; set it with tokenctl add {} --authorize-url URL "
                                 "(or --issuer URL for discovery)", name, name)});
    return;
  }
  f.redirect_uri = json::string_or(p.config, "redirect_uri");
  if (f.redirect_uri.empty()) f.redirect_uri = k_default_redirect_uri;
  auto redirect = net::parse_url(f.redirect_uri, "the redirect URI");
  if (!redirect) {
    fail_start(redirect.error());
    return;
  }
  f.callback_path = redirect->path;

  const std::string pkce_mode = p.config.value("pkce", std::string("S256"));
  // Without a client secret, PKCE is all that binds the code to this login
  // (RFC 8252 §8.1, OAuth 2.1): a public client never goes without it.
  if (pkce_mode == "off" && f.endpoint.client_secret.empty()) {
    fail_start(Error{Errc::invalid_argument,
                     fmt::format("profile '{}' is a public client (no client secret) and sets pkce: off; a public "
                                 "client needs PKCE — remove the pkce setting", name)});
    return;
  }
  const auto methods = list_of(p.config.value("discovered", Json::object()), "code_challenge_methods_supported");
  if (pkce_mode == "required" && !methods.empty() && !contains(methods, "S256")) {
    fail_start(Error{Errc::invalid_argument,
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
  if (pkce_mode != "off") {
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
  if (const std::string prompt = json::string_or(p.config, "prompt"); !prompt.empty()) {
    q.emplace_back("prompt", prompt);
  } else if (p.provider == "atlassian" || contains(scopes, "offline_access")) {
    q.emplace_back("prompt", "consent");
  }
  if (f.pkce) {
    q.emplace_back("code_challenge", f.pkce->challenge);
    q.emplace_back("code_challenge_method", "S256");
  }
  if (p.provider != "atlassian" && !json::string_or(p.config, "audience").empty()) q.emplace_back("audience", json::string_or(p.config, "audience"));
  if (!f.endpoint.resource.empty()) q.emplace_back("resource", f.endpoint.resource);
  // Extra parameters (Google's access_type=offline, login_hint, ...); the
  // profile check refused the ones tokend sets itself.
  if (auto it = p.config.find("authorize_params"); it != p.config.end() && it->is_object()) {
    for (const auto& [k, v] : it->items()) {
      if (v.is_string()) q.emplace_back(k, v.get<std::string>());
    }
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
    auto listener = m_callbacks->listen(
        host, redirect->port,
        [this, alive, profile, id](const CallbackRequest& req, std::function<void(CallbackReply)> reply) {
          if (!*alive) return;
          on_callback(profile, id, req, std::move(reply));
        });
    if (!listener) {
      Error e = listener.error();
      if (e.code == Errc::conflict) {
        e.message += fmt::format("; free it, or register another redirect URI with the provider and run "
                                 "tokenctl add {} --redirect-uri http://127.0.0.1:PORT{}", name, f.callback_path);
      }
      fail_start(std::move(e));
      return;
    }
    f.listener = std::move(*listener);
  }
  f.phase = Flow::Phase::awaiting;
  m_events.publish("login_started", name, to_unix_ms(m_clock.wall_now()), {{"flow", "code"}});
  rearm();
  done(status(name));
}

void LoginManager::begin_device(Flow& f, JsonCallback done) {
  const std::string name = f.profile;
  const oauth::ProviderEndpoints ep = oauth::endpoints_of(f.resolved);
  if (ep.device_url.empty()) {
    m_flows.erase(name);
    done(fail(Errc::invalid_argument,
              fmt::format("the provider of '{}' offers no device authorization endpoint; use tokenctl login {} "
                          "(or --no-browser to paste the redirect)", name, name)));
    return;
  }
  oauth::TokenEndpoint device = f.endpoint;
  device.token_url = ep.device_url;
  device.json_body = false;
  f.asked_scopes = scopes_for(f.resolved);
  const std::string scope = join(f.asked_scopes, " ");
  oauth::TokenParams params;
  if (!scope.empty()) params.emplace_back("scope", scope);
  // If the flow ends before the provider answers (cancelled, replaced,
  // shutdown), end_flow answers the start.
  f.start_done = std::move(done);
  send_for(f, oauth::make_token_request(device, params, m_options.http_timeout),
           [this, name, url = ep.device_url](Flow& fl, Result<net::HttpResponse> res) {
    auto answer = std::move(fl.start_done);
    fl.start_done = nullptr;
    auto fail_start = [&](Errc code, std::string message) {
      m_flows.erase(name);
      answer(fail(code, std::move(message)));
    };
    if (!res) {
      fail_start(Errc::transient, fmt::format("the device authorization endpoint {} could not be reached: {}", url,
                                              res.error().message));
      return;
    }
    if (res->status != 200) {
      const auto err = oauth::oauth_error_of(*res);
      fail_start(res->status >= 500 ? Errc::transient : Errc::protocol,
                 fmt::format("the device authorization endpoint answered {}{}{}", res->status,
                             err.error.empty() ? "" : ": " + err.error,
                             err.description.empty() ? "" : " (" + err.description + ")"));
      return;
    }
    auto j = json::parse(res->body.reveal(), "the device authorization answer");
    if (!j || !j->is_object()) {
      fail_start(Errc::protocol, "the device authorization endpoint did not answer a JSON object");
      return;
    }
    const std::string device_code = json::string_or(*j, "device_code");
    fl.user_code = oauth::printable_excerpt(json::string_or(*j, "user_code"), 64);
    fl.verification_uri = json::string_or(*j, "verification_uri");
    if (fl.verification_uri.empty()) fl.verification_uri = json::string_or(*j, "verification_url");  // pre-RFC spelling
    fl.verification_uri_complete = json::string_or(*j, "verification_uri_complete");
    if (device_code.empty() || fl.user_code.empty() || fl.verification_uri.empty()) {
      fail_start(Errc::protocol, "the device authorization answer lacks device_code, user_code or verification_uri");
      return;
    }
    // Shown to a person and opened in a browser: only https (or loopback).
    if (!oauth::check_endpoint_url("verification_uri", fl.verification_uri)) {
      fail_start(Errc::protocol, "the device authorization answer has an unusable verification_uri");
      return;
    }
    if (!fl.verification_uri_complete.empty() && !oauth::check_endpoint_url("verification_uri_complete", fl.verification_uri_complete)) {
      fl.verification_uri_complete.clear();
    }
    fl.device_code = Secret(device_code);
    Millis lifetime = m_options.flow_timeout;
    if (auto e = j->find("expires_in"); e != j->end() && e->is_number_integer() && e->get<std::int64_t>() > 0) {
      lifetime = std::min(Millis(e->get<std::int64_t>() * 1000), k_max_device_lifetime);
    }
    if (auto i = j->find("interval"); i != j->end() && i->is_number_integer() && i->get<std::int64_t>() > 0) {
      fl.interval = Millis(std::min<std::int64_t>(i->get<std::int64_t>(), 60) * 1000);
    }
    fl.deadline = m_clock.mono_now() + lifetime;
    fl.expires_at_ms = to_unix_ms(m_clock.wall_now()) + lifetime.count();
    fl.next_poll = m_clock.mono_now() + fl.interval;
    fl.phase = Flow::Phase::awaiting;
    m_events.publish("login_started", name, to_unix_ms(m_clock.wall_now()), {{"flow", "device"}});
    rearm();
    answer(status(name));
  });
}

// --- the code flow's second half ------------------------------------------------

void LoginManager::on_callback(const std::string& profile, std::uint64_t id, const CallbackRequest& req,
                               std::function<void(CallbackReply)> reply) {
  Flow* fp = find(profile, id);
  if (fp == nullptr || fp->state != "pending") {
    reply({409, page("Sign-in not pending", "This sign-in is no longer pending. Run tokenctl login " + profile + " again.")});
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
    reply({409, page("Already signed in", "This sign-in was already completed; a repeated redirect is ignored.")});
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
    reply({400, page("Not this sign-in", "This request does not carry the state of the sign-in tokend is waiting "
                                         "for, so it was ignored. The sign-in is still waiting.")});
    return;
  }
  // The browser is answered when the flow ends (after the exchange).
  fl.browser_reply = std::move(reply);
  accept_code(fl, std::move(r), nullptr);
}

void LoginManager::complete(const std::string& name, const Json& body, JsonCallback done) {
  auto it = m_flows.find(name);
  if (it == m_flows.end() || it->second->state != "pending" || it->second->device ||
      it->second->phase != Flow::Phase::awaiting) {
    done(fail(Errc::conflict, fmt::format("no login is waiting for a code for '{}'; start one with tokenctl login {}",
                                          name, name)));
    return;
  }
  Flow& f = *it->second;
  if (!body.is_object()) {
    done(fail(Errc::invalid_argument, "the body must be {\"redirect_url\": ...} or {\"code\": ...}"));
    return;
  }
  const std::string redirect_url = json::string_or(body, "redirect_url");
  const std::string bare = json::string_or(body, "code");
  if (!redirect_url.empty()) {
    // What the browser's address bar showed: take the query apart.
    std::string_view u = redirect_url;
    const auto qpos = u.find('?');
    // A bare "code=...&state=..." (the query alone) is taken too.
    std::string_view query = qpos != std::string_view::npos ? u.substr(qpos + 1)
                             : u.find("://") == std::string_view::npos ? u
                                                                       : std::string_view{};
    if (const auto hash = query.find('#'); hash != std::string_view::npos) query = query.substr(0, hash);
    auto q = parse_query(query);
    if (!q) {
      done(fail(Errc::invalid_argument, "the pasted URL's query is malformed; paste the whole address of the page "
                                        "the browser ended on"));
      return;
    }
    auto r = redirect_of(std::move(*q));
    if (r.code.empty() && !r.error) {
      done(fail(Errc::invalid_argument, "the pasted URL has neither a code nor an error; paste the whole address "
                                        "of the page the browser ended on (it contains ?code=...)"));
      return;
    }
    accept_code(f, std::move(r), std::move(done));
    return;
  }
  if (bare.empty() || bare.size() > 4096) {
    done(fail(Errc::invalid_argument, "the body must be {\"redirect_url\": ...} or {\"code\": ...}"));
    return;
  }
  // A bare code carries neither state nor iss: the user typed it here.
  Redirect r;
  r.code = bare;
  r.state = std::nullopt;
  r.bare = true;
  accept_code(f, std::move(r), std::move(done));
}

void LoginManager::accept_code(Flow& f, Redirect r, JsonCallback done) {
  if (done) f.completions.push_back(std::move(done));
  std::string& code = r.code;
  if (r.state && !constant_time_equal(*r.state, f.state_value.reveal())) {
    secure_wipe(code);
    fail_flow(f, "failed", "state_mismatch",
              fmt::format("the state in the redirect does not match this login (a stale or forged redirect); "
                          "nothing was stored — run tokenctl login {} again", f.profile));
    return;
  }
  // RFC 9207: where the server says it sends iss, or whenever iss is there,
  // it must be the issuer this login is for (a mix-up attack otherwise).
  // Checked before the code (or an error) is acted on.
  const std::string issuer = oauth::endpoints_of(f.resolved).issuer;
  const bool advertised = f.resolved.config.value("discovered", Json::object())
                              .value("authorization_response_iss_parameter_supported", false);
  if (!r.bare && !issuer.empty() && (r.iss || advertised)) {
    if (!r.iss) {
      secure_wipe(code);
      fail_flow(f, "failed", "iss_missing",
                fmt::format("the authorization server {} says it sends iss in its redirect (RFC 9207), but this "
                            "redirect has none; nothing was redeemed or stored — run tokenctl login {} again",
                            issuer, f.profile));
      return;
    }
    if (*r.iss != issuer) {
      secure_wipe(code);
      fail_flow(f, "failed", "iss_mismatch",
                fmt::format("the redirect comes from issuer '{}', not from {} that this login is for (RFC 9207: a "
                            "mix-up or forged redirect); nothing was redeemed or stored — run tokenctl login {} again",
                            oauth::printable_excerpt(*r.iss, 200), issuer, f.profile));
      return;
    }
  }
  if (r.error) {
    const std::string e = oauth::printable_excerpt(*r.error, 64);
    const std::string d = oauth::printable_excerpt(r.description, 200);
    fail_flow(f, "failed", e.empty() ? "error" : e,
              fmt::format("the provider refused the authorization: {}{}", e, d.empty() ? "" : " (" + d + ")"));
    return;
  }
  if (code.empty() || code.size() > 4096) {
    fail_flow(f, "failed", "no_code", "the redirect carries no authorization code");
    return;
  }
  f.phase = Flow::Phase::exchanging;
  exchange(f, std::move(code));
}

void LoginManager::exchange(Flow& f, std::string code) {
  oauth::TokenParams params = {{"grant_type", "authorization_code"}, {"code", code}, {"redirect_uri", f.redirect_uri}};
  if (f.pkce) params.emplace_back("code_verifier", f.pkce->verifier.reveal());
  const WallTime sent_at = m_clock.wall_now();
  auto request = oauth::make_token_request(f.endpoint, params, m_options.http_timeout);
  secure_wipe(code);
  send_for(f, std::move(request), [this, name = f.profile, sent_at, lifetime = f.endpoint.default_lifetime](
                                      Flow& fl, Result<net::HttpResponse> res) {
    auto tokens = oauth::interpret_token_response(res, sent_at, lifetime);
    if (!tokens) {
      const auto err = res ? oauth::oauth_error_of(*res) : oauth::OAuthError{};
      if (err.error == "invalid_grant") {
        fail_flow(fl, "failed", "invalid_grant",
                  fmt::format("the provider rejected the authorization code (invalid_grant{}): it was used already, "
                              "expired, or the PKCE verifier did not match; nothing was stored — run tokenctl login {} again",
                              err.description.empty() ? "" : ": " + err.description, name));
      } else {
        fail_flow(fl, "failed", "token_endpoint", "exchanging the code failed: " + tokens.error().message);
      }
      return;
    }
    on_tokens(fl, std::move(*tokens));
  });
}

// --- the device flow's polling -------------------------------------------------

void LoginManager::poll_device(Flow& f) {
  f.next_poll.reset();
  oauth::TokenParams params = {{"grant_type", k_device_grant}, {"device_code", f.device_code.reveal()}};
  const WallTime sent_at = m_clock.wall_now();
  send_for(f, oauth::make_token_request(f.endpoint, params, m_options.http_timeout),
           [this, name = f.profile, sent_at, lifetime = f.endpoint.default_lifetime](Flow& fl,
                                                                                     Result<net::HttpResponse> res) {
    if (res && res->status == 200) {
      auto tokens = oauth::interpret_token_response(res, sent_at, lifetime);
      if (!tokens) {
        fail_flow(fl, "failed", "token_endpoint", "the device grant's answer is unusable: " + tokens.error().message);
        return;
      }
      fl.phase = Flow::Phase::exchanging;
      on_tokens(fl, std::move(*tokens));
      return;
    }
    const auto err = res ? oauth::oauth_error_of(*res) : oauth::OAuthError{};
    if (err.error == "authorization_pending") {
      fl.next_poll = m_clock.mono_now() + fl.interval;
    } else if (err.error == "slow_down") {
      fl.interval += k_slow_down_step;
      fl.next_poll = m_clock.mono_now() + fl.interval;
      spdlog::debug("profile {}: device flow asked to slow down; polling every {} s", name, fl.interval.count() / 1000);
    } else if (err.error == "expired_token") {
      fail_flow(fl, "expired", "expired_token",
                fmt::format("the device code expired before it was approved; run tokenctl login {} --device again", name));
      return;
    } else if (err.error == "access_denied") {
      fail_flow(fl, "failed", "access_denied", "the sign-in was denied at the provider (access_denied)");
      return;
    } else if (!res || res->status >= 500 || res->status == 429) {
      // Transient: keep polling, a little slower.
      fl.next_poll = m_clock.mono_now() + fl.interval * 2;
    } else {
      fail_flow(fl, "failed", err.error.empty() ? "token_endpoint" : err.error,
                fmt::format("the token endpoint refused the device grant ({}{})", err.error.empty() ? std::to_string(res->status) : err.error,
                            err.description.empty() ? "" : ": " + err.description));
      return;
    }
    rearm();
  });
}

// --- finishing -------------------------------------------------------------------

namespace {

// After a login without a refresh token: what was asked, what was granted,
// and what to try.
std::string no_refresh_token_warning(const LoginManager::Flow& f, const store::TokenSet& tokens,
                                     const std::vector<std::string>& asked, const store::Profile& p) {
  const bool offline = contains(asked, "offline_access");
  const std::string asked_text = asked.empty() ? "no scope" : "scope \"" + join(asked, " ") + "\"";
  const std::string granted = tokens.scope.empty() ? "the provider did not say which scopes it granted"
                                                   : "it granted \"" + oauth::printable_excerpt(tokens.scope, 300) + "\"";
  std::string out = fmt::format("the provider issued no refresh token, so this login must be repeated when the token "
                                "expires; tokend asked for {}{} and {}. ",
                                asked_text,
                                json::string_or(p.config, "prompt").empty() ? (offline ? " with prompt=consent" : "")
                                                                            : " with prompt=" + json::string_or(p.config, "prompt"),
                                granted);
  if (!offline) {
    out += fmt::format("Most OIDC servers issue one only for the offline_access scope: tokenctl add {} ... --scopes "
                       "\"{}{}offline_access\"", f.profile, join(asked, " "), asked.empty() ? "" : " ");
  } else {
    out += "offline_access was asked for but not honoured: check that the client may use the refresh_token grant at "
           "the provider; Google needs --authorize-param access_type=offline";
  }
  if (p.provider == "mcp") out += "; the MCP server's authorization server may not issue refresh tokens at all";
  return out;
}

}  // namespace

void LoginManager::on_tokens(Flow& f, store::TokenSet tokens) {
  if (tokens.refresh_token.empty()) f.warning = no_refresh_token_warning(f, tokens, f.asked_scopes, f.resolved);
  if (auto r = m_tokens.install_tokens(f.profile, tokens); !r) {
    fail_flow(f, "failed", "store", "the new token could not be stored: " + r.error().message);
    return;
  }
  // The consent asked for is given: a later insufficient_scope starts over.
  if (auto current = m_tokens.profile_of(f.profile); current && current->config.contains("step_up_scopes") &&
                                                     list_of(current->config, "step_up_scopes") == f.asked_scopes) {
    current->config.erase("step_up_scopes");
    if (auto r = m_tokens.update_profile(*current); !r) f.warning = "the step-up scopes were not cleared: " + r.error().message;
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
  fetch_json(url, [this, name, id, url](Result<Json> j, const net::HttpResponse*) {
    Flow* fp = find(name, id);
    if (fp == nullptr || fp->state != "pending") return;  // cancelled meanwhile
    Flow& fl = *fp;
    auto sites = j ? oauth::sites_of(*j) : std::unexpected(j.error());
    if (!sites) {
      fl.warning = fmt::format("the cloud id could not be looked up ({}); it is looked up again when needed",
                               sites.error().message);
      succeed(fl);
      return;
    }
    const auto site_json = [](const oauth::AtlassianSite& s) {
      return Json{{"id", s.id}, {"url", s.url}, {"name", s.name}};
    };
    const std::string site = json::string_or(fl.resolved.config, "site");
    const oauth::SiteChoice choice = oauth::choose_site(*sites, site);
    if (choice.problem != oauth::SiteProblem::none) {
      Json listed = Json::array();
      for (const auto& s : *sites) listed.push_back(site_json(s));
      fl.extra["sites"] = std::move(listed);
    }
    switch (choice.problem) {
      case oauth::SiteProblem::none: break;
      case oauth::SiteProblem::not_reachable:
        fail_flow(fl, "failed", "site",
                  fmt::format("the token was stored, but the configured site {} is not among the sites it can reach: {}; "
                              "fix the profile's --site (tokenctl add {} ... --site URL) and run tokenctl login {} again",
                              site, oauth::describe_sites(*sites), name, name));
        return;
      case oauth::SiteProblem::no_site:
        fail_flow(fl, "failed", "site",
                  "the token was stored, but it reaches no Atlassian site; check the app's permissions and the sites "
                  "you granted");
        return;
      case oauth::SiteProblem::ambiguous:
        fail_flow(fl, "failed", "site",
                  fmt::format("the token was stored, but it reaches several sites: {}; choose one by adding --site URL "
                              "to the profile (tokenctl add {} ... --site URL) and run tokenctl login {} again",
                              oauth::describe_sites(*sites), name, name));
        return;
    }
    const oauth::AtlassianSite& chosen = *choice.site;
    auto profile = m_tokens.profile_of(name);
    if (profile) {
      profile->config["cloud_id"] = chosen.id;
      profile->config["cloud_url"] = chosen.url;
      if (auto r = m_tokens.update_profile(*profile); !r) fl.warning = "the cloud id was not stored: " + r.error().message;
    }
    fl.extra["cloud_id"] = chosen.id;
    fl.extra["cloud_url"] = chosen.url;
    succeed(fl);
  }, {{"Authorization", std::string(grant->authorization.reveal())}});
}

void LoginManager::succeed(Flow& f) {
  f.state = "succeeded";
  f.phase = Flow::Phase::done;
  Json data = {{"flow", f.device ? "device" : "code"}};
  if (f.token_expires_at_ms) data["expires_at"] = *f.token_expires_at_ms / 1000;
  if (f.extra.contains("cloud_id")) data["cloud_id"] = f.extra["cloud_id"];
  spdlog::info("profile {}: login succeeded ({} flow)", f.profile, f.device ? "device" : "code");
  m_events.publish("login_succeeded", f.profile, to_unix_ms(m_clock.wall_now()), data);
  if (f.browser_reply) {
    f.browser_reply({200, page("Signed in", "tokend signed in profile " + f.profile + ". You can close this tab.")});
    f.browser_reply = nullptr;
  }
  end_flow(f);
}

void LoginManager::fail_flow(Flow& f, std::string state, std::string reason, std::string message) {
  if (f.state != "pending") return;
  f.state = std::move(state);
  f.reason = std::move(reason);
  f.message = std::move(message);
  f.phase = Flow::Phase::done;
  if (f.http_pending) {
    m_http.cancel(f.http_id);
    f.http_pending = false;
  }
  spdlog::warn("profile {}: login {}: {}", f.profile, f.state, f.message);
  const char* event = f.state == "cancelled" ? "login_cancelled" : "login_failed";
  m_events.publish(event, f.profile, to_unix_ms(m_clock.wall_now()),
                   {{"flow", f.device ? "device" : "code"}, {"reason", f.reason}, {"error", f.message}});
  if (f.browser_reply) {
    f.browser_reply({400, page("Sign-in failed", f.message)});
    f.browser_reply = nullptr;
  }
  end_flow(f);
}

void LoginManager::end_flow(Flow& f) {
  f.listener.reset();  // the port is closed as soon as the flow ends
  f.device_code = Secret();
  f.state_value = Secret();
  f.pkce.reset();
  f.next_poll.reset();
  if (f.start_done) {
    auto start = std::move(f.start_done);
    f.start_done = nullptr;
    start(fail(Errc::conflict, "the login ended before it started: " + f.message));
  }
  auto completions = std::move(f.completions);
  f.completions.clear();
  const Json s = status(f.profile);
  for (auto& c : completions) c(s);
  if (!m_shut_down) rearm();
}

Result<> LoginManager::cancel(const std::string& name) {
  auto it = m_flows.find(name);
  if (it == m_flows.end() || it->second->state != "pending") {
    return fail(Errc::conflict, fmt::format("no login is pending for '{}'", name));
  }
  fail_flow(*it->second, "cancelled", "cancelled", "the login was cancelled");
  return {};
}

bool LoginManager::pending(const std::string& profile) const {
  auto it = m_flows.find(profile);
  return it != m_flows.end() && it->second->state == "pending";
}

Json LoginManager::status(const std::string& name) const {
  auto it = m_flows.find(name);
  if (it == m_flows.end()) return {{"profile", name}, {"state", "none"}};
  const Flow& f = *it->second;
  Json j = {{"profile", name}, {"id", f.id}, {"flow", f.device ? "device" : "code"}, {"state", f.state}};
  const std::int64_t now = to_unix_ms(m_clock.wall_now());
  if (f.state == "pending") {
    j["expires_at"] = f.expires_at_ms / 1000;
    j["expires_in"] = std::max<std::int64_t>(0, (f.expires_at_ms - now) / 1000);
    if (f.phase == Flow::Phase::resolving) {
      j["phase"] = "starting";  // discovery or registration still running
    } else if (f.device) {
      j["user_code"] = f.user_code;
      j["verification_uri"] = f.verification_uri;
      if (!f.verification_uri_complete.empty()) j["verification_uri_complete"] = f.verification_uri_complete;
      j["interval"] = f.interval.count() / 1000;
    } else {
      j["authorize_url"] = f.authorize_url;
      j["redirect_uri"] = f.redirect_uri;
      j["listening"] = f.listener != nullptr;
    }
  } else if (f.state == "succeeded") {
    if (f.token_expires_at_ms) j["expires_at"] = *f.token_expires_at_ms / 1000;
  } else {
    j["error"] = {{"code", "login_failed"}, {"reason", f.reason}, {"message", f.message}};
  }
  if (!f.warning.empty()) j["warning"] = f.warning;
  // MCP: the authorization server chosen, and the others it could have been.
  const Json found = f.resolved.config.value("discovered", Json::object());
  if (const std::string as = json::string_or(found, "authorization_server"); !as.empty()) {
    j["authorization_server"] = as;
    const auto all = list_of(found, "authorization_servers");
    if (all.size() > 1) {
      j["authorization_servers"] = all;
      j["authorization_server_note"] = fmt::format(
          "The MCP server names {} authorization servers ({}); using {}{}.", all.size(), join(all, ", "), as,
          json::string_or(f.resolved.config, "authorization_server").empty()
              ? fmt::format(" (the first); choose another with tokenctl add {} ... --authorization-server URL", name)
              : " (the profile's choice)");
    }
  }
  for (const char* k : {"sites", "cloud_id", "cloud_url"}) {
    if (f.extra.contains(k)) j[k] = f.extra[k];
  }
  return j;
}

// --- timers --------------------------------------------------------------------

void LoginManager::rearm() {
  if (m_shut_down) return;
  std::optional<MonoTime> earliest;
  for (const auto& [_, f] : m_flows) {
    if (f->state != "pending") continue;
    auto consider = [&](MonoTime t) {
      if (!earliest || t < *earliest) earliest = t;
    };
    consider(f->deadline);
    if (f->next_poll) consider(*f->next_poll);
  }
  if (!earliest) {
    m_timer.disarm();
    return;
  }
  m_timer.arm(*earliest, [this] { on_tick(); });
}

void LoginManager::on_tick() {
  const MonoTime now = m_clock.mono_now();
  std::vector<std::pair<std::string, std::uint64_t>> expired;
  std::vector<std::pair<std::string, std::uint64_t>> polls;
  for (const auto& [name, f] : m_flows) {
    if (f->state != "pending") continue;
    if (f->deadline <= now) {
      expired.emplace_back(name, f->id);
    } else if (f->next_poll && *f->next_poll <= now && !f->http_pending) {
      polls.emplace_back(name, f->id);
    }
  }
  for (const auto& [name, id] : expired) {
    if (Flow* f = find(name, id)) {
      fail_flow(*f, "expired", "expired",
                fmt::format("the login was not completed in time; nothing was stored — run tokenctl login {} again", name));
    }
  }
  for (const auto& [name, id] : polls) {
    if (Flow* f = find(name, id); f != nullptr && f->state == "pending") poll_device(*f);
  }
  rearm();
}

// --- logout and test ------------------------------------------------------------

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
  auto forget = [this, name](bool revoked, std::string reason) -> Result<Json> {
    if (auto r = m_tokens.forget_tokens(name); !r) return std::unexpected(r.error());
    Json out = {{"profile", name}, {"revoked", revoked}};
    if (!reason.empty()) out["reason"] = reason;
    m_events.publish("logged_out", name, to_unix_ms(m_clock.wall_now()), {{"revoked", revoked}});
    return out;
  };
  if (p->kind != store::CredentialKind::oauth2) {
    done(forget(false, "API tokens and personal access tokens are revoked in the account settings of the site"));
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
  const oauth::TokenParams params = {{"token", token.reveal()},
                              {"token_type_hint", c->refresh_token.empty() ? "access_token" : "refresh_token"}};
  auto alive = m_alive;
  auto id = std::make_shared<std::uint64_t>(0);
  *id = m_http.start(oauth::make_token_request(*endpoint, params, m_options.http_timeout),
                     [this, alive, id, forget, url = ep.revocation_url, done = std::move(done)](Result<net::HttpResponse> res) {
                       if (!*alive) return;
                       m_requests.erase(*id);
                       if (!res) {
                         done(forget(false, fmt::format("revocation at {} failed: {}", url, res.error().message)));
                       } else if (res->status != 200) {
                         done(forget(false, fmt::format("the revocation endpoint answered {}", res->status)));
                       } else {
                         done(forget(true, ""));
                       }
                     });
  m_requests.emplace(*id, true);
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
    std::string site = json::string_or(p->config, "site");
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
    done(fail(Errc::invalid_argument,
              fmt::format("profile '{}' has no userinfo endpoint to test against; set one with tokenctl add {} "
                          "--userinfo-url URL", name, name)));
    return;
  }
  auto alive = m_alive;
  m_tokens.token_async(name, tokens::TokenRequest{10}, [this, alive, name, url, what, done = std::move(done)](
                                                   Result<tokens::TokenGrant> grant) mutable {
    if (!*alive) return;
    if (!grant) {
      done(std::unexpected(grant.error()));
      return;
    }
    net::HttpRequest r;
    r.url = url;
    r.timeout = m_options.http_timeout;
    r.headers = {{"Accept", "application/json"}, {"Authorization", std::string(grant->authorization.reveal())}};
    auto id = std::make_shared<std::uint64_t>(0);
    *id = m_http.start(std::move(r), [this, alive, id, name, url, what, done = std::move(done)](
                                         Result<net::HttpResponse> res) {
      if (!*alive) return;
      m_requests.erase(*id);
      if (!res) {
        done(fail(Errc::transient, fmt::format("{} could not be reached: {}", url, res.error().message)));
        return;
      }
      Json out = {{"profile", name}, {"ok", res->status < 400}, {"status", res->status}, {"url", url}};
      auto j = json::parse(res->body.reveal(), "the answer");
      std::string summary;
      if (j && res->status < 400) {
        auto sites = what == "resources" ? oauth::sites_of(*j) : std::vector<oauth::AtlassianSite>{};
        if (what == "resources" && sites) {
          summary = fmt::format("{} site{}: {}", sites->size(), sites->size() == 1 ? "" : "s", oauth::describe_sites(*sites));
        } else if (what == "myself") {
          summary = fmt::format("signed in as {} {}", json::string_or(*j, "displayName"), json::string_or(*j, "emailAddress"));
        } else {
          std::vector<std::string> parts;
          for (const char* k : {"name", "email", "preferred_username", "sub"}) {
            if (!json::string_or(*j, k).empty()) parts.push_back(fmt::format("{}={}", k, json::string_or(*j, k)));
          }
          summary = parts.empty() ? "answered" : join(parts, " ");
        }
        out["body"] = *j;
      } else {
        const auto err = oauth::oauth_error_of(*res);
        summary = fmt::format("HTTP {}{}", res->status, err.error.empty() ? "" : " " + err.error);
      }
      out["summary"] = oauth::printable_excerpt(summary, 400);
      done(out);
    });
    m_requests.emplace(*id, true);
  });
}

}  // namespace tokend::login
