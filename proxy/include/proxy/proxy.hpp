// Forwarding of Jira/Confluence/REST calls with a profile's credential:
// route and policy checks first (proxy/route.hpp), then the call
// with a fresh token; a 401 gets one forced refresh and one retry, a 429/503
// may be waited out once when the caller asks; every call is audited.
//
// Single-threaded: call from the loop thread only.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "net/http_client.hpp"
#include "net/loop.hpp"
#include "proxy/route.hpp"
#include "store/store.hpp"
#include "tokens/token_service.hpp"

namespace tokend::proxy {

struct ProxyOptions {
  Millis timeout{120'000};
  std::size_t max_response_bytes = 256ULL * 1024 * 1024;
  std::size_t retry_body_bytes =
      256ULL * 1024 * 1024;  // bodies up to this are replayed after a 401/429
  std::int64_t max_retry_wait_s = 60;
  // Audit lines of proxied calls are written in batches (one transaction,
  // one fsync, per interval): a synchronous write per call would cost more
  // than the call. A crash loses at most this much of the proxy's audit.
  Millis audit_flush_interval{250};
  // Request headers never sent upstream besides the ones every call drops
  // (server mode: the trusted proxy's user header).
  std::vector<std::string> drop_headers;
};

struct ProxyCall {
  std::string profile;
  std::string method;
  std::string rest;       // decoded path after /v1/proxy/{profile}/
  std::string raw_query;  // as the caller sent it
  Headers headers;
  std::string body;
  std::shared_ptr<net::Spool> body_spool;  // a large body (set instead of body)
  std::int64_t retry_wait_s = 0;           // X-Tokend-Retry-Wait
  // The bridge route (/v1/mcp/{profile}): the call goes to the profile's MCP
  // server URL itself; `rest` and `raw_query` are unused, path policy does
  // not apply (rate limits do), and a token that cannot be had is
  // Errc::reauth_required even after the server's 401.
  bool mcp = false;
  std::optional<std::int64_t> peer_uid;
  std::optional<std::int64_t> peer_pid;
  // Server mode: who the call acts for, and the service acting (audited).
  std::string user;
  std::string service;
};

// A proxied answer's body as it leaves the upstream. The caller attaches a
// consumer once; bytes then flow as they arrive, paced by the consumer: it
// returns false when it is full and calls resume() once it has room. The
// transfer pauses meanwhile, so memory stays bounded however large or long
// the answer (a download, an event stream open for hours).
class ProxyBody {
 public:
  struct Consumer {
    std::function<bool(std::string_view bytes)> data;  // false: full until resume()
    std::function<void(bool complete)> end;            // false: the upstream broke off
  };
  virtual ~ProxyBody() = default;
  virtual void attach(Consumer consumer) = 0;
  virtual void resume() = 0;
  // The caller went away: the upstream transfer ends.
  virtual void cancel() = 0;
  // The upstream's Content-Length, when it gave one.
  std::optional<std::uint64_t> length;
};

struct ProxyResult {
  int status = 0;
  Headers headers;
  std::string body;
  // Set for an answer that streams (every answer with a body, except those
  // the proxy may still retry): `body` is then empty.
  std::shared_ptr<ProxyBody> stream;
};

// Errors: not_found (profile), invalid_argument (path/headers), permission
// (policy), limit_exceeded (rate, with retry_after), reauth_required,
// config, transient (upstream unreachable), timeout.
struct ProxyError {
  Error error;
  std::optional<Millis> retry_after;
};

struct ProxyStats {
  std::map<std::string, std::map<int, std::uint64_t>, std::less<>> by_profile_status;
  // Latency histogram (seconds) buckets.
  std::vector<double> bucket_bounds = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  std::vector<std::uint64_t> bucket_counts = std::vector<std::uint64_t>(11, 0);
  std::uint64_t count = 0;
  double sum_s = 0;
  std::uint64_t open_streams = 0;  // answers still streaming
};

class Proxy {
 public:
  using Done = std::function<void(std::expected<ProxyResult, ProxyError>)>;

  Proxy(net::Loop& loop, tokens::TokenService& tokens, net::HttpTransport& http,
        store::Store& store, const Clock& clock, ProxyOptions options);
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  void forward(ProxyCall call, Done done);
  [[nodiscard]] const ProxyStats& stats() const { return m_stats; }
  // Cancels calls in flight (their callers get unavailable) and writes the
  // audit lines still pending.
  void shutdown();
  // Writes pending audit lines now (tests, /v1/audit readers).
  void flush_audit_now() { flush_audit(); }

  struct Call;

 private:
  void resolve_cloud(const std::shared_ptr<Call>& c);
  void send(const std::shared_ptr<Call>& c);
  bool on_head(const std::shared_ptr<Call>& c, long status, const net::HttpHeaders& headers);
  void on_answer(const std::shared_ptr<Call>& c, Result<net::HttpResponse> r);
  void step_up(const std::shared_ptr<Call>& c, const net::HttpResponse& res);
  void finish(const std::shared_ptr<Call>& c, std::expected<ProxyResult, ProxyError> outcome);
  void answer(const std::shared_ptr<Call>& c, std::expected<ProxyResult, ProxyError> outcome);
  void end_stream(const std::shared_ptr<Call>& c, bool complete);
  void record(const std::shared_ptr<Call>& c, int status, std::optional<Errc> error);
  void record_latency(const std::shared_ptr<Call>& c);
  friend class StreamedBody;
  void flush_audit();

  net::Loop& m_loop;
  tokens::TokenService& m_tokens;
  net::HttpTransport& m_http;
  store::Store& m_store;
  const Clock& m_clock;
  ProxyOptions m_options;
  ProxyStats m_stats;
  std::map<std::string, RateLimiter, std::less<>> m_limiters;
  std::map<std::uint64_t, std::shared_ptr<Call>> m_in_flight;
  std::uint64_t m_next = 1;
  bool m_shut_down = false;
  std::vector<store::AuditEvent> m_audit;
  net::Timer m_audit_timer;
};

}  // namespace tokend::proxy
