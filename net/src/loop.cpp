#include "net/loop.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <stdexcept>
#include <utility>

#include "core/secret.hpp"

namespace tokend::net {

namespace {

// The block of a handle's callback (handle->data, set by make_block).
template <class Owner>
typename Owner::BlockType* block(const void* handle) {
  return static_cast<typename Owner::BlockType*>(static_cast<const uv_handle_t*>(handle)->data);
}

// A queued write and its bytes, freed in its callback.
struct WriteRequest {
  uv_write_t req{};
  std::string data;
  std::function<void(int)> done;
  bool wipe = false;  // the bytes hold a secret
  WriteRequest() = default;
  WriteRequest(const WriteRequest&) = delete;
  WriteRequest& operator=(const WriteRequest&) = delete;
  ~WriteRequest() {
    if (wipe) secure_wipe(data);
  }
};

struct ShutdownRequest {
  uv_shutdown_t req{};
  std::function<void(int)> done;
};

}  // namespace

Error uv_error(int rc, std::string_view what) {
  return Error{Errc::io, fmt::format("{}: {}", what, uv_strerror(rc))};
}

Loop::Loop() {
  // uv_loop_init only fails on resource exhaustion at start-up.
  if (const int rc = uv_loop_init(&m_loop); rc != 0) {
    throw std::runtime_error(fmt::format("uv_loop_init: {}", uv_strerror(rc)));
  }
}

Loop::~Loop() {
  if (!m_closed) (void)close();
}

int Loop::run() {
  return uv_run(&m_loop, UV_RUN_DEFAULT);
}

void Loop::stop() noexcept {
  uv_stop(&m_loop);
}

int Loop::close() {
  // Let pending close callbacks run (they free handle memory).
  uv_run(&m_loop, UV_RUN_DEFAULT);
  const int rc = uv_loop_close(&m_loop);
  if (rc == 0) m_closed = true;
  return rc;
}

std::uint64_t Loop::now_ms() const noexcept {
  return uv_now(&m_loop);
}

// ---------------------------------------------------------------------------
// Timer

Result<Timer> Timer::create(Loop& loop) {
  auto b = make_block();
  if (const int rc = uv_timer_init(loop.get(), &b->uv); rc != 0) {
    return std::unexpected(uv_error(rc, "creating a timer"));
  }
  return Timer(b.release());
}

void Timer::start(std::uint64_t timeout_ms, std::uint64_t repeat_ms, std::function<void()> cb) {
  if (m_block == nullptr) return;
  m_block->state.on_fire = std::move(cb);
  uv_timer_start(
      &m_block->uv,
      [](uv_timer_t* t) { detail::call_slot("timer", block<Timer>(t)->state.on_fire); }, timeout_ms,
      repeat_ms);
}

void Timer::stop() noexcept {
  if (m_block != nullptr) uv_timer_stop(&m_block->uv);
}

bool Timer::active() const noexcept {
  return m_block != nullptr &&
         uv_is_active(reinterpret_cast<const uv_handle_t*>(&m_block->uv)) != 0;
}

// ---------------------------------------------------------------------------
// Signal

Result<Signal> Signal::create(Loop& loop) {
  auto b = make_block();
  if (const int rc = uv_signal_init(loop.get(), &b->uv); rc != 0) {
    return std::unexpected(uv_error(rc, "creating a signal handler"));
  }
  return Signal(b.release());
}

Result<> Signal::start(int signum, std::function<void(int)> cb) {
  if (m_block == nullptr) return std::unexpected(uv_error(UV_EBADF, "installing a signal handler"));
  m_block->state.on_signal = std::move(cb);
  const int rc = uv_signal_start(
      &m_block->uv,
      [](uv_signal_t* s, int sig) {
        detail::call_slot("signal", block<Signal>(s)->state.on_signal, sig);
      },
      signum);
  if (rc != 0) return std::unexpected(uv_error(rc, "installing a signal handler"));
  return {};
}

void Signal::stop() noexcept {
  if (m_block != nullptr) uv_signal_stop(&m_block->uv);
}

// ---------------------------------------------------------------------------
// Stream, Pipe, Tcp

int Stream::listen(int backlog, std::function<void(int status)> on_connection) {
  if (m_block == nullptr) return UV_EBADF;
  m_block->state.on_connection = std::move(on_connection);
  return uv_listen(&m_block->uv.stream, backlog, [](uv_stream_t* s, int status) {
    detail::call_slot("accept", block<Stream>(s)->state.on_connection, status);
  });
}

int Stream::accept(Stream& client) {
  if (m_block == nullptr || client.m_block == nullptr) return UV_EBADF;
  return uv_accept(&m_block->uv.stream, &client.m_block->uv.stream);
}

int Stream::read_start(std::function<void(std::size_t, uv_buf_t*)> alloc,
                       std::function<void(ssize_t, const uv_buf_t*)> on_read) {
  if (m_block == nullptr) return UV_EBADF;
  m_block->state.alloc = std::move(alloc);
  m_block->state.on_read = std::move(on_read);
  return read_start();
}

int Stream::read_start() {
  if (m_block == nullptr) return UV_EBADF;
  return uv_read_start(
      &m_block->uv.stream,
      [](uv_handle_t* h, std::size_t suggested, uv_buf_t* buf) {
        *buf = uv_buf_init(nullptr, 0);
        detail::call_slot("read buffer", block<Stream>(h)->state.alloc, suggested, buf);
      },
      [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
        detail::call_slot("read", block<Stream>(s)->state.on_read, nread, buf);
      });
}

void Stream::read_stop() noexcept {
  if (m_block != nullptr) uv_read_stop(&m_block->uv.stream);
}

int Stream::try_write(std::string_view data) {
  if (m_block == nullptr) return UV_EBADF;
  uv_buf_t buf = uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
  return uv_try_write(&m_block->uv.stream, &buf, 1);
}

int Stream::try_write(std::string_view first, std::string_view second) {
  if (m_block == nullptr) return UV_EBADF;
  std::array<uv_buf_t, 2> bufs = {
      uv_buf_init(const_cast<char*>(first.data()), static_cast<unsigned>(first.size())),
      uv_buf_init(const_cast<char*>(second.data()), static_cast<unsigned>(second.size()))};
  return uv_try_write(&m_block->uv.stream, bufs.data(), 2);
}

int Stream::write(std::string data, std::function<void(int status)> done, bool wipe) {
  if (m_block == nullptr) return UV_EBADF;
  auto w = std::make_unique<WriteRequest>();
  w->wipe = wipe;
  w->data = std::move(data);
  w->done = std::move(done);
  w->req.data = w.get();
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  const int rc = uv_write(&w->req, &m_block->uv.stream, &buf, 1, [](uv_write_t* req, int status) {
    std::unique_ptr<WriteRequest> owned(static_cast<WriteRequest*>(req->data));
    detail::call_slot("write completion", owned->done, status);
  });
  if (rc == 0) (void)w.release();  // freed in its callback
  return rc;
}

int Stream::shutdown(std::function<void(int status)> done) {
  if (m_block == nullptr) return UV_EBADF;
  auto r = std::make_unique<ShutdownRequest>();
  r->done = std::move(done);
  r->req.data = r.get();
  const int rc = uv_shutdown(&r->req, &m_block->uv.stream, [](uv_shutdown_t* req, int status) {
    std::unique_ptr<ShutdownRequest> owned(static_cast<ShutdownRequest*>(req->data));
    detail::call_slot("shutdown completion", owned->done, status);
  });
  if (rc == 0) (void)r.release();  // freed in its callback
  return rc;
}

std::size_t Stream::write_queue_size() const noexcept {
  return m_block == nullptr ? 0 : uv_stream_get_write_queue_size(&m_block->uv.stream);
}

int Stream::fileno() const noexcept {
  uv_os_fd_t fd = -1;
  if (m_block == nullptr || uv_fileno(&m_block->uv.handle, &fd) != 0) return -1;
  return fd;
}

Result<Pipe> Pipe::create(Loop& loop) {
  auto b = make_block();
  if (const int rc = uv_pipe_init(loop.get(), &b->uv.pipe, 0); rc != 0) {
    return std::unexpected(uv_error(rc, "creating a Unix socket handle"));
  }
  return Pipe(b.release());
}

int Pipe::open(int fd) {
  return m_block == nullptr ? UV_EBADF : uv_pipe_open(&m_block->uv.pipe, fd);
}

Result<Tcp> Tcp::create(Loop& loop) {
  auto b = make_block();
  if (const int rc = uv_tcp_init(loop.get(), &b->uv.tcp); rc != 0) {
    return std::unexpected(uv_error(rc, "creating a TCP handle"));
  }
  return Tcp(b.release());
}

int Tcp::bind(const sockaddr* addr, unsigned flags) {
  return m_block == nullptr ? UV_EBADF : uv_tcp_bind(&m_block->uv.tcp, addr, flags);
}

Result<std::uint16_t> Tcp::local_port() const {
  sockaddr_storage bound{};
  int len = sizeof bound;
  const int rc = m_block == nullptr ? UV_EBADF
                                    : uv_tcp_getsockname(&m_block->uv.tcp,
                                                         reinterpret_cast<sockaddr*>(&bound), &len);
  if (rc != 0) return std::unexpected(uv_error(rc, "reading the local port"));
  if (bound.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
  return ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
}

int Tcp::nodelay(bool on) {
  return m_block == nullptr ? UV_EBADF : uv_tcp_nodelay(&m_block->uv.tcp, on ? 1 : 0);
}

// ---------------------------------------------------------------------------
// Poll

Result<Poll> Poll::create_socket(Loop& loop, uv_os_sock_t socket) {
  auto b = make_block();
  if (const int rc = uv_poll_init_socket(loop.get(), &b->uv, socket); rc != 0) {
    return std::unexpected(uv_error(rc, "watching a socket"));
  }
  return Poll(b.release());
}

int Poll::start(int events, std::function<void(int status, int events)> cb) {
  if (m_block == nullptr) return UV_EBADF;
  m_block->state.on_event = std::move(cb);
  return uv_poll_start(&m_block->uv, events, [](uv_poll_t* p, int status, int ev) {
    detail::call_slot("poll", block<Poll>(p)->state.on_event, status, ev);
  });
}

void Poll::stop() noexcept {
  if (m_block != nullptr) uv_poll_stop(&m_block->uv);
}

// ---------------------------------------------------------------------------
// Process

Result<Process> Process::spawn(
    Loop& loop, uv_process_options_t options,
    std::function<void(std::int64_t exit_status, int term_signal)> on_exit) {
  auto b = make_block();
  b->state.on_exit = std::move(on_exit);
  options.exit_cb = [](uv_process_t* p, std::int64_t status, int signal) {
    detail::call_slot("process exit", block<Process>(p)->state.on_exit, status, signal);
  };
  const int rc = uv_spawn(loop.get(), &b->uv, &options);
  // Spawned or not, the handle is initialised and must be closed.
  Process process(b.release());
  if (rc != 0) return std::unexpected(uv_error(rc, "starting a process"));
  return process;
}

int Process::kill(int signum) noexcept {
  return m_block == nullptr ? UV_ESRCH : uv_process_kill(&m_block->uv, signum);
}

int Process::pid() const noexcept {
  return m_block == nullptr ? 0 : m_block->uv.pid;
}

}  // namespace tokend::net
