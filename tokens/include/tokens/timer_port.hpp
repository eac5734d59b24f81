// The engine's one timer, behind an interface so tests drive it with a fake
// clock instead of sleeping.
#pragma once

#include <functional>
#include <optional>

#include "core/clock.hpp"
#include "net/loop.hpp"

namespace tokend::tokens {

class TimerPort {
 public:
  virtual ~TimerPort() = default;
  // (Re)arms the single timer for monotonic time `at`.
  virtual void arm(MonoTime at, std::function<void()> fire) = 0;
  virtual void disarm() = 0;
};

class UvTimerPort final : public TimerPort {
 public:
  UvTimerPort(net::Loop& loop, const Clock& clock);
  void arm(MonoTime at, std::function<void()> fire) override;
  void disarm() override;
  void close() { m_timer.close(); }

 private:
  const Clock& m_clock;
  net::Timer m_timer;
};

// For tests: fire_due() runs the callback if the fake clock has reached it.
class FakeTimerPort final : public TimerPort {
 public:
  explicit FakeTimerPort(const Clock& clock) : m_clock(clock) {}
  void arm(MonoTime at, std::function<void()> fire) override {
    m_at = at;
    m_fire = std::move(fire);
  }
  void disarm() override { m_at.reset(); }
  bool fire_due() {
    if (!m_at || *m_at > m_clock.mono_now()) return false;
    m_at.reset();
    auto f = m_fire;
    f();
    return true;
  }
  [[nodiscard]] std::optional<MonoTime> armed_at() const { return m_at; }

 private:
  const Clock& m_clock;
  std::optional<MonoTime> m_at;
  std::function<void()> m_fire;
};

}  // namespace tokend::tokens
