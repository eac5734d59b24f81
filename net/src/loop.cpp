#include "net/loop.hpp"

#include <spdlog/spdlog.h>

#include "core/guard.hpp"

#include <fmt/format.h>

namespace tokend::net {

namespace {

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

int Loop::run() { return uv_run(&m_loop, UV_RUN_DEFAULT); }

void Loop::stop() noexcept { uv_stop(&m_loop); }

int Loop::close() {
  // Let pending close callbacks run (they free handle memory).
  uv_run(&m_loop, UV_RUN_DEFAULT);
  const int rc = uv_loop_close(&m_loop);
  if (rc == 0) m_closed = true;
  return rc;
}

std::uint64_t Loop::now_ms() const noexcept { return uv_now(&m_loop); }

Result<Timer> Timer::create(Loop& loop) {
  auto* b = new detail::Block<uv_timer_t, TimerState>();
  if (const int rc = uv_timer_init(loop.get(), &b->uv); rc != 0) {
    delete b;
    return std::unexpected(uv_error(rc, "creating a timer"));
  }
  b->uv.data = b;
  return Timer(b);
}

void Timer::start(std::uint64_t timeout_ms, std::uint64_t repeat_ms, std::function<void()> cb) {
  m_block->state.on_fire = std::move(cb);
  uv_timer_start(
      &m_block->uv,
      [](uv_timer_t* t) {
        auto* b = static_cast<detail::Block<uv_timer_t, TimerState>*>(t->data);
        guarded("timer", [&] {
          if (b->state.on_fire) b->state.on_fire();
        });
      },
      timeout_ms, repeat_ms);
}

void Timer::stop() noexcept {
  if (m_block != nullptr) uv_timer_stop(&m_block->uv);
}

Result<Signal> Signal::create(Loop& loop) {
  auto* b = new detail::Block<uv_signal_t, SignalState>();
  if (const int rc = uv_signal_init(loop.get(), &b->uv); rc != 0) {
    delete b;
    return std::unexpected(uv_error(rc, "creating a signal handler"));
  }
  b->uv.data = b;
  return Signal(b);
}

Result<> Signal::start(int signum, std::function<void(int)> cb) {
  m_block->state.on_signal = std::move(cb);
  const int rc = uv_signal_start(
      &m_block->uv,
      [](uv_signal_t* s, int sig) {
        auto* b = static_cast<detail::Block<uv_signal_t, SignalState>*>(s->data);
        guarded("signal", [&] {
          if (b->state.on_signal) b->state.on_signal(sig);
        });
      },
      signum);
  if (rc != 0) return std::unexpected(uv_error(rc, "installing a signal handler"));
  return {};
}

void Signal::stop() noexcept {
  if (m_block != nullptr) uv_signal_stop(&m_block->uv);
}

}  // namespace tokend::net
