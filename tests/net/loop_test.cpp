// The loop and the handle owners: callbacks, closing from inside a callback,
// owners destroyed while libuv still closes their handle. Every test ends
// with uv_loop_close() == 0, so every test is also a leak check.
#include "net/loop.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <csignal>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace tokend;

namespace {

net::Timer make_timer(net::Loop& loop) {
  auto t = net::Timer::create(loop);
  REQUIRE(t);
  return std::move(*t);
}

}  // namespace

TEST_CASE("loop: run returns when nothing is active, close reports no handles left",
          "[net][loop]") {
  net::Loop loop;
  CHECK(loop.run() == 0);
  CHECK(loop.close() == 0);
}

TEST_CASE("loop: close fails while a handle is still owned", "[net][loop]") {
  net::Loop loop;
  auto t = make_timer(loop);
  CHECK(loop.close() != 0);  // the open timer keeps the loop from closing
  t.close();
  CHECK(loop.close() == 0);
}

TEST_CASE("loop: stop ends run with a handle still active", "[net][loop]") {
  net::Loop loop;
  auto t = make_timer(loop);
  int fired = 0;
  t.start(1, 1, [&] {
    if (++fired == 3) loop.stop();
  });
  loop.run();
  CHECK(fired == 3);
  CHECK(t.active());
  t.close();
  CHECK(loop.close() == 0);
}

TEST_CASE("timer: one shot fires once, a repeating one until stopped", "[net][timer]") {
  net::Loop loop;
  auto once = make_timer(loop);
  auto repeat = make_timer(loop);
  int once_fired = 0;
  int repeat_fired = 0;
  once.start(1, 0, [&] { ++once_fired; });
  repeat.start(1, 1, [&] {
    if (++repeat_fired == 5) repeat.stop();
  });
  loop.run();
  CHECK(once_fired == 1);
  CHECK(repeat_fired == 5);
  CHECK_FALSE(once.active());
  CHECK_FALSE(repeat.active());
  once.close();
  repeat.close();
  CHECK(loop.close() == 0);
}

TEST_CASE("timer: stop before it fires; start again replaces the timeout and the callback",
          "[net][timer]") {
  net::Loop loop;
  auto t = make_timer(loop);
  std::vector<std::string> fired;
  t.start(1, 0, [&] { fired.emplace_back("stopped"); });
  t.stop();
  CHECK_FALSE(t.active());
  loop.run();
  CHECK(fired.empty());

  t.start(1, 0, [&] { fired.emplace_back("first"); });
  t.start(5, 0, [&] { fired.emplace_back("second"); });
  const auto before = loop.now_ms();
  loop.run();
  CHECK(fired == std::vector<std::string>{"second"});
  CHECK(loop.now_ms() - before >= 5);
  t.close();
  CHECK(loop.close() == 0);
}

TEST_CASE("timer: re-armed from inside its own callback with a new callback", "[net][timer]") {
  net::Loop loop;
  auto t = make_timer(loop);
  std::vector<int> fired;
  // Each callback replaces the one running; the captured state of the old
  // one must stay intact until it returns.
  std::function<void(int)> arm = [&](int n) {
    auto marker = std::make_shared<std::string>("callback " + std::to_string(n));
    t.start(1, 0, [&, n, marker] {
      if (n < 4) arm(n + 1);
      CHECK(*marker == "callback " + std::to_string(n));
      fired.push_back(n);
    });
  };
  arm(0);
  loop.run();
  CHECK(fired == std::vector<int>{0, 1, 2, 3, 4});
  t.close();
  CHECK(loop.close() == 0);
}

TEST_CASE(
    "timer: closed from inside its own callback, the callback's state lives until the close "
    "callback",
    "[net][timer]") {
  net::Loop loop;
  auto t = make_timer(loop);
  auto state = std::make_shared<std::string>("held by the callback");
  std::weak_ptr<std::string> watch = state;
  int fired = 0;
  t.start(1, 1, [&, state] {
    ++fired;
    t.close();
    // Still ours: the block goes in the close callback, not here.
    CHECK(*state == "held by the callback");
    CHECK_FALSE(watch.expired());
  });
  state.reset();
  loop.run();
  CHECK(fired == 1);  // a repeating timer closed by its callback fires no more
  CHECK_FALSE(t.valid());
  CHECK(watch.expired());  // freed in the close callback
  CHECK(loop.close() == 0);
}

TEST_CASE("timer: the owner destroyed from inside its callback", "[net][timer]") {
  net::Loop loop;
  std::optional<net::Timer> t = make_timer(loop);
  const std::string text = "captured by value";
  std::string seen;
  t->start(1, 0, [&, text] {
    t.reset();
    seen = text;  // the closure is still alive after its owner went
  });
  loop.run();
  CHECK(seen == "captured by value");
  CHECK(loop.close() == 0);
}

TEST_CASE("timer: the owner destroyed while libuv still closes the handle", "[net][timer]") {
  net::Loop loop;
  auto state = std::make_shared<int>(7);
  std::weak_ptr<int> watch = state;
  bool fired = false;
  {
    auto t = make_timer(loop);
    t.start(1, 0, [&fired, state] { fired = *state == 7; });
    t.close();
    t.close();  // idempotent
  }
  state.reset();
  CHECK_FALSE(watch.expired());  // the close callback has not run yet
  CHECK(loop.close() == 0);
  CHECK(watch.expired());
  CHECK_FALSE(fired);  // closed before it was due
}

TEST_CASE("timer: moves hand the handle over; a moved-onto owner closes what it held",
          "[net][timer]") {
  net::Loop loop;
  auto a = make_timer(loop);
  auto b = make_timer(loop);
  int a_fired = 0;
  int b_fired = 0;
  a.start(1, 0, [&] { ++a_fired; });
  b.start(1, 0, [&] { ++b_fired; });
  b = std::move(a);        // b's own timer is closed and never fires
  CHECK_FALSE(a.valid());  // NOLINT(bugprone-use-after-move): the moved-from state is the contract
  CHECK(b.valid());
  a.stop();  // harmless on an empty owner
  loop.run();
  CHECK(a_fired == 1);
  CHECK(b_fired == 0);
  b.close();
  CHECK(loop.close() == 0);
}

TEST_CASE("close(on_closed) runs in the close callback, or at once without a handle",
          "[net][loop]") {
  net::Loop loop;
  auto t = make_timer(loop);
  bool closed = false;
  t.close([&] { closed = true; });
  CHECK_FALSE(closed);
  bool at_once = false;
  t.close([&] { at_once = true; });
  CHECK(at_once);
  CHECK(loop.close() == 0);
  CHECK(closed);
}

TEST_CASE("poll: readiness of a socket, and closing from inside its callback", "[net][poll]") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
  net::Loop loop;
  auto p = net::Poll::create_socket(loop, fds[0]);
  REQUIRE(p);
  std::vector<int> events;
  REQUIRE(p->start(UV_READABLE, [&](int status, int ev) {
    CHECK(status == 0);
    events.push_back(ev);
    p->close();
  }) == 0);
  REQUIRE(::write(fds[1], "x", 1) == 1);
  loop.run();
  CHECK(events == std::vector<int>{UV_READABLE});
  CHECK(loop.close() == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("poll: stopped, it reports nothing", "[net][poll]") {
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, fds) == 0);
  net::Loop loop;
  auto p = net::Poll::create_socket(loop, fds[0]);
  REQUIRE(p);
  int called = 0;
  REQUIRE(p->start(UV_READABLE | UV_WRITABLE, [&](int, int) { ++called; }) == 0);
  p->stop();
  REQUIRE(::write(fds[1], "x", 1) == 1);
  CHECK(loop.run() == 0);  // nothing active
  CHECK(called == 0);
  p->close();
  CHECK(loop.close() == 0);
  ::close(fds[0]);
  ::close(fds[1]);
}

namespace {

Result<net::Process> spawn_sh(net::Loop& loop, const char* script,
                              std::function<void(std::int64_t, int)> on_exit) {
  std::string sh = "/bin/sh";
  std::string dash_c = "-c";
  std::string text = script;
  std::vector<char*> args = {sh.data(), dash_c.data(), text.data(), nullptr};
  uv_process_options_t options{};
  options.file = sh.c_str();
  options.args = args.data();
  return net::Process::spawn(loop, options, std::move(on_exit));
}

}  // namespace

TEST_CASE("process: the exit status reaches the callback, which may close its handle",
          "[net][process]") {
  net::Loop loop;
  std::optional<std::int64_t> status;
  std::optional<net::Process> p;
  auto spawned = spawn_sh(loop, "exit 3", [&](std::int64_t s, int signal) {
    status = s;
    CHECK(signal == 0);
    p.reset();
  });
  REQUIRE(spawned);
  CHECK(spawned->pid() > 0);
  p = std::move(*spawned);
  loop.run();
  CHECK(status == 3);
  CHECK_FALSE(p.has_value());
  CHECK(loop.close() == 0);
}

TEST_CASE("process: killed, the signal reaches the callback", "[net][process]") {
  net::Loop loop;
  int signal = 0;
  auto p = spawn_sh(loop, "exec sleep 30", [&](std::int64_t, int s) { signal = s; });
  REQUIRE(p);
  CHECK(p->kill(SIGTERM) == 0);
  loop.run();
  CHECK(signal == SIGTERM);
  p->close();
  CHECK(loop.close() == 0);
}

TEST_CASE("process: a program that cannot start is an error and leaves no handle",
          "[net][process]") {
  net::Loop loop;
  std::string file = "/nonexistent/tokend-test-program";
  std::vector<char*> args = {file.data(), nullptr};
  uv_process_options_t options{};
  options.file = file.c_str();
  options.args = args.data();
  bool exited = false;
  auto p = net::Process::spawn(loop, options, [&](std::int64_t, int) { exited = true; });
  REQUIRE_FALSE(p);
  CHECK(p.error().code == Errc::io);
  CHECK(loop.close() == 0);
  CHECK_FALSE(exited);
}

TEST_CASE("signal: delivered on the loop", "[net][signal]") {
  net::Loop loop;
  auto s = net::Signal::create(loop);
  REQUIRE(s);
  int got = 0;
  REQUIRE(s->start(SIGUSR1, [&](int sig) {
    got = sig;
    s->close();
  }));
  REQUIRE(::raise(SIGUSR1) == 0);
  loop.run();
  CHECK(got == SIGUSR1);
  CHECK(loop.close() == 0);
}
