// Stand-in endpoints (tokenctl exec --endpoint, docs/wrapping-scripts.md): a loopback HTTP
// listener per running command that forwards the command's calls through the
// proxy with a fresh credential, so the command holds only a random stand-in.
//
// An endpoint listens on 127.0.0.1 at an ephemeral port and serves the
// upstream's own URL layout (proxy/mirror.hpp). Every request must name the
// endpoint in Host (DNS rebinding), must not come from another site's page,
// and must carry the stand-in as a Bearer token or as the Basic password.
// What passes goes to proxy::Proxy::forward exactly as /v1/proxy does:
// policy, rate limit, audit (with the pid of the process that opened the
// endpoint), refresh-and-retry on 401, streaming.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/secret.hpp"
#include "gateway/mirror.hpp"
#include "ipc/http.hpp"
#include "ipc/server.hpp"
#include "net/loop.hpp"
#include "proxy/proxy.hpp"
#include "tokens/token_service.hpp"

namespace tokend::gateway {

// Why an endpoint request was turned away, for answers and metrics.
enum class Refusal { wrong_host, cross_site, unauthorized };
std::string_view refusal_name(Refusal r);

// The checks every endpoint request passes before anything else, in this
// order: Host is 127.0.0.1:PORT or localhost:PORT (421 otherwise); an Origin
// header, when sent, is the endpoint's own origin, and Sec-Fetch-Site is not
// cross-site or same-site (403); Authorization carries the stand-in as
// "Bearer S" or as the password of "Basic base64(user:S)", any user name
// (401 with WWW-Authenticate otherwise). The stand-in is compared in constant
// time. nullopt: the request may pass.
std::optional<Refusal> check_standin_request(const ipc::Request& req, std::uint16_t port,
                                             const Secret& standin);
// The answer to a refused request.
ipc::Response refusal_response(Refusal r, std::uint16_t port);

struct EndpointStats {
  std::uint64_t opened = 0;
  std::uint64_t open = 0;
  // forwarded, wrong_host, cross_site, unauthorized, not_mirrored
  std::map<std::string, std::uint64_t, std::less<>> requests;
};

// The endpoints open now, keyed by an id; each lives until close(id) (the
// API closes it when the connection that opened it closes).
class StandinEndpoints {
 public:
  struct Opened {
    std::uint64_t id = 0;
    std::uint16_t port = 0;
    Secret standin;  // 32 random bytes, base64url
    gateway::MirrorLayout layout;
  };

  StandinEndpoints(net::Loop& loop, tokens::TokenService& tokens, ipc::ServerLimits limits);
  ~StandinEndpoints();
  StandinEndpoints(const StandinEndpoints&) = delete;
  StandinEndpoints& operator=(const StandinEndpoints&) = delete;

  // Opens an endpoint for `profile` whose calls are audited as `audit_peer`.
  // Errors: not_found (profile), config (mirror_layout), io (listening).
  Result<Opened> open(proxy::Proxy& proxy, const std::string& profile, const ipc::Peer& audit_peer);
  // Closes the listener and every connection on it; calls in flight end.
  void close(std::uint64_t id);
  void close_all();
  void set_limits(const ipc::ServerLimits& limits) { m_limits = limits; }

  [[nodiscard]] const EndpointStats& stats() const { return m_stats; }

  class Endpoint;

 private:
  net::Loop& m_loop;
  tokens::TokenService& m_tokens;
  ipc::ServerLimits m_limits;
  EndpointStats m_stats;
  std::map<std::uint64_t, std::unique_ptr<Endpoint>> m_open;
  std::uint64_t m_next = 1;
};

}  // namespace tokend::gateway
