#include "connection.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>

#include <functional>
#include <map>
#include <vector>

#include "core/guard.hpp"
#include "core/secret.hpp"
#include "listener.hpp"

namespace tokend::ipc {

namespace {

// A large body is kept in memory up to this, then in a spool.
constexpr std::size_t k_spool_threshold = 1024 * 1024;
// A framed stream's producer hears "drained" once the queue is below this.
constexpr std::size_t k_stream_low_water = 64 * 1024;

}  // namespace

class StreamImpl final : public Stream {
 public:
  explicit StreamImpl(std::weak_ptr<Connection> c) : m_conn(std::move(c)) {}
  bool send(std::string_view bytes) override {
    auto c = m_conn.lock();
    return c && !c->is_closed() && c->stream_send(bytes);
  }
  [[nodiscard]] bool open() const override {
    auto c = m_conn.lock();
    return c && !c->is_closed() && !m_closed_fired;
  }
  [[nodiscard]] std::size_t queued() const override {
    auto c = m_conn.lock();
    return c && !c->is_closed() ? c->queued() : 0;
  }
  void on_drained(std::function<void()> cb) override {
    m_on_drained = std::move(cb);
    if (auto c = m_conn.lock()) c->check_drained_soon();
  }
  void on_close(std::function<void()> cb) override { m_on_close.push_back(std::move(cb)); }
  void finish() override {
    if (auto c = m_conn.lock()) c->stream_finish();
  }
  void close() override {
    if (auto c = m_conn.lock()) c->close_after_flush();
  }
  // The connection's write queue ran low.
  void fire_drained() {
    if (auto cb = std::move(m_on_drained)) {
      m_on_drained = nullptr;
      guarded("stream drained callback", cb);
    }
  }
  [[nodiscard]] bool wants_drained() const { return static_cast<bool>(m_on_drained); }
  void fire_closed() {
    if (m_closed_fired) return;
    m_closed_fired = true;
    auto cbs = std::move(m_on_close);
    for (auto& cb : cbs) guarded("stream close callback", cb);
  }

 private:
  std::weak_ptr<Connection> m_conn;
  std::vector<std::function<void()>> m_on_close;
  std::function<void()> m_on_drained;
  bool m_closed_fired = false;
};

class ExchangeImpl final : public Exchange {
 public:
  ExchangeImpl(std::weak_ptr<Connection> c, Request r, Peer p)
      : m_conn(std::move(c)), m_request(std::move(r)), m_peer(std::move(p)) {}
  [[nodiscard]] const Request& request() const override { return m_request; }
  [[nodiscard]] const Peer& peer() const override { return m_peer; }
  [[nodiscard]] std::string_view param(std::string_view name) const override {
    for (const auto& [k, v] : m_params) {
      if (k == name) return v;
    }
    return {};
  }
  void respond(Response response) override {
    if (m_answered) return;
    m_answered = true;
    if (auto c = m_conn.lock()) c->respond(this, std::move(response));
  }
  std::shared_ptr<Stream> start_stream(int status, Headers headers,
                                       StreamFraming framing) override {
    if (m_answered) return nullptr;
    m_answered = true;
    auto c = m_conn.lock();
    if (!c) return nullptr;
    return c->start_stream(this, status, headers, framing);
  }
  [[nodiscard]] bool pending() const override {
    auto c = m_conn.lock();
    return !m_answered && c && !c->is_closed();
  }
  void on_abandon(std::function<void()> cb) override { m_on_abandon.push_back(std::move(cb)); }
  void abandon() {
    if (m_answered) return;
    m_answered = true;
    auto cbs = std::move(m_on_abandon);
    for (auto& cb : cbs) guarded("abandon callback", cb);
  }

  Router::Params m_params;

 private:
  std::weak_ptr<Connection> m_conn;
  Request m_request;
  Peer m_peer;
  bool m_answered = false;
  std::vector<std::function<void()>> m_on_abandon;
};

// ---------------------------------------------------------------------------
// Connection

Connection::Connection(std::shared_ptr<Listener> listener, net::Stream io, Peer peer,
                       std::unique_ptr<TlsSession> tls)
    : m_listener(*listener),
      m_keep_listener(std::move(listener)),
      m_peer(std::move(peer)),
      m_io(std::move(io)),
      m_tls(std::move(tls)),
      m_decoder([&router = m_listener.router()](std::string_view method, std::string_view path) {
        return router.match(method, path).large_body;
      }) {}

Result<> Connection::init() {
  auto timer = net::Timer::create(m_listener.loop());
  if (!timer) return std::unexpected(timer.error());
  m_timer = std::move(*timer);
  return {};
}

void Connection::start() {
  m_counted = true;
  ++m_listener.stats().open_connections;
  resume_reading();
}

void Connection::await_request() {
  // A TLS handshake has the request timeout to complete (slow handshakes
  // hold a connection slot as slow requests do).
  arm_timer(m_tls ? m_listener.limits().request_timeout : m_listener.limits().idle_timeout);
}

void Connection::refuse(int status, std::string_view message) {
  // After a protocol error the byte stream cannot be trusted: answer, close.
  m_decoder.reset();
  m_inbuf.clear();
  m_state = State::busy;
  auto ex = std::make_shared<ExchangeImpl>(weak_from_this(), Request{}, m_peer);
  m_current = ex;
  ex->respond(codec::refusal_answer(status, message));
}

void Connection::check_drained_soon() {
  arm_timer(std::chrono::milliseconds{0});
  m_timer_checks_drained = true;
}

codec::DecodeLimits Connection::decode_limits() const {
  const auto& l = m_listener.limits();
  return {.max_header_bytes = l.max_header_bytes,
          .max_body_bytes = l.max_body_bytes,
          .max_upload_bytes = l.max_upload_bytes,
          .spool_threshold = k_spool_threshold};
}

void Connection::resume_reading() {
  if (m_reading || is_closed()) return;
  const int rc = m_io.read_start(
      [this](std::size_t, uv_buf_t* buf) {
        auto& shared = m_listener.read_buffer();
        if (shared.in_use) {
          buf->base = nullptr;
          buf->len = 0;
          return;
        }
        shared.in_use = true;
        buf->base = shared.data.get();
        buf->len = ReadBuffer::k_bytes;
      },
      [this](ssize_t nread, const uv_buf_t* buf) {
        auto& shared = m_listener.read_buffer();
        if (buf->base == shared.data.get()) shared.in_use = false;
        auto keep = shared_from_this();
        on_read(nread, buf);
      });
  m_reading = rc == 0;
}

void Connection::maybe_pause_reading() {
  const std::size_t queued = m_io.write_queue_size();
  const auto& limits = m_listener.limits();
  const bool too_much_input = m_inbuf.size() > limits.max_header_bytes + limits.max_body_bytes;
  // A lingering connection discards its input: it must keep reading, or it
  // would not see the peer's close and would hold its slot until the timer.
  if (m_state == State::lingering) return;
  if (m_reading && (queued > limits.max_write_queue_bytes || too_much_input)) {
    m_io.read_stop();
    m_reading = false;
  }
}

bool Connection::peer_gone() {
  const int fd = m_io.fileno();
  if (fd < 0) return true;
  pollfd pfd{fd, POLLOUT, 0};
  return ::poll(&pfd, 1, 0) == 1 && (pfd.revents & (POLLHUP | POLLERR)) != 0;
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread == 0) return;
  if (nread < 0) {
    on_end(nread);
    return;
  }
  const std::string_view bytes(buf->base, static_cast<std::size_t>(nread));
  if (m_tls) {
    on_cipher(bytes);
  } else {
    on_bytes(bytes);
  }
}

void Connection::on_end(ssize_t nread) {
  if (handshake_unfinished()) {
    ++m_listener.stats().tls_failed_closed;
    m_tls_failed = true;
  }
  {
    if (nread == UV_EOF && m_state == State::busy) {
      // Half-closed after sending a request: it still wants the answer. A
      // peer that closed altogether (exited) does not: its exchange is
      // abandoned now, so a request waiting up to an hour for a login does
      // not hold a connection slot for a caller that has gone.
      if (peer_gone()) {
        close();
        return;
      }
      m_peer_eof = true;
      return;
    }
    if (nread == UV_EOF && m_pending_writes > 0 && m_state != State::streaming) {
      close_after_flush();
      return;
    }
    close();
  }
}

void Connection::on_bytes(std::string_view bytes) {
  if (m_state == State::lingering) return;  // discarding until the peer closes
  if (m_state == State::streaming && m_framing.kind != StreamFraming::Kind::close) {
    // A pipelined request behind a framed stream waits for the stream's end.
    m_inbuf.append(bytes);
    maybe_pause_reading();
    return;
  }
  if (m_state == State::closing || m_state == State::closed || m_state == State::streaming) return;
  m_inbuf.append(bytes);
  pump();
  maybe_pause_reading();
}

void Connection::on_cipher(std::string_view bytes) {
  if (m_tls_failed || is_closed()) return;  // discarding until the peer closes
  if (!m_tls->established()) {
    // A TLS record starts with its content type (22, a handshake): a letter
    // is someone speaking plain HTTP to the TLS port.
    if (m_state == State::idle && !bytes.empty() && bytes.front() >= 'A' && bytes.front() <= 'Z') {
      refuse_plaintext();
      return;
    }
    m_tls->feed(bytes);
    const auto step = m_tls->handshake();
    flush_tls();
    if (step == TlsSession::Handshake::more) return;
    if (step == TlsSession::Handshake::failed) {
      spdlog::info("TLS handshake failed (peer {}): {}", m_peer.address, m_tls->error());
      auto& stats = m_listener.stats();
      ++(m_tls->client_cert_rejected() ? stats.tls_failed_client_cert : stats.tls_failed_protocol);
      m_tls_failed = true;
      close_after_flush();
      return;
    }
    m_peer.tls = true;
    m_peer.client_cert_names = m_tls->client_cert_names();
    auto& stats = m_listener.stats();
    ++stats.tls_handshakes_ok;
    if (m_tls->has_verified_client_cert()) ++stats.tls_handshakes_ok_client_cert;
    ++stats.tls_connections_open;
    m_tls_counted_open = true;
    // The handshake took what was fed; records that came with its last
    // flight are read below.
    arm_timer(m_listener.limits().idle_timeout);
  } else {
    m_tls->feed(bytes);
  }
  std::string plain;
  const auto status = m_tls->read(plain);
  flush_tls();
  if (!plain.empty()) on_bytes(plain);
  secure_wipe(plain);
  if (status == TlsSession::Status::closed) {
    on_end(UV_EOF);  // close_notify: the peer's end of the stream
  } else if (status == TlsSession::Status::failed) {
    spdlog::info("TLS record error (peer {}): {}", m_peer.address, m_tls->error());
    m_tls_failed = true;
    close();
  }
}

void Connection::refuse_plaintext() {
  m_tls_failed = true;
  ++m_listener.stats().tls_plaintext_refused;
  m_state = State::busy;
  ++m_listener.stats().responses_by_status[400];
  write_raw(codec::encode_response(
                codec::refusal_answer(400, "this port speaks HTTPS: use https:// to reach it"), 11,
                false),
            false);
  finish_response(true);
}

void Connection::pump() {
  // Answers to pipelined requests call back into pump() (respond ->
  // finish_response); the running loop picks up the next request instead,
  // so the stack does not grow with the number of pipelined requests.
  if (m_pumping) return;
  m_pumping = true;
  struct Reset {
    bool& flag;
    ~Reset() { flag = false; }
  } reset{m_pumping};
  while ((m_state == State::idle || m_state == State::reading) && !m_inbuf.empty()) {
    if (m_state == State::idle) {
      m_state = State::reading;
      arm_timer(m_listener.limits().request_timeout);
    }
    auto decoded = m_decoder.decode(m_inbuf, decode_limits());
    if (decoded.kind == codec::Decoded::Kind::refused) {
      refuse(decoded.refusal.status, decoded.refusal.message);
      return;
    }
    if (decoded.kind == codec::Decoded::Kind::need_more) {
      // A large upload arrives over many reads: it gets the request timeout
      // per read, not for the whole body.
      if (m_decoder.large_body()) arm_timer(m_listener.limits().request_timeout);
      break;
    }
    dispatch(std::move(decoded.request));
  }
  if (m_state == State::idle && m_inbuf.empty()) arm_timer(m_listener.limits().idle_timeout);
}

void Connection::dispatch(Request&& req) {
  m_state = State::busy;
  m_deadline_armed = false;  // a busy exchange has no timeout
  ++m_listener.stats().requests;

  // Validate and route first; the exchange is built once, with the final request.
  std::optional<Response> early;
  Router::Match match;
  if (m_listener.draining()) {
    early = Response::error(503, "shutting_down", "tokend is shutting down");
    early->close = true;
  } else {
    early = codec::resolve_target(req);
  }
  if (!early) {
    match = m_listener.router().match(req.method, req.path);
    if (match.handler == nullptr) early = codec::no_route_answer(req.method, match.allowed);
  }

  auto ex = std::make_shared<ExchangeImpl>(weak_from_this(), std::move(req), m_peer);
  m_current = ex;
  if (early) {
    ex->respond(std::move(*early));
    return;
  }
  ex->m_params = std::move(match.params);
  try {
    (*match.handler)(ex);
  } catch (const std::exception& e) {
    spdlog::error("handler failed: {}", e.what());
    ex->respond(Response::error(500, "internal", "internal error"));
  }
}

void Connection::respond(ExchangeImpl* ex, Response response) {
  if (m_current.get() != ex || m_state != State::busy) return;
  const auto hold = std::move(m_current);  // keeps `ex` alive to the end of this call
  const bool close = response.close || !ex->request().keep_alive || m_listener.draining();
  ++m_listener.stats().responses_by_status[response.status];
  m_head.clear();
  codec::encode_head(response, ex->request().version, !close, m_head);
  write_answer(response);
  finish_response(close);
}

// The head (in m_head, which keeps its capacity from answer to answer) and the
// body go out in one writev, without being copied together first; only what
// the socket did not take is copied into the write queue.
void Connection::write_answer(Response& response) {
  const bool sensitive = response.sensitive;
  const std::string_view body =
      codec::bodiless(response.status) ? std::string_view() : std::string_view(response.body);
  if (m_tls) {  // both into the session's records, which go out together
    const bool ok = !is_closed() && !m_tls_failed && m_tls->write(m_head) && m_tls->write(body);
    if (sensitive) secure_wipe(response.body);
    if (!ok) {
      close();
      return;
    }
    flush_tls();
    return;
  }
  std::size_t written = 0;
  if (!is_closed() && m_pending_writes == 0) {
    const int n = m_io.try_write(m_head, body);
    if (n < 0 && n != UV_EAGAIN) {
      if (sensitive) secure_wipe(response.body);
      close();
      return;
    }
    written = n > 0 ? static_cast<std::size_t>(n) : 0;
  }
  if (is_closed() || written == m_head.size() + body.size()) {
    if (sensitive) secure_wipe(response.body);
    return;
  }
  std::string rest;
  rest.reserve(m_head.size() + body.size() - written);
  if (written < m_head.size()) rest.append(m_head, written);
  rest.append(body.substr(written > m_head.size() ? written - m_head.size() : 0));
  if (sensitive) secure_wipe(response.body);
  queue_write(std::move(rest), sensitive);
}

void Connection::finish_response(bool close) {
  if (close || m_peer_eof) {
    m_state = State::closing;
    m_close_after_write = true;
    if (m_pending_writes == 0) begin_linger();
    return;
  }
  m_state = State::idle;
  pump();
  resume_reading();
}

std::shared_ptr<Stream> Connection::start_stream(ExchangeImpl* ex, int status,
                                                 const Headers& headers, StreamFraming framing) {
  if (m_current.get() != ex || m_state != State::busy) return nullptr;
  const auto hold = std::move(m_current);
  const unsigned version = ex->request().version;
  framing = codec::framing_for(framing, version);
  m_framing = framing;
  m_stream_left = framing.length;
  m_stream_keep_alive = framing.kind != StreamFraming::Kind::close && ex->request().keep_alive &&
                        !m_listener.draining();
  ++m_listener.stats().responses_by_status[status];
  write(codec::encode_stream_head(status, headers, framing, version, m_stream_keep_alive));
  m_state = State::streaming;
  if (framing.kind == StreamFraming::Kind::close) m_inbuf.clear();
  m_stream = std::make_shared<StreamImpl>(weak_from_this());
  return m_stream;
}

bool Connection::stream_send(std::string_view bytes) {
  if (m_state != State::streaming) return false;
  const std::size_t queued_now = queued();
  if (m_framing.kind == StreamFraming::Kind::close) {
    // A subscriber that does not read gets cut off rather than buffered forever.
    if (queued_now > m_listener.limits().max_write_queue_bytes) {
      close();
      return false;
    }
    write(std::string(bytes));
    return true;
  }
  // Framed streams are paced by their producer; one that ignores the queue
  // is stopped well past the limit.
  if (queued_now > 4 * m_listener.limits().max_write_queue_bytes) {
    spdlog::warn("a streamed answer outran its reader by {} bytes; closing the connection",
                 queued_now);
    close();
    return false;
  }
  if (bytes.empty()) return true;
  if (m_framing.kind == StreamFraming::Kind::length) {
    if (bytes.size() > m_stream_left) {
      close();  // more than announced: the framing cannot be kept
      return false;
    }
    m_stream_left -= bytes.size();
    write(std::string(bytes));
    return true;
  }
  write(codec::encode_chunk(bytes));
  return true;
}

void Connection::stream_finish() {
  if (m_state != State::streaming) return;
  if (m_framing.kind == StreamFraming::Kind::close ||
      (m_framing.kind == StreamFraming::Kind::length && m_stream_left != 0)) {
    close_after_flush();  // close-delimited, or shorter than announced
    return;
  }
  if (m_framing.kind == StreamFraming::Kind::chunked) write(std::string(codec::k_last_chunk));
  m_stream.reset();
  m_framing = {};
  finish_response(!m_stream_keep_alive || m_listener.draining());
}

void Connection::check_drained() {
  if (m_state != State::streaming || !m_stream || !m_stream->wants_drained()) return;
  if (queued() <= k_stream_low_water) m_stream->fire_drained();
}

void Connection::close_after_flush() {
  if (is_closed() || m_state == State::closing || m_state == State::lingering) return;
  m_state = State::closing;
  m_close_after_write = true;
  if (m_pending_writes == 0) begin_linger();
}

void Connection::write(std::string data, bool sensitive) {
  if (m_tls) {
    const bool ok = !is_closed() && !m_tls_failed && m_tls->write(data);
    if (sensitive) secure_wipe(data);
    if (!ok) {
      close();
      return;
    }
    flush_tls();
    return;
  }
  write_raw(std::move(data), sensitive);
}

void Connection::flush_tls() {
  if (m_tls && m_tls->has_output()) write_raw(m_tls->take_output(), false);
}

void Connection::write_raw(std::string data, bool sensitive) {
  if (is_closed()) {
    if (sensitive) secure_wipe(data);
    return;
  }
  // Most answers fit the socket buffer: write them directly, with no request
  // object and no POLLOUT watcher to arm and disarm (one epoll_ctl saved per
  // request). Queue only what is left, behind anything already queued.
  if (m_pending_writes == 0) {
    const int n = m_io.try_write(data);
    if (n == static_cast<int>(data.size())) {
      if (sensitive) secure_wipe(data);
      return;
    }
    if (n > 0)
      data.erase(0, static_cast<std::size_t>(n));  // the wipe below covers the capacity
    else if (n != UV_EAGAIN) {
      if (sensitive) secure_wipe(data);
      close();
      return;
    }
  }
  queue_write(std::move(data), sensitive);
}

void Connection::queue_write(std::string data, bool sensitive) {
  ++m_pending_writes;
  // The write keeps a reference: the connection outlives its writes.
  const int rc = m_io.write(
      std::move(data), [self = shared_from_this()](int status) { self->on_write_done(status); },
      sensitive);
  if (rc != 0) {
    --m_pending_writes;
    close();
  }
}

void Connection::on_write_done(int status) {
  --m_pending_writes;
  if (status != 0) {
    close();
    return;
  }
  if (m_state == State::streaming) check_drained();
  if (m_close_after_write && m_pending_writes == 0 && m_state == State::closing) {
    begin_linger();
    return;
  }
  if (m_state == State::idle || m_state == State::reading) resume_reading();
}

void Connection::begin_linger() {
  if (is_closed()) return;
  // Half-close and discard what the peer still sends for a moment, so our
  // final answer is not destroyed by a reset from unread input.
  m_state = State::lingering;
  m_inbuf.clear();  // pipelined requests behind the closing answer are not served
  if (m_tls && !m_tls_failed) {
    m_tls->shutdown();  // close_notify, queued ahead of the socket's shutdown
    flush_tls();
    m_tls_failed = true;  // nothing more is read or written through it
    if (is_closed()) return;
  }
  if (m_io.shutdown() != 0) {
    close();
    return;
  }
  resume_reading();
  arm_timer(m_listener.limits().linger);
}

// The timer is re-armed only when the new deadline is earlier than the one it
// will fire at; a later deadline is picked up when it fires. A busy keep-alive
// connection moves its deadline on every request, and this keeps that off the
// loop's timer heap.
void Connection::arm_timer(std::chrono::milliseconds after) {
  if (is_closed()) return;
  m_timer_checks_drained = false;
  const std::uint64_t now = m_listener.loop().now_ms();
  m_deadline_ms = now + static_cast<std::uint64_t>(after.count());
  m_deadline_armed = true;
  if (!m_timer.active() || m_timer_due_ms > m_deadline_ms) start_timer(now);
}

void Connection::start_timer(std::uint64_t now) {
  m_timer_due_ms = m_deadline_ms;
  m_timer.start(m_deadline_ms - now, 0, [this] {
    auto keep = shared_from_this();
    on_timer();
  });
}

void Connection::on_timer() {
  if (m_timer_checks_drained) {
    m_timer_checks_drained = false;
    m_deadline_armed = false;  // the deadline was this check's
    check_drained();
    return;
  }
  if (!m_deadline_armed) return;
  const std::uint64_t now = m_listener.loop().now_ms();
  if (now < m_deadline_ms) {
    start_timer(now);  // the deadline moved on since the timer was started
    return;
  }
  m_deadline_armed = false;
  if (handshake_unfinished()) {
    ++m_listener.stats().tls_failed_timeout;
    m_tls_failed = true;
  }
  switch (m_state) {
    case State::reading:
      refuse(408, "request not received in time");
      break;
    case State::idle:
    case State::lingering:
    case State::closing:
      close();
      break;
    default:  // streams have no timeout
      break;
  }
}

void Connection::drain() {
  switch (m_state) {
    case State::idle:
    case State::reading:
    case State::lingering:
      close();
      break;
    case State::streaming:
      close_after_flush();
      break;
    default:
      break;  // busy: closes after its answer (respond sees m_draining)
  }
}

void Connection::close() {
  if (m_closing_handles) return;
  m_closing_handles = true;
  m_state = State::closed;
  if (auto ex = std::move(m_current)) ex->abandon();
  if (auto st = std::move(m_stream)) st->fire_closed();
  m_timer.close();
  // Once the socket's close callback runs (after its writes' callbacks), the
  // listener lets go of the connection. remove() may free the connection,
  // and with it the last reference to the listener's state.
  m_io.close([listener = m_keep_listener, this] { listener->remove(this); });
}
}  // namespace tokend::ipc
