// Durability: a child commits token-set updates and acknowledges each over a
// pipe; the parent SIGKILLs it at a random instant. Every acknowledged update
// must survive, no record may be torn, and the database must pass
// PRAGMA integrity_check.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <chrono>
#include <cstring>
#include <random>

#include "store/detail/db.hpp"
#include "store/store_support.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace tokend::store;
using test::TempDir;

namespace {

std::string access_for(std::int64_t g) {
  return "at-" + std::to_string(g);
}
std::string refresh_for(std::int64_t g) {
  return "rt-" + std::to_string(g) + std::string(200, 'r');
}

// Runs in the forked child: never returns.
[[noreturn]] void child_commit_loop(const std::filesystem::path& db, const DbKey& key, int ack_fd) {
  FakeClock clock;
  auto s = SqlcipherStore::open(db, key, clock);
  if (!s) _exit(10);
  auto c = s->get_credential("p");
  if (!c) _exit(11);
  for (std::int64_t g = c->generation + 1;; ++g) {
    auto r = s->store_token_set("p", test::make_tokens(access_for(g), refresh_for(g), g), g - 1, g);
    if (!r || *r != g) _exit(12);
    if (::write(ack_fd, &g, sizeof g) != static_cast<ssize_t>(sizeof g)) _exit(13);
  }
}

}  // namespace

TEST_CASE("acknowledged updates survive SIGKILL at random instants (200 rounds)",
          "[store][durability]") {
  TempDir t;
  const auto db = t / "t.db";
  const auto key = test::random_raw_key();
  {
    FakeClock clock;
    auto s = SqlcipherStore::open(db, key, clock);
    REQUIRE(s->put_profile(test::make_profile("p")));
  }
  std::mt19937_64 rng(std::random_device{}());
  std::int64_t max_acked = 0;
  for (int round = 0; round < 200; ++round) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      child_commit_loop(db, key, fds[1]);
    }
    ::close(fds[1]);
    const int wanted = std::uniform_int_distribution<int>(1, 6)(rng);
    std::int64_t g = 0;
    for (int i = 0; i < wanted; ++i) {
      REQUIRE(::read(fds[0], &g, sizeof g) == static_cast<ssize_t>(sizeof g));
      max_acked = std::max(max_acked, g);
    }
    // Randomise the kill instant within the next commit.
    const auto spin = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 3000)(rng));
    const auto until = std::chrono::steady_clock::now() + spin;
    while (std::chrono::steady_clock::now() < until) {
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFSIGNALED(status));  // the child never stops on its own (exit codes 10+ = failure)
    // Acks written before the kill count as acknowledged too.
    while (::read(fds[0], &g, sizeof g) == static_cast<ssize_t>(sizeof g))
      max_acked = std::max(max_acked, g);
    ::close(fds[0]);

    FakeClock clock;
    auto s = SqlcipherStore::open(db, key, clock);
    REQUIRE(s);
    auto c = s->get_credential("p");
    REQUIRE(c);
    INFO("round " << round << " max acked " << max_acked << " found " << c->generation);
    REQUIRE(c->generation >= max_acked);
    REQUIRE(c->access_token.reveal() == access_for(c->generation));
    REQUIRE(c->refresh_token.reveal() == refresh_for(c->generation));
    if (c->generation > 1)
      REQUIRE(c->previous_refresh_token.reveal() == refresh_for(c->generation - 1));
    REQUIRE(c->expires_at_ms == c->generation);
    auto check = s->db_for_tests().prepare("PRAGMA integrity_check");
    REQUIRE(check);
    REQUIRE(*check->step());
    REQUIRE(check->get_text(0) == "ok");
  }
  CHECK(max_acked >= 200);
}
