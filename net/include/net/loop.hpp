// RAII for the libuv loop and its handles: one move-only owner per handle
// type (Timer, Signal, Pipe, Tcp, Poll, Process), all built on detail::Owned.
//
// A handle's memory lives in a heap block that is freed only in its close
// callback (libuv may still touch it until then). close() is idempotent and
// runs on destruction. Callbacks are std::function and run on the loop thread;
// exceptions never cross into libuv (the trampolines run them through
// guarded(), which logs).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/error.hpp"
#include "core/guard.hpp"

namespace tokend::net {

class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  [[nodiscard]] uv_loop_t* get() noexcept { return &m_loop; }
  // Runs until no active handles remain or stop() is called.
  int run();
  void stop() noexcept;
  // Runs the loop until all closing handles are gone, then uv_loop_close().
  // Returns 0 when every handle was closed (the leak check tests assert).
  int close();
  // Loop time in ms (cached per iteration).
  [[nodiscard]] std::uint64_t now_ms() const noexcept;

 private:
  uv_loop_t m_loop{};
  bool m_closed = false;
};

Error uv_error(int rc, std::string_view what);

namespace detail {

// Heap block holding the uv handle and its callback state.
template <class Uv, class State>
struct Block {
  Uv uv{};
  State state{};
  // Runs in the close callback, just before the block is freed.
  std::function<void()> on_closed;
};

// Calls the callback in `slot` with the exception guard. The callback may
// replace itself (re-arm a timer, restart reading) or close its handle while
// it runs: it is moved out for the call and put back unless it was replaced.
template <class... Args>
void call_slot(const char* where, std::function<void(Args...)>& slot,
               std::type_identity_t<Args>... args) noexcept {
  auto cb = std::move(slot);
  slot = nullptr;
  guarded(where, [&] {
    if (cb) cb(args...);
  });
  if (!slot) slot = std::move(cb);
}

// The one owner of a libuv handle. The handle and its state live in a heap
// block that is freed only in the close callback, so a handle may be closed
// from inside its own callback, and the owner may be destroyed (or moved
// from) while libuv is still closing the handle.
template <class Uv, class State>
class Owned {
 public:
  using BlockType = Block<Uv, State>;

  Owned() = default;
  explicit Owned(BlockType* b) : m_block(b) {}
  Owned(Owned&& o) noexcept : m_block(o.m_block) { o.m_block = nullptr; }
  Owned& operator=(Owned&& o) noexcept {
    if (this != &o) {
      close();
      m_block = o.m_block;
      o.m_block = nullptr;
    }
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { close(); }

  // Idempotent. The state (and any callback currently running) dies with the
  // block in the close callback.
  void close() noexcept { close(nullptr); }
  // As close(); `on_closed` runs in the close callback (at once when there
  // is no handle), when libuv has let go of the handle and has called every
  // pending request's callback (writes end with UV_ECANCELED).
  void close(std::function<void()> on_closed) noexcept {
    if (m_block == nullptr) {
      if (on_closed) guarded("close callback", on_closed);
      return;
    }
    auto* h = reinterpret_cast<uv_handle_t*>(&m_block->uv);
    m_block->on_closed = std::move(on_closed);
    if (!uv_is_closing(h)) {
      uv_close(h, [](uv_handle_t* handle) {
        auto* b = static_cast<BlockType*>(handle->data);
        if (b->on_closed) guarded("close callback", b->on_closed);
        delete b;
      });
    }
    m_block = nullptr;
  }
  [[nodiscard]] bool valid() const noexcept { return m_block != nullptr; }

 protected:
  // Allocates a block whose handle the caller initialises (then `release`s
  // it into an owner, or deletes it when the init failed).
  static std::unique_ptr<BlockType> make_block() {
    auto b = std::make_unique<BlockType>();
    b->uv.data = b.get();
    return b;
  }

  BlockType* m_block = nullptr;
};

}  // namespace detail

struct TimerState {
  std::function<void()> on_fire;
};

class Timer : public detail::Owned<uv_timer_t, TimerState> {
 public:
  Timer() = default;
  static Result<Timer> create(Loop& loop);
  // repeat_ms 0: one shot. May be called from inside the callback; does
  // nothing on a closed timer.
  void start(std::uint64_t timeout_ms, std::uint64_t repeat_ms, std::function<void()> cb);
  void stop() noexcept;
  [[nodiscard]] bool active() const noexcept;

 private:
  using Owned::Owned;
};

struct SignalState {
  std::function<void(int)> on_signal;
};

class Signal : public detail::Owned<uv_signal_t, SignalState> {
 public:
  Signal() = default;
  static Result<Signal> create(Loop& loop);
  Result<> start(int signum, std::function<void(int)> cb);
  void stop() noexcept;

 private:
  using Owned::Owned;
};

// A stream handle: a Unix socket (Pipe) or a TCP socket (Tcp). The union
// lets one owner hold either, as a server's connections do.
union StreamHandle {
  uv_handle_t handle;
  uv_stream_t stream;
  uv_pipe_t pipe;
  uv_tcp_t tcp;
  void* data;  // the first member of every uv handle
};

struct StreamState {
  std::function<void(std::size_t suggested, uv_buf_t* buf)> alloc;
  std::function<void(ssize_t nread, const uv_buf_t* buf)> on_read;
  std::function<void(int status)> on_connection;
};

class Stream : public detail::Owned<StreamHandle, StreamState> {
 public:
  Stream() = default;

  // Calls on_connection for each connection waiting to be accepted (or with
  // an error status).
  int listen(int backlog, std::function<void(int status)> on_connection);
  // Takes a waiting connection into `client`, a fresh Pipe or Tcp.
  int accept(Stream& client);
  // `alloc` provides the buffer for the next read (len 0: UV_ENOBUFS), as
  // uv_alloc_cb; `on_read` gets it back, as uv_read_cb. The callbacks stay
  // for later read_start() calls.
  int read_start(std::function<void(std::size_t, uv_buf_t*)> alloc,
                 std::function<void(ssize_t, const uv_buf_t*)> on_read);
  int read_start();
  void read_stop() noexcept;
  // Writes what the socket takes now: the byte count, or a uv error.
  int try_write(std::string_view data);
  // Both, in one system call (writev): a head and the body after it.
  int try_write(std::string_view first, std::string_view second);
  // Queues `data` (kept until written). On 0, `done` runs exactly once with
  // the write's status (UV_ECANCELED when the handle closes first, before
  // its close callback); otherwise never. wipe: the bytes hold a secret and
  // are wiped when the request is freed, written or not.
  int write(std::string data, std::function<void(int status)> done, bool wipe = false);
  // Half-closes after the queued writes; `done` as for write().
  int shutdown(std::function<void(int status)> done = {});
  [[nodiscard]] std::size_t write_queue_size() const noexcept;
  // The socket's descriptor, or -1.
  [[nodiscard]] int fileno() const noexcept;

 protected:
  explicit Stream(BlockType* b) : Owned(b) {}
};

class Pipe : public Stream {
 public:
  Pipe() = default;
  static Result<Pipe> create(Loop& loop);
  // Adopts a socket (a listening one, or systemd's).
  int open(int fd);

 private:
  explicit Pipe(BlockType* b) : Stream(b) {}
};

class Tcp : public Stream {
 public:
  Tcp() = default;
  static Result<Tcp> create(Loop& loop);
  int bind(const sockaddr* addr, unsigned flags);
  // The bound local port.
  [[nodiscard]] Result<std::uint16_t> local_port() const;
  int nodelay(bool on);

 private:
  explicit Tcp(BlockType* b) : Stream(b) {}
};

struct PollState {
  std::function<void(int status, int events)> on_event;
};

// Readiness of a socket someone else reads and writes (libcurl's).
class Poll : public detail::Owned<uv_poll_t, PollState> {
 public:
  Poll() = default;
  static Result<Poll> create_socket(Loop& loop, uv_os_sock_t socket);
  // events: UV_READABLE | UV_WRITABLE. May be called from inside the callback.
  int start(int events, std::function<void(int status, int events)> cb);
  void stop() noexcept;

 private:
  using Owned::Owned;
};

struct ProcessState {
  std::function<void(std::int64_t exit_status, int term_signal)> on_exit;
};

// A child process. Closing the handle does not stop the child; kill() first.
class Process : public detail::Owned<uv_process_t, ProcessState> {
 public:
  Process() = default;
  // `options.exit_cb` is replaced: `on_exit` runs when the child exits,
  // unless the handle was closed first.
  static Result<Process> spawn(
      Loop& loop, uv_process_options_t options,
      std::function<void(std::int64_t exit_status, int term_signal)> on_exit);
  int kill(int signum) noexcept;
  [[nodiscard]] int pid() const noexcept;

 private:
  using Owned::Owned;
};

}  // namespace tokend::net
