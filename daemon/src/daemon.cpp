#include "daemon/daemon.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>

#include "api/api.hpp"
#include "core/clock.hpp"
#include "daemon/startup.hpp"
#include "ipc/server.hpp"
#include "login/callback_listener.hpp"
#include "login/login.hpp"
#include "net/http_client.hpp"
#include "net/loop.hpp"
#include "notify.hpp"
#include "process.hpp"
#include "proxy/proxy.hpp"
#include "tokens/events.hpp"
#include "tokens/timer_port.hpp"
#include "tokens/token_service.hpp"

namespace tokend::daemon {

int run_daemon(const Config& initial, const EnvLookup& env,
               const std::function<Result<Config>()>& reparse) {
  Config config = initial;
  raise_fd_limit();
  // A client that disconnects mid-write must not kill us.
  std::signal(SIGPIPE, SIG_IGN);

  SystemClock clock;
  auto store = open_store(config.paths, env, clock);
  if (!store) {
    spdlog::critical("{}", store.error().message);
    return 1;
  }

  store->set_audit_retention(config.audit);
  if (auto r = store->prune_audit(); !r)
    spdlog::warn("pruning the audit log: {}", r.error().message);

  net::Loop loop;
  int exit_code = 0;
  {
    tokens::EventBus events;
    // Large proxied bodies pass through temporary files next to the database
    // (a private directory), not memory.
    net::Spool::set_directory(config.paths.database.parent_path());
    net::HttpClientOptions http_options;
    http_options.ca_bundle = config.ca_bundle;
    http_options.user_agent = fmt::format("tokend/{}", version());
    net::HttpClient http(loop, http_options);
    tokens::UvTimerPort refresh_timer(loop, clock);
    tokens::EngineOptions engine;
    engine.policy.buffer = config.refresh_buffer;
    engine.max_concurrent = config.max_concurrent_refreshes;
    engine.http_timeout = config.http_timeout;
    tokens::TokenService tokens(*store, clock, events, refresh_timer, http, engine);
    if (auto r = tokens.load(); !r) {
      spdlog::critical("loading profiles: {}", r.error().message);
      return 1;
    }
    tokens::UvTimerPort login_timer(loop, clock);
    login::UvCallbackPort callbacks(loop);
    login::LoginOptions login_options;
    login_options.flow_timeout = config.login_timeout;
    login_options.http_timeout = config.http_timeout;
    login::LoginManager login(tokens, clock, events, login_timer, http, &callbacks, login_options);
    Notifier notifier(loop, events, config.notify_command);
    proxy::Proxy proxy(loop, tokens, http, *store, clock, proxy::ProxyOptions{});
    ipc::Router router;
    api::ApiOptions api_options{std::string(version()), config.heartbeat};
    // Stand-in endpoints listen on loopback TCP, open to every local user:
    // the socket's limits, with few connections each.
    api_options.endpoint_limits = config.limits;
    api_options.endpoint_limits.max_connections =
        std::min<std::size_t>(config.limits.max_connections, 64);
    api::Api api(loop, tokens, events, *store, clock, api_options);
    api.set_login(&login);
    api.set_proxy(&proxy);
    api.register_routes(router);
    ipc::Server server(loop, router, config.limits);
    api.set_server(&server);
    server.set_allowed_uids(usable_allowed_uids(config.allowed_uids));
    server.on_denied_peer([&](const ipc::Peer& peer) {
      store::AuditEvent e;
      e.kind = "peer_denied";
      e.peer_uid = peer.uid;
      e.peer_pid = peer.pid;
      (void)store->append_audit(e);
    });

    ProcessSignals signals(loop);
    const auto drain = [&](std::function<void()> drained) {
      api.close();
      login.shutdown();
      proxy.shutdown();
      notifier.close();
      tokens.shutdown();
      http.close();
      refresh_timer.close();
      login_timer.close();
      server.drain(config.drain_timeout, std::move(drained));
    };
    const auto apply = [&](const Config& fresh) {
      if (fresh.paths.socket != config.paths.socket ||
          fresh.paths.database != config.paths.database ||
          fresh.paths.key_file != config.paths.key_file) {
        spdlog::warn("SIGHUP: socket, database and key file changes take effect after a restart");
      }
      spdlog::default_logger()->set_level(fresh.log.level);
      server.set_limits(fresh.limits);
      server.set_allowed_uids(usable_allowed_uids(fresh.allowed_uids));
      config.log = fresh.log;
      config.limits = fresh.limits;
      config.allowed_uids = fresh.allowed_uids;
      config.drain_timeout = fresh.drain_timeout;
      config.notify_command = fresh.notify_command;
      notifier.set_command(fresh.notify_command);
      config.audit = fresh.audit;
      store->set_audit_retention(config.audit);
      if (auto r = store->prune_audit(); !r)
        spdlog::warn("pruning the audit log: {}", r.error().message);
      spdlog::info("configuration reloaded");
    };
    if (auto r = signals.start(drain, reparse, apply); !r) {
      spdlog::critical("{}", r.error().message);
      return 1;
    }

    // Listening comes last: once the socket exists a client (or a test) may
    // signal us, and SIGTERM must already drain rather than kill.
    auto listening = listen_on_socket(server, config.paths.socket);
    if (!listening) {
      spdlog::critical("{}", listening.error().message);
      return 1;
    }
    announce_ready(fmt::format("tokend {} ready: {} profile(s), database {}, socket {}", version(),
                               tokens.size(), config.paths.database.string(), *listening),
                   fmt::format("serving {} profile(s)", tokens.size()));
    loop.run();
  }
  if (const int rc = loop.close(); rc != 0) {
    spdlog::error("event loop closed with handles still open ({})", rc);
    exit_code = 1;
  }
  spdlog::info("tokend stopped");
  return exit_code;
}

}  // namespace tokend::daemon
