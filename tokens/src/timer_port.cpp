#include "tokens/timer_port.hpp"

#include <algorithm>

namespace tokend::tokens {

UvTimerPort::UvTimerPort(net::Loop& loop, const Clock& clock) : m_clock(clock) {
  auto t = net::Timer::create(loop);
  if (!t) throw std::runtime_error(t.error().message);
  m_timer = std::move(*t);
}

void UvTimerPort::arm(MonoTime at, std::function<void()> fire) {
  const auto delay = std::chrono::duration_cast<Millis>(at - m_clock.mono_now());
  m_timer.start(static_cast<std::uint64_t>(std::max<std::int64_t>(0, delay.count())), 0,
                std::move(fire));
}

void UvTimerPort::disarm() {
  m_timer.stop();
}

}  // namespace tokend::tokens
