// Store latencies: one atomic token-set update (with its fsync), one
// credential read, and open-to-first-read with a raw key.
//
//   build/bench/store_bench [--dir DIR] [--iterations N]
//
// DIR defaults to a temp dir; put it on the file system you care about, since
// the update figure is dominated by fsync.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/random.hpp"
#include "store/sqlcipher_store.hpp"

using namespace tokend;
using BenchClock = std::chrono::steady_clock;

namespace {

struct Stats {
  double median_us;
  double p99_us;
};

Stats summarise(std::vector<double>& us) {
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

template <class F>
std::vector<double> time_each(int n, F&& f) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto t0 = BenchClock::now();
    f(i);
    out.push_back(std::chrono::duration<double, std::micro>(BenchClock::now() - t0).count());
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::filesystem::path dir;
  int iterations = 500;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
      dir = argv[++i];
    else if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
      iterations = std::stoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: store_bench [--dir DIR] [--iterations N]\n");
      return 2;
    }
  }
  bool cleanup = false;
  if (dir.empty()) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "tokend-bench-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return 1;
    dir = tmpl;
    cleanup = true;
  }
  const auto db = dir / "bench.db";
  std::filesystem::remove(db);
  const store::DbKey key{*random_secret(store::k_raw_key_bytes), store::KeyKind::raw, "bench key"};
  SystemClock clock;
  {
    auto s = store::SqlcipherStore::open(db, key, clock);
    if (!s) {
      std::fprintf(stderr, "%s\n", s.error().message.c_str());
      return 1;
    }
    // Realistic size: 100 profiles with tokens.
    for (int i = 0; i < 100; ++i) {
      store::Profile p;
      p.name = "profile-" + std::to_string(i);
      p.provider = "generic";
      p.config.token_url = "https://auth.example/oauth/token";
      (void)s->put_profile(p);
    }
    const std::string access(1200, 'a');  // Atlassian access tokens are JWTs of ~1 kB
    auto update = time_each(iterations, [&](int i) {
      store::TokenSet t;
      t.access_token = Secret(access + std::to_string(i));
      t.refresh_token = Secret("refresh-" + std::to_string(i));
      t.expires_at_ms = i;
      if (!s->store_token_set("profile-7", t)) std::abort();
    });
    auto read = time_each(iterations * 10, [&](int) {
      if (!s->get_credential("profile-7")) std::abort();
    });
    const auto u = summarise(update);
    const auto r = summarise(read);
    std::printf("token-set update (fsync)   median %8.1f us   p99 %8.1f us   (n=%d)\n", u.median_us,
                u.p99_us, iterations);
    std::printf("credential read            median %8.1f us   p99 %8.1f us   (n=%d)\n", r.median_us,
                r.p99_us, iterations * 10);
  }
  auto open = time_each(std::max(20, iterations / 10), [&](int) {
    auto s = store::SqlcipherStore::open(db, key, clock);
    if (!s || !s->get_credential("profile-7")) std::abort();
  });
  const auto o = summarise(open);
  std::printf("open to first read (raw)   median %8.1f us   p99 %8.1f us   (n=%zu)\n", o.median_us,
              o.p99_us, open.size());
  if (cleanup) std::filesystem::remove_all(dir);
  return 0;
}
