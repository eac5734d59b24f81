#include "gateway/endpoint.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <strings.h>

#include "core/encoding.hpp"
#include "core/random.hpp"
#include "gateway/proxy_answer.hpp"

namespace tokend::gateway {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && ::strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view trimmed(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "127.0.0.1:PORT" or "localhost:PORT", localhost in any case.
bool is_own_authority(std::string_view authority, std::uint16_t port) {
  const auto colon = authority.rfind(':');
  if (colon == std::string_view::npos || authority.substr(colon + 1) != std::to_string(port))
    return false;
  const std::string_view host = authority.substr(0, colon);
  return host == "127.0.0.1" || iequals(host, "localhost");
}

std::size_t count_headers(const ipc::Request& req, std::string_view name) {
  std::size_t n = 0;
  for (const auto& [k, v] : req.headers) {
    if (iequals(k, name)) ++n;
  }
  return n;
}

// The credential in an Authorization value: the Bearer token, or the
// password of Basic credentials (RFC 7617: user-id ":" password).
bool carries_standin(std::string_view authorization, const Secret& standin) {
  authorization = trimmed(authorization);
  const auto space = authorization.find(' ');
  if (space == std::string_view::npos) return false;
  const std::string_view scheme = authorization.substr(0, space);
  const std::string_view credentials = trimmed(authorization.substr(space + 1));
  if (iequals(scheme, "bearer")) return standin.equals(credentials);
  if (!iequals(scheme, "basic")) return false;
  auto decoded = base64_decode(credentials);
  if (!decoded) return false;
  const Secret plain = Secret::adopt(std::move(*decoded));
  const auto colon = plain.reveal().find(':');
  return colon != std::string_view::npos && standin.equals(plain.reveal().substr(colon + 1));
}

}  // namespace

std::string_view refusal_name(Refusal r) {
  switch (r) {
    case Refusal::wrong_host:
      return "wrong_host";
    case Refusal::cross_site:
      return "cross_site";
    case Refusal::unauthorized:
      return "unauthorized";
  }
  return "unauthorized";
}

std::optional<Refusal> check_standin_request(const ipc::Request& req, std::uint16_t port,
                                             const Secret& standin) {
  const auto host = req.header("host");
  if (!host || count_headers(req, "host") != 1 || !is_own_authority(trimmed(*host), port))
    return Refusal::wrong_host;
  // A page in a browser may send requests here (fetch, forms, images) but
  // its Origin, or the browser's Sec-Fetch-Site, says where it comes from.
  for (const auto& [k, v] : req.headers) {
    if (iequals(k, "origin")) {
      const std::string_view origin = trimmed(v);
      if (!iequals(origin.substr(0, 7), "http://") || !is_own_authority(origin.substr(7), port))
        return Refusal::cross_site;
    } else if (iequals(k, "sec-fetch-site")) {
      const std::string_view site = trimmed(v);
      if (iequals(site, "cross-site") || iequals(site, "same-site")) return Refusal::cross_site;
    }
  }
  bool authorized = false;
  for (const auto& [k, v] : req.headers) {
    if (!iequals(k, "authorization")) continue;
    if (authorized || !carries_standin(v, standin))
      return Refusal::unauthorized;  // one, and the right one
    authorized = true;
  }
  if (!authorized) return Refusal::unauthorized;
  return std::nullopt;
}

ipc::Response refusal_response(Refusal r, std::uint16_t port) {
  ipc::Response res;
  switch (r) {
    case Refusal::wrong_host:
      res = ipc::Response::error(
          421, "wrong_host",
          fmt::format("this endpoint answers only requests for Host 127.0.0.1:{} or localhost:{}",
                      port, port));
      res.close = true;
      break;
    case Refusal::cross_site:
      res = ipc::Response::error(403, "cross_site",
                                 "requests from web pages of other sites are refused");
      break;
    case Refusal::unauthorized:
      res = ipc::Response::error(
          401, "unauthorized",
          "this endpoint needs the stand-in credential tokenctl exec gave the command, as a "
          "Bearer token or as the Basic password");
      res.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"tokend\"");
      res.headers.emplace_back("WWW-Authenticate", "Basic realm=\"tokend\", charset=\"UTF-8\"");
      break;
  }
  res.headers.emplace_back("Cache-Control", "no-store");
  return res;
}

// ---------------------------------------------------------------------------

class StandinEndpoints::Endpoint {
 public:
  Endpoint(net::Loop& loop, const ipc::ServerLimits& limits) : m_server(loop, m_router, limits) {}

  ipc::Router m_router;
  ipc::Server m_server;  // after m_router, which it routes with
};

StandinEndpoints::StandinEndpoints(net::Loop& loop, tokens::TokenService& tokens,
                                   ipc::ServerLimits limits)
    : m_loop(loop), m_tokens(tokens), m_limits(limits) {}

StandinEndpoints::~StandinEndpoints() {
  close_all();
}

Result<StandinEndpoints::Opened> StandinEndpoints::open(proxy::Proxy& proxy,
                                                        const std::string& profile,
                                                        const ipc::Peer& audit_peer) {
  auto p = m_tokens.profile_of(profile);
  if (!p) return std::unexpected(p.error());
  auto layout = gateway::mirror_layout(*p);
  if (!layout) return std::unexpected(layout.error());
  auto bytes = random_secret(32);
  if (!bytes) return std::unexpected(bytes.error());

  Opened opened;
  opened.id = m_next++;
  opened.standin = Secret::adopt(base64url_encode(bytes->reveal()));
  opened.layout = std::move(*layout);
  auto endpoint = std::make_unique<Endpoint>(m_loop, m_limits);
  auto port = endpoint->m_server.listen_loopback();
  if (!port) return std::unexpected(port.error().context("opening a stand-in endpoint"));
  opened.port = *port;

  // The handler lives in the endpoint's router and dies with it; answers
  // that come later hold only the exchange.
  auto handle = [this, &proxy, profile, audit_peer, port = *port,
                 standin = opened.standin](const std::shared_ptr<ipc::Exchange>& ex) {
    const ipc::Request& req = ex->request();
    if (auto refused = check_standin_request(req, port, standin)) {
      ++m_stats.requests[std::string(refusal_name(*refused))];
      return ex->respond(refusal_response(*refused, port));
    }
    auto current = m_tokens.profile_of(profile);
    if (!current) return ex->respond(ipc::error_response(current.error()));
    auto rest = gateway::mirrored_rest(*current, req.path);
    if (!rest) {
      ++m_stats.requests["not_mirrored"];
      return ex->respond(ipc::error_response(rest.error()));
    }
    auto call = proxy_call(req, profile, std::move(*rest), audit_peer);
    if (!call) return ex->respond(ipc::error_response(call.error()));
    ++m_stats.requests["forwarded"];
    proxy.forward(std::move(*call),
                  [ex, profile](std::expected<proxy::ProxyResult, proxy::ProxyError> r) {
                    respond_proxied(ex, profile, std::move(r));
                  });
  };
  for (const char* method : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}) {
    endpoint->m_router.add(method, "/{rest...}", handle, /*large_body=*/true);
  }
  m_open.emplace(opened.id, std::move(endpoint));
  ++m_stats.opened;
  m_stats.open = m_open.size();
  spdlog::info("endpoint {}: opened 127.0.0.1:{} for profile {} (pid {})", opened.id, opened.port,
               profile, audit_peer.pid);
  return opened;
}

void StandinEndpoints::close(std::uint64_t id) {
  auto it = m_open.find(id);
  if (it == m_open.end()) return;
  // Out of the map first: closing runs callbacks of calls in flight.
  auto endpoint = std::move(it->second);
  m_open.erase(it);
  m_stats.open = m_open.size();
  endpoint->m_server.close();
  spdlog::info("endpoint {}: closed", id);
}

void StandinEndpoints::close_all() {
  while (!m_open.empty()) close(m_open.begin()->first);
}

}  // namespace tokend::gateway
