// One accepted connection: bytes read → codec → router → an Exchange for the
// handler → the answer written back, in request order. It owns the
// connection's states (idle → reading → busy → idle, or streaming, or
// closing → lingering → closed), its timers, streamed answers, linger and
// close.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "codec.hpp"
#include "core/error.hpp"
#include "ipc/router.hpp"
#include "net/loop.hpp"
#include "tls_session.hpp"

namespace tokend::ipc {

class Listener;
class ExchangeImpl;
class StreamImpl;

// One read buffer for all of a listener's connections: each read is
// consumed before the loop starts the next one.
struct ReadBuffer {
  static constexpr std::size_t k_bytes = 64 * 1024;
  std::unique_ptr<char[]> data{new char[k_bytes]};
  bool in_use = false;
};

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  enum class State { idle, reading, busy, streaming, closing, lingering, closed };

  // `io` is the accepted socket, `peer` who is on its other end (nobody in
  // particular on a TCP listener). With `tls`, every byte read and written
  // goes through it, and requests are read once its handshake is done.
  Connection(std::shared_ptr<Listener> listener, net::Stream io, Peer peer,
             std::unique_ptr<TlsSession> tls = nullptr);

  // Creates the connection's timer.
  Result<> init();
  // Counts the connection as open and starts reading. Then exactly one of:
  void start();
  // waiting for the first request (the idle timeout runs), or
  void await_request();
  // answering `status` at once and closing.
  void refuse(int status, std::string_view message);

  // Drain: idle connections close, a stream ends, a busy one closes after
  // its answer.
  void drain();
  void close();

  [[nodiscard]] const Peer& peer() const { return m_peer; }
  [[nodiscard]] bool counted() const { return m_counted; }
  // Included in tls_connections_open (its handshake is done).
  [[nodiscard]] bool tls_counted_open() const { return m_tls_counted_open; }

  // For the connection's Exchange and Stream.
  void respond(ExchangeImpl* ex, Response response);
  std::shared_ptr<Stream> start_stream(ExchangeImpl* ex, int status, const Headers& headers,
                                       StreamFraming framing);
  bool stream_send(std::string_view bytes);
  void stream_finish();
  // Defers a drained check to the loop (never from inside the producer).
  void check_drained_soon();
  [[nodiscard]] std::size_t queued() const { return m_io.write_queue_size(); }
  void close_after_flush();
  [[nodiscard]] bool is_closed() const { return m_state == State::closed || m_closing_handles; }

 private:
  void resume_reading();
  void maybe_pause_reading();
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void on_end(ssize_t status);
  // Plaintext from the peer (decrypted first on a TLS connection).
  void on_bytes(std::string_view bytes);
  // Ciphertext from the peer: the handshake, then records.
  void on_cipher(std::string_view bytes);
  // The first bytes on a TLS port are a plaintext HTTP request: a plain 400.
  void refuse_plaintext();
  // After EOF: whether the peer closed both directions (POLLHUP), not just
  // its sending half.
  bool peer_gone();
  void pump();
  void dispatch(Request&& request);
  // sensitive: the bytes hold a secret; every copy is wiped once written.
  void write(std::string data, bool sensitive = false);
  void write_answer(Response& response);
  // Behind whatever is queued, through libuv's write requests.
  void queue_write(std::string data, bool sensitive);
  // Bytes as they go on the socket (the TLS session's records, or plaintext).
  void write_raw(std::string data, bool sensitive);
  void flush_tls();
  void on_write_done(int status);
  void finish_response(bool close);
  void begin_linger();
  void arm_timer(std::chrono::milliseconds after);
  void start_timer(std::uint64_t now);
  void on_timer();
  void check_drained();
  [[nodiscard]] codec::DecodeLimits decode_limits() const;

  Listener& m_listener;
  // The listener's state outlives its connections: the last close callback
  // may run after ~Server.
  std::shared_ptr<Listener> m_keep_listener;
  Peer m_peer;
  // A Unix socket or, on a loopback listener, a TCP connection. The
  // connection's memory is released in its close callback (the listener
  // holds it until then); callbacks of both handles may use `this`, since
  // the connection owns them.
  net::Stream m_io;
  net::Timer m_timer;
  std::unique_ptr<TlsSession> m_tls;
  bool m_tls_failed = false;  // no more records: no close_notify either
  bool m_tls_counted_open = false;
  // A TLS connection whose handshake neither finished nor failed yet.
  [[nodiscard]] bool handshake_unfinished() const {
    return m_tls && !m_tls_failed && !m_tls->established();
  }
  bool m_closing_handles = false;
  State m_state = State::idle;
  std::string m_inbuf;
  std::string m_head;  // the head of the answer being written (reused)
  codec::RequestDecoder m_decoder;
  std::shared_ptr<ExchangeImpl> m_current;
  std::shared_ptr<StreamImpl> m_stream;
  std::size_t m_pending_writes = 0;
  bool m_close_after_write = false;
  bool m_reading = false;
  bool m_counted = false;   // included in open_connections
  bool m_peer_eof = false;  // the peer half-closed while we owed an answer
  bool m_pumping = false;   // pump() is on the stack
  // The stream being sent and how its body is delimited.
  StreamFraming m_framing;
  std::uint64_t m_stream_left = 0;  // StreamFraming::Kind::length
  bool m_stream_keep_alive = false;
  // The timer is armed for a drained check, not a timeout: when it fires it
  // must not close a connection that has meanwhile begun to close (a stream
  // that finished with writes still queued would lose them).
  bool m_timer_checks_drained = false;
  bool m_deadline_armed = false;     // the state's timeout (idle, request, linger) applies
  std::uint64_t m_deadline_ms = 0;   // when it runs out, on the loop's clock
  std::uint64_t m_timer_due_ms = 0;  // when m_timer fires
};

}  // namespace tokend::ipc
