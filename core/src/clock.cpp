#include "core/clock.hpp"

namespace tokend {

WallTime SystemClock::wall_now() const {
  return std::chrono::system_clock::now();
}
MonoTime SystemClock::mono_now() const {
  return std::chrono::steady_clock::now();
}

// 2026-01-01T00:00:00Z: a fixed start keeps failing tests reproducible.
FakeClock::FakeClock() : FakeClock(from_unix_ms(1767225600000)) {}
FakeClock::FakeClock(WallTime start) : m_wall(start), m_mono(std::chrono::hours(1000)) {}

std::int64_t to_unix_ms(WallTime t) noexcept {
  return std::chrono::duration_cast<Millis>(t.time_since_epoch()).count();
}

WallTime from_unix_ms(std::int64_t ms) noexcept {
  return WallTime(std::chrono::duration_cast<WallTime::duration>(Millis(ms)));
}

}  // namespace tokend
