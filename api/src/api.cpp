#include "api/api.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <iterator>
#include <sstream>

#include "gateway/proxy_answer.hpp"

namespace tokend::api {

using tokens::Event;

namespace {

std::optional<std::int64_t> to_seconds(std::optional<std::int64_t> ms) {
  if (!ms) return std::nullopt;
  return *ms / 1000;
}

json::Json nullable(std::optional<std::int64_t> v) {
  return v ? json::Json(*v) : json::Json(nullptr);
}

// Reads an integer query parameter in [lo, hi].
Result<std::optional<std::int64_t>> int_param(const ipc::Request& req, std::string_view name,
                                              std::int64_t lo, std::int64_t hi) {
  auto v = req.query_param(name);
  if (!v) return std::optional<std::int64_t>{};
  std::int64_t n = 0;
  const auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc{} || end != v->data() + v->size() || n < lo || n > hi) {
    return fail(Errc::invalid_argument,
                fmt::format("query parameter {} must be a whole number of seconds from {} to {}",
                            name, lo, hi));
  }
  return std::optional<std::int64_t>{n};
}

std::string sse_frame(const Event& e) {
  json::Json data = {{"id", e.id},
                     {"type", tokens::to_string(e.kind)},
                     {"profile", e.profile},
                     {"at", e.at_ms / 1000},
                     {"at_ms", e.at_ms}};
  for (const auto& [k, v] : e.data.items()) data[k] = v;
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", e.id, tokens::to_string(e.kind),
                     data.dump(-1, ' ', false, json::Json::error_handler_t::replace));
}

// A process's parent (Linux: /proc/PID/stat); nullopt when it cannot be told.
std::optional<pid_t> parent_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat;
  if (!in || !std::getline(in, stat)) return std::nullopt;
  // "PID (COMM) STATE PPID ...": COMM may hold anything, ')' included.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  std::istringstream rest(stat.substr(close + 1));
  std::string state;
  long ppid = 0;
  if (!(rest >> state >> ppid)) return std::nullopt;
  return static_cast<pid_t>(ppid);
}

}  // namespace

json::Json profile_json(const tokens::ProfileView& v, std::int64_t now_ms) {
  json::Json j = {
      {"name", v.name},
      {"kind", store::to_string(v.kind)},
      {"provider", v.provider},
      {"state", store::to_string(v.state)},
      {"expires_at", nullable(to_seconds(v.expires_at_ms))},
      {"expires_in",
       v.expires_at_ms ? json::Json((*v.expires_at_ms - now_ms) / 1000) : json::Json(nullptr)},
      {"obtained_at", nullable(to_seconds(v.obtained_at_ms))},
      {"next_refresh_at", nullable(to_seconds(v.next_refresh_at_ms))},
      {"last_error", v.last_error},
      {"has_token", v.has_token},
      {"has_refresh_token", v.has_refresh_token},
      {"has_client_secret", v.has_client_secret},
      {"generation", v.generation},
      {"updated_at", v.updated_at_ms / 1000},
      {"config", json::Json(v.config)},
  };
  return j;
}

// Open event streams and their subscriptions; one heartbeat timer for all.
class Api::Streams {
 public:
  Streams(net::Loop& loop, std::chrono::milliseconds heartbeat) : m_heartbeat(heartbeat) {
    auto t = net::Timer::create(loop);
    if (t) m_timer = std::move(*t);
  }

  void add(const std::shared_ptr<ipc::Stream>& stream, tokens::EventBus::Subscription sub) {
    const std::uint64_t id = m_next++;
    m_open.emplace(id, Entry{stream, std::move(sub)});
    stream->on_close([this, id] { m_open.erase(id); });
    if (m_open.size() == 1 && m_timer.valid()) {
      const auto ms = static_cast<std::uint64_t>(m_heartbeat.count());
      m_timer.start(ms, ms, [this] { beat(); });
    }
  }

  void beat() {
    std::vector<std::shared_ptr<ipc::Stream>> streams;
    for (auto& [_, e] : m_open) streams.push_back(e.stream);
    for (auto& s : streams) s->send(": heartbeat\n\n");
    if (m_open.empty()) m_timer.stop();
  }

  void close() {
    m_timer.close();
    auto open = std::move(m_open);
    m_open.clear();
    for (auto& [_, e] : open) e.stream->close();
  }

  [[nodiscard]] std::size_t size() const { return m_open.size(); }

 private:
  struct Entry {
    std::shared_ptr<ipc::Stream> stream;
    tokens::EventBus::Subscription sub;
  };
  std::chrono::milliseconds m_heartbeat;
  net::Timer m_timer;
  std::map<std::uint64_t, Entry> m_open;
  std::uint64_t m_next = 1;
};

// Requests that wait for something to happen to a profile — a login to
// finish, a token to arrive — up to a deadline. One bus subscription for
// all of them; one timer each.
class Api::Waits {
 public:
  using Done = std::function<void(bool happened)>;

  Waits(net::Loop& loop, tokens::EventBus& bus) : m_loop(loop) {
    m_sub = bus.subscribe([this](const Event& e) { on_event(e); });
  }

  // Errc::limit_exceeded when too many are waiting already. The wait ends
  // without calling `done` when the caller goes away (the exchange is
  // abandoned): nothing holds the slot for a caller that has gone.
  Result<> add(const std::shared_ptr<ipc::Exchange>& ex, std::string profile,
               std::vector<tokens::EventKind> kinds, std::chrono::milliseconds timeout, Done done) {
    if (m_waiting.size() >= k_max_waiting) {
      return fail(Errc::limit_exceeded, "too many requests are waiting already; try again later");
    }
    auto timer = net::Timer::create(m_loop);
    if (!timer) return std::unexpected(timer.error());
    const std::uint64_t id = m_next++;
    auto& w = m_waiting
                  .emplace(id, Waiter{std::move(profile), std::move(kinds), std::move(*timer),
                                      std::move(done)})
                  .first->second;
    w.timer.start(static_cast<std::uint64_t>(timeout.count()), 0, [this, id] { fire(id, false); });
    ex->on_abandon([this, alive = std::weak_ptr<bool>(m_alive), id] {
      if (alive.expired()) return;
      auto it = m_waiting.find(id);
      if (it == m_waiting.end()) return;
      it->second.timer.close();
      m_waiting.erase(it);
    });
    return {};
  }

  [[nodiscard]] std::size_t size() const { return m_waiting.size(); }

  void close() {
    auto waiting = std::move(m_waiting);
    m_waiting.clear();
    for (auto& [_, w] : waiting) {
      w.timer.close();
      w.done(false);
    }
    m_sub.reset();
  }

 private:
  static constexpr std::size_t k_max_waiting = 4096;
  struct Waiter {
    std::string profile;
    std::vector<tokens::EventKind> kinds;
    net::Timer timer;
    Done done;
  };

  void on_event(const Event& e) {
    std::vector<std::uint64_t> hit;
    for (const auto& [id, w] : m_waiting) {
      if (w.profile == e.profile &&
          std::find(w.kinds.begin(), w.kinds.end(), e.kind) != w.kinds.end())
        hit.push_back(id);
    }
    for (const auto id : hit) fire(id, true);
  }

  void fire(std::uint64_t id, bool happened) {
    auto it = m_waiting.find(id);
    if (it == m_waiting.end()) return;
    Waiter w = std::move(it->second);
    m_waiting.erase(it);
    w.timer.close();
    w.done(happened);
  }

  net::Loop& m_loop;
  tokens::EventBus::Subscription m_sub;
  std::map<std::uint64_t, Waiter> m_waiting;
  std::uint64_t m_next = 1;
  std::shared_ptr<bool> m_alive = std::make_shared<bool>(true);
};

Api::Api(net::Loop& loop, tokens::TokenService& tokens, tokens::EventBus& events,
         store::Store& store, const Clock& clock, ApiOptions options)
    : m_tokens(tokens),
      m_events(events),
      m_store(store),
      m_clock(clock),
      m_options(std::move(options)),
      m_started(clock.mono_now()),
      m_streams(std::make_unique<Streams>(loop, m_options.heartbeat)),
      m_waits(std::make_unique<Waits>(loop, events)),
      m_endpoints(
          std::make_unique<gateway::StandinEndpoints>(loop, tokens, m_options.endpoint_limits)) {}

Api::~Api() {
  close();
}

void Api::close() {
  if (m_streams) m_streams->close();
  if (m_waits) m_waits->close();
  if (m_endpoints) m_endpoints->close_all();
}

// Answers a token request; with wait_s > 0 a profile that needs a login
// holds the answer until a login (or a PUT with a token) succeeds, or the
// wait runs out. The exchange ignores an answer to a caller that has gone.
void Api::answer_token(const std::shared_ptr<ipc::Exchange>& ex, const std::string& name,
                       const tokens::TokenRequest& req, std::int64_t wait_s,
                       Result<tokens::TokenGrant> grant) {
  if (!grant && grant.error().code == Errc::reauth_required && wait_s > 0) {
    auto waiting = m_waits->add(
        ex, name,
        {tokens::EventKind::login_succeeded, tokens::EventKind::profile_updated,
         tokens::EventKind::refreshed},
        std::chrono::seconds(wait_s), [this, ex, name, req, error = grant.error()](bool happened) {
          if (!happened) return answer_token(ex, name, req, 0, std::unexpected(error));
          m_tokens.token_async(name, req, [this, ex, name, req](Result<tokens::TokenGrant> g) {
            answer_token(ex, name, req, 0, std::move(g));
          });
        });
    if (waiting) return;
  }
  // Names that are not profiles share one series: a caller looping over
  // random names must not grow memory or the metric's cardinality.
  const bool known = grant || grant.error().code != Errc::not_found;
  const std::string_view key = known ? std::string_view(name) : std::string_view("(unknown)");
  auto counts = m_token_requests.find(key);
  if (counts == m_token_requests.end()) {
    counts = m_token_requests.emplace(std::string(key), std::map<std::string_view, std::uint64_t>{})
                 .first;
  }
  ++counts->second[grant ? std::string_view("ok") : errc_name(grant.error().code)];
  ipc::Response answer = grant ? token_answer(*grant, to_unix_ms(m_clock.wall_now()))
                         : grant.error().code == Errc::reauth_required
                             ? gateway::reauth_error(grant.error(), name)
                             : ipc::error_response(grant.error());
  // A service fetching a user's token (server mode): one audit line in that
  // user's log, whatever the answer; the token is never in it.
  if (!ex->peer().service.empty()) {
    audit_token_fetch(ex, name, answer.status,
                      grant ? std::string_view() : errc_name(grant.error().code));
  }
  ex->respond(std::move(answer));
}

void Api::audit_token_fetch(const std::shared_ptr<ipc::Exchange>& ex, std::string_view profile,
                            int status, std::string_view error) {
  store::AuditEvent e;
  e.kind = "token_fetched";
  e.profile = std::string(profile);
  e.peer_uid = static_cast<std::int64_t>(ex->peer().uid);
  e.peer_pid = static_cast<std::int64_t>(ex->peer().pid);
  e.detail = {{"user", ex->peer().user}, {"service", ex->peer().service}, {"status", status}};
  if (!error.empty()) e.detail["error"] = std::string(error);
  if (auto r = m_store.append_audit(e); !r) {  // the answer stands either way
    spdlog::warn("user '{}': writing the audit log: {}", ex->peer().user, r.error().message);
  }
}

// The answer to a token request, written without a Json tree (the socket
// API's hot path) in the order Json's sorted keys gave it, and marked
// sensitive so every copy of the token is wiped once written.
ipc::Response Api::token_answer(const tokens::TokenGrant& grant, std::int64_t now_ms) {
  ipc::Response r;
  r.sensitive = true;
  r.content_type = "application/json";
  std::string& b = r.body;
  b.reserve(128 + grant.token().size() + grant.authorization().size());
  b += "{\"authorization\":";
  json::append_quoted(b, grant.authorization());
  if (const auto expires_at_ms = grant.expires_at_ms()) {
    char digits[48];
    const auto at = std::to_chars(std::begin(digits), std::end(digits), *expires_at_ms / 1000);
    const auto in = std::to_chars(at.ptr + 1, std::end(digits), (*expires_at_ms - now_ms) / 1000);
    b += ",\"expires_at\":";
    b.append(std::begin(digits), at.ptr);
    b += ",\"expires_in\":";
    b.append(at.ptr + 1, in.ptr);
  } else {
    b += ",\"expires_at\":null,\"expires_in\":null";
  }
  b += ",\"token\":";
  json::append_quoted(b, grant.token());
  b += ",\"token_type\":";
  json::append_quoted(b, grant.token_type());
  b += "}\n";
  return r;
}

void Api::forward(const std::shared_ptr<ipc::Exchange>& ex, proxy::ProxyCall call,
                  std::int64_t wait_s) {
  if (m_proxy == nullptr)
    return ex->respond(ipc::error_response(Error{Errc::unavailable, "the proxy is not available"}));
  // A call that may wait for a login goes again afterwards: keep a copy (a
  // large body stays in its spool file, shared).
  std::optional<proxy::ProxyCall> again;
  if (wait_s > 0) again = call;
  const std::string name = call.profile;
  m_proxy->forward(
      std::move(call), [this, ex, name, wait_s, again = std::move(again)](
                           std::expected<proxy::ProxyResult, proxy::ProxyError> r) mutable {
        if (!r && r.error().error.code == Errc::reauth_required && again) {
          auto waiting = m_waits->add(
              ex, name,
              {tokens::EventKind::login_succeeded, tokens::EventKind::profile_updated,
               tokens::EventKind::refreshed},
              std::chrono::seconds(wait_s),
              [this, ex, name, call = std::move(*again), error = r.error()](bool happened) mutable {
                if (!happened)
                  return gateway::respond_proxied(ex, name, std::unexpected(std::move(error)));
                forward(ex, std::move(call), 0);
              });
          if (waiting) return;
        }
        gateway::respond_proxied(ex, name, std::move(r));
      });
}

void Api::audit_peer(const std::shared_ptr<ipc::Exchange>& ex, std::string_view kind,
                     std::string_view profile) {
  store::AuditEvent e;
  e.kind = std::string(kind);
  e.profile = std::string(profile);
  e.peer_uid = static_cast<std::int64_t>(ex->peer().uid);
  e.peer_pid = static_cast<std::int64_t>(ex->peer().pid);
  if (!ex->peer().user.empty()) e.detail["user"] = ex->peer().user;
  if (!ex->peer().service.empty()) e.detail["service"] = ex->peer().service;
  (void)m_store.append_audit(e);  // best effort
}

// Opens a stand-in endpoint once the profile can give a token (waiting up to
// wait_s for a login), and keeps it open while the caller's connection is.
// The answer is one JSON line; the response then stays open, and its end
// (tokenctl exited, was killed, or tokend drains) closes the endpoint.
void Api::open_endpoint(const std::shared_ptr<ipc::Exchange>& ex, const std::string& name,
                        std::int64_t wait_s, const ipc::Peer& audited) {
  m_tokens.token_async(
      name, tokens::TokenRequest{30},
      [this, ex, name, wait_s, audited](Result<tokens::TokenGrant> grant) {
        if (!ex->pending()) return;
        if (!grant) {
          if (grant.error().code == Errc::reauth_required && wait_s > 0) {
            auto waiting =
                m_waits->add(ex, name,
                             {tokens::EventKind::login_succeeded,
                              tokens::EventKind::profile_updated, tokens::EventKind::refreshed},
                             std::chrono::seconds(wait_s),
                             [this, ex, name, audited, error = grant.error()](bool happened) {
                               if (!happened)
                                 return ex->respond(gateway::reauth_error(error, name));
                               open_endpoint(ex, name, 0, audited);
                             });
            if (waiting) return;
          }
          if (grant.error().code == Errc::reauth_required)
            return ex->respond(gateway::reauth_error(grant.error(), name));
          return ex->respond(ipc::error_response(grant.error()));
        }
        if (m_proxy == nullptr)
          return ex->respond(
              ipc::error_response(Error{Errc::unavailable, "the proxy is not available"}));
        auto opened = m_endpoints->open(*m_proxy, name, audited);
        if (!opened) return ex->respond(ipc::error_response(opened.error()));
        const std::string origin = fmt::format("http://127.0.0.1:{}", opened->port);
        json::Json urls = json::Json::object();
        for (const auto& [product, base] : opened->layout.urls) urls[product] = origin + base;
        std::string user = "tokend";
        if (auto p = m_tokens.profile_of(name); p && p->kind == store::CredentialKind::api_token) {
          if (!p->config.email.empty()) user = p->config.email;
        }
        json::Json answer = {{"url", origin + opened->layout.base},
                             {"urls", std::move(urls)},
                             {"port", opened->port},
                             {"user", user},
                             {"standin", opened->standin.reveal()}};
        auto stream = ex->start_stream(
            200, {{"Content-Type", "application/json"}, {"Cache-Control", "no-store"}},
            ipc::StreamFraming{ipc::StreamFraming::Kind::close});
        if (!stream) return m_endpoints->close(opened->id);
        stream->on_close([this, id = opened->id] { m_endpoints->close(id); });
        std::string line = answer.dump() + "\n";
        stream->send(line);
        secure_wipe(line);
        secure_wipe(answer["standin"].get_ref<std::string&>());
      });
}

// Every handler is a named member function below, in the order of this
// table.
const std::vector<Api::RouteDef>& Api::route_table() {
  static const std::vector<RouteDef> table = [] {
    std::vector<RouteDef> t{
        {"GET", "/v1/health", &Api::get_health, false},
        {"GET", "/v1/profiles", &Api::list_profiles, false},
        {"GET", "/v1/profiles/{name}", &Api::get_profile, false},
        {"PUT", "/v1/profiles/{name}", &Api::put_profile, false},
        {"DELETE", "/v1/profiles/{name}", &Api::delete_profile, false},
        {"GET", "/v1/profiles/{name}/token", &Api::get_token, false},
        {"POST", "/v1/profiles/{name}/refresh", &Api::refresh_profile, false},
        {"POST", "/v1/profiles/{name}/login", &Api::start_login, false},
        {"GET", "/v1/profiles/{name}/login", &Api::watch_login, false},
        {"POST", "/v1/profiles/{name}/login/complete", &Api::complete_login, false},
        {"DELETE", "/v1/profiles/{name}/login", &Api::cancel_login, false},
        {"POST", "/v1/profiles/{name}/logout", &Api::logout, false},
        {"POST", "/v1/profiles/{name}/test", &Api::test_profile, false},
        {"POST", "/v1/profiles/{name}/endpoint", &Api::open_endpoint_route, false},
    };
    for (const char* method : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}) {
      t.push_back({method, "/v1/proxy/{name}/{rest...}", &Api::proxy_route, true});
    }
    // tokenctl mcp sends each JSON-RPC message here; it goes to the
    // profile's MCP server with a fresh token.
    for (const char* method : {"GET", "POST", "DELETE"}) {
      t.push_back({method, "/v1/mcp/{name}", &Api::mcp_route, true});
    }
    t.push_back({"GET", "/v1/events", &Api::get_events, false});
    t.push_back({"GET", "/v1/audit", &Api::get_audit, false});
    t.push_back({"GET", "/v1/metrics", &Api::get_metrics, false});
    return t;
  }();
  return table;
}

void Api::register_routes(ipc::Router& router) {
  for (const auto& r : route_table()) {
    router.add(
        r.method, r.pattern,
        [this, handler = r.handler](const std::shared_ptr<ipc::Exchange>& ex) {
          (this->*handler)(ex);
        },
        r.large_body);
  }
}

void Api::register_route_shapes(ipc::Router& router, const ipc::Handler& handler) {
  for (const auto& r : route_table()) router.add(r.method, r.pattern, handler, r.large_body);
}

std::size_t Api::event_stream_count() const {
  return m_streams->size();
}
std::size_t Api::waiting_count() const {
  return m_waits->size();
}

void Api::refuse_without_login(const std::shared_ptr<ipc::Exchange>& ex) {
  ex->respond(ipc::error_response(
      Error{Errc::unavailable, "login flows are not available in this tokend"}));
}

std::function<void(Result<json::Json>)> Api::json_responder(const ExchangePtr& ex,
                                                            const std::string& name) {
  return [ex, name](Result<json::Json> r) {
    if (!r) {
      if (r.error().code == Errc::reauth_required)
        return ex->respond(gateway::reauth_error(r.error(), name));
      return ex->respond(ipc::error_response(r.error()));
    }
    ex->respond(ipc::Response::json(200, *r));
  };
}

// --- health and profiles ---

// GET /v1/health
void Api::get_health(const std::shared_ptr<ipc::Exchange>& ex) {
  const auto uptime =
      std::chrono::duration_cast<std::chrono::seconds>(m_clock.mono_now() - m_started);
  ex->respond(ipc::Response::json(200, {{"status", "ok"},
                                        {"version", m_options.version},
                                        {"uptime_s", uptime.count()},
                                        {"profiles", m_tokens.size()},
                                        {"pid", ::getpid()}}));
}

// GET /v1/profiles
void Api::list_profiles(const std::shared_ptr<ipc::Exchange>& ex) {
  const auto now = to_unix_ms(m_clock.wall_now());
  json::Json list = json::Json::array();
  for (const auto& v : m_tokens.list()) list.push_back(profile_json(v, now));
  ex->respond(ipc::Response::json(200, {{"profiles", list}}));
}

// GET /v1/profiles/{name}
void Api::get_profile(const std::shared_ptr<ipc::Exchange>& ex) {
  auto v = m_tokens.get(ex->param("name"));
  if (!v) return ex->respond(ipc::error_response(v.error()));
  ex->respond(ipc::Response::json(200, profile_json(*v, to_unix_ms(m_clock.wall_now()))));
}

// PUT /v1/profiles/{name}
void Api::put_profile(const std::shared_ptr<ipc::Exchange>& ex) {
  auto body = json::parse(ex->request().body, "request body");
  if (!body) return ex->respond(ipc::error_response(body.error()));
  // Sinks write files as tokend's user: only that user may configure them,
  // and in server mode nobody (the caller is never tokend's user there).
  if (body->is_object() && body->contains("sinks") && m_options.server_mode) {
    return ex->respond(ipc::Response::error(
        403, "forbidden",
        "sinks are not available in server mode: they would write files on tokend's host; "
        "fetch the token from the API instead"));
  }
  if (body->is_object() && body->contains("sinks") && ex->peer().uid != ::geteuid()) {
    return ex->respond(
        ipc::Response::error(403, "forbidden", "only tokend's own user may configure sinks"));
  }
  auto spec = tokens::parse_profile_spec(ex->param("name"), *body, to_unix_ms(m_clock.wall_now()));
  if (!spec) return ex->respond(ipc::error_response(spec.error()));
  auto created = m_tokens.put_profile(std::move(*spec));
  if (!created) return ex->respond(ipc::error_response(created.error()));
  auto v = m_tokens.get(ex->param("name"));
  if (!v) return ex->respond(ipc::error_response(v.error()));
  ex->respond(
      ipc::Response::json(*created ? 201 : 200, profile_json(*v, to_unix_ms(m_clock.wall_now()))));
}

// DELETE /v1/profiles/{name}
void Api::delete_profile(const std::shared_ptr<ipc::Exchange>& ex) {
  if (auto r = m_tokens.remove_profile(ex->param("name")); !r)
    return ex->respond(ipc::error_response(r.error()));
  ipc::Response res;
  res.status = 204;
  ex->respond(std::move(res));
}

// GET /v1/profiles/{name}/token
void Api::get_token(const std::shared_ptr<ipc::Exchange>& ex) {
  const std::string name(ex->param("name"));
  // min_valid=half asks for half the token's lifetime (tokenctl headers).
  const auto mv = ex->request().query_param("min_valid");
  const bool half = mv && *mv == "half";
  auto min_valid = half ? Result<std::optional<std::int64_t>>{}
                        : int_param(ex->request(), "min_valid", 0, 86'400);
  if (!min_valid) {
    return ex->respond(ipc::error_response(
        Error{Errc::invalid_argument,
              min_valid.error().message + ", or \"half\" (half the token's lifetime)"}));
  }
  auto wait = int_param(ex->request(), "wait", 0, 3'600);
  if (!wait) return ex->respond(ipc::error_response(wait.error()));
  tokens::TokenRequest req;
  if (*min_valid) req.min_valid_s = **min_valid;
  req.half_lifetime = half;
  // Answers at once when the token is good enough (no callback to
  // allocate on this, the hot path), else after the profile's single
  // refresh. The exchange ignores an answer to a caller that has gone.
  const std::int64_t wait_s = wait->value_or(0);
  if (auto now = m_tokens.token(name, req); now || now.error().code != Errc::unavailable)
    return answer_token(ex, name, req, wait_s, std::move(now));
  m_tokens.token_async(name, req, [this, ex, name, req, wait_s](Result<tokens::TokenGrant> grant) {
    answer_token(ex, name, req, wait_s, std::move(grant));
  });
}

// POST /v1/profiles/{name}/refresh
void Api::refresh_profile(const std::shared_ptr<ipc::Exchange>& ex) {
  const std::string name(ex->param("name"));
  m_tokens.refresh(name, [this, ex, name](Result<> outcome) {
    if (!outcome) {
      if (outcome.error().code == Errc::reauth_required)
        return ex->respond(gateway::reauth_error(outcome.error(), name));
      return ex->respond(ipc::error_response(outcome.error()));
    }
    auto v = m_tokens.get(name);
    if (!v) return ex->respond(ipc::error_response(v.error()));
    ex->respond(ipc::Response::json(200, profile_json(*v, to_unix_ms(m_clock.wall_now()))));
  });
}

// --- login flows ---

// POST /v1/profiles/{name}/login
void Api::start_login(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  const std::string name(ex->param("name"));
  login::LoginRequest req;
  if (!ex->request().body.empty()) {
    auto body = json::parse(ex->request().body, "request body");
    if (!body) return ex->respond(ipc::error_response(body.error()));
    if (!body->is_object())
      return ex->respond(
          ipc::error_response(Error{Errc::invalid_argument, "the body must be a JSON object"}));
    for (const auto& [k, v] : body->items()) {
      if (k == "flow") {
        if (v != "code" && v != "device") {
          return ex->respond(ipc::error_response(
              Error{Errc::invalid_argument, "field \"flow\" must be \"code\" or \"device\""}));
        }
        req.device = v == "device";
      } else if (k == "listen") {
        if (!v.is_boolean())
          return ex->respond(ipc::error_response(
              Error{Errc::invalid_argument, "field \"listen\" must be true or false"}));
        req.listen = v.get<bool>();
      } else {
        return ex->respond(ipc::error_response(Error{
            Errc::invalid_argument, fmt::format("field \"{}\" is not known", k.substr(0, 64))}));
      }
    }
  }
  if (!m_tokens.get(name)) return ex->respond(ipc::error_response(m_tokens.get(name).error()));
  audit_peer(ex, "login_started", name);
  m_login->start(name, req, json_responder(ex, name));
}

// GET /v1/profiles/{name}/login
void Api::watch_login(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  const std::string name(ex->param("name"));
  if (auto v = m_tokens.get(name); !v) return ex->respond(ipc::error_response(v.error()));
  auto wait = int_param(ex->request(), "wait", 0, 3'600);
  if (!wait) return ex->respond(ipc::error_response(wait.error()));
  if (wait->value_or(0) > 0 && m_login->pending(name)) {
    auto waiting =
        m_waits->add(ex, name,
                     {tokens::EventKind::login_succeeded, tokens::EventKind::login_failed,
                      tokens::EventKind::login_cancelled},
                     std::chrono::seconds(**wait), [this, ex, name](bool) {
                       ex->respond(ipc::Response::json(
                           200, m_login != nullptr ? m_login->status(name) : json::Json::object()));
                     });
    if (waiting) return;
    return ex->respond(ipc::error_response(waiting.error()));
  }
  ex->respond(ipc::Response::json(200, m_login->status(name)));
}

// POST /v1/profiles/{name}/login/complete
void Api::complete_login(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  const std::string name(ex->param("name"));
  auto body = json::parse(ex->request().body, "request body");
  if (!body) return ex->respond(ipc::error_response(body.error()));
  m_login->complete(name, *body, [ex](Result<json::Json> r) {
    if (!r) return ex->respond(ipc::error_response(r.error()));
    const auto state = r->value("state", std::string());
    if (state == "succeeded") return ex->respond(ipc::Response::json(200, *r));
    const json::Json& err = r->contains("error") ? (*r)["error"] : json::Json::object();
    ex->respond(ipc::Response::error(
        400, "login_failed", err.value("message", std::string("the login failed")),
        {{"reason", err.value("reason", std::string())}, {"login", *r}}));
  });
}

// DELETE /v1/profiles/{name}/login
void Api::cancel_login(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  if (auto r = m_login->cancel(std::string(ex->param("name"))); !r)
    return ex->respond(ipc::error_response(r.error()));
  ipc::Response res;
  res.status = 204;
  ex->respond(std::move(res));
}

// POST /v1/profiles/{name}/logout
void Api::logout(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  const std::string name(ex->param("name"));
  audit_peer(ex, "logout_requested", name);
  m_login->logout(name, json_responder(ex, name));
}

// POST /v1/profiles/{name}/test
void Api::test_profile(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_login == nullptr) return refuse_without_login(ex);
  const std::string name(ex->param("name"));
  m_login->test(name, json_responder(ex, name));
}

// --- the stand-in endpoint ---

// POST /v1/profiles/{name}/endpoint
void Api::open_endpoint_route(const std::shared_ptr<ipc::Exchange>& ex) {
  if (m_options.server_mode) {
    return ex->respond(ipc::Response::error(
        403, "forbidden",
        "stand-in endpoints are not available in server mode: they listen on tokend's host; "
        "call /v1/proxy/{name}/... instead"));
  }
  const std::string name(ex->param("name"));
  auto wait = int_param(ex->request(), "wait", 0, 3'600);
  if (!wait) return ex->respond(ipc::error_response(wait.error()));
  // Calls through the endpoint are audited as the caller, or as the
  // command it names: its own child, started for the purpose.
  ipc::Peer audited = ex->peer();
  if (!ex->request().body.empty()) {
    auto body = json::parse(ex->request().body, "request body");
    if (!body) return ex->respond(ipc::error_response(body.error()));
    if (!body->is_object())
      return ex->respond(
          ipc::error_response(Error{Errc::invalid_argument, "the body must be a JSON object"}));
    for (const auto& [k, v] : body->items()) {
      if (k != "pid") {
        return ex->respond(ipc::error_response(Error{
            Errc::invalid_argument, fmt::format("field \"{}\" is not known", k.substr(0, 64))}));
      }
      if (!v.is_number_integer() || v.get<std::int64_t>() <= 0) {
        return ex->respond(ipc::error_response(
            Error{Errc::invalid_argument, "field \"pid\" must be a process id"}));
      }
      const auto pid = static_cast<pid_t>(v.get<std::int64_t>());
      if (pid != audited.pid && parent_of(pid) != std::optional<pid_t>(audited.pid)) {
        return ex->respond(ipc::error_response(
            Error{Errc::invalid_argument, "field \"pid\" must name the caller or a child of it"}));
      }
      audited.pid = pid;
    }
  }
  if (auto v = m_tokens.get(name); !v) return ex->respond(ipc::error_response(v.error()));
  audit_peer(ex, "endpoint_opened", name);
  open_endpoint(ex, name, wait->value_or(0), audited);
}

// --- events and audit ---

// GET /v1/events
void Api::get_events(const std::shared_ptr<ipc::Exchange>& ex) {
  std::optional<std::string> only;
  if (auto p = ex->request().query_param("profile")) only = std::string(*p);
  auto stream = ex->start_stream(200, {{"Content-Type", "text/event-stream"},
                                       {"Cache-Control", "no-cache"},
                                       {"X-Accel-Buffering", "no"}});
  if (!stream) return;
  stream->send(": tokend event stream\n\n");
  std::weak_ptr<ipc::Stream> weak = stream;
  auto sub = m_events.subscribe([weak, only](const Event& e) {
    if (only && e.profile != *only) return;
    if (auto s = weak.lock()) s->send(sse_frame(e));
  });
  m_streams->add(stream, std::move(sub));
}

// GET /v1/audit
void Api::get_audit(const std::shared_ptr<ipc::Exchange>& ex) {
  auto limit = int_param(ex->request(), "limit", 1, 10'000);
  if (!limit) return ex->respond(ipc::error_response(limit.error()));
  if (m_proxy != nullptr) m_proxy->flush_audit_now();  // batched lines first
  auto events = m_store.recent_audit(static_cast<std::size_t>(limit->value_or(100)));
  if (!events) return ex->respond(ipc::error_response(events.error()));
  json::Json list = json::Json::array();
  for (const auto& e : *events) {
    list.push_back({{"id", e.id},
                    {"at", e.at_ms / 1000},
                    {"kind", e.kind},
                    {"profile", e.profile},
                    {"peer_uid", nullable(e.peer_uid)},
                    {"peer_pid", nullable(e.peer_pid)},
                    {"detail", e.detail}});
  }
  ex->respond(ipc::Response::json(200, {{"events", list}}));
}

// --- the proxy and the MCP gateway ---

// ANY /v1/proxy/{name}/{rest...}
void Api::proxy_route(const std::shared_ptr<ipc::Exchange>& ex) {
  const ipc::Request& req = ex->request();
  std::string name(ex->param("name"));
  // The rest of the path exactly as decoded, not the router's segments
  // (which fold "//"): the proxy refuses what it does not like.
  const std::string prefix = "/v1/proxy/" + name + "/";
  std::string rest = req.path.starts_with(prefix) ? req.path.substr(prefix.size())
                                                  : std::string(ex->param("rest"));
  auto call = gateway::proxy_call(req, name, std::move(rest), ex->peer());
  if (!call) return ex->respond(ipc::error_response(call.error()));
  forward(ex, std::move(*call), 0);
}

// GET|POST|DELETE /v1/mcp/{name}: X-Tokend-Wait: S holds a call that needs a
// login until one is done.
void Api::mcp_route(const std::shared_ptr<ipc::Exchange>& ex) {
  std::int64_t wait_s = 0;
  if (auto wait = ex->request().header("x-tokend-wait")) {
    const auto [end, ec] = std::from_chars(wait->data(), wait->data() + wait->size(), wait_s);
    if (ec != std::errc{} || end != wait->data() + wait->size() || wait_s < 0 || wait_s > 3600) {
      return ex->respond(ipc::Response::error(
          400, "invalid_argument", "X-Tokend-Wait must be a number of seconds from 0 to 3600"));
    }
  }
  auto call = gateway::proxy_call(ex->request(), std::string(ex->param("name")), {}, ex->peer());
  if (!call) return ex->respond(ipc::error_response(call.error()));
  call->mcp = true;
  forward(ex, std::move(*call), wait_s);
}

}  // namespace tokend::api
