#include "daemon/server.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "api/api.hpp"
#include "core/clock.hpp"
#include "core/encoding.hpp"
#include "core/fs.hpp"
#include "core/json.hpp"
#include "core/random.hpp"
#include "daemon/budget.hpp"
#include "daemon/connect.hpp"
#include "daemon/identity.hpp"
#include "daemon/oidc.hpp"
#include "ipc/server.hpp"
#include "login/callback_listener.hpp"
#include "login/login.hpp"
#include "net/http_client.hpp"
#include "net/loop.hpp"
#include "net/spool.hpp"
#include "oauth/discovery.hpp"
#include "process.hpp"
#include "proxy/proxy.hpp"
#include "proxy/route.hpp"
#include "store/kek.hpp"
#include "store/pg_store.hpp"
#include "tokens/events.hpp"
#include "tokens/replica.hpp"
#include "tokens/timer_port.hpp"
#include "tokens/token_service.hpp"

namespace tokend::daemon {

namespace {

// The connection string: one line of a private file; a secret throughout.
Result<Secret> read_conninfo(const std::filesystem::path& file) {
  auto contents = fs::read_private_file(file, 64 * 1024);
  if (!contents) return std::unexpected(contents.error().context("database-url-file"));
  std::string_view v = contents->reveal();
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ')) {
    v.remove_suffix(1);
  }
  if (v.empty()) {
    return fail(Errc::config,
                fmt::format("database-url-file {} is empty: write the PostgreSQL connection "
                            "string in it, e.g. host=/run/postgresql dbname=tokend",
                            file.string()));
  }
  return Secret(v);
}

Result<store::PgDatabase> open_database(const ServerSettings& settings, const EnvLookup& env,
                                        const Clock& clock) {
  auto kek = store::resolve_kek(settings.kek, env);
  if (!kek) return std::unexpected(kek.error());
  auto conninfo = read_conninfo(settings.database_url_file);
  if (!conninfo) return std::unexpected(conninfo.error());
  return store::PgDatabase::open(*conninfo, std::move(*kek), clock);
}

// SIGHUP: the key-encryption key from its source again (kek-file, the
// credential; TOKEND_KEK was read once at start). A new key is taken once it
// opens the database's key check (after `tokend rotate-key`); one that does
// not, or cannot be read, is refused and the key in use stays.
void reload_kek(store::PgDatabase& db, const ServerSettings& settings, const EnvLookup& env) {
  auto kek = store::resolve_kek(settings.kek, env);
  if (!kek) {
    spdlog::error("SIGHUP: the key-encryption key was not re-read (key '{}' stays): {}",
                  db.key_id(), kek.error().message);
    return;
  }
  const std::string old_id = db.key_id();
  const std::string source = kek->source;
  auto switched = db.use_key(std::move(*kek));
  if (!switched) {
    spdlog::error("SIGHUP: the key-encryption key from {} was not taken (key '{}' stays): {}",
                  source, old_id, switched.error().message);
  } else if (*switched) {
    spdlog::info("SIGHUP: key-encryption key '{}' from {} in use (was '{}')", db.key_id(), source,
                 old_id);
  }
}

// What every tenant shares: one loop, one HTTP client, one clock, one
// database connection, the login redirect listener, the settings.
struct Shared {
  net::Loop& loop;
  const Clock& clock;
  net::HttpClient& http;
  login::UvCallbackPort& callbacks;
  const ipc::Server& server;
  tokens::EngineOptions engine;
  login::LoginOptions login;
  api::ApiOptions api;
  proxy::ProxyOptions proxy;
  store::AuditRetention audit;
  // The connect page's public-url and provider templates (SIGHUP replaces).
  std::shared_ptr<const ConnectSettings> connect = std::make_shared<const ConnectSettings>();
  // Tells the other replicas about one of a user's events (NOTIFY).
  std::function<void(const std::string& user, const tokens::Event&)> tell_replicas;
};

// One user's part of the server: the pieces of the single-user daemon, on
// the shared loop. Its Api knows only its own TokenService and store, so
// nothing a request does through it reaches another user's data.
class Tenant {
 public:
  Tenant(Shared& shared, store::PgStore store)
      : m_store(std::move(store)),
        m_refresh_timer(shared.loop, shared.clock),
        m_tokens(m_store, shared.clock, m_events, m_refresh_timer, shared.http, shared.engine),
        m_login_timer(shared.loop, shared.clock),
        m_login(m_tokens, shared.clock, m_events, m_login_timer, shared.http, &shared.callbacks,
                shared.login),
        m_proxy(shared.loop, m_tokens, shared.http, m_store, shared.clock, shared.proxy),
        m_api(shared.loop, m_tokens, m_events, m_store, shared.clock, shared.api),
        m_connect(m_tokens, m_login, shared.connect) {
    m_store.set_audit_retention(shared.audit);
    m_api.set_login(&m_login);
    m_login.share_flows(&m_store);  // any replica can complete a login (the store's login_flows)
    m_api.set_proxy(&m_proxy);
    // No set_server: the socket's counters are every user's traffic, not
    // this user's, so a user's /v1/metrics leaves them out.
    m_api.register_routes(m_router);
    m_connect.register_routes(m_router);
    // This replica's events go to the others; theirs come back through
    // apply_remote, which must not send them on again.
    m_forward = m_events.subscribe([this, &shared](const tokens::Event& e) {
      if (!m_replaying && shared.tell_replicas) shared.tell_replicas(m_store.user_id(), e);
    });
  }
  Tenant(const Tenant&) = delete;
  Tenant& operator=(const Tenant&) = delete;

  ~Tenant() = default;

  // Loads the user's profiles and schedules their refreshes.
  Result<> start() {
    if (auto r = m_store.prune_audit(); !r) {
      spdlog::warn("user '{}': pruning the audit log: {}", m_store.user_id(), r.error().message);
    }
    return m_tokens.load();
  }

  // The single-user daemon's shutdown order; the shared HTTP client closes
  // after every tenant.
  void close() {
    m_api.close();
    m_login.shutdown();
    m_proxy.shutdown();
    m_tokens.shutdown();
    m_refresh_timer.close();
    m_login_timer.close();
  }

  void set_audit_retention(const store::AuditRetention& retention) {
    m_store.set_audit_retention(retention);
  }

  [[nodiscard]] const ipc::Router& router() const { return m_router; }
  [[nodiscard]] std::size_t profiles() const { return m_tokens.size(); }
  [[nodiscard]] const tokens::EngineStats& engine_stats() const { return m_tokens.stats(); }

  // Another replica's event: the profile is read again, then this user's
  // subscribers here see the event too.
  void apply_remote(const tokens::ReplicaEvent& e) {
    if (!e.profile.empty()) m_tokens.reload(e.profile);
    m_replaying = true;
    m_events.publish(e.kind, e.profile, e.at_ms, e.data);
    m_replaying = false;
    m_login.remote_event(e.kind, e.profile, e.data);
  }
  // Every profile read again (the replicas' channel was down).
  void resync() {
    if (auto r = m_tokens.reload_all(); !r) {
      spdlog::warn("user '{}': re-reading the profiles: {}", m_store.user_id(), r.error().message);
    }
    m_login.resync();  // logins completed elsewhere meanwhile
  }

 private:
  store::PgStore m_store;
  tokens::EventBus m_events;
  tokens::UvTimerPort m_refresh_timer;
  tokens::TokenService m_tokens;
  tokens::UvTimerPort m_login_timer;
  login::LoginManager m_login;
  proxy::Proxy m_proxy;
  api::Api m_api;
  ConnectPage m_connect;
  ipc::Router m_router;
  tokens::EventBus::Subscription m_forward;
  bool m_replaying = false;
};

// The tenants of this process, made on first use and kept until it stops
// (no eviction yet: an idle tenant costs two idle timers and its cache).
class Tenants {
 public:
  Tenants(Shared& shared, store::PgDatabase& db) : m_shared(shared), m_db(db) {}

  Result<Tenant*> get(const std::string& user) {
    if (auto it = m_tenants.find(user); it != m_tenants.end()) return it->second.get();
    if (m_closed) return fail(Errc::unavailable, "tokend is shutting down");
    auto store = m_db.store_for(user);
    if (!store) return std::unexpected(store.error());
    auto tenant = std::make_unique<Tenant>(m_shared, std::move(*store));
    if (auto r = tenant->start(); !r) {
      tenant->close();
      return std::unexpected(r.error().context(fmt::format("loading user '{}'", user)));
    }
    Tenant* raw = tenant.get();
    m_tenants.emplace(user, std::move(tenant));
    spdlog::info("user '{}': {} profile(s) loaded", user, raw->profiles());
    return raw;
  }

  void close() {
    m_closed = true;
    for (auto& [user, tenant] : m_tenants) tenant->close();
  }

  void set_audit_retention(const store::AuditRetention& retention) {
    m_shared.audit = retention;
    for (auto& [user, tenant] : m_tenants) tenant->set_audit_retention(retention);
  }

  [[nodiscard]] std::size_t size() const { return m_tenants.size(); }
  void for_each(const std::function<void(Tenant&)>& f) {
    for (auto& [user, tenant] : m_tenants) f(*tenant);
  }

 private:
  Shared& m_shared;
  store::PgDatabase& m_db;
  std::map<std::string, std::unique_ptr<Tenant>, std::less<>> m_tenants;
  bool m_closed = false;
};

// This replica's share of the refreshes (counters over its tenants).
void append_replica_metrics(std::string& out, Tenants& tenants,
                            const tokens::FeedWatcher& replicas) {
  tokens::EngineStats sum;
  tenants.for_each([&](Tenant& t) {
    const auto& s = t.engine_stats();
    sum.refreshes_ok += s.refreshes_ok;
    sum.refreshes_failed += s.refreshes_failed;
    sum.claims_held_elsewhere += s.claims_held_elsewhere;
    sum.refreshes_adopted += s.refreshes_adopted;
    sum.reloads += s.reloads;
    sum.in_flight += s.in_flight;
  });
  const std::pair<const char*, std::uint64_t> counters[] = {
      {"tokend_server_refreshes_ok_total", sum.refreshes_ok},
      {"tokend_server_refreshes_failed_total", sum.refreshes_failed},
      {"tokend_server_refresh_claims_held_elsewhere_total", sum.claims_held_elsewhere},
      {"tokend_server_refreshes_adopted_total", sum.refreshes_adopted},
      {"tokend_server_reloads_total", sum.reloads},
      {"tokend_server_replica_channel_reconnects_total", replicas.reconnects()}};
  for (const auto& [name, value] : counters) {
    out += fmt::format("# TYPE {} counter\n{} {}\n", name, name, value);
  }
  out += fmt::format(
      "# TYPE tokend_server_refreshes_in_flight gauge\ntokend_server_refreshes_in_flight {}\n"
      "# TYPE tokend_server_replica_channel_up gauge\ntokend_server_replica_channel_up {}\n",
      sum.in_flight, replicas.connected() ? 1 : 0);
}

// The refusal's audit line: the log always, and the audit log of the user it
// named, when it named a valid one.
void audit_refusal(store::PgDatabase& db, const ipc::Exchange& ex, const Refusal& r) {
  const ipc::Peer& peer = ex.peer();
  spdlog::warn("request refused ({} {}): peer {}{}{}: {}", r.status, r.code,
               peer.tls ? fmt::format("{} (TLS)", peer.address)
                        : fmt::format("uid {} pid {}", peer.uid, peer.pid),
               r.user.empty() ? std::string() : fmt::format(", user '{}'", r.user),
               r.service.empty() ? std::string() : fmt::format(", service '{}'", r.service),
               r.message);
  if (r.user.empty()) return;
  auto store = db.store_for(r.user);
  if (!store) return;
  store::AuditEvent e;
  e.kind = "identity_refused";
  e.peer_uid = static_cast<std::int64_t>(peer.uid);
  e.peer_pid = static_cast<std::int64_t>(peer.pid);
  e.detail = {{"code", r.code}, {"user", r.user}, {"method", ex.request().method}};
  if (!r.service.empty()) e.detail["service"] = r.service;
  // Best effort: the refusal stands whether or not its line is written.
  if (auto w = store->append_audit(e); !w) {
    spdlog::warn("user '{}': writing the audit log: {}", r.user, w.error().message);
  }
}

// The TLS listeners (`listen`): one ipc::Server per address, on the same
// front router and limits as the socket, all with the one certificate.
class TlsListeners {
 public:
  Result<> open(net::Loop& loop, ipc::Router& front, const Config& config) {
    if (config.server.listen.empty()) return {};
    auto ctx = ipc::TlsContext::load(config.server.tls);
    if (!ctx) return std::unexpected(ctx.error());
    for (const auto& a : config.server.listen) {
      auto server = std::make_unique<ipc::Server>(loop, front, config.limits);
      auto port = server->listen_tls(a.host, a.port, *ctx);
      if (!port) return std::unexpected(port.error());
      spdlog::info("listening on {}:{} (TLS{})",
                   a.host.find(':') != std::string::npos ? "[" + a.host + "]" : a.host, *port,
                   (*ctx)->asks_client_cert() ? ", client certificates asked" : "");
      m_servers.push_back(std::move(server));
    }
    return {};
  }

  // SIGHUP: the certificate and key (and client CA) again, for new
  // connections; on an error the ones in use stay.
  void reload(const Config& fresh) {
    if (m_servers.empty()) return;
    for (auto& s : m_servers) s->set_limits(fresh.limits);
    auto ctx = ipc::TlsContext::load(fresh.server.tls);
    if (!ctx) {
      spdlog::error("SIGHUP: TLS certificate not reloaded (the current one stays): {}",
                    ctx.error().message);
      return;
    }
    for (auto& s : m_servers) s->set_tls_context(*ctx);
    spdlog::info("TLS certificate and key reloaded");
  }

  void drain(std::chrono::milliseconds grace) {
    for (auto& s : m_servers) s->drain(grace, [] {});
  }
  [[nodiscard]] bool empty() const { return m_servers.empty(); }
  // The listeners' TLS counters, summed.
  [[nodiscard]] ipc::ServerStats stats() const {
    ipc::ServerStats sum;
    for (const auto& s : m_servers) {
      const auto& t = s->stats();
      sum.tls_handshakes_ok += t.tls_handshakes_ok;
      sum.tls_handshakes_ok_client_cert += t.tls_handshakes_ok_client_cert;
      sum.tls_failed_client_cert += t.tls_failed_client_cert;
      sum.tls_failed_protocol += t.tls_failed_protocol;
      sum.tls_failed_timeout += t.tls_failed_timeout;
      sum.tls_failed_closed += t.tls_failed_closed;
      sum.tls_plaintext_refused += t.tls_plaintext_refused;
      sum.tls_connections_open += t.tls_connections_open;
    }
    return sum;
  }
  void close() {
    for (auto& s : m_servers) s->close();
  }

 private:
  std::vector<std::unique_ptr<ipc::Server>> m_servers;
};

// People's sign-in (OIDC) on the front router, when configured: the client
// secret read from its file, the routes registered.
Result<std::unique_ptr<OidcSignin>> build_oidc(const Config& config, net::HttpTransport& http,
                                               store::PgDatabase& db, const Clock& clock,
                                               ipc::Router& front) {
  const auto& settings = config.server.oidc;
  if (!settings.enabled()) return std::unique_ptr<OidcSignin>{};
  auto secret = fs::read_private_file(settings.client_secret_file, 4096);
  if (!secret) return std::unexpected(secret.error().context("oidc-client-secret-file"));
  std::string_view v = secret->reveal();
  while (!v.empty() && (v.back() == '\n' || v.back() == '\r' || v.back() == ' ')) {
    v.remove_suffix(1);
  }
  auto oidc =
      std::make_unique<OidcSignin>(http, db, clock, settings, Secret(v), config.http_timeout);
  oidc->register_routes(front);
  return oidc;
}

// OIDC sign-in's provider, asked once at start for its metadata (OIDC
// Discovery, the URLs in order): one that answers with nothing usable (a
// wrong address, a page that is not metadata) refuses the start naming the
// issuer, rather than failing every person's first sign-in. One that cannot
// be reached (no connection, a timeout, 5xx or 429 at every URL) is
// Errc::transient: the caller starts anyway, since services and proxied
// users need no sign-in and a replica must come back during an identity
// provider's outage. The loop runs until each answer (the socket is not
// listening yet); OidcSignin fetches its own copy on first use.
Result<> probe_oidc_issuer(net::Loop& loop, net::HttpTransport& http, const OidcSettings& oidc,
                           std::chrono::milliseconds timeout) {
  auto urls = oauth::metadata_urls(oidc.issuer);
  if (!urls) return std::unexpected(urls.error().context("oidc-issuer"));
  std::string tried;
  bool only_unreachable = true;
  for (const auto& url : *urls) {
    std::optional<Result<net::HttpResponse>> answer;
    net::HttpRequest req;
    req.url = url;
    req.timeout = timeout;
    req.headers.emplace_back("Accept", "application/json");
    http.start(std::move(req), [&](Result<net::HttpResponse> r) {
      answer = std::move(r);
      loop.stop();
    });
    (void)loop.run();
    std::string why;
    if (!answer) {
      why = "no answer";
    } else if (!*answer) {
      why = (*answer).error().message;
    } else if ((**answer).status != 200) {
      why = fmt::format("HTTP {}", (**answer).status);
      if ((**answer).status < 500 && (**answer).status != 429) only_unreachable = false;
    } else if (auto doc = json::parse((**answer).body.reveal(), "the metadata"); !doc) {
      why = "not JSON";
      only_unreachable = false;
    } else {
      auto meta = oauth::check_server_metadata(*doc, oidc.issuer);
      if (!meta) {
        return fail(Errc::unavailable,
                    fmt::format("oidc-issuer {}: its OpenID Connect metadata ({}) is unusable: {}",
                                oidc.issuer, url, meta.error().message));
      }
      if (meta->authorization_endpoint.empty() || meta->token_endpoint.empty()) {
        return fail(Errc::unavailable,
                    fmt::format("oidc-issuer {}: its OpenID Connect metadata ({}) names no "
                                "authorization or token endpoint",
                                oidc.issuer, url));
      }
      return {};
    }
    tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", url, why);
  }
  if (only_unreachable) {
    return fail(Errc::transient,
                fmt::format("oidc-issuer {} cannot be reached for OpenID Connect discovery ({}); "
                            "starting anyway: sign-in is tried again at each person's first "
                            "sign-in; services and the trusted proxy's users are served",
                            oidc.issuer, tried));
  }
  return fail(Errc::unavailable,
              fmt::format("oidc-issuer {} does not answer OpenID Connect discovery ({}); nobody "
                          "could sign in: check the issuer's address and that this host reaches it",
                          oidc.issuer, tried));
}

std::set<uid_t> allowed_peers(const Config& config) {
  std::set<uid_t> uids = config.allowed_uids;
  uids.insert(config.server.identity.trusted_proxy_uids.begin(),
              config.server.identity.trusted_proxy_uids.end());
  return usable_allowed_uids(uids);
}

}  // namespace

int run_server(const Config& initial, const EnvLookup& env,
               const std::function<Result<Config>()>& reparse) {
  Config config = initial;
  raise_fd_limit();
  std::signal(SIGPIPE, SIG_IGN);

  SystemClock clock;
  auto db = open_database(config.server, env, clock);
  if (!db) {
    spdlog::critical("{}", db.error().message);
    return db.error().code == Errc::config ? 2 : 1;
  }
  auto users = db->users();
  if (!users) {
    spdlog::critical("listing the users with profiles: {}", users.error().message);
    return 1;
  }

  // This process among the replicas sharing the database: its events
  // carry the id, so it skips its own when they come back.
  std::string replica_id = fmt::format("{}-", ::getpid());
  if (auto nonce = random_secret(6)) replica_id += hex_encode(nonce->reveal());
  auto conninfo = read_conninfo(config.server.database_url_file);
  if (!conninfo) {
    spdlog::critical("{}", conninfo.error().message);
    return 2;
  }
  auto listener = store::PgListener::open(*conninfo, tokens::k_replica_channel);
  if (!listener) {
    spdlog::critical("listening for the other replicas: {}", listener.error().message);
    return 1;
  }

  net::Loop loop;
  int exit_code = 0;
  {
    // Large proxied bodies pass through temporary files in the socket's
    // private directory.
    net::Spool::set_directory(config.paths.socket.parent_path());
    net::HttpClientOptions http_options;
    http_options.ca_bundle = config.ca_bundle;
    http_options.user_agent = fmt::format("tokend/{}", version());
    net::HttpClient http(loop, http_options);
    login::UvCallbackPort callbacks(loop);
    ipc::Router front;
    ipc::Server server(loop, front, config.limits);
    TlsListeners tls;

    Shared shared{loop, clock, http, callbacks, server, {}, {}, {}, {}, config.audit, {}, {}};
    shared.connect = std::make_shared<const ConnectSettings>(config.server.connect);
    shared.engine.policy.buffer = config.refresh_buffer;
    shared.engine.max_concurrent = config.max_concurrent_refreshes;
    shared.engine.http_timeout = config.http_timeout;
    shared.login.flow_timeout = config.login_timeout;
    shared.login.http_timeout = config.http_timeout;
    shared.login.replica_id = replica_id;
    shared.api.version = std::string(version());
    shared.api.heartbeat = config.heartbeat;
    shared.api.server_mode = true;
    // The user header never goes upstream (X-Tokend-* and Authorization
    // never do).
    shared.proxy.drop_headers = {config.server.identity.user_header};
    Tenants tenants(shared, *db);
    shared.tell_replicas = [&](const std::string& user, const tokens::Event& e) {
      // `expiring` is each replica's own reckoning, sent by every one.
      if (e.kind == tokens::EventKind::expiring) return;
      if (auto r = db->notify(tokens::k_replica_channel,
                              tokens::encode_replica_event(replica_id, user, e));
          !r) {
        spdlog::warn("user '{}': telling the other replicas about {}: {}", user,
                     tokens::to_string(e.kind), r.error().message);
      }
    };
    tokens::FeedWatcher replicas(
        loop, *listener,
        [&](const store::Notification& n) {
          auto e = tokens::decode_replica_event(n.payload);
          if (!e) {
            spdlog::warn("{}", e.error().message);
            return;
          }
          if (e->origin == replica_id) return;
          // A user new to this replica is loaded, so every replica
          // schedules every user's refreshes and one that dies is covered.
          auto t = tenants.get(e->user);
          if (!t) {
            spdlog::warn("{}", t.error().message);
            return;
          }
          (*t)->apply_remote(*e);
        },
        [&] { tenants.for_each([](Tenant& t) { t.resync(); }); });
    // A start refused after this point: every handle made so far is closed
    // and its close callbacks run before tokend exits 1.
    const auto refuse_start = [&] {
      replicas.close();
      tenants.close();
      http.close();
      server.close();
      loop.run();
      (void)loop.close();
      return 1;
    };
    if (auto r = replicas.start(); !r) {
      spdlog::critical("listening for the other replicas: {}", r.error().message);
      return refuse_start();
    }

    // Users with profiles are loaded now, so their refreshes run.
    for (const auto& user : *users) {
      if (auto t = tenants.get(user); !t) {
        spdlog::critical("{}", t.error().message);
        return refuse_start();
      }
    }

    IdentityConfig identity = config.server.identity;
    RequestBudgets budgets;  // user-rate-limit, the services' rate-limit
    auto oidc_built = build_oidc(config, http, *db, clock, front);
    if (!oidc_built) {
      spdlog::critical("{}", oidc_built.error().message);
      return refuse_start();
    }
    std::unique_ptr<OidcSignin> oidc = std::move(*oidc_built);
    if (oidc) {
      if (auto r = probe_oidc_issuer(loop, http, config.server.oidc, config.http_timeout); !r) {
        if (r.error().code != Errc::transient) {
          spdlog::critical("{}", r.error().message);
          return refuse_start();
        }
        spdlog::warn("{}", r.error().message);
      }
    }
    // The replica's own endpoints: health, readiness (the database answers)
    // and the socket's counters, for the host's probes and Prometheus. They
    // act for no user, so a request that names one is refused: through the
    // reverse proxy they stay out of users' reach.
    const auto started = clock.mono_now();
    auto replica = [&](std::function<void(const std::shared_ptr<ipc::Exchange>&)> answer) {
      return [&identity, answer = std::move(answer)](const std::shared_ptr<ipc::Exchange>& ex) {
        const auto& req = ex->request();
        if (ex->peer().tls) {
          return ex->respond(ipc::Response::error(
              403, "socket_only",
              "the /v1/server endpoints are the replica's own: call them on the Unix socket"));
        }
        if (req.header(identity.user_header) || req.header("Authorization") ||
            req.header(k_act_as_header)) {
          return ex->respond(ipc::Response::error(
              403, "not_for_users",
              "the /v1/server endpoints are the replica's own and act for no user; call them "
              "without a user header or service credentials"));
        }
        answer(ex);
      };
    };
    front.add("GET", "/v1/server/health", replica([&](const std::shared_ptr<ipc::Exchange>& ex) {
                const auto up =
                    std::chrono::duration_cast<std::chrono::seconds>(clock.mono_now() - started);
                ex->respond(ipc::Response::json(200, {{"status", "ok"},
                                                      {"version", std::string(version())},
                                                      {"uptime_s", up.count()},
                                                      {"users_loaded", tenants.size()},
                                                      {"pid", ::getpid()}}));
              }));
    front.add(
        "GET", "/v1/server/ready", replica([&](const std::shared_ptr<ipc::Exchange>& ex) {
          auto schema = db->schema_version();
          if (!schema) {
            return ex->respond(ipc::Response::error(
                503, "unavailable", "the database does not answer: " + schema.error().message));
          }
          ex->respond(ipc::Response::json(200, {{"ready", true}, {"schema_version", *schema}}));
        }));
    front.add("GET", "/v1/server/metrics", replica([&](const std::shared_ptr<ipc::Exchange>& ex) {
                std::string out = fmt::format(
                    "# HELP tokend_server_users_loaded Users whose profiles this replica holds.\n"
                    "# TYPE tokend_server_users_loaded gauge\ntokend_server_users_loaded {}\n",
                    tenants.size());
                append_replica_metrics(out, tenants, replicas);
                api::append_socket_metrics(out, server.stats());
                if (!tls.empty()) api::append_tls_metrics(out, tls.stats());
                ipc::Response r;
                r.headers.emplace_back("Content-Type", "text/plain; version=0.0.4");
                r.body = std::move(out);
                ex->respond(std::move(r));
              }));
    // The front router has every route of the API and the connect page;
    // each request is identified, then handed to its user's router.
    auto to_tenant = [&](const std::shared_ptr<ipc::Exchange>& ex) {
      if (cross_site_write(ex->request(), *shared.connect)) {
        return ex->respond(ipc::Response::error(
            403, "cross_origin",
            "a browser sent this request from another site's page; tokend takes changes only "
            "from its own pages (public-url)"));
      }
      SessionCookie session;
      if (oidc) {
        if (auto user = oidc->session_of(ex->request(), ex->peer())) {
          session.present = true;
          session.user = std::move(*user);
          session.public_url = config.server.oidc.public_url;
        }
      }
      auto caller = identify(identity, ex->request(), ex->peer(), session);
      if (!caller) {
        audit_refusal(*db, *ex, caller.error());
        const auto& r = caller.error();
        return ex->respond(ipc::Response::error(r.status, r.code, r.message));
      }
      if (auto refused = budgets.take(
              caller->user, config.server.user_rate_limit, caller->service,
              service_rate_limit(identity, caller->service, config.server.service_rate_limit),
              clock.mono_now())) {
        return ex->respond(budget_response(*refused));
      }
      auto tenant = tenants.get(caller->user);
      if (!tenant) {
        spdlog::error("{}", tenant.error().message);
        return ex->respond(ipc::error_response(tenant.error()));
      }
      ipc::Peer peer = ex->peer();
      peer.user = std::move(caller->user);
      peer.service = std::move(caller->service);
      (*tenant)->router().dispatch(ex, std::move(peer));
    };
    api::Api::register_route_shapes(front, to_tenant);
    ConnectPage::register_route_shapes(front, to_tenant);
    server.set_allowed_uids(allowed_peers(config));
    server.on_denied_peer([](const ipc::Peer& peer) {
      spdlog::warn(
          "connection refused: peer uid {} pid {} is not allowed (allow-uid, "
          "trusted-proxy-uid)",
          peer.uid, peer.pid);
    });

    ProcessSignals signals(loop);
    const auto drain = [&](std::function<void()> drained) {
      replicas.close();
      tenants.close();
      http.close();
      tls.drain(config.drain_timeout);
      server.drain(config.drain_timeout, std::move(drained));
    };
    const auto apply = [&](const Config& fresh) {
      if (fresh.paths.socket != config.paths.socket ||
          fresh.server.database_url_file != config.server.database_url_file ||
          fresh.server.identity.user_header != config.server.identity.user_header ||
          fresh.server.listen.size() != config.server.listen.size()) {
        spdlog::warn(
            "SIGHUP: socket, listen, database-url-file and user-header changes take effect "
            "after a restart");
      }
      reload_kek(*db, fresh.server, env);
      tls.reload(fresh);
      spdlog::default_logger()->set_level(fresh.log.level);
      server.set_limits(fresh.limits);
      config.limits = fresh.limits;
      config.allowed_uids = fresh.allowed_uids;
      config.server.identity.trusted_proxy_uids = fresh.server.identity.trusted_proxy_uids;
      config.server.identity.services = fresh.server.identity.services;
      config.server.user_rate_limit = fresh.server.user_rate_limit;
      config.server.service_rate_limit = fresh.server.service_rate_limit;
      identity.trusted_proxy_uids = config.server.identity.trusted_proxy_uids;
      identity.services = config.server.identity.services;
      server.set_allowed_uids(allowed_peers(config));
      config.drain_timeout = fresh.drain_timeout;
      config.audit = fresh.audit;
      tenants.set_audit_retention(config.audit);
      shared.connect = std::make_shared<const ConnectSettings>(fresh.server.connect);
      spdlog::info("configuration reloaded: {} service(s), {} trusted proxy uid(s), {} provider(s)",
                   identity.services.size(), identity.trusted_proxy_uids.size(),
                   shared.connect->providers.size());
    };
    if (auto r = signals.start(drain, reparse, apply); !r) {
      spdlog::critical("{}", r.error().message);
      signals.close();
      return refuse_start();
    }

    // Listening comes last: once the socket exists a client (or a test) may
    // signal us, and SIGTERM must already drain rather than kill.
    auto listening = listen_on_socket(server, config.paths.socket);
    if (listening) {
      if (auto r = tls.open(loop, front, config); !r) listening = std::unexpected(r.error());
    }
    if (!listening) {
      spdlog::critical("{}", listening.error().message);
      tls.close();
      signals.close();
      return refuse_start();
    }
    announce_ready(
        fmt::format("tokend {} ready in server mode: {} user(s) with profiles, key {}, socket {}",
                    version(), users->size(), db->key_id(), *listening),
        fmt::format("serving {} user(s)", tenants.size()));
    loop.run();
  }
  if (const int rc = loop.close(); rc != 0) {
    spdlog::error("event loop closed with handles still open ({})", rc);
    exit_code = 1;
  }
  spdlog::info("tokend stopped");
  return exit_code;
}

int rotate_key_command(const ParsedArgs& args, const EnvLookup& env) {
  SystemClock clock;
  auto db = open_database(args.config.server, env, clock);
  if (!db) {
    spdlog::error("rotate-key: {}", db.error().message);
    return db.error().code == Errc::config ? 2 : 1;
  }
  // The new key comes from its file only: never the environment, which
  // holds the current one.
  if (!fs::exists_nofollow(args.new_kek.key_file)) {
    spdlog::error("rotate-key: --new-kek-file {} does not exist", args.new_kek.key_file.string());
    return 2;
  }
  auto new_kek = store::resolve_kek(
      args.new_kek, [](const char*) -> std::optional<std::string> { return std::nullopt; });
  if (!new_kek) {
    spdlog::error("rotate-key: the new key: {}", new_kek.error().message);
    return 2;
  }
  const std::string old_id = db->key_id();
  const std::string new_id = new_kek->id;
  if (auto r = db->rotate_key(std::move(*new_kek)); !r) {
    spdlog::error("rotate-key: nothing changed: {}", r.error().message);
    return r.error().code == Errc::invalid_argument || r.error().code == Errc::config ? 2 : 1;
  }
  spdlog::info(
      "rotate-key: every row's data key is now wrapped by key '{}' (was '{}'); start tokend "
      "with the new key: running servers on the old key stop being able to open the database",
      new_id, old_id);
  return 0;
}

}  // namespace tokend::daemon
