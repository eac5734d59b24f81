// RAII for the libuv loop and its handles.
//
// A handle's memory lives in a heap block that is freed only in its close
// callback (libuv may still touch it until then). close() is idempotent and
// runs on destruction. Callbacks are std::function and run on the loop thread;
// exceptions never cross into libuv (the trampolines are noexcept and log).
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>

#include "core/error.hpp"

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
};

template <class Uv, class State>
class Owned {
 public:
  Owned() = default;
  explicit Owned(Block<Uv, State>* b) : m_block(b) {}
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

  void close() noexcept {
    if (m_block == nullptr) return;
    auto* h = reinterpret_cast<uv_handle_t*>(&m_block->uv);
    // The state (and any callback currently running) dies with the block in
    // the close callback, so a handle may close itself from its own callback.
    if (!uv_is_closing(h)) {
      uv_close(h, [](uv_handle_t* handle) { delete static_cast<Block<Uv, State>*>(handle->data); });
    }
    m_block = nullptr;
  }
  [[nodiscard]] bool valid() const noexcept { return m_block != nullptr; }

 protected:
  Block<Uv, State>* m_block = nullptr;
};

}  // namespace detail

struct TimerState {
  std::function<void()> on_fire;
};

class Timer : public detail::Owned<uv_timer_t, TimerState> {
 public:
  static Result<Timer> create(Loop& loop);
  // repeat_ms 0: one shot.
  void start(std::uint64_t timeout_ms, std::uint64_t repeat_ms, std::function<void()> cb);
  void stop() noexcept;

 private:
  using Owned::Owned;
};

struct SignalState {
  std::function<void(int)> on_signal;
};

class Signal : public detail::Owned<uv_signal_t, SignalState> {
 public:
  static Result<Signal> create(Loop& loop);
  Result<> start(int signum, std::function<void(int)> cb);
  void stop() noexcept;

 private:
  using Owned::Owned;
};

}  // namespace tokend::net
