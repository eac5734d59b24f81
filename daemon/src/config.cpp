#include "daemon/config.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <pwd.h>

#include <boost/program_options.hpp>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "core/fs.hpp"
#include "oauth/protocol.hpp"

namespace tokend::daemon {

namespace po = boost::program_options;

std::string_view version() {
  return TOKEND_VERSION;
}

namespace {

struct Setting {
  const char* name;  // flag and INI key
  const char* env;
  const char* help;
};

// Every setting except --config. Keep docs/API.md and README in step.
constexpr Setting k_settings[] = {
    {"socket", "TOKEND_SOCKET", "Unix socket path"},
    {"db", "TOKEND_DB", "database file"},
    {"key-file", "TOKEND_KEY_FILE", "database key file"},
    {"log-level", "TOKEND_LOG_LEVEL", "trace|debug|info|warn|error|critical|off (default info)"},
    {"log-format", "TOKEND_LOG_FORMAT", "text|json (default text)"},
    {"allow-uid", "TOKEND_ALLOW_UID",
     "comma-separated users (uid or name) allowed besides yourself"},
    {"max-connections", "TOKEND_MAX_CONNECTIONS",
     "open API connections (default 1024; more get 503)"},
    {"max-header-bytes", "TOKEND_MAX_HEADER_BYTES",
     "request header size (default 16384; more get 431)"},
    {"max-body-bytes", "TOKEND_MAX_BODY_BYTES",
     "request body size (default 1048576; more get 413)"},
    {"max-upload-bytes", "TOKEND_MAX_UPLOAD_BYTES",
     "body size of a proxied call (default 268435456; past 1 MiB it goes through a temporary "
     "file)"},
    {"idle-timeout", "TOKEND_IDLE_TIMEOUT",
     "close idle keep-alive connections after (default 60s)"},
    {"request-timeout", "TOKEND_REQUEST_TIMEOUT",
     "time to send a whole request (default 10s; then 408)"},
    {"heartbeat-interval", "TOKEND_HEARTBEAT_INTERVAL", "event stream heartbeat (default 15s)"},
    {"drain-timeout", "TOKEND_DRAIN_TIMEOUT",
     "on SIGTERM, wait this long for requests in flight (default 10s)"},
    {"refresh-buffer", "TOKEND_REFRESH_BUFFER",
     "refresh this long before expiry (default 5m; per profile: refresh_buffer)"},
    {"max-concurrent-refreshes", "TOKEND_MAX_CONCURRENT_REFRESHES",
     "refreshes in flight at once (default 8)"},
    {"http-timeout", "TOKEND_HTTP_TIMEOUT", "timeout of one call to a provider (default 30s)"},
    {"ca-bundle", "TOKEND_CA_BUNDLE", "CA certificates for provider TLS (default: the system's)"},
    {"login-timeout", "TOKEND_LOGIN_TIMEOUT",
     "how long a started login waits for the user (default 10m)"},
    {"audit-max-rows", "TOKEND_AUDIT_MAX_ROWS",
     "audit events kept (default 100000; the oldest go first)"},
    {"audit-max-age", "TOKEND_AUDIT_MAX_AGE",
     "audit events older than this are deleted (default 90d)"},
    {"notify-command", "TOKEND_NOTIFY_COMMAND",
     "run with /bin/sh -c when a profile needs a new login; $TOKEND_PROFILE, $TOKEND_REASON and "
     "$TOKEND_LOGIN_COMMAND are set; of tokend's own environment only PATH, HOME, USER, LOGNAME, "
     "SHELL, "
     "LANG, LANGUAGE, LC_*, TZ, TMPDIR, DISPLAY, WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS and "
     "XDG_RUNTIME_DIR, "
     "_DATA_DIRS, _CURRENT_DESKTOP, _SESSION_TYPE pass (e.g. notify-send \"tokend\" "
     "\"$TOKEND_LOGIN_COMMAND\")"},
    // Server mode.
    {"database-url-file", "TOKEND_DATABASE_URL_FILE",
     "server mode: a file (0600) holding the PostgreSQL connection string (libpq conninfo or "
     "URI)"},
    {"kek-file", "TOKEND_KEK_FILE",
     "server mode: the key-encryption key file (32 bytes, raw or hex); without it "
     "$CREDENTIALS_DIRECTORY/tokend.kek, then TOKEND_KEK"},
    {"kek-id", "TOKEND_KEK_ID", "server mode: the key-encryption key's id (default: derived)"},
    {"trusted-proxy-uid", "TOKEND_TRUSTED_PROXY_UID",
     "server mode: comma-separated users (uid or name) of the authenticating reverse proxy, "
     "whose requests name the user in user-header"},
    {"user-header", "TOKEND_USER_HEADER",
     "server mode: the trusted proxy's user header (default X-Forwarded-User)"},
    {"user-rate-limit", "TOKEND_USER_RATE_LIMIT",
     "server mode: requests a minute one user may make, in bursts up to that many; more get 429 "
     "with Retry-After (default 6000; 0: no limit)"},
    {"service-rate-limit", "TOKEND_SERVICE_RATE_LIMIT",
     "server mode: requests a minute one service may make over all its users, unless its "
     "[service.NAME] rate-limit says otherwise; more get 429 with Retry-After (default 0: no "
     "limit)"},
    {"tls-cert-file", "TOKEND_TLS_CERT_FILE",
     "server mode: the TLS listeners' certificate (PEM, with its chain); SIGHUP reloads it"},
    {"tls-key-file", "TOKEND_TLS_KEY_FILE",
     "server mode: its private key (PEM, 0600, tokend's, not a symlink); SIGHUP reloads it"},
    {"tls-client-ca-file", "TOKEND_TLS_CLIENT_CA_FILE",
     "server mode: CA certificates (PEM) that sign services' client certificates (mTLS, "
     "[service.NAME] cert-subject)"},
    {"public-url", "TOKEND_PUBLIC_URL",
     "server mode: the https address browsers reach tokend at (https://tokend.example.org, or "
     "with the reverse proxy's path prefix); the connect page's redirect URI is "
     "{public-url}/connect/callback, OIDC sign-in's callback {public-url}/auth/callback"},
    {"oidc-issuer", "TOKEND_OIDC_ISSUER",
     "server mode: the identity provider people sign in with (OIDC discovery from it)"},
    {"oidc-client-id", "TOKEND_OIDC_CLIENT_ID", "server mode: tokend's client id at the provider"},
    {"oidc-client-secret-file", "TOKEND_OIDC_CLIENT_SECRET_FILE",
     "server mode: a file (0600) holding tokend's client secret at the provider"},
    {"oidc-user-claim", "TOKEND_OIDC_USER_CLAIM",
     "server mode: the ID token claim that is the user id: sub (default) or email"},
    {"session-lifetime", "TOKEND_SESSION_LIFETIME",
     "server mode: how long an OIDC sign-in's session lasts, 5s to 30d (default 8h)"},
    {"oidc-post-logout-redirect-uri", "TOKEND_OIDC_POST_LOGOUT_REDIRECT_URI",
     "server mode: where the provider sends people after logout (its end_session_endpoint); "
     "default public-url; register it at the provider"},
};

// `listen` may be given more than once (and each value may list several,
// comma-separated); it is read apart from the single-valued settings.
constexpr const char* k_listen = "listen";
constexpr const char* k_listen_env = "TOKEND_LISTEN";
constexpr const char* k_listen_help =
    "server mode: HOST:PORT of a TLS listener ([::1]:8443 for IPv6; repeatable; env "
    "TOKEND_LISTEN, comma-separated); needs tls-cert-file and tls-key-file";

// Settings that only server mode (or rotate-key) reads.
constexpr std::string_view k_server_settings[] = {"database-url-file",
                                                  "kek-file",
                                                  "kek-id",
                                                  "trusted-proxy-uid",
                                                  "user-header",
                                                  "user-rate-limit",
                                                  "service-rate-limit",
                                                  "tls-cert-file",
                                                  "tls-key-file",
                                                  "tls-client-ca-file",
                                                  "public-url",
                                                  "oidc-issuer",
                                                  "oidc-client-id",
                                                  "oidc-client-secret-file",
                                                  "oidc-user-claim",
                                                  "session-lifetime",
                                                  "oidc-post-logout-redirect-uri"};
// Settings of the single-user daemon that server mode has no use for.
constexpr std::string_view k_single_user_settings[] = {"db", "key-file", "notify-command"};

// A [service.NAME] section of the config file.
struct ServiceSection {
  std::string secret_file;
  std::string cert_subject;
  std::vector<std::string> act_for;
  std::optional<std::string> rate_limit;
  bool has_secret_file = false;
  bool has_act_for = false;
};

std::optional<std::string> lookup(const po::variables_map& vm, const char* key) {
  if (vm.count(key) == 0) return std::nullopt;
  return vm[key].as<std::string>();
}

Result<std::uint64_t> parse_count(std::string_view name, std::string_view text, std::uint64_t lo,
                                  std::uint64_t hi) {
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc{} || end != text.data() + text.size() || n < lo || n > hi) {
    return fail(Errc::config, fmt::format("{} must be a whole number from {} to {} (got '{}')",
                                          name, lo, hi, text));
  }
  return n;
}

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  std::string_view rest = text;
  while (!rest.empty()) {
    const auto comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.empty()) out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return out;
}

Result<uid_t> parse_user(std::string_view text) {
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec == std::errc{} && end == text.data() + text.size()) return static_cast<uid_t>(n);
  const std::string name(text);
  if (const passwd* pw = ::getpwnam(name.c_str()); pw != nullptr) return pw->pw_uid;
  return fail(Errc::config, fmt::format("no user named '{}'", name));
}

}  // namespace

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  const std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  double scale = 0;
  if (unit.empty() || unit == "s")
    scale = 1000;
  else if (unit == "ms")
    scale = 1;
  else if (unit == "m" || unit == "min")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else if (unit == "d")
    scale = 86'400'000;
  if (ec != std::errc{} || scale == 0 || value < 0 || value > 1e7) {
    return fail(Errc::config,
                fmt::format("'{}' is not a duration; write e.g. 250ms, 10s, 5m, 1h or 90d", text));
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(value * scale));
}

Result<ServerSettings::ListenAddress> parse_listen_address(std::string_view text) {
  auto bad = [&] {
    return fail(Errc::config,
                fmt::format("listen '{}': write HOST:PORT with an IPv4 address (0.0.0.0:8443) or "
                            "a bracketed IPv6 one ([::]:8443)",
                            text.substr(0, 128)));
  };
  ServerSettings::ListenAddress a;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad();
    }
    a.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
    in6_addr v6{};
    if (::inet_pton(AF_INET6, a.host.c_str(), &v6) != 1) return bad();
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad();
    a.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    in_addr v4{};
    if (::inet_pton(AF_INET, a.host.c_str(), &v4) != 1) return bad();
  }
  auto n = parse_count("listen port", port, 1, 65535);
  if (!n) return bad();
  a.port = static_cast<std::uint16_t>(*n);
  return a;
}

Result<ParsedArgs> parse_args(int argc_in, const char* const* argv_in, const EnvLookup& env) {
  // tokend rotate-key [options]: the same options, and the new key.
  const bool rotate = argc_in >= 2 && std::string_view(argv_in[1]) == "rotate-key";
  std::vector<const char*> args(argv_in, argv_in + argc_in);
  if (rotate) args.erase(args.begin() + 1);
  const int argc = static_cast<int>(args.size());
  const char* const* argv = args.data();

  po::options_description general("Options");
  general.add_options()("help,h", "show this help and exit")(
      "version", "show the version and exit")("config", po::value<std::string>(),
                                              "config file (INI; env TOKEND_CONFIG)")(
      "server",
      "server mode: many users, PostgreSQL, identity from a trusted proxy or services "
      "(docs/server-mode.md)")("new-kek-file", po::value<std::string>(),
                               "rotate-key: the new key-encryption key's file")(
      "new-kek-id", po::value<std::string>(), "rotate-key: the new key's id (default: derived)");
  for (const auto& s : k_settings) {
    general.add_options()(s.name, po::value<std::string>(),
                          fmt::format("{} (env {})", s.help, s.env).c_str());
  }
  general.add_options()(k_listen, po::value<std::vector<std::string>>()->composing(),
                        k_listen_help);

  ParsedArgs out;
  po::variables_map flags;
  try {
    po::store(po::command_line_parser(argc, argv).options(general).run(), flags);
    po::notify(flags);
  } catch (const po::error& e) {
    return fail(Errc::invalid_argument, std::string(e.what()) + "; see tokend --help");
  }

  std::ostringstream help;
  help << "tokend " << version() << " — keeps OAuth credentials valid and serves them on a "
       << "Unix socket\n\nUsage: tokend [options]\n\n"
       << general
       << "\nEach setting is taken from, in order: the flag, the environment variable, the\n"
          "config file (INI, keys named like the flags, e.g. `log-level = debug`), the default.\n"
          "Defaults follow XDG: socket $XDG_RUNTIME_DIR/tokend/tokend.sock, database\n"
          "$XDG_DATA_HOME/tokend/tokens.db, key $XDG_CONFIG_HOME/tokend/db.key, config\n"
          "$XDG_CONFIG_HOME/tokend/tokend.conf. Durations: 250ms, 10s, 5m, 1h.\n"
          "Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config file (log\n"
          "level and format, allow-uid, limits and timeouts; paths need a restart).\n"
          "Exit codes: 0 stopped by SIGTERM/SIGINT; 1 start refused (another tokend on the\n"
          "socket, an unsafe socket directory or key file, a wrong key, a database that\n"
          "cannot be opened); 2 bad command line or configuration.\n"
          "\nServer mode (--server) keeps many users' grants in PostgreSQL: the connection\n"
          "string from database-url-file, secrets sealed with the key-encryption key\n"
          "(kek-file, $CREDENTIALS_DIRECTORY/tokend.kek or TOKEND_KEK). Every request acts\n"
          "for one user: the trusted proxy (trusted-proxy-uid) names it in user-header, or\n"
          "a service sends Authorization: Bearer SECRET and X-Tokend-Act-As: USER. Services\n"
          "are config-file sections:\n"
          "  [service.mcp]\n"
          "  secret-file = /etc/tokend/mcp.secret     (0600, at least 32 bytes)\n"
          "  act-for = *@example.com, bob             (user ids, *@DOMAIN or *)\n"
          "  rate-limit = 600                         (requests a minute over all its users;\n"
          "                                            default service-rate-limit)\n"
          "The connect page (GET /connect) offers the providers of [provider.NAME]\n"
          "sections (a profile's settings: provider, client-id, client-secret-file,\n"
          "scopes, issuer or authorize-url/token-url/revocation-url, display-name); their\n"
          "redirect URI is {public-url}/connect/callback.\n"
          "  cert-subject = mcp.internal              (over TLS: its client certificate's\n"
          "                                            CN or a DNS/email/URI SAN, exactly)\n"
          "listen = HOST:PORT (repeatable) serves the same API over TLS (tls-cert-file,\n"
          "tls-key-file; TLS 1.2+, ALPN http/1.1); there the user header is never taken,\n"
          "and a service authenticates by its secret or its client certificate\n"
          "(tls-client-ca-file: optional for clients, but one that does not verify ends the\n"
          "handshake). SIGHUP reloads the certificate and key for new connections.\n"
          "People sign in over TLS with OIDC (oidc-issuer, oidc-client-id,\n"
          "oidc-client-secret-file, public-url): GET /auth/login?return_to=PATH, the\n"
          "provider's callback {public-url}/auth/callback, POST /auth/logout (then the\n"
          "provider's end_session_endpoint, back to oidc-post-logout-redirect-uri); the\n"
          "session cookie __Host-tokend-session (session-lifetime, default 8h), and\n"
          "Origin = public-url on requests that change something. The ID token's signature\n"
          "is checked with the provider's JWKS (RS256, PS256, ES256, EdDSA).\n"
          "rotate-key re-wraps every row's data key with the key in --new-kek-file (the\n"
          "current key from the usual sources); exit 0 done, 1 failed with nothing\n"
          "changed, 2 bad command line or configuration.\n";
  out.help_text = help.str();
  if (flags.count("help") != 0) {
    out.action = ParsedArgs::Action::help;
    return out;
  }
  if (flags.count("version") != 0) {
    out.action = ParsedArgs::Action::version;
    return out;
  }
  if (rotate) out.action = ParsedArgs::Action::rotate_key;
  const bool server = flags.count("server") != 0;
  out.config.server.enabled = server;
  if (rotate && server) {
    return fail(Errc::invalid_argument, "rotate-key does not take --server; see tokend --help");
  }
  if (!rotate && (flags.count("new-kek-file") != 0 || flags.count("new-kek-id") != 0)) {
    return fail(Errc::invalid_argument,
                "--new-kek-file and --new-kek-id belong to tokend rotate-key; see tokend --help");
  }
  if (rotate) {
    auto file = lookup(flags, "new-kek-file");
    if (!file || file->empty()) {
      return fail(Errc::invalid_argument,
                  "rotate-key needs --new-kek-file FILE: the new key-encryption key (make one "
                  "with openssl rand -hex 32)");
    }
    out.new_kek.key_file = *file;
    if (auto id = lookup(flags, "new-kek-id")) out.new_kek.key_id = *id;
  }

  PathOverrides path_flags;
  if (auto c = lookup(flags, "config")) path_flags.config = *c;
  const Paths defaults = resolve_paths(env, path_flags);

  // The config file: optional at its default place, required when named.
  po::variables_map file;
  const bool config_named = path_flags.config.has_value() || env("TOKEND_CONFIG").has_value();
  std::map<std::string, ServiceSection> services;
  // [provider.NAME] sections: the connect page's templates (connect.cpp).
  std::map<std::string, std::vector<std::pair<std::string, std::string>>> providers;
  if (std::filesystem::exists(defaults.config)) {
    std::ifstream in(defaults.config);
    if (!in)
      return fail(Errc::config,
                  fmt::format("cannot read config file {}", defaults.config.string()));
    po::options_description file_options;
    for (const auto& s : k_settings) file_options.add_options()(s.name, po::value<std::string>());
    file_options.add_options()(k_listen, po::value<std::vector<std::string>>()->composing());
    try {
      // [service.NAME] sections are not known in advance: taken apart here,
      // every other unknown key is an error.
      auto parsed = po::parse_config_file(in, file_options, /*allow_unregistered=*/true);
      for (const auto& o : parsed.options) {
        if (!o.unregistered) continue;
        const std::string& key = o.string_key;
        const auto dot = key.rfind('.');
        if (key.starts_with("provider.") && dot > 9 && o.value.size() == 1) {
          providers[key.substr(9, dot - 9)].emplace_back(key.substr(dot + 1), o.value.front());
          continue;
        }
        if (!key.starts_with("service.") || dot <= 8 || o.value.size() != 1) {
          return fail(Errc::config, fmt::format("config file {}: unrecognised option '{}'",
                                                defaults.config.string(), key));
        }
        const std::string name = key.substr(8, dot - 8);
        const std::string field = key.substr(dot + 1);
        auto& section = services[name];
        if (field == "secret-file") {
          section.secret_file = o.value.front();
          section.has_secret_file = true;
        } else if (field == "cert-subject") {
          section.cert_subject = o.value.front();
        } else if (field == "act-for") {
          section.act_for = split_list(o.value.front());
          section.has_act_for = true;
        } else if (field == "rate-limit") {
          section.rate_limit = o.value.front();
        } else {
          return fail(Errc::config,
                      fmt::format("config file {}: [service.{}] has no setting '{}' (only "
                                  "secret-file, cert-subject, act-for and rate-limit)",
                                  defaults.config.string(), name, field));
        }
      }
      po::store(parsed, file);
    } catch (const po::error& e) {
      return fail(Errc::config,
                  fmt::format("config file {}: {}", defaults.config.string(), e.what()));
    }
  } else if (config_named) {
    return fail(Errc::config,
                fmt::format("config file {} does not exist", defaults.config.string()));
  }

  auto setting = [&](const char* name) -> std::optional<std::string> {
    for (const auto& s : k_settings) {
      if (std::string_view(s.name) != name) continue;
      if (auto v = lookup(flags, s.name)) return v;
      if (auto v = env(s.env); v && !v->empty()) return v;
      return lookup(file, s.name);
    }
    return std::nullopt;
  };

  PathOverrides overrides = path_flags;
  if (auto v = setting("socket")) overrides.socket = *v;
  if (auto v = setting("db")) overrides.database = *v;
  if (auto v = setting("key-file")) {
    overrides.key_file = *v;
  }
  out.config.paths = resolve_paths(env, overrides);

  Config& c = out.config;
  if (auto v = setting("log-level")) {
    auto l = log::parse_level(*v);
    if (!l) return std::unexpected(l.error());
    c.log.level = *l;
  }
  if (auto v = setting("log-format")) {
    auto f = log::parse_format(*v);
    if (!f) return std::unexpected(f.error());
    c.log.format = *f;
  }
  if (auto v = setting("allow-uid")) {
    std::string_view rest = *v;
    while (!rest.empty()) {
      const auto comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
      while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
      if (!item.empty()) {
        auto uid = parse_user(item);
        if (!uid) return std::unexpected(uid.error().context("allow-uid"));
        c.allowed_uids.insert(*uid);
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  struct CountSetting {
    const char* name;
    std::size_t* target;
    std::uint64_t lo, hi;
  };
  const CountSetting counts[] = {
      {"max-connections", &c.limits.max_connections, 1, 1'000'000},
      {"max-header-bytes", &c.limits.max_header_bytes, 1024, 1024 * 1024},
      {"max-body-bytes", &c.limits.max_body_bytes, 1024, 1024ULL * 1024 * 1024},
      {"max-upload-bytes", &c.limits.max_upload_bytes, 1024, 64ULL * 1024 * 1024 * 1024},
      {"max-concurrent-refreshes", &c.max_concurrent_refreshes, 1, 1024},
  };
  if (auto v = setting("audit-max-rows")) {
    auto n = parse_count("audit-max-rows", *v, 100, 1'000'000'000);
    if (!n) return std::unexpected(n.error());
    c.audit.max_rows = static_cast<std::int64_t>(*n);
  }
  if (auto v = setting("audit-max-age")) {
    auto d = parse_duration(*v);
    if (!d) return std::unexpected(d.error().context("audit-max-age"));
    if (*d < std::chrono::hours(1)) return fail(Errc::config, "audit-max-age must be at least 1h");
    c.audit.max_age = *d;
  }
  for (const auto& cs : counts) {
    if (auto v = setting(cs.name)) {
      auto n = parse_count(cs.name, *v, cs.lo, cs.hi);
      if (!n) return std::unexpected(n.error());
      *cs.target = static_cast<std::size_t>(*n);
    }
  }
  const std::pair<const char*, std::chrono::milliseconds*> durations[] = {
      {"idle-timeout", &c.limits.idle_timeout}, {"request-timeout", &c.limits.request_timeout},
      {"heartbeat-interval", &c.heartbeat},     {"drain-timeout", &c.drain_timeout},
      {"refresh-buffer", &c.refresh_buffer},    {"http-timeout", &c.http_timeout},
      {"login-timeout", &c.login_timeout},
  };
  for (const auto& [name, target] : durations) {
    if (auto v = setting(name)) {
      auto d = parse_duration(*v);
      if (!d) return std::unexpected(d.error().context(name));
      if (d->count() < 10) return fail(Errc::config, fmt::format("{} must be at least 10ms", name));
      *target = *d;
    }
  }
  if (auto v = setting("ca-bundle")) {
    if (!std::filesystem::exists(*v))
      return fail(Errc::config, fmt::format("ca-bundle {} does not exist", *v));
    c.ca_bundle = *v;
  }
  if (auto v = setting("notify-command")) c.notify_command = *v;

  // `listen`: the flags' values, else the environment's, else the file's.
  std::vector<std::string> listen_values;
  if (flags.count(k_listen) != 0) {
    listen_values = flags[k_listen].as<std::vector<std::string>>();
  } else if (auto v = env(k_listen_env); v && !v->empty()) {
    listen_values = {*v};
  } else if (file.count(k_listen) != 0) {
    listen_values = file[k_listen].as<std::vector<std::string>>();
  }

  // Server mode's settings, and the ones each mode has no use for.
  const bool server_settings_used = server || rotate;
  if (!server_settings_used) {
    if (!listen_values.empty()) {
      return fail(Errc::config,
                  "listen is a server-mode setting: add --server (docs/server-mode.md)");
    }
    for (const auto name : k_server_settings) {
      if (setting(std::string(name).c_str())) {
        return fail(
            Errc::config,
            fmt::format("{} is a server-mode setting: add --server (docs/server-mode.md)", name));
      }
    }
    if (!services.empty()) {
      return fail(Errc::config, fmt::format("[service.{}] is a server-mode setting: add --server "
                                            "(docs/server-mode.md)",
                                            services.begin()->first));
    }
    if (!providers.empty()) {
      return fail(Errc::config, fmt::format("[provider.{}] is a server-mode setting: add --server "
                                            "(docs/server-mode.md)",
                                            providers.begin()->first));
    }
    return out;
  }
  if (server) {
    for (const auto name : k_single_user_settings) {
      if (setting(std::string(name).c_str())) {
        return fail(Errc::config,
                    fmt::format("{} is not used in server mode: the data is in PostgreSQL "
                                "(database-url-file); remove it",
                                name));
      }
    }
  }
  ServerSettings& srv = c.server;
  if (auto v = setting("database-url-file"); v && !v->empty()) {
    srv.database_url_file = *v;
  } else {
    return fail(Errc::config,
                "server mode needs database-url-file: a file (0600) holding the PostgreSQL "
                "connection string, e.g. host=/run/postgresql dbname=tokend");
  }
  if (auto v = setting("kek-file")) srv.kek.key_file = *v;
  if (auto v = setting("kek-id")) srv.kek.key_id = *v;
  if (!server) return out;  // rotate-key needs no more

  if (auto v = setting("user-header")) srv.identity.user_header = *v;
  if (auto v = setting("user-rate-limit")) {
    auto n = parse_count("user-rate-limit", *v, 0, 1'000'000'000);
    if (!n) return std::unexpected(n.error());
    srv.user_rate_limit = static_cast<std::size_t>(*n);
  }
  if (auto v = setting("service-rate-limit")) {
    auto n = parse_count("service-rate-limit", *v, 0, 1'000'000'000);
    if (!n) return std::unexpected(n.error());
    srv.service_rate_limit = static_cast<std::size_t>(*n);
  }
  if (auto v = setting("trusted-proxy-uid")) {
    for (const auto& item : split_list(*v)) {
      auto uid = parse_user(item);
      if (!uid) return std::unexpected(uid.error().context("trusted-proxy-uid"));
      srv.identity.trusted_proxy_uids.insert(*uid);
    }
  }
  for (const auto& value : listen_values) {
    for (const auto& item : split_list(value)) {
      auto address = parse_listen_address(item);
      if (!address) return std::unexpected(address.error());
      srv.listen.push_back(std::move(*address));
    }
  }
  if (auto v = setting("tls-cert-file")) srv.tls.cert_file = *v;
  if (auto v = setting("tls-key-file")) srv.tls.key_file = *v;
  if (auto v = setting("tls-client-ca-file")) srv.tls.client_ca_file = *v;
  if (!srv.listen.empty() && (srv.tls.cert_file.empty() || srv.tls.key_file.empty())) {
    return fail(Errc::config,
                "listen needs tls-cert-file and tls-key-file: tokend serves TCP only over TLS");
  }
  if (srv.listen.empty() && (!srv.tls.cert_file.empty() || !srv.tls.key_file.empty() ||
                             !srv.tls.client_ca_file.empty())) {
    return fail(Errc::config,
                "tls-cert-file, tls-key-file and tls-client-ca-file are for the TLS listeners: "
                "add listen = HOST:PORT, or remove them");
  }
  if (auto v = setting("public-url")) {
    auto url = parse_public_url(*v);
    if (!url) return std::unexpected(url.error());
    srv.oidc.public_url = *url;
    srv.connect.public_url = std::move(*url);
  }
  auto& oidc = srv.oidc;
  if (auto v = setting("oidc-issuer")) oidc.issuer = *v;
  if (auto v = setting("oidc-client-id")) oidc.client_id = *v;
  if (auto v = setting("oidc-client-secret-file")) oidc.client_secret_file = *v;
  if (auto v = setting("oidc-user-claim")) {
    if (*v != "sub" && *v != "email") {
      return fail(Errc::config, "oidc-user-claim must be sub or email");
    }
    oidc.user_claim = *v;
  }
  if (auto v = setting("session-lifetime")) {
    auto d = parse_duration(*v);
    if (!d || *d < std::chrono::seconds(5) || *d > std::chrono::days(30)) {
      return fail(Errc::config, fmt::format("session-lifetime '{}' must be a duration from 5s to "
                                            "30d (e.g. 8h, the default)",
                                            *v));
    }
    oidc.session_lifetime = *d;
  }
  if (auto v = setting("oidc-post-logout-redirect-uri")) {
    if (auto r = oauth::check_endpoint_url("oidc-post-logout-redirect-uri", *v); !r) {
      return fail(Errc::config, r.error().message);
    }
    oidc.post_logout_redirect_uri = *v;
  }
  if (!oidc.issuer.empty() || !oidc.client_id.empty() || !oidc.client_secret_file.empty()) {
    if (oidc.issuer.empty() || oidc.client_id.empty() || oidc.client_secret_file.empty()) {
      return fail(Errc::config,
                  "OIDC sign-in needs oidc-issuer, oidc-client-id and oidc-client-secret-file");
    }
    if (auto r = oauth::check_endpoint_url("oidc-issuer", oidc.issuer); !r) {
      return fail(Errc::config, r.error().message);
    }
    if (oidc.public_url.empty() || srv.listen.empty()) {
      return fail(Errc::config,
                  "OIDC sign-in needs listen (a TLS listener) and public-url (the https origin "
                  "users reach it at): the session cookie travels over TLS only");
    }
  }
  for (const auto& [name, section] : services) {
    if (!section.cert_subject.empty() && srv.tls.client_ca_file.empty()) {
      return fail(Errc::config,
                  fmt::format("[service.{}] cert-subject needs tls-client-ca-file: the CA that "
                              "signs services' client certificates",
                              name));
    }
    if ((!section.has_secret_file || section.secret_file.empty()) && section.cert_subject.empty()) {
      return fail(Errc::config,
                  fmt::format("[service.{}] needs secret-file (a file, 0600, holding the "
                              "service's secret: openssl rand -hex 32) or cert-subject (its "
                              "client certificate's CN or subject alternative name), or both",
                              name));
    }
    if (!section.has_act_for) {
      return fail(Errc::config, fmt::format("[service.{}] needs act-for: the users it may act "
                                            "for (user ids, *@DOMAIN or *)",
                                            name));
    }
    std::optional<Secret> secret;
    if (section.has_secret_file && !section.secret_file.empty()) {
      auto read = fs::read_private_file(section.secret_file, 4096);
      if (!read) {
        return fail(Errc::config,
                    fmt::format("[service.{}] secret-file: {}", name, read.error().message));
      }
      secret = std::move(*read);
    }
    auto policy = make_service_policy(name, secret ? &*secret : nullptr, section.cert_subject,
                                      section.act_for);
    if (!policy) return std::unexpected(policy.error());
    if (section.rate_limit) {
      auto n = parse_count(fmt::format("[service.{}] rate-limit", name), *section.rate_limit, 0,
                           1'000'000'000);
      if (!n) return std::unexpected(n.error());
      policy->rate_limit = static_cast<std::size_t>(*n);
    }
    srv.identity.services.push_back(std::move(*policy));
  }
  if (auto r = check_identity_config(srv.identity); !r) return std::unexpected(r.error());
  for (const auto& [name, fields] : providers) {
    auto t = make_provider_template(name, fields, srv.connect.public_url);
    if (!t) return std::unexpected(t.error());
    srv.connect.providers.push_back(std::move(*t));
  }
  if (srv.identity.trusted_proxy_uids.empty() && srv.identity.services.empty() && !oidc.enabled()) {
    return fail(Errc::config,
                "server mode needs a way to name users: trusted-proxy-uid (the authenticating "
                "reverse proxy), a [service.NAME] section or OIDC sign-in (oidc-issuer)");
  }
  return out;
}

}  // namespace tokend::daemon
