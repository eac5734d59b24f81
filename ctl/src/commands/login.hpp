// tokenctl login, in two files: login.cpp starts the flow and opens the
// browser; login_wait.cpp waits for it to end (long poll, a pasted
// redirect URL or code, Ctrl-C, the timeout).
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "commands/common.hpp"
#include "ctl/browser.hpp"
#include "ctl/interrupt.hpp"

namespace tokend::ctl {

inline constexpr std::string_view k_paste_prompt =
    "After you approve, paste the URL your browser ended on (or just the code) here:\n";

struct LoginWait {
  std::string name;
  std::chrono::steady_clock::time_point deadline;
  unsigned timeout_s = 600;
  bool read_paste = false;                   // also take a pasted redirect URL or code
  std::optional<BackgroundProcess> browser;  // reaped while waiting
  std::string opener;
};

// Long-polls the flow until it leaves pending, watching stdin for a pasted
// line (w.read_paste) and the interrupt pipe at the same time. Ctrl-C and
// the timeout cancel the flow. Returns the exit code after saying how it ended.
int wait_for_login(const Ctx& ctx, LoginWait& w, const InterruptWatch& interrupt);

}  // namespace tokend::ctl
