#include "net/http_client.hpp"

#include <curl/curl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <mutex>

#include "core/encoding.hpp"
#include "core/guard.hpp"

namespace tokend::net {

namespace {

// A header name for an error message: printable characters only, short.
std::string printable_name(std::string_view name) {
  std::string out;
  for (const char c : name.substr(0, 64)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u < 0x21 || u >= 0x7f) ? '?' : c;
  }
  return out;
}

// How much of a streamed answer is held while its consumer is slow: past
// this the transfer pauses (libcurl keeps the bytes it has in hand).
constexpr std::size_t k_stream_window = 256 * 1024;

struct Transfer {
  std::uint64_t id = 0;
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;
  HttpRequest request;
  HttpClient::Callback done;
  HttpHeaders response_headers;
  std::string body;
  std::size_t max_body = 0;  // 0: no cap
  bool too_large = false;
  std::uint64_t upload_offset = 0;
  char error[CURL_ERROR_SIZE] = {};
  HttpClient::Impl* owner = nullptr;

  // A streamed answer (request.on_head set): undecided until the head has
  // been handed over, then streamed or collected as the consumer chose.
  enum class Mode { collect, undecided, stream };
  Mode mode = Mode::collect;
  bool head_done = false;      // the final status line and headers are in
  std::string pending;         // streamed bytes not yet handed on
  bool consumer_full = false;  // on_data asked to stop until resume()
  bool paused = false;         // libcurl holds a paused write
  Timer head_timer;            // bounds the wait for the head

  ~Transfer() {
    curl_slist_free_all(headers);
    secure_wipe(body);
  }
};

// One per socket libcurl asks us to watch (curl_multi_assign).
struct SocketContext {
  Poll poll;
};

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

Error transfer_error(CURLcode code, const Transfer& t) {
  const std::string detail = t.error[0] != '\0' ? t.error : curl_easy_strerror(code);
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return Error{Errc::timeout,
                   fmt::format("no answer from {} within the timeout", t.request.url)};
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_WRITE_ERROR:
      if (t.too_large || code == CURLE_FILESIZE_EXCEEDED) {
        return Error{Errc::limit_exceeded,
                     fmt::format("the answer from {} is larger than the limit", t.request.url)};
      }
      break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
      return Error{Errc::invalid_argument,
                   fmt::format("cannot request {}: {}", t.request.url, detail)};
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CONNECT_ERROR:
      return Error{Errc::transient, fmt::format("TLS with {} failed: {}", t.request.url, detail)};
    default:
      break;
  }
  return Error{Errc::transient, fmt::format("request to {} failed: {}", t.request.url, detail)};
}

}  // namespace

std::string_view HttpResponse::header(std::string_view lower_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lower_name) return v;
  }
  return {};
}

class HttpClient::Impl {
 public:
  Impl(Loop& loop, HttpClientOptions options) : m_loop(loop), m_options(std::move(options)) {
    global_init();
    m_multi = curl_multi_init();
    if (m_multi == nullptr) throw std::runtime_error("curl_multi_init failed");
    auto timer = Timer::create(loop);
    if (!timer) {
      curl_multi_cleanup(m_multi);
      throw std::runtime_error(timer.error().message);
    }
    m_timer = std::move(*timer);
    curl_multi_setopt(m_multi, CURLMOPT_SOCKETFUNCTION, &Impl::on_socket);
    curl_multi_setopt(m_multi, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(m_multi, CURLMOPT_TIMERFUNCTION, &Impl::on_timer_change);
    curl_multi_setopt(m_multi, CURLMOPT_TIMERDATA, this);
    curl_multi_setopt(m_multi, CURLMOPT_MAX_HOST_CONNECTIONS, m_options.max_connections_per_host);
    // Keep idle connections for reuse (the proxy's calls come in bursts; the
    // default cache shrinks with the number of transfers and reconnects).
    curl_multi_setopt(m_multi, CURLMOPT_MAXCONNECTS,
                      std::max(64L, m_options.max_connections_per_host * 4));
  }

  ~Impl() { close(); }

  std::uint64_t start(HttpRequest request, Callback done) {
    const std::uint64_t id = m_next_id++;
    auto t = std::make_unique<Transfer>();
    t->id = id;
    t->owner = this;
    t->request = std::move(request);
    t->done = std::move(done);
    if (m_multi == nullptr) {
      fail_later(std::move(t), Error{Errc::unavailable, "the HTTP client is closed"});
      return id;
    }
    // Whatever a header was built from (a token, a token type, a caller's
    // header), a line break in it would add headers or a second request:
    // such a request is not sent at all.
    for (const auto& [k, v] : t->request.headers) {
      constexpr std::string_view k_breaks("\r\n\0", 3);
      if (k.find_first_of(k_breaks) != std::string::npos ||
          v.find_first_of(k_breaks) != std::string::npos) {
        fail_later(
            std::move(t),
            Error{Errc::invalid_argument,
                  fmt::format("the outgoing header {} holds a line break or NUL; the request "
                              "was not sent",
                              printable_name(k))});
        return id;
      }
    }
    t->easy = curl_easy_init();
    if (t->easy == nullptr) {
      fail_later(std::move(t), Error{Errc::internal, "curl_easy_init failed"});
      return id;
    }
    configure(*t);
    Transfer* raw = t.get();
    m_transfers.emplace(id, std::move(t));
    if (raw->mode == Transfer::Mode::undecided) start_head_timer(*raw);
    if (const CURLMcode rc = curl_multi_add_handle(m_multi, raw->easy); rc != CURLM_OK) {
      auto owned = take(id);
      fail_later(std::move(owned), Error{Errc::internal, curl_multi_strerror(rc)});
    }
    return id;
  }

  void cancel(std::uint64_t id) {
    auto t = take(id);
    if (t) t->done = nullptr;
  }

  void close() {
    if (m_multi == nullptr) return;
    std::vector<std::uint64_t> ids;
    for (const auto& [id, _] : m_transfers) ids.push_back(id);
    for (const auto id : ids) cancel(id);
    // Cleanup calls our socket callback with CURL_POLL_REMOVE for each socket
    // still watched; those close their poll handles.
    curl_multi_cleanup(m_multi);
    m_multi = nullptr;
    m_timer.close();
  }

  [[nodiscard]] std::size_t in_flight() const { return m_transfers.size(); }

  void resume(std::uint64_t id) {
    Transfer* t = find(id);
    if (t == nullptr || !t->consumer_full) return;
    t->consumer_full = false;
    deliver_one(id);
    deliver();
  }

 private:
  void configure(Transfer& t) {
    CURL* e = t.easy;
    curl_easy_setopt(e, CURLOPT_URL, t.request.url.c_str());
    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!m_options.ca_bundle.empty())
      curl_easy_setopt(e, CURLOPT_CAINFO, m_options.ca_bundle.c_str());
    curl_easy_setopt(e, CURLOPT_USERAGENT, m_options.user_agent.c_str());
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     static_cast<long>(m_options.connect_timeout.count()));
    if (t.request.on_head) {
      // A stream lasts as long as both ends keep it; the head timer bounds
      // the wait for the answer to begin.
      t.mode = Transfer::Mode::undecided;
      curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    } else {
      curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(t.request.timeout.count()));
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &Impl::on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &Impl::on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    t.max_body = t.request.max_response_bytes > 0 ? t.request.max_response_bytes
                                                  : m_options.max_response_bytes;
    if (t.max_body > 0) {
      // Refuses early when the server announces a larger body.
      curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(t.max_body));
    }
    const std::string& m = t.request.method;
    if (t.request.upload) {
      // Streamed from the spool; UPLOAD with the method named (UPLOAD alone means PUT).
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_READFUNCTION, &Impl::on_read);
      curl_easy_setopt(e, CURLOPT_READDATA, &t);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(t.request.upload->size()));
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
    } else if (m == "POST" || !t.request.body.empty()) {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      // Not copied by libcurl: the Secret in the Transfer outlives the transfer.
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, t.request.body.reveal().data());
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       static_cast<curl_off_t>(t.request.body.size()));
    }
    if (m != "GET" && m != "POST") curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, m.c_str());
    if (m == "HEAD") curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    for (const auto& [k, v] : t.request.headers) {
      const std::string line = fmt::format("{}: {}", k, v);
      t.headers = curl_slist_append(t.headers, line.c_str());
    }
    // No "Expect: 100-continue" round trip for small bodies.
    t.headers = curl_slist_append(t.headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.headers);
  }

  std::unique_ptr<Transfer> take(std::uint64_t id) {
    auto it = m_transfers.find(id);
    if (it == m_transfers.end()) return nullptr;
    auto t = std::move(it->second);
    m_transfers.erase(it);
    if (t->easy != nullptr) {
      if (m_multi != nullptr) curl_multi_remove_handle(m_multi, t->easy);
      curl_easy_cleanup(t->easy);
      t->easy = nullptr;
    }
    stop_head_timer(*t);
    return t;
  }

  Transfer* find(std::uint64_t id) {
    auto it = m_transfers.find(id);
    return it == m_transfers.end() ? nullptr : it->second.get();
  }

  void start_head_timer(Transfer& t) {
    auto timer = Timer::create(m_loop);
    if (!timer) {
      spdlog::error("{}", timer.error().message);
      return;
    }
    t.head_timer = std::move(*timer);
    // The transfer owns its timer: when the timer fires, both are alive.
    t.head_timer.start(
        static_cast<std::uint64_t>(std::max<std::int64_t>(1, t.request.timeout.count())), 0,
        [this, id = t.id] {
          auto owned = take(id);
          if (owned && owned->done) {
            owned->done(std::unexpected(
                Error{Errc::timeout,
                      fmt::format("no answer from {} within the timeout", owned->request.url)}));
          }
        });
  }

  static void stop_head_timer(Transfer& t) { t.head_timer.close(); }

  // Hands streamed heads and bytes to their consumers, on the loop and
  // outside libcurl. Consumers may cancel; every step looks the transfer up
  // again.
  void deliver() {
    for (int rounds = 0; !m_dirty.empty() && rounds < 64; ++rounds) {
      auto ids = std::move(m_dirty);
      m_dirty.clear();
      for (const auto id : ids) deliver_one(id);
    }
  }

  void deliver_one(std::uint64_t id) {
    Transfer* t = find(id);
    if (t == nullptr) return;
    if (t->mode == Transfer::Mode::undecided) {
      if (!t->head_done) return;
      stop_head_timer(*t);
      long status = 0;
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
      const bool stream = t->request.on_head(status, t->response_headers);
      t = find(id);
      if (t == nullptr) return;  // the callback ended the transfer
      if (stream) {
        t->mode = Transfer::Mode::stream;
      } else {
        t->mode = Transfer::Mode::collect;
        t->body = std::move(t->pending);
        t->pending.clear();
      }
    }
    while (t->mode == Transfer::Mode::stream && !t->pending.empty() && !t->consumer_full) {
      std::string bytes = std::move(t->pending);
      t->pending.clear();
      const bool more = t->request.on_data(bytes);
      t = find(id);
      if (t == nullptr) return;
      if (!more) t->consumer_full = true;
    }
    if (t->paused && !t->consumer_full) {
      // libcurl hands the held write back from inside this call (on_body,
      // which only queues it and marks the transfer for deliver()).
      t->paused = false;
      curl_easy_pause(t->easy, CURLPAUSE_CONT);
    }
  }

  // Reports an error from the loop, not from inside start(). The client
  // owns the timer: a client destroyed first reports nothing.
  void fail_later(std::unique_ptr<Transfer> t, Error e) {
    auto timer = Timer::create(m_loop);
    if (!timer) {
      spdlog::error("{}", timer.error().message);
      return;
    }
    const std::uint64_t id = t->id;
    auto& slot = m_failures.insert_or_assign(id, std::move(*timer)).first->second;
    slot.start(0, 0, [this, id, done = std::move(t->done), e = std::move(e)] {
      // Closes this timer from its own callback; the callback (and what it
      // holds) lives on until the close callback.
      m_failures.erase(id);
      if (done) done(std::unexpected(e));
    });
  }

  static size_t on_body(char* data, size_t size, size_t n, void* user) {
    size_t taken = 0;  // an exception aborts the transfer (CURLE_WRITE_ERROR)
    guarded("HTTP client body",
            [&] { taken = take_body(static_cast<Transfer*>(user), data, size * n); });
    return taken;
  }

  static size_t take_body(Transfer* t, char* data, size_t bytes) {
    if (t->mode != Transfer::Mode::collect) {
      // Streamed: queue for deliver(); hold the transfer while the consumer
      // is full or the queue is a window long.
      if (t->consumer_full || t->pending.size() >= k_stream_window) {
        t->paused = true;
        return CURL_WRITEFUNC_PAUSE;
      }
      t->pending.append(data, bytes);
      t->owner->m_dirty.push_back(t->id);
      return bytes;
    }
    if (t->max_body > 0 && t->body.size() + bytes > t->max_body) {
      t->too_large = true;
      return 0;  // aborts with CURLE_WRITE_ERROR
    }
    t->body.append(data, bytes);
    return bytes;
  }

  static size_t on_read(char* out, size_t size, size_t n, void* user) {
    size_t given = CURL_READFUNC_ABORT;
    guarded("HTTP client upload", [&] {
      auto* t = static_cast<Transfer*>(user);
      auto got = t->request.upload->read_at(t->upload_offset, out, size * n);
      if (!got) return;
      t->upload_offset += *got;
      given = *got;
    });
    return given;
  }

  static size_t on_header(char* data, size_t size, size_t n, void* user) {
    size_t taken = 0;  // an exception aborts the transfer
    guarded("HTTP client header",
            [&] { taken = take_header(static_cast<Transfer*>(user), data, size * n); });
    return taken;
  }

  static size_t take_header(Transfer* t, char* data, size_t bytes) {
    std::string_view line(data, bytes);
    if (line.starts_with("HTTP/")) {
      t->response_headers.clear();  // a new response (after 100 Continue)
      return bytes;
    }
    if (line == "\r\n" || line == "\n") {
      // The end of a head; a final one (not 1xx) starts the answer.
      long status = 0;
      curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
      if (status >= 200 && !t->head_done) {
        t->head_done = true;
        if (t->mode == Transfer::Mode::undecided) t->owner->m_dirty.push_back(t->id);
      }
      return bytes;
    }
    const auto colon = line.find(':');
    if (colon == std::string_view::npos) return bytes;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
      value.remove_prefix(1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
      value.remove_suffix(1);
    t->response_headers.emplace_back(ascii_lower(line.substr(0, colon)), std::string(value));
    return bytes;
  }

  static int on_timer_change(CURLM*, long timeout_ms, void* user) {
    int rc = -1;
    guarded("HTTP client timer change", [&] {
      auto* self = static_cast<Impl*>(user);
      if (timeout_ms < 0) {
        self->m_timer.stop();
      } else {
        // Even 0 goes through the loop: never call libcurl from inside its
        // own timer callback.
        self->m_timer.start(static_cast<std::uint64_t>(timeout_ms), 0,
                            [self] { self->on_timeout(); });
      }
      rc = 0;
    });
    return rc;
  }

  void on_timeout() {
    int running = 0;
    curl_multi_socket_action(m_multi, CURL_SOCKET_TIMEOUT, 0, &running);
    deliver();
    drain();
  }

  static int on_socket(CURL*, curl_socket_t fd, int what, void* user, void* socketp) {
    int rc = -1;
    guarded("HTTP client socket", [&] {
      rc = static_cast<Impl*>(user)->watch(fd, what, static_cast<SocketContext*>(socketp));
    });
    return rc;
  }

  int watch(curl_socket_t fd, int what, SocketContext* ctx) {
    if (what == CURL_POLL_REMOVE) {
      if (ctx != nullptr) {
        // The poll handle may be the one whose callback is running; its
        // memory goes in its close callback.
        delete ctx;
        if (m_multi != nullptr) curl_multi_assign(m_multi, fd, nullptr);
      }
      return 0;
    }
    if (ctx == nullptr) {
      auto poll = Poll::create_socket(m_loop, fd);
      if (!poll) return -1;
      ctx = new SocketContext{std::move(*poll)};
      curl_multi_assign(m_multi, fd, ctx);
    }
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
    // The client owns the context and the context its poll handle: when the
    // callback runs, the client is alive.
    return ctx->poll.start(events, [this, fd](int status, int ev) { on_ready(fd, status, ev); }) ==
                   0
               ? 0
               : -1;
  }

  void on_ready(curl_socket_t fd, int status, int ev) {
    int flags = 0;
    if (status < 0) {
      flags = CURL_CSELECT_ERR;
    } else {
      if ((ev & UV_READABLE) != 0) flags |= CURL_CSELECT_IN;
      if ((ev & UV_WRITABLE) != 0) flags |= CURL_CSELECT_OUT;
    }
    int running = 0;
    curl_multi_socket_action(m_multi, fd, flags, &running);
    deliver();
    drain();
  }

  // Hands finished transfers to their callbacks.
  void drain() {
    int pending = 0;
    while (m_multi != nullptr) {
      CURLMsg* msg = curl_multi_info_read(m_multi, &pending);
      if (msg == nullptr) break;
      if (msg->msg != CURLMSG_DONE) continue;
      Transfer* raw = nullptr;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &raw);
      const CURLcode code = msg->data.result;
      long status = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
      const std::uint64_t id = raw->id;
      if (raw->mode != Transfer::Mode::collect) {
        // What a streamed answer still holds goes out before the end.
        deliver_one(id);
        if (Transfer* s = find(id);
            s != nullptr && s->mode == Transfer::Mode::stream && !s->pending.empty()) {
          const std::string rest = std::move(s->pending);
          s->pending.clear();
          s->request.on_data(rest);
        }
      }
      auto t = take(id);
      if (!t || !t->done) continue;
      if (code != CURLE_OK) {
        t->done(std::unexpected(transfer_error(code, *t)));
        continue;
      }
      HttpResponse r;
      r.status = status;
      r.headers = std::move(t->response_headers);
      r.body = Secret::adopt(std::move(t->body));
      t->done(std::move(r));
    }
  }

 private:
  Loop& m_loop;
  HttpClientOptions m_options;
  CURLM* m_multi = nullptr;
  Timer m_timer;  // libcurl's one timeout
  std::map<std::uint64_t, std::unique_ptr<Transfer>> m_transfers;
  std::map<std::uint64_t, Timer> m_failures;  // fail_later: errors reported on the next loop turn
  std::uint64_t m_next_id = 1;
  std::vector<std::uint64_t> m_dirty;  // streamed transfers with something to hand over
};

HttpClient::HttpClient(Loop& loop, HttpClientOptions options)
    : m_impl(std::make_unique<Impl>(loop, std::move(options))) {}
HttpClient::~HttpClient() = default;
std::uint64_t HttpClient::start(HttpRequest request, Callback done) {
  return m_impl->start(std::move(request), std::move(done));
}
void HttpClient::cancel(std::uint64_t id) {
  m_impl->cancel(id);
}
void HttpClient::resume(std::uint64_t id) {
  m_impl->resume(id);
}
void HttpClient::close() {
  m_impl->close();
}
std::size_t HttpClient::in_flight() const {
  return m_impl->in_flight();
}

}  // namespace tokend::net
