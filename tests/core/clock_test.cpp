#include "core/clock.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace std::chrono_literals;

TEST_CASE("FakeClock: advance moves both clocks, suspend and jumps only the wall clock",
          "[core][clock]") {
  tokend::FakeClock c;
  const auto w0 = c.wall_now();
  const auto m0 = c.mono_now();
  c.advance(1500ms);
  CHECK(c.wall_now() - w0 == 1500ms);
  CHECK(c.mono_now() - m0 == 1500ms);
  c.suspend(1h);
  CHECK(c.wall_now() - w0 == 1h + 1500ms);
  CHECK(c.mono_now() - m0 == 1500ms);
  c.jump_wall(-2h);
  CHECK(c.wall_now() - w0 == -1h + 1500ms);
}

TEST_CASE("unix ms round trip", "[core][clock]") {
  CHECK(tokend::to_unix_ms(tokend::from_unix_ms(1767225600123)) == 1767225600123);
}
