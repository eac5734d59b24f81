#include <fmt/format.h>
#include <poll.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "commands/login.hpp"
#include "core/secret.hpp"
#include "ctl/format.hpp"
#include "ctl/import.hpp"
#include "ctl/input.hpp"

namespace tokend::ctl {

namespace {

// "Logged in: NAME (...)" with the token's expiry from the profile (the
// flow's answer is the fallback).
int logged_in(const Ctx& ctx, const std::string& name, const client::LoginFlow& flow) {
  auto p = ctx.api().profile(name, std::chrono::seconds(10));
  auto expires_at = p ? p->expires_at : flow.expires_at;
  const auto now = now_s();
  say(ctx.io.out,
      expires_at ? fmt::format("Logged in: {} (token valid until {}, {})\n", name,
                               local_clock_time(*expires_at, now), relative_time(expires_at, now))
                 : fmt::format("Logged in: {} (the token does not expire)\n", name));
  if (!flow.warning.empty()) say(ctx.io.err, "tokenctl: note: " + flow.warning + "\n");
  return k_ok;
}

// What to say about a flow that ended without an error message of its own.
std::string ended_message(const std::string& name, const std::string& state) {
  if (state == "expired") {
    return fmt::format(
        "the login for {} expired before it was finished; run tokenctl login {} again", name, name);
  }
  if (state == "cancelled") {
    return fmt::format(
        "the login for {} was cancelled (another login for it started, or it was cancelled "
        "through the API)",
        name);
  }
  if (state == "none") {
    return fmt::format(
        "tokend has no login for {} in progress (was tokend restarted?); run tokenctl login {} "
        "again",
        name, name);
  }
  return fmt::format("the login for {} ended: {}", name,
                     state.empty() ? "tokend did not say how" : state);
}

// How a flow ended: nullopt while it is pending, else the exit code after
// saying so.
std::optional<int> login_outcome(const Ctx& ctx, const std::string& name,
                                 const client::LoginFlow& flow) {
  if (flow.state == "pending") return std::nullopt;
  if (flow.state == "succeeded") return logged_in(ctx, name, flow);
  return error(ctx, flow.error.empty() ? ended_message(name, flow.state) : flow.error);
}

// Cancels the pending flow on a fresh connection and reports `message`,
// unless the flow ended by itself in the meantime.
int cancel_login(const Ctx& ctx, const std::string& name, const std::string& message) {
  const auto api = ctx.api();
  auto c = api.cancel_login(name);
  if (!c && failure_exit(c.error()) == k_unreachable)
    return error(ctx, failure_message(c.error()), k_unreachable);
  if (!c && c.error().stage == client::ApiError::Stage::answer && c.error().status == 409) {
    auto st = api.login(name);
    if (st && st->state == "succeeded") return logged_in(ctx, name, *st);
  }
  return error(ctx, message);
}

// Finishes the flow with a pasted line. nullopt: keep waiting (blank line, or
// the code was refused and the flow still takes another).
std::optional<int> complete_login(const Ctx& ctx, const std::string& name, std::string& line) {
  auto body = login_paste_body(line);
  secure_wipe(line);
  if (!body) {
    say(ctx.io.err, std::string(k_paste_prompt));
    return std::nullopt;
  }
  std::string payload = body->dump();
  client::wipe_strings(*body);
  const auto api = ctx.api();
  auto c = api.complete_login(name, payload);
  secure_wipe(payload);
  if (c) return login_outcome(ctx, name, *c);
  const std::string refused = failure_message(c.error());
  const int exit = failure_exit(c.error());
  if (exit == k_unreachable) return error(ctx, refused, k_unreachable);
  // Refused (wrong state, an error= in the URL, a bad code, or no code flow
  // pending): the flow's own state says whether it is over.
  auto st = api.login(name);
  if (!st) return error(ctx, refused, exit);
  if (st->state == "pending") {
    error(ctx, refused);
    say(ctx.io.err, std::string(k_paste_prompt));
    return std::nullopt;
  }
  if (st->state == "failed" && st->error.empty()) return error(ctx, refused, exit);
  return login_outcome(ctx, name, *st);
}

// A line being typed or pasted, wiped on destruction.
struct PasteBuffer {
  std::string text;
  PasteBuffer() = default;
  PasteBuffer(const PasteBuffer&) = delete;
  PasteBuffer& operator=(const PasteBuffer&) = delete;
  ~PasteBuffer() { secure_wipe(text); }
};

// Reads what stdin has; completes the login with each whole line. Clears
// `open` at end of input.
std::optional<int> read_paste(const Ctx& ctx, const std::string& name, int in_fd, PasteBuffer& buf,
                              bool& open) {
  std::string& pasted = buf.text;
  char chunk[4096];
  const ssize_t got = ::read(in_fd, chunk, sizeof chunk);
  if (got < 0 && errno != EINTR && errno != EAGAIN) open = false;
  if (got == 0) {
    open = false;
    if (!pasted.empty()) pasted += '\n';  // a last line without a newline
  }
  if (got > 0) pasted.append(chunk, static_cast<std::size_t>(got));
  secure_wipe(chunk, sizeof chunk);
  if (pasted.size() > 64 * 1024) {
    secure_wipe(pasted);
    pasted.clear();
    say(ctx.io.err,
        "tokenctl: that line is longer than 64 KiB; paste the redirect URL or the code\n");
  }
  std::size_t nl;
  while ((nl = pasted.find('\n')) != std::string::npos) {
    std::string line = pasted.substr(0, nl);
    std::fill(pasted.begin(), pasted.begin() + static_cast<std::ptrdiff_t>(nl) + 1, '\0');
    pasted.erase(0, nl + 1);
    if (auto rc = complete_login(ctx, name, line)) return rc;
  }
  return std::nullopt;
}

bool says_close(const client::Headers& headers) {
  return std::ranges::any_of(headers, [](const auto& h) {
    return h.first.size() == 10 && ::strncasecmp(h.first.c_str(), "connection", 10) == 0 &&
           h.second == "close";
  });
}

}  // namespace

int wait_for_login(const Ctx& ctx, LoginWait& w, const InterruptWatch& interrupt) {
  using clock = std::chrono::steady_clock;
  constexpr auto k_answer_grace = std::chrono::seconds(15);
  const int in_fd = ::fileno(ctx.io.in);
  bool stdin_open = w.read_paste && in_fd >= 0;
  PasteBuffer pasted;
  std::optional<client::Client> poller;
  std::optional<clock::time_point> answer_due;  // set while a GET is outstanding
  const std::string lost =
      fmt::format("lost the connection to tokend at {}; {}", ctx.socket.string(), k_start_hint);

  for (;;) {
    if (interrupt.interrupted()) {
      if (::isatty(::fileno(ctx.io.err)) != 0) say(ctx.io.err, "\n");
      return cancel_login(ctx, w.name, "login cancelled");
    }
    if (w.browser) {
      if (auto status = w.browser->reap(); status && *status != 0) {
        say(ctx.io.err, fmt::format("({} failed (status {}); open the URL above yourself)\n",
                                    w.opener, *status));
      }
    }
    const auto now = clock::now();
    if (now >= w.deadline) {
      return cancel_login(
          ctx, w.name,
          fmt::format("the login did not finish within {} s; cancelled it", w.timeout_s));
    }
    if (!answer_due) {
      if (!poller) {
        auto c = ctx.api().connect();
        if (!c) return report(ctx, c.error());
        poller.emplace(std::move(*c));
      }
      const auto left = std::chrono::ceil<std::chrono::seconds>(w.deadline - now).count();
      const auto wait_s = std::clamp<std::int64_t>(left, 1, 30);
      if (!client::ApiClient::send_login_watch(*poller, w.name, wait_s))
        return error(ctx, lost, k_unreachable);
      answer_due = now + std::chrono::seconds(wait_s) + k_answer_grace;
    }

    pollfd fds[3];
    nfds_t n = 0;
    fds[n++] = {poller->fd(), POLLIN, 0};
    const nfds_t in_slot = stdin_open ? n : 3;
    if (stdin_open) fds[n++] = {in_fd, POLLIN, 0};
    if (interrupt.fd() >= 0) fds[n++] = {interrupt.fd(), POLLIN, 0};
    // Wake at least once a second to notice the browser helper exiting.
    const auto until = std::min({w.deadline, *answer_due, now + std::chrono::seconds(1)});
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count();
    const int pr = ::poll(fds, n, static_cast<int>(std::max<std::int64_t>(ms, 0)));
    if (pr < 0) {
      if (errno == EINTR) continue;
      return error(ctx, "waiting for the login: " + errno_text(errno));
    }

    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      auto r = poller->read_response(k_answer_grace);
      answer_due.reset();
      if (!r) {
        if (r.error().code == Errc::timeout) return error(ctx, r.error().message);
        return error(ctx, lost, k_unreachable);
      }
      auto flow = client::parse_answer(*r);
      if (!flow) return error(ctx, flow.error().error.message);
      if (auto rc = login_outcome(ctx, w.name, client::login_flow(*flow))) return *rc;
      if (says_close(r->headers)) poller.reset();
    } else if (clock::now() >= *answer_due) {
      return error(ctx, "tokend did not answer while the login was pending", k_error);
    }

    if (in_slot < n && (fds[in_slot].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      if (auto rc = read_paste(ctx, w.name, in_fd, pasted, stdin_open)) return *rc;
    }
  }
}

}  // namespace tokend::ctl
