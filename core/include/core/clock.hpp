// Time as an injected dependency. Timers run on the monotonic clock;
// validity is judged on the wall clock. Decision code takes a Clock& (or the
// time points themselves) and never calls the system directly, so tests drive
// time with FakeClock.
#pragma once

#include <chrono>
#include <cstdint>

namespace tokend {

using WallTime = std::chrono::system_clock::time_point;
using MonoTime = std::chrono::steady_clock::time_point;
using Millis = std::chrono::milliseconds;

class Clock {
 public:
  virtual ~Clock() = default;
  [[nodiscard]] virtual WallTime wall_now() const = 0;
  [[nodiscard]] virtual MonoTime mono_now() const = 0;
};

class SystemClock final : public Clock {
 public:
  [[nodiscard]] WallTime wall_now() const override;
  [[nodiscard]] MonoTime mono_now() const override;
};

// Starts at a fixed, realistic wall time. advance() moves both clocks;
// jump_wall() moves only the wall clock (NTP step, manual change); suspend()
// moves the wall clock while the monotonic clock stands still, which is what
// CLOCK_MONOTONIC does across a system suspend on Linux.
class FakeClock final : public Clock {
 public:
  FakeClock();
  explicit FakeClock(WallTime start);

  [[nodiscard]] WallTime wall_now() const override { return m_wall; }
  [[nodiscard]] MonoTime mono_now() const override { return m_mono; }

  void advance(Millis d) {
    m_wall += d;
    m_mono += d;
  }
  void jump_wall(Millis d) { m_wall += d; }
  void suspend(Millis d) { m_wall += d; }

 private:
  WallTime m_wall;
  MonoTime m_mono;
};

// Unix milliseconds, the representation used on disk and on the wire.
std::int64_t to_unix_ms(WallTime t) noexcept;
WallTime from_unix_ms(std::int64_t ms) noexcept;

}  // namespace tokend
