#include "proxy/proxy.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <charconv>

#include "core/encoding.hpp"
#include "core/json.hpp"
#include "net/url.hpp"
#include "oauth/atlassian.hpp"
#include "oauth/discovery.hpp"
#include "oauth/protocol.hpp"

namespace tokend::proxy {

namespace {

// What an MCP call did, for its audit line: "mcp" and the JSON-RPC method the
// bridge mirrored into Mcp-Method (printable ASCII only, bounded).
std::string mcp_audit_path(const Headers& headers) {
  for (const auto& [k, v] : headers) {
    if (k.size() != 10 || ::strncasecmp(k.data(), "mcp-method", 10) != 0) continue;
    std::string method = v.substr(0, 64);
    for (char& ch : method) {
      if (ch <= 0x20 || ch >= 0x7f) ch = '?';
    }
    return "mcp " + method;
  }
  return "mcp";
}

std::unexpected<ProxyError> refuse(Errc code, std::string message,
                                   std::optional<Millis> retry_after = std::nullopt) {
  return std::unexpected(ProxyError{Error{code, std::move(message)}, retry_after});
}

}  // namespace

class StreamedBody;

struct Proxy::Call {
  std::uint64_t id = 0;
  ProxyCall call;
  Done done;
  store::Profile profile;
  std::string url;
  Headers headers;
  MonoTime started{};
  bool refreshed = false;        // the one forced refresh after a 401 was used
  std::int64_t generation = -1;  // of the credential whose token the call carried
  bool waited = false;           // the one Retry-After wait was used
  std::uint64_t http_id = 0;
  bool http_pending = false;
  net::Timer wait_timer;
  std::size_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  int status = 0;
  std::shared_ptr<StreamedBody> body;  // set once the answer streams
};

// The upstream's bytes on their way to the caller. Bytes that come before the
// caller attaches (it does so as soon as it has the head) are held.
class StreamedBody final : public ProxyBody {
 public:
  StreamedBody(Proxy& proxy, std::weak_ptr<Proxy::Call> call)
      : m_proxy(proxy), m_call(std::move(call)) {}

  void attach(Consumer consumer) override {
    m_consumer = std::move(consumer);
    if (!m_held.empty()) {
      const std::string held = std::move(m_held);
      m_held.clear();
      if (!push(held)) m_full = true;
    }
    if (m_ended) deliver_end();
  }
  void resume() override {
    auto c = m_call.lock();
    if (!m_full || !c) return;
    m_full = false;
    if (c->http_pending) m_proxy.m_http.resume(c->http_id);
  }
  void cancel() override {
    auto c = m_call.lock();
    m_consumer = {};
    if (!c) return;
    if (c->http_pending) m_proxy.m_http.cancel(c->http_id);
    c->http_pending = false;
    m_proxy.end_stream(c, false);
  }

  // From the transfer: false asks it to pause.
  bool push(std::string_view bytes) {
    if (auto c = m_call.lock()) c->bytes_out += bytes.size();
    if (!m_consumer.data) {
      m_held.append(bytes);
      return m_held.size() < 256 * 1024;
    }
    const bool more = m_consumer.data(bytes);
    if (!more) m_full = true;
    return more;
  }
  void end(bool complete) {
    m_ended = true;
    m_complete = complete;
    if (m_consumer.end) deliver_end();
  }

 private:
  void deliver_end() {
    auto consumer = std::move(m_consumer);
    m_consumer = {};
    if (consumer.end) consumer.end(m_complete);
  }

  Proxy& m_proxy;
  std::weak_ptr<Proxy::Call> m_call;
  Consumer m_consumer;
  std::string m_held;
  bool m_full = false;
  bool m_ended = false;
  bool m_complete = false;
};

Proxy::Proxy(net::Loop& loop, tokens::TokenService& tokens, net::HttpTransport& http,
             store::Store& store, const Clock& clock, ProxyOptions options)
    : m_loop(loop),
      m_tokens(tokens),
      m_http(http),
      m_store(store),
      m_clock(clock),
      m_options(std::move(options)) {}

Proxy::~Proxy() {
  shutdown();
}

void Proxy::flush_audit() {
  if (m_audit_timer.valid()) m_audit_timer.stop();
  auto events = std::move(m_audit);
  m_audit.clear();
  if (auto r = m_store.append_audit_batch(events); !r) {
    spdlog::warn("proxy: {} audit line(s) not written: {}", events.size(), r.error().message);
  }
}

void Proxy::shutdown() {
  if (m_shut_down) return;
  m_shut_down = true;
  auto calls = std::move(m_in_flight);
  m_in_flight.clear();
  for (auto& [_, c] : calls) {
    if (c->http_pending) m_http.cancel(c->http_id);
    c->http_pending = false;
    c->wait_timer.close();
    if (c->body) {
      // A stream cut by shutdown ends incomplete: its caller's connection closes.
      --m_stats.open_streams;
      auto body = std::move(c->body);
      body->end(false);
      continue;
    }
    if (c->done) {
      auto done = std::move(c->done);
      c->done = nullptr;
      done(refuse(Errc::unavailable, "tokend is shutting down"));
    }
  }
  flush_audit();
  m_audit_timer.close();
}

void Proxy::forward(ProxyCall call, Done done) {
  if (m_shut_down) {
    done(refuse(Errc::unavailable, "tokend is shutting down"));
    return;
  }
  auto c = std::make_shared<Call>();
  c->id = m_next++;
  c->call = std::move(call);
  c->done = std::move(done);
  c->started = m_clock.mono_now();
  c->bytes_in = c->call.body_spool ? c->call.body_spool->size() : c->call.body.size();
  m_in_flight.emplace(c->id, c);

  auto profile = m_tokens.profile_of(c->call.profile);
  if (!profile) return finish(c, refuse(Errc::not_found, profile.error().message));
  c->profile = std::move(*profile);
  if (c->call.mcp) {
    if (c->profile.config.mcp_server.empty()) {
      return finish(
          c, refuse(Errc::config,
                    fmt::format("profile '{}' has no MCP server; add one with tokenctl add {} "
                                "--provider mcp --mcp-server URL",
                                c->call.profile, c->call.profile)));
    }
  } else if (auto ok = check_policy(c->profile, c->call.method, c->call.rest); !ok) {
    return finish(c, refuse(ok.error().code, ok.error().message));
  }
  if (const auto& policy = c->profile.config.policy; policy && policy->rate_per_minute) {
    const double rate = *policy->rate_per_minute;
    if (auto wait = m_limiters[c->call.profile].take(rate, m_clock.mono_now())) {
      return finish(c, refuse(Errc::limit_exceeded,
                              fmt::format("policy: profile '{}' is limited to {} calls a minute",
                                          c->call.profile, rate),
                              wait));
    }
  }
  auto headers = request_headers(c->call.headers);
  if (!headers) return finish(c, refuse(Errc::invalid_argument, headers.error().message));
  c->headers = std::move(*headers);
  if (!m_options.drop_headers.empty()) {
    std::erase_if(c->headers, [this](const auto& h) {
      return std::any_of(m_options.drop_headers.begin(), m_options.drop_headers.end(),
                         [&](const std::string& d) { return ascii_iequals(h.first, d); });
    });
  }
  if (!c->call.mcp && needs_cloud_id(c->profile, c->call.rest)) return resolve_cloud(c);
  send(c);
}

// An Atlassian OAuth profile without a cloud id (e.g. imported from a .env):
// look it up once from the accessible resources and keep it.
void Proxy::resolve_cloud(const std::shared_ptr<Call>& c) {
  m_tokens.token_async(
      c->call.profile, tokens::TokenRequest{30}, [this, c](Result<tokens::TokenGrant> grant) {
        if (m_in_flight.find(c->id) == m_in_flight.end()) return;
        if (!grant) return finish(c, refuse(grant.error().code, grant.error().message));
        std::string base = c->profile.config.api_base;
        if (base.empty()) base = oauth::k_atlassian_api_base;
        net::HttpRequest r;
        r.url = oauth::accessible_resources_url(base);
        r.timeout = m_options.timeout;
        r.headers = {{"Accept", "application/json"},
                     {"Authorization", std::string(grant->authorization())}};
        c->http_pending = true;
        c->http_id = m_http.start(std::move(r), [this, c](Result<net::HttpResponse> res) {
          c->http_pending = false;
          if (m_in_flight.find(c->id) == m_in_flight.end()) return;
          if (!res || res->status != 200) {
            return finish(
                c, refuse(Errc::transient,
                          fmt::format("looking up the Atlassian cloud id failed ({})",
                                      res ? std::to_string(res->status) : res.error().message)));
          }
          auto sites = oauth::parse_accessible_resources(res->body.reveal());
          if (!sites) {
            return finish(c, refuse(Errc::transient, "looking up the Atlassian cloud id failed: " +
                                                         sites.error().message));
          }
          const std::string site = c->profile.config.site;
          const oauth::SiteChoice choice = oauth::choose_site(*sites, site);
          if (choice.problem != oauth::SiteProblem::none) {
            return finish(
                c, refuse(Errc::config,
                          site.empty()
                              ? fmt::format("the token of '{}' reaches {} Atlassian sites; set "
                                            "the profile's site (tokenctl add ... --site URL)",
                                            c->call.profile, sites->size())
                              : fmt::format("the site {} is not among the sites the token of '{}' "
                                            "reaches",
                                            site, c->call.profile)));
          }
          c->profile.config.cloud_id = choice.site->id;
          c->profile.config.cloud_url = choice.site->url;
          if (auto stored = m_tokens.profile_of(c->call.profile)) {
            stored->config.cloud_id = choice.site->id;
            stored->config.cloud_url = choice.site->url;
            // Kept for the next call; this one goes ahead with the id either way.
            if (auto kept = m_tokens.update_profile(*stored); !kept) {
              spdlog::warn(
                  "profile {}: the cloud id was not stored ({}); it is looked up again next time",
                  c->call.profile, kept.error().message);
            }
          }
          send(c);
        });
      });
}

void Proxy::send(const std::shared_ptr<Call>& c) {
  if (c->call.mcp) {
    c->url = c->profile.config.mcp_server;
  } else {
    auto url = upstream_url(c->profile, c->call.rest, c->call.raw_query);
    if (!url) return finish(c, refuse(url.error().code, url.error().message));
    c->url = std::move(*url);
  }
  m_tokens.token_async(
      c->call.profile, tokens::TokenRequest{30}, [this, c](Result<tokens::TokenGrant> grant) {
        if (m_in_flight.find(c->id) == m_in_flight.end()) return;
        if (!grant) return finish(c, refuse(grant.error().code, grant.error().message));
        if (auto view = m_tokens.get(c->call.profile)) c->generation = view->generation;
        net::HttpRequest r;
        r.method = c->call.method;
        r.url = c->url;
        r.timeout = m_options.timeout;
        r.max_response_bytes = m_options.max_response_bytes;
        r.headers = c->headers;
        r.headers.emplace_back("Authorization", std::string(grant->authorization()));
        r.body = Secret(c->call.body);
        r.upload = c->call.body_spool;
        if (c->call.method != "HEAD") {
          r.on_head = [this, c](long status, const net::HttpHeaders& headers) {
            return on_head(c, status, headers);
          };
          r.on_data = [c](std::string_view bytes) { return !c->body || c->body->push(bytes); };
        }
        c->http_pending = true;
        c->http_id = m_http.start(std::move(r), [this, c](Result<net::HttpResponse> res) {
          on_answer(c, std::move(res));
        });
      });
}

// The head of an answer is in: stream its body to the caller, unless this is
// an answer the proxy may still act on (a 401 to refresh and retry, a 429/503
// to wait out), which is collected instead.
bool Proxy::on_head(const std::shared_ptr<Call>& c, long status, const net::HttpHeaders& headers) {
  if (m_in_flight.find(c->id) == m_in_flight.end()) return false;
  const bool replayable = c->bytes_in <= m_options.retry_body_bytes;
  if (status == 401 && !c->refreshed && replayable &&
      c->profile.kind == store::CredentialKind::oauth2)
    return false;
  if ((status == 429 || status == 503) && !c->waited && replayable && c->call.retry_wait_s > 0)
    return false;
  if (status == 403 && c->profile.kind == store::CredentialKind::oauth2) {
    // A step-up challenge is tokend's to act on (see on_answer).
    for (const auto& [k, v] : headers) {
      if (k == "www-authenticate" && oauth::bearer_challenge_param(v, "error") ==
                                         std::optional<std::string>("insufficient_scope"))
        return false;
    }
  }
  c->status = static_cast<int>(status);
  c->body = std::make_shared<StreamedBody>(*this, c);
  for (const auto& [k, v] : headers) {
    if (k != "content-length") continue;
    std::uint64_t n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec == std::errc{} && end == v.data() + v.size()) c->body->length = n;
  }
  ++m_stats.open_streams;
  // The latency metric counts to the head: a stream may then last for hours.
  record_latency(c);
  answer(c, ProxyResult{static_cast<int>(status), response_headers(headers), {}, c->body});
  return true;
}

void Proxy::on_answer(const std::shared_ptr<Call>& c, Result<net::HttpResponse> res) {
  c->http_pending = false;
  if (m_in_flight.find(c->id) == m_in_flight.end()) return;
  if (c->body) return end_stream(c, res.has_value());
  if (!res) {
    const Errc code = res.error().code == Errc::timeout          ? Errc::timeout
                      : res.error().code == Errc::limit_exceeded ? Errc::limit_exceeded
                                                                 : Errc::transient;
    return finish(c,
                  refuse(code, fmt::format("the upstream call failed: {}", res.error().message)));
  }
  // A spooled body is read again from its file: replaying costs no memory.
  const bool replayable = c->bytes_in <= m_options.retry_body_bytes;
  if (res->status == 401 && !c->refreshed && replayable &&
      c->profile.kind == store::CredentialKind::oauth2) {
    // The token may have been revoked or rotated elsewhere: one forced
    // refresh, one retry.
    c->refreshed = true;
    // Calls that carried the same token and got their 401 after another
    // call's refresh had finished retry with the new token: one refresh for
    // them all, not one each.
    if (auto view = m_tokens.get(c->call.profile);
        view && c->generation >= 0 && view->generation != c->generation) {
      spdlog::info(
          "proxy {}: upstream answered 401 to a token already replaced; retrying with the new one",
          c->call.profile);
      return send(c);
    }
    spdlog::info("proxy {}: upstream answered 401; refreshing once and retrying", c->call.profile);
    m_tokens.refresh(
        c->call.profile,
        [this, c, first = std::make_shared<net::HttpResponse>(std::move(*res))](Result<> r) {
          if (m_in_flight.find(c->id) == m_in_flight.end()) return;
          if (!r) {
            // The bridge needs to know why: a login, or a passing failure.
            if (c->call.mcp) return finish(c, refuse(r.error().code, r.error().message));
            // Pass the upstream's 401 back; the refresh error says why.
            return finish(
                c,
                ProxyResult{
                    401, response_headers(first->headers), std::string(first->body.reveal()), {}});
          }
          send(c);
        });
    return;
  }
  if ((res->status == 429 || res->status == 503) && !c->waited && replayable &&
      c->call.retry_wait_s > 0) {
    const auto after = oauth::parse_retry_after(res->header("retry-after"), m_clock.wall_now());
    const std::int64_t limit = std::min(c->call.retry_wait_s, m_options.max_retry_wait_s);
    if (after && after->count() <= limit * 1000) {
      c->waited = true;
      auto timer = net::Timer::create(m_loop);
      if (timer) {
        c->wait_timer = std::move(*timer);
        c->wait_timer.start(static_cast<std::uint64_t>(after->count()), 0, [this, c] {
          c->wait_timer.close();
          if (m_in_flight.find(c->id) != m_in_flight.end()) send(c);
        });
        return;
      }
    }
  }
  if (res->status == 403 && c->profile.kind == store::CredentialKind::oauth2) {
    const std::string_view challenge = res->header("www-authenticate");
    if (oauth::bearer_challenge_param(challenge, "error") ==
        std::optional<std::string>("insufficient_scope")) {
      return step_up(c, *res);
    }
  }
  finish(c, ProxyResult{static_cast<int>(res->status),
                        response_headers(res->headers),
                        std::string(res->body.reveal()),
                        {}});
}

void Proxy::end_stream(const std::shared_ptr<Call>& c, bool complete) {
  if (m_in_flight.erase(c->id) == 0) return;
  --m_stats.open_streams;
  auto body = std::move(c->body);
  record(c, c->status, complete ? std::nullopt : std::optional<Errc>(Errc::transient));
  if (body) body->end(complete);
}

void Proxy::answer(const std::shared_ptr<Call>& c, std::expected<ProxyResult, ProxyError> outcome) {
  if (!c->done) return;
  auto done = std::move(c->done);
  c->done = nullptr;
  done(std::move(outcome));
}

namespace {

bool header_is(std::string_view name, std::string_view lower_name) {
  return ascii_iequals(name, lower_name);
}

}  // namespace

// RFC 6750 §3.1 / MCP step-up: the token lacks a scope. The profile is
// marked as needing consent for the union of its scopes and the challenged
// ones (event, notify-command; the next login asks for them) and the caller
// gets the 403 with a tokend error naming the command. Never retried here:
// more scope needs a person.
void Proxy::step_up(const std::shared_ptr<Call>& c, const net::HttpResponse& res) {
  std::vector<std::string> challenged;
  std::string_view words;
  const auto scope = oauth::bearer_challenge_param(res.header("www-authenticate"), "scope");
  if (scope) words = *scope;
  while (!words.empty()) {
    const auto sp = words.find(' ');
    if (sp != 0) challenged.emplace_back(words.substr(0, sp));
    if (sp == std::string_view::npos) break;
    words.remove_prefix(sp + 1);
  }
  const std::string& name = c->call.profile;
  const std::string command = "tokenctl login " + name;
  json::Json error = {{"code", "insufficient_scope"}, {"command", command}};
  if (auto needed = m_tokens.require_consent(name, challenged); needed) {
    std::string joined;
    for (const auto& s : *needed) joined += (joined.empty() ? "" : " ") + s;
    error["message"] = fmt::format(
        "the upstream answered 403 insufficient_scope: the token of '{}' lacks a scope; "
        "run {} to consent to: {}",
        name, command, joined);
    error["scopes"] = *needed;
  } else {
    error["message"] = fmt::format(
        "the upstream answered 403 insufficient_scope ({}); run {} with the scopes "
        "needed",
        needed.error().message, command);
  }
  Headers headers;
  for (const auto& [k, v] : response_headers(res.headers)) {
    if (header_is(k, "content-type") || header_is(k, "content-encoding")) continue;
    headers.emplace_back(k, v);
  }
  headers.emplace_back("Content-Type", "application/json");
  headers.emplace_back("X-Tokend-Error", "insufficient_scope");
  finish(c, ProxyResult{403, std::move(headers), json::Json{{"error", std::move(error)}}.dump(),
                        nullptr});
}

void Proxy::finish(const std::shared_ptr<Call>& c, std::expected<ProxyResult, ProxyError> outcome) {
  m_in_flight.erase(c->id);
  const int status = outcome ? outcome->status : 0;
  if (outcome) c->bytes_out = outcome->body.size();
  record_latency(c);
  record(c, status, outcome ? std::nullopt : std::optional<Errc>(outcome.error().error.code));
  answer(c, std::move(outcome));
}

void Proxy::record_latency(const std::shared_ptr<Call>& c) {
  const auto latency =
      std::chrono::duration_cast<std::chrono::microseconds>(m_clock.mono_now() - c->started);
  const double seconds = static_cast<double>(latency.count()) / 1e6;
  ++m_stats.count;
  m_stats.sum_s += seconds;
  for (std::size_t i = 0; i < m_stats.bucket_bounds.size(); ++i) {
    if (seconds <= m_stats.bucket_bounds[i]) ++m_stats.bucket_counts[i];
  }
}

// The metrics series and the audit line of a call, once it has ended.
void Proxy::record(const std::shared_ptr<Call>& c, int status, std::optional<Errc> error) {
  const auto latency =
      std::chrono::duration_cast<std::chrono::microseconds>(m_clock.mono_now() - c->started);
  // Unknown profile names share one series (no unbounded growth).
  const bool known = !error || *error != Errc::not_found;
  ++m_stats.by_profile_status[known ? c->call.profile : std::string("(unknown)")][status];

  store::AuditEvent e;
  e.kind = "proxy";
  e.profile = c->call.profile;
  e.peer_uid = c->call.peer_uid;
  e.peer_pid = c->call.peer_pid;
  e.detail = {{"method", c->call.method},
              {"path", c->call.mcp ? mcp_audit_path(c->call.headers) : c->call.rest},
              {"status", status},
              {"latency_ms", static_cast<double>(latency.count()) / 1000.0},
              {"bytes_in", c->bytes_in},
              {"bytes_out", c->bytes_out}};
  if (error) e.detail["error"] = errc_name(*error);
  if (!c->call.user.empty()) e.detail["user"] = c->call.user;
  if (!c->call.service.empty()) e.detail["service"] = c->call.service;
  m_audit.push_back(std::move(e));
  if (m_audit.size() >= 1024) {
    flush_audit();
  } else if (m_audit.size() == 1 && !m_shut_down) {
    if (!m_audit_timer.valid()) {
      if (auto t = net::Timer::create(m_loop)) m_audit_timer = std::move(*t);
    }
    if (m_audit_timer.valid()) {
      m_audit_timer.start(static_cast<std::uint64_t>(m_options.audit_flush_interval.count()), 0,
                          [this] { flush_audit(); });
    } else {
      flush_audit();
    }
  }
}

}  // namespace tokend::proxy
