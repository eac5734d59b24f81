// C callbacks (libuv, libcurl) must not let an exception cross into C: every
// trampoline runs its body through guarded(), which logs and swallows.
#pragma once

#include <spdlog/spdlog.h>

#include <exception>

namespace tokend {

template <class F>
void guarded(const char* where, F&& f) noexcept {
  try {
    f();
  } catch (const std::exception& e) {
    spdlog::error("unhandled exception in {}: {}", where, e.what());
  } catch (...) {
    spdlog::error("unhandled exception in {}", where);
  }
}

}  // namespace tokend
