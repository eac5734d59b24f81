#include "ctl/mcp/bridge.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "client/api.hpp"
#include "client/client.hpp"
#include "core/json.hpp"
#include "core/paths.hpp"
#include "ctl/browser.hpp"
#include "ctl/interrupt.hpp"
#include "ctl/mcp/framing.hpp"

namespace tokend::ctl::mcp {

namespace {

constexpr std::size_t k_max_line = 32 * 1024 * 1024;    // one client message
constexpr std::size_t k_max_answer = 64 * 1024 * 1024;  // one JSON answer
constexpr std::size_t k_max_workers = 64;

bool same_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string header_of(const client::Headers& headers, std::string_view name) {
  for (const auto& [k, v] : headers) {
    if (same_name(k, name)) return v;
  }
  return {};
}

// A session id goes back in a header: visible ASCII only, bounded.
bool usable_session_id(std::string_view id) {
  return !id.empty() && id.size() <= 256 &&
         std::all_of(id.begin(), id.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

// stdout: whole lines, one writer at a time. false once the client is gone.
class Output {
 public:
  explicit Output(int fd) : m_fd(fd) {}
  bool line(std::string text) {
    text += '\n';
    std::lock_guard lock(m_mu);
    if (m_broken) return false;
    std::string_view rest = text;
    while (!rest.empty()) {
      const ssize_t n = ::write(m_fd, rest.data(), rest.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        m_broken = true;
        return false;
      }
      rest.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }
  bool broken() {
    std::lock_guard lock(m_mu);
    return m_broken;
  }

 private:
  std::mutex m_mu;
  int m_fd;
  bool m_broken = false;
};

// What came back for one exchange with tokend.
struct Answer {
  int status = 0;
  client::Headers headers;
  bool sse = false;
  std::string body;  // a non-stream answer (bounded)
  [[nodiscard]] std::string tokend_error() const { return header_of(headers, "x-tokend-error"); }
};

// The message of a tokend error body ({"error": {"message": ...}}).
std::string tokend_message(const std::string& body) {
  auto j = json::parse(body, "tokend answer");
  if (!j || !j->is_object() || !j->contains("error") || !(*j)["error"].is_object()) return {};
  return json::string_or((*j)["error"], "message");
}

// The ids of a message, as map keys.
std::string id_key(const json::Json& id) {
  return id.dump();
}

class Bridge {
 public:
  explicit Bridge(const BridgeOptions& o)
      : m_o(o), m_out(o.out_fd), m_target(client::paths::mcp(o.profile)) {}

  int run();

 private:
  struct Job {
    ClientMessage message;
    std::string body;
  };
  // One keep-alive connection to tokend, made when first needed.
  struct Conn {
    std::optional<client::Client> client;
    bool fresh = false;  // made for the exchange in progress
  };

  // --- start and end ---
  bool check_profile();
  void start_first_login();
  void drain_and_stop(InterruptWatch& interrupt);

  // --- the client's messages ---
  void dispatch(std::string_view line);
  void enqueue(Job job);
  void worker();
  void send(Job& job, Conn& conn);

  // --- talking to tokend ---
  Result<Answer> exchange(Conn& conn, std::string_view method, const client::Headers& headers,
                          std::string_view body, SseParser* parser,
                          const std::function<void(const SseParser::Event&)>& on_event,
                          const std::optional<std::string>& cancel_id = std::nullopt,
                          std::chrono::milliseconds idle_timeout = std::chrono::milliseconds(0),
                          const std::function<void(const Answer&)>& on_head = {});
  client::Headers base_headers(const ClientMessage* message);
  bool reinitialize(Conn& conn, const std::string& failed_session);
  bool relist_tools(Conn& conn, const Job& job);
  void get_stream();
  void delete_session();

  // --- the server's messages ---
  void deliver(std::string_view payload, const std::optional<std::string>& answering,
               bool& answered);
  void answer_error(const Job& job, int code, const std::string& message,
                    const json::Json& data = json::Json());
  void note(const std::string& message) {
    std::lock_guard lock(m_err_mu);
    std::fputs(("tokenctl mcp: " + message + "\n").c_str(), m_o.err);
    std::fflush(m_o.err);
  }

  // --- cancelling blocked exchanges ---
  std::uint64_t track(int fd, const std::optional<std::string>& id);
  void untrack(std::uint64_t key);
  void cancel_all();
  void cancel_request(const std::string& id);
  std::thread spawn(std::function<void()> fn);

  const BridgeOptions& m_o;
  Output m_out;
  const std::string m_target;
  std::atomic<bool> m_stopping{false};

  std::mutex m_err_mu;

  // Session state (2025-era servers) and what was learnt from answers.
  std::mutex m_state_mu;
  std::string m_session;            // Mcp-Session-Id
  std::string m_version;            // negotiated in initialize
  json::Json m_initialize;          // the client's initialize request, for a new session
  bool m_initialized_sent = false;  // the client sent notifications/initialized
  std::uint64_t m_reinit = 0;
  ToolHeaders m_tools;
  std::map<std::string, std::string> m_pending;  // request id -> method
  bool m_first_login = false;                    // a login this bridge started is pending
  bool m_told_login = false;

  // Workers.
  std::mutex m_mu;
  std::condition_variable m_cv;       // jobs queued, or stopping
  std::condition_variable m_idle_cv;  // a job finished
  std::deque<Job> m_queue;
  std::vector<std::thread> m_workers;
  std::size_t m_idle = 0;
  std::size_t m_busy = 0;
  bool m_closing = false;
  std::optional<std::thread> m_get_thread;
  std::condition_variable m_get_cv;  // wakes the GET stream's backoff

  // Exchanges in progress, by key: their socket, and the request they carry.
  std::mutex m_track_mu;
  std::map<std::uint64_t, std::pair<int, std::optional<std::string>>> m_tracked;
  std::uint64_t m_next_track = 1;

  Conn m_main_conn;  // notifications and responses, in order, from the main thread
};

std::thread Bridge::spawn(std::function<void()> fn) {
  // Threads are born with SIGINT and SIGTERM blocked: the main thread takes
  // them, so no worker's read is interrupted.
  sigset_t block;
  sigset_t old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  std::thread t(std::move(fn));
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return t;
}

std::uint64_t Bridge::track(int fd, const std::optional<std::string>& id) {
  std::lock_guard lock(m_track_mu);
  const std::uint64_t key = m_next_track++;
  m_tracked.emplace(key, std::pair{fd, id});
  if (m_stopping) ::shutdown(fd, SHUT_RDWR);
  return key;
}

void Bridge::untrack(std::uint64_t key) {
  std::lock_guard lock(m_track_mu);
  m_tracked.erase(key);
}

void Bridge::cancel_all() {
  m_stopping = true;
  {
    std::lock_guard lock(m_track_mu);
    for (const auto& [_, t] : m_tracked) ::shutdown(t.first, SHUT_RDWR);
  }
  {
    std::lock_guard lock(m_mu);
    m_closing = true;
  }
  m_cv.notify_all();
  m_get_cv.notify_all();
}

void Bridge::cancel_request(const std::string& id) {
  std::lock_guard lock(m_track_mu);
  for (const auto& [_, t] : m_tracked) {
    if (t.second == id) ::shutdown(t.first, SHUT_RDWR);
  }
}

client::Headers Bridge::base_headers(const ClientMessage* message) {
  client::Headers h = {{"Accept", "application/json, text/event-stream"}};
  std::lock_guard lock(m_state_mu);
  if (message != nullptr) {
    h.emplace_back("Content-Type", "application/json");
    for (auto& kv : request_headers(*message, m_tools, m_version)) h.push_back(std::move(kv));
  } else if (!m_version.empty()) {
    h.emplace_back("MCP-Protocol-Version", m_version);
  }
  if (!m_session.empty()) h.emplace_back("Mcp-Session-Id", m_session);
  const std::int64_t wait =
      m_first_login ? std::max(m_o.wait_s, m_o.first_login_wait_s) : m_o.wait_s;
  if (wait > 0 && message != nullptr)
    h.emplace_back("X-Tokend-Wait", std::to_string(std::min<std::int64_t>(wait, 3600)));
  return h;
}

Result<Answer> Bridge::exchange(Conn& conn, std::string_view method, const client::Headers& headers,
                                std::string_view body, SseParser* parser,
                                const std::function<void(const SseParser::Event&)>& on_event,
                                const std::optional<std::string>& cancel_id,
                                std::chrono::milliseconds idle_timeout,
                                const std::function<void(const Answer&)>& on_head) {
  // The session's DELETE is the one exchange made while stopping: it is
  // bounded by its idle timeout instead of being cut off.
  const bool cancellable = method != "DELETE";
  for (int attempt = 0;; ++attempt) {
    if (m_stopping && cancellable) return fail(Errc::unavailable, "the bridge is stopping");
    conn.fresh = false;
    if (!conn.client) {
      auto c = client::Client::connect(m_o.socket);
      if (!c) return std::unexpected(c.error());
      conn.client.emplace(std::move(*c));
      conn.fresh = true;
    }
    Answer answer;
    std::optional<Error> stream_error;
    bool started = false;
    const std::uint64_t key = cancellable ? track(conn.client->fd(), cancel_id) : 0;
    client::BodyReader reader = client::BodyReader::from_string(body);
    auto r = conn.client->exchange(
        method, m_target, headers, body.empty() && method != "POST" ? nullptr : &reader,
        [&](const client::ResponseHead& head) {
          started = true;
          answer.status = head.status;
          answer.headers = head.headers;
          const std::string type = header_of(head.headers, "content-type");
          answer.sse =
              parser != nullptr && head.status == 200 && type.starts_with("text/event-stream");
          if (on_head) on_head(answer);
          return true;
        },
        [&](std::string_view bytes) {
          if (answer.sse) {
            auto events = parser->feed(bytes);
            if (!events) {
              stream_error = events.error();
              return false;
            }
            for (const auto& e : *events) {
              if (e.type == "message") on_event(e);
            }
            return true;
          }
          if (answer.body.size() + bytes.size() > k_max_answer) {
            stream_error = Error{Errc::limit_exceeded, "the MCP server's answer is too large"};
            return false;
          }
          answer.body.append(bytes);
          return true;
        },
        idle_timeout);
    if (cancellable) untrack(key);
    if (!r) {
      conn.client.reset();
      // A kept-alive connection tokend has closed meanwhile: once more on a
      // new one, unless the answer had begun.
      if (!started && !conn.fresh && attempt == 0 && r.error().code == Errc::unavailable &&
          !m_stopping)
        continue;
      return std::unexpected(r.error());
    }
    if (stream_error) {
      conn.client.reset();
      return std::unexpected(*stream_error);
    }
    return answer;
  }
}

void Bridge::deliver(std::string_view payload, const std::optional<std::string>& answering,
                     bool& answered) {
  auto m = server_message(payload);
  if (!m) {
    note(fmt::format("dropped a message from the MCP server: {}", m.error().message));
    return;
  }
  auto& [j, line] = *m;
  if (j.is_object() && !j.contains("method") && j.contains("id")) {
    const std::string key = id_key(j["id"]);
    if (answering && key == *answering) answered = true;
    std::string method;
    {
      std::lock_guard lock(m_state_mu);
      if (auto it = m_pending.find(key); it != m_pending.end()) {
        method = it->second;
        m_pending.erase(it);
      }
      if (method == "initialize" && j.contains("result") && j["result"].is_object()) {
        if (auto v = usable_version(json::string_or(j["result"], "protocolVersion")))
          m_version = *v;
      }
      if (method == "tools/list" && j.contains("result")) {
        for (const auto& d : take_tool_headers(j["result"], m_tools))
          note("left out the tool " + d);
        line = j.dump(-1, ' ', false, json::Json::error_handler_t::replace);
      }
    }
  } else if (j.is_array() && answering) {
    answered = true;  // a batch's answers
  }
  m_out.line(std::move(line));
}

void Bridge::answer_error(const Job& job, int code, const std::string& message,
                          const json::Json& data) {
  {
    std::lock_guard lock(m_state_mu);
    for (const auto& id : job.message.request_ids) m_pending.erase(id_key(id));
  }
  if (job.message.request_ids.empty()) {
    note(message);
    return;
  }
  for (const auto& id : job.message.request_ids) m_out.line(error_line(id, code, message, data));
}

void Bridge::send(Job& job, Conn& conn) {
  const bool is_request = job.message.kind == ClientMessage::Kind::request ||
                          job.message.kind == ClientMessage::Kind::batch;
  const std::optional<std::string> answering = job.message.kind == ClientMessage::Kind::request
                                                   ? std::optional(id_key(job.message.id))
                                                   : std::nullopt;
  for (int attempt = 0; attempt < 2; ++attempt) {
    std::string session_used;
    {
      std::lock_guard lock(m_state_mu);
      session_used = m_session;
    }
    SseParser parser;
    bool answered = false;
    // The session id is taken from the answer's head, before its body
    // reaches the client: the client's next message (notifications/
    // initialized) may follow the initialize result at once.
    const auto take_session = [&](const Answer& head) {
      if (job.message.method != "initialize" || head.status < 200 || head.status >= 300) return;
      const std::string id = header_of(head.headers, "mcp-session-id");
      std::lock_guard lock(m_state_mu);
      if (usable_session_id(id)) m_session = id;
    };
    auto r = exchange(
        conn, "POST", base_headers(&job.message), job.body, &parser,
        [&](const SseParser::Event& e) { deliver(e.data, answering, answered); }, answering,
        std::chrono::milliseconds(0), take_session);
    if (!r) {
      if (m_stopping) return;
      if (r.error().code == Errc::unavailable) {
        return answer_error(
            job, k_upstream_error,
            fmt::format(
                "tokend is not reachable ({}); start it with: systemctl --user start tokend",
                r.error().message));
      }
      return answer_error(
          job, k_upstream_error,
          fmt::format("the exchange with the MCP server failed: {}", r.error().message));
    }
    const Answer& a = *r;
    const std::string tokend_error = a.tokend_error();
    if (a.status >= 200 && a.status < 300) {
      {
        std::lock_guard lock(m_state_mu);
        m_first_login = false;
        m_told_login = false;
      }
      if (!a.sse && !a.body.empty()) deliver(a.body, answering, answered);
      if (a.sse && !answered && answering && !parser.last_id().empty()) {
        // The stream ended before the answer: a 2025-11-25 server resumes it
        // on a GET with the last event id.
        for (int resume = 0; resume < 8 && !answered && !m_stopping; ++resume) {
          auto h = base_headers(nullptr);
          h[0].second = "text/event-stream";
          h.emplace_back("Last-Event-ID", parser.last_id());
          const std::string before = parser.last_id();
          auto g = exchange(
              conn, "GET", h, {}, &parser,
              [&](const SseParser::Event& e) { deliver(e.data, answering, answered); }, answering);
          if (!g || g->status != 200 || parser.last_id() == before) break;
        }
      }
      if (is_request && !answered && answering) {
        answer_error(
            job, k_upstream_error,
            a.sse ? "the MCP server ended its event stream before answering"
                  : fmt::format("the MCP server answered HTTP {} without a JSON-RPC response",
                                a.status));
      }
      return;
    }
    if (tokend_error == "reauth_required" || tokend_error == "insufficient_scope") {
      const std::string command = "tokenctl login " + m_o.profile;
      std::string message = tokend_message(a.body);
      if (message.empty()) message = fmt::format("profile '{}' needs a login", m_o.profile);
      bool tell = false;
      {
        std::lock_guard lock(m_state_mu);
        tell = !m_told_login;
        m_told_login = true;
      }
      if (tell) note(fmt::format("{}; run: {}", message, command));
      return answer_error(
          job, k_login_required, fmt::format("tokend: {}; run: {}", message, command),
          json::Json{{"command", command}, {"profile", m_o.profile}, {"reason", tokend_error}});
    }
    if (!tokend_error.empty()) {
      std::string message = tokend_message(a.body);
      if (message.empty())
        message = fmt::format("tokend answered HTTP {} ({})", a.status, tokend_error);
      return answer_error(job, k_upstream_error, "tokend: " + message,
                          json::Json{{"reason", tokend_error}});
    }
    if (a.status == 404 && !session_used.empty() && attempt == 0) {
      // The server no longer knows the session: a new one, then once more.
      if (reinitialize(conn, session_used)) continue;
    }
    // The server's own refusal: its JSON-RPC error when it sent one.
    if (!a.body.empty()) {
      auto j = json::parse(a.body, "error");
      if (j && j->is_object() && j->contains("error") && (*j)["error"].is_object() &&
          j->value("jsonrpc", "") == "2.0") {
        // HeaderMismatch on a tool call: the tool's x-mcp-header parameters
        // are not known (the client never listed the tools through this
        // bridge, or they changed). The transport says: list, then retry.
        if (attempt == 0 && job.message.method == "tools/call" &&
            (*j)["error"].value("code", 0) == k_header_mismatch && relist_tools(conn, job)) {
          continue;
        }
        if (!answering) {
          note(fmt::format("the MCP server refused a {} (HTTP {}): {}",
                           job.message.method.empty() ? "message" : job.message.method, a.status,
                           json::string_or((*j)["error"], "message").substr(0, 200)));
          return;
        }
        if (!j->contains("id") || (*j)["id"].is_null()) (*j)["id"] = job.message.id;
        if (id_key((*j)["id"]) == *answering) {
          {
            std::lock_guard lock(m_state_mu);
            m_pending.erase(*answering);
          }
          m_out.line(j->dump(-1, ' ', false, json::Json::error_handler_t::replace));
          return;
        }
      }
    }
    return answer_error(job, k_upstream_error,
                        fmt::format("the MCP server answered HTTP {}", a.status),
                        json::Json{{"status", a.status}});
  }
}

bool Bridge::reinitialize(Conn& conn, const std::string& failed_session) {
  json::Json init;
  std::uint64_t n = 0;
  {
    std::lock_guard lock(m_state_mu);
    if (m_session != failed_session) return true;  // another thread made a new one already
    if (m_initialize.is_null()) return false;
    init = m_initialize;
    n = ++m_reinit;
    m_session.clear();
  }
  init["id"] = fmt::format("tokenctl-mcp-reinitialize-{}", n);
  auto parsed = parse_client_line(init.dump());
  if (!parsed) return false;
  SseParser parser;
  std::optional<json::Json> result;
  auto take = [&](std::string_view payload) {
    auto m = server_message(payload);
    if (m && m->first.is_object() && m->first.value("id", json::Json()) == init["id"] &&
        m->first.contains("result")) {
      result = m->first["result"];
    }
  };
  auto r = exchange(conn, "POST", base_headers(&*parsed), init.dump(), &parser,
                    [&](const SseParser::Event& e) { take(e.data); });
  if (!r || r->status != 200) return false;
  if (!r->sse) take(r->body);
  const std::string id = header_of(r->headers, "mcp-session-id");
  if (!result || !usable_session_id(id)) return false;
  {
    std::lock_guard lock(m_state_mu);
    m_session = id;
    if (auto v = usable_version(json::string_or(*result, "protocolVersion"))) m_version = *v;
  }
  note("the MCP server had ended the session; a new one was made");
  auto done = parse_client_line(R"({"jsonrpc":"2.0","method":"notifications/initialized"})");
  auto sent = exchange(conn, "POST", base_headers(&*done), done->body.dump(), nullptr, {});
  return sent && sent->status >= 200 && sent->status < 300;
}

bool Bridge::relist_tools(Conn& conn, const Job& job) {
  json::Json params = json::Json::object();
  if (const auto p = job.message.body.find("params");
      p != job.message.body.end() && p->is_object() && p->contains("_meta")) {
    params["_meta"] = (*p)["_meta"];
  }
  bool listed = false;
  for (int page = 0; page < 20; ++page) {
    json::Json request = {{"jsonrpc", "2.0"},
                          {"id", fmt::format("tokenctl-mcp-tools-{}", page)},
                          {"method", "tools/list"},
                          {"params", params}};
    auto parsed = parse_client_line(request.dump());
    if (!parsed) return listed;
    std::optional<json::Json> result;
    auto take = [&](std::string_view payload) {
      auto m = server_message(payload);
      if (m && m->first.is_object() && m->first.value("id", json::Json()) == request["id"] &&
          m->first.contains("result")) {
        result = m->first["result"];
      }
    };
    SseParser parser;
    auto r = exchange(conn, "POST", base_headers(&*parsed), request.dump(), &parser,
                      [&](const SseParser::Event& e) { take(e.data); });
    if (!r || r->status != 200) return listed;
    if (!r->sse) take(r->body);
    if (!result || !result->is_object()) return listed;
    {
      std::lock_guard lock(m_state_mu);
      take_tool_headers(*result, m_tools);
    }
    listed = true;
    const std::string cursor = json::string_or(*result, "nextCursor");
    if (cursor.empty()) break;
    params["cursor"] = cursor;
  }
  return listed;
}

void Bridge::get_stream() {
  Conn conn;
  SseParser parser;
  auto delay = std::chrono::milliseconds(1000);
  while (!m_stopping) {
    auto h = base_headers(nullptr);
    h[0].second = "text/event-stream";
    if (!parser.last_id().empty()) h.emplace_back("Last-Event-ID", parser.last_id());
    bool got = false;
    bool ignored = false;
    auto r = exchange(conn, "GET", h, {}, &parser, [&](const SseParser::Event& e) {
      got = true;
      deliver(e.data, std::nullopt, ignored);
    });
    if (m_stopping) return;
    if (r && (r->status == 405 || (r->status == 200 && !r->sse)))
      return;  // the server offers no stream
    if (got) delay = std::chrono::milliseconds(1000);
    if (auto retry = parser.retry_ms())
      delay = std::chrono::milliseconds(std::clamp<long>(*retry, 100, 60'000));
    std::unique_lock lock(m_mu);
    m_get_cv.wait_for(lock, delay, [&] { return m_stopping.load(); });
    delay = std::min(delay * 2, std::chrono::milliseconds(30'000));
  }
}

void Bridge::delete_session() {
  std::string session;
  {
    std::lock_guard lock(m_state_mu);
    session = m_session;
  }
  if (session.empty()) return;
  Conn conn;
  client::Headers h = {{"Mcp-Session-Id", session}};
  {
    std::lock_guard lock(m_state_mu);
    if (!m_version.empty()) h.emplace_back("MCP-Protocol-Version", m_version);
  }
  auto r = exchange(conn, "DELETE", h, {}, nullptr, {}, std::nullopt, std::chrono::seconds(5));
  if (!r) note(fmt::format("could not end the MCP session: {}", r.error().message));
}

void Bridge::enqueue(Job job) {
  std::lock_guard lock(m_mu);
  m_queue.push_back(std::move(job));
  if (m_idle == 0 && m_workers.size() < k_max_workers)
    m_workers.push_back(spawn([this] { worker(); }));
  m_cv.notify_one();
}

void Bridge::worker() {
  Conn conn;
  std::unique_lock lock(m_mu);
  for (;;) {
    ++m_idle;
    m_cv.wait(lock, [&] { return !m_queue.empty() || m_closing; });
    --m_idle;
    if (m_queue.empty()) return;  // closing
    Job job = std::move(m_queue.front());
    m_queue.pop_front();
    ++m_busy;
    lock.unlock();
    send(job, conn);
    lock.lock();
    --m_busy;
    m_idle_cv.notify_all();
  }
}

void Bridge::dispatch(std::string_view line) {
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;  // blank
  auto parsed = parse_client_line(line);
  if (!parsed) {
    const bool json = json::parse(line, "line").has_value();
    m_out.line(error_line(nullptr, json ? k_invalid_request : k_parse_error,
                          json ? "Invalid Request: " + parsed.error().message
                               : "Parse error: " + parsed.error().message));
    return;
  }
  Job job{std::move(*parsed), std::string(line)};
  ClientMessage& m = job.message;
  bool start_get = false;
  bool stateless = false;
  {
    std::lock_guard lock(m_state_mu);
    for (const auto& id : m.request_ids) {
      m_pending[id_key(id)] =
          m.kind == ClientMessage::Kind::request ? m.method : std::string("batch");
    }
    if (m.method == "initialize" && m.kind == ClientMessage::Kind::request) {
      m_initialize = m.body;
      m_session.clear();
    }
    const auto claimed = claimed_version(m.body);
    stateless = (claimed && *claimed >= k_first_stateless_version) ||
                (!m_version.empty() && m_version >= k_first_stateless_version);
    if (m.method == "notifications/initialized" && !m_initialized_sent) {
      m_initialized_sent = true;
      start_get = !stateless;
    }
  }
  if (m.kind == ClientMessage::Kind::request || m.kind == ClientMessage::Kind::batch)
    return enqueue(std::move(job));
  if (m.method == "notifications/cancelled" && stateless) {
    // 2026-07-28: closing the request's stream is the cancellation.
    const json::Json params = m.body.value("params", json::Json::object());
    if (params.is_object() && params.contains("requestId"))
      cancel_request(id_key(params["requestId"]));
    return;
  }
  // Notifications and responses go in order, before anything read after them.
  send(job, m_main_conn);
  if (start_get) m_get_thread.emplace(spawn([this] { get_stream(); }));
}

bool Bridge::check_profile() {
  auto c = client::Client::connect(m_o.socket);
  if (!c) {
    note(
        fmt::format("tokend is not reachable at {} ({}); requests get an error until it runs "
                    "(start it with: systemctl --user start tokend)",
                    m_o.socket.string(), c.error().message));
    return true;
  }
  auto r = c->request("GET", client::paths::profile(m_o.profile));
  if (!r) {
    note(fmt::format("asking tokend about '{}' failed: {}", m_o.profile, r.error().message));
    return true;
  }
  if (r->status == 404) {
    note(fmt::format(
        "there is no profile '{}'; add it with: tokenctl add {} --kind oauth2 --provider mcp "
        "--mcp-server URL",
        m_o.profile, m_o.profile));
    return false;
  }
  auto j = json::parse(r->body, "profile");
  if (r->status != 200 || !j || !j->is_object()) {
    note(fmt::format("tokend answered HTTP {} for the profile '{}'", r->status, m_o.profile));
    return true;
  }
  const json::Json config = j->value("config", json::Json::object());
  if (!config.is_object() || json::string_or(config, "mcp_server").empty()) {
    note(fmt::format("profile '{}' has no MCP server; add it with --provider mcp --mcp-server URL",
                     m_o.profile));
    return false;
  }
  const std::string state = json::string_or(*j, "state");
  if (state == "empty") start_first_login();
  return true;
}

void Bridge::start_first_login() {
  auto c = client::Client::connect(m_o.socket);
  if (!c) return;
  auto r = c->request("POST", client::paths::login(m_o.profile), R"({"flow":"code","listen":true})",
                      {{"Content-Type", "application/json"}}, std::chrono::seconds(90));
  if (!r || r->status != 200) {
    note(fmt::format(
        "'{}' has never signed in, and starting its login failed ({}); run: tokenctl login {}",
        m_o.profile, r ? tokend_message(r->body) : r.error().message, m_o.profile));
    return;
  }
  auto j = json::parse(r->body, "login");
  const std::string url =
      j && j->is_object() ? json::string_or(*j, "authorize_url") : std::string();
  if (url.empty()) return;
  {
    std::lock_guard lock(m_state_mu);
    m_first_login = true;
  }
  const auto opener = m_o.open_browser ? url_opener(process_env()) : std::nullopt;
  std::optional<BackgroundProcess> browser;
  if (opener) {
    if (auto p = BackgroundProcess::start(*opener, url)) browser.emplace(std::move(*p));
  }
  note(fmt::format(
      "'{}' has never signed in; {} to sign in:\n  {}", m_o.profile,
      browser ? "your browser opens; if it does not, visit this URL" : "open this URL in a browser",
      url));
}

void Bridge::drain_and_stop(InterruptWatch& interrupt) {
  // stdin ended: the requests in flight are answered first (a signal cuts
  // them off); then every thread ends.
  for (;;) {
    {
      std::lock_guard lock(m_mu);
      if ((m_queue.empty() && m_busy == 0) || m_closing) break;
    }
    pollfd p{interrupt.fd(), POLLIN, 0};
    ::poll(&p, interrupt.fd() >= 0 ? 1 : 0, 50);
    if (interrupt.interrupted() || m_out.broken()) break;
  }
  cancel_all();
  std::vector<std::thread> workers;
  {
    std::lock_guard lock(m_mu);
    workers.swap(m_workers);
  }
  for (auto& t : workers) t.join();
  if (m_get_thread) m_get_thread->join();
  delete_session();
}

int Bridge::run() {
  ::signal(SIGPIPE, SIG_IGN);
  InterruptWatch interrupt;
  if (!check_profile()) return 1;
  std::string buf;
  std::string pending;
  buf.resize(64 * 1024);
  bool skipping = false;  // inside a line that was too long
  while (!interrupt.interrupted() && !m_out.broken()) {
    pollfd fds[2] = {{m_o.in_fd, POLLIN, 0}, {interrupt.fd(), POLLIN, 0}};
    const int n = ::poll(fds, interrupt.fd() >= 0 ? 2 : 1, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
    const ssize_t got = ::read(m_o.in_fd, buf.data(), buf.size());
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (got <= 0) {
      if (!pending.empty() && !skipping) dispatch(pending);
      break;  // EOF
    }
    std::string_view chunk(buf.data(), static_cast<std::size_t>(got));
    while (!chunk.empty()) {
      const auto nl = chunk.find('\n');
      if (nl == std::string_view::npos) {
        if (!skipping) pending.append(chunk);
        if (pending.size() > k_max_line) {
          m_out.line(
              error_line(nullptr, k_invalid_request,
                         fmt::format("Invalid Request: a message over {} MiB", k_max_line >> 20)));
          pending.clear();
          skipping = true;
        }
        break;
      }
      if (!skipping) {
        pending.append(chunk.substr(0, nl));
        dispatch(pending);
      }
      pending.clear();
      skipping = false;
      chunk.remove_prefix(nl + 1);
    }
  }
  if (interrupt.interrupted()) cancel_all();
  drain_and_stop(interrupt);
  return 0;
}

}  // namespace

int run_bridge(const BridgeOptions& options) {
  Bridge bridge(options);
  return bridge.run();
}

}  // namespace tokend::ctl::mcp
