// The /v1 API handlers, documented in docs/API.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "core/clock.hpp"
#include "gateway/endpoint.hpp"
#include "ipc/router.hpp"
#include "ipc/server.hpp"
#include "login/login.hpp"
#include "net/loop.hpp"
#include "proxy/proxy.hpp"
#include "tokens/events.hpp"
#include "tokens/token_service.hpp"

namespace tokend::api {

struct ApiOptions {
  std::string version;
  std::chrono::milliseconds heartbeat{15'000};  // SSE comment line interval
  // Each stand-in endpoint's listener (POST /v1/profiles/{name}/endpoint):
  // every local user can connect to it, so its connections are few.
  ipc::ServerLimits endpoint_limits = [] {
    ipc::ServerLimits l;
    l.max_connections = 64;
    return l;
  }();
  // Server mode (many users, each with their own Api): what acts on tokend's
  // host is refused, since the caller is not tokend's user: sinks (files
  // written as tokend) and stand-in endpoints (a loopback port on tokend's
  // host).
  bool server_mode = false;
};

// The socket server's counters as Prometheus text (tokend_http_*): the
// single-user /v1/metrics, and a server-mode replica's /v1/server/metrics.
void append_socket_metrics(std::string& out, const ipc::ServerStats& stats);
// The TLS listeners' own counters (tokend_tls_*), summed over them: a
// server-mode replica's /v1/server/metrics.
void append_tls_metrics(std::string& out, const ipc::ServerStats& stats);

class Api {
 public:
  Api(net::Loop& loop, tokens::TokenService& tokens, tokens::EventBus& events, store::Store& store,
      const Clock& clock, ApiOptions options);
  ~Api();
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  void register_routes(ipc::Router& router);
  // Registers every route register_routes has, with the same methods,
  // patterns and body limits, all to `handler` (server mode's front router,
  // which picks the caller's Api and dispatches there).
  static void register_route_shapes(ipc::Router& router, const ipc::Handler& handler);
  // For /v1/metrics and /v1/health.
  void set_server(const ipc::Server* server) { m_server = server; }
  // Login, logout and test endpoints answer 503 without one.
  void set_login(login::LoginManager* login) { m_login = login; }
  // /v1/proxy answers 503 without one.
  void set_proxy(proxy::Proxy* proxy) { m_proxy = proxy; }
  // Ends every event stream, closes every stand-in endpoint and stops the
  // heartbeat.
  void close();

  class Streams;
  class Waits;

  // The 200 answer to a token request (public for its test).
  static ipc::Response token_answer(const tokens::TokenGrant& grant, std::int64_t now_ms);

 private:
  using ExchangePtr = std::shared_ptr<ipc::Exchange>;

  // The route handlers, one per route (register_routes lists them).
  void get_health(const ExchangePtr& ex);
  void list_profiles(const ExchangePtr& ex);
  void get_profile(const ExchangePtr& ex);
  void put_profile(const ExchangePtr& ex);
  void delete_profile(const ExchangePtr& ex);
  void get_token(const ExchangePtr& ex);
  void refresh_profile(const ExchangePtr& ex);
  void start_login(const ExchangePtr& ex);
  void watch_login(const ExchangePtr& ex);
  void complete_login(const ExchangePtr& ex);
  void cancel_login(const ExchangePtr& ex);
  void logout(const ExchangePtr& ex);
  void test_profile(const ExchangePtr& ex);
  void open_endpoint_route(const ExchangePtr& ex);
  void proxy_route(const ExchangePtr& ex);
  void mcp_route(const ExchangePtr& ex);
  void get_events(const ExchangePtr& ex);
  void get_audit(const ExchangePtr& ex);
  void get_metrics(const ExchangePtr& ex);  // api/src/metrics.cpp

  struct RouteDef {
    const char* method;
    const char* pattern;
    void (Api::*handler)(const ExchangePtr&);
    bool large_body;
  };
  static const std::vector<RouteDef>& route_table();

  static void refuse_without_login(const ExchangePtr& ex);
  // Answers with the JSON a login-manager call produced, or its error.
  static std::function<void(Result<json::Json>)> json_responder(const ExchangePtr& ex,
                                                                const std::string& name);
  [[nodiscard]] std::size_t event_stream_count() const;
  [[nodiscard]] std::size_t waiting_count() const;

  // Hands a call to the proxy and answers with what comes back; with
  // wait_s > 0 a call refused for want of a login waits for one (or a new
  // token) and goes again.
  void forward(const std::shared_ptr<ipc::Exchange>& ex, proxy::ProxyCall call,
               std::int64_t wait_s);
  void answer_token(const std::shared_ptr<ipc::Exchange>& ex, const std::string& name,
                    const tokens::TokenRequest& req, std::int64_t wait_s,
                    Result<tokens::TokenGrant> grant);
  void audit_peer(const std::shared_ptr<ipc::Exchange>& ex, std::string_view kind,
                  std::string_view profile);
  // token_fetched: a service fetched a user's token (user, service, profile,
  // the answer's status and error code; never the token).
  void audit_token_fetch(const std::shared_ptr<ipc::Exchange>& ex, std::string_view profile,
                         int status, std::string_view error);
  void open_endpoint(const std::shared_ptr<ipc::Exchange>& ex, const std::string& name,
                     std::int64_t wait_s, const ipc::Peer& audited);

  tokens::TokenService& m_tokens;
  tokens::EventBus& m_events;
  store::Store& m_store;
  const Clock& m_clock;
  ApiOptions m_options;
  const ipc::Server* m_server = nullptr;
  MonoTime m_started;
  std::unique_ptr<Streams> m_streams;
  std::unique_ptr<Waits> m_waits;
  std::unique_ptr<gateway::StandinEndpoints> m_endpoints;
  login::LoginManager* m_login = nullptr;
  proxy::Proxy* m_proxy = nullptr;
  // profile -> result ("ok" or an error code) -> count; looked up without
  // allocating on the token path once a profile has been seen.
  std::map<std::string, std::map<std::string_view, std::uint64_t>, std::less<>> m_token_requests;
};

// Rendering shared by handlers and tests.
json::Json profile_json(const tokens::ProfileView& v, std::int64_t now_ms);

}  // namespace tokend::api
