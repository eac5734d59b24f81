#include "process.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <fstream>
#include <tuple>
#include <vector>

#include "daemon/systemd.hpp"

namespace tokend::daemon {

void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

// Inside a user namespace (systemd's PrivateUsers=yes) every uid without a
// mapping shows up as the overflow uid, so allowing that uid would allow
// everyone; an allowed uid without a mapping can never match.
std::set<uid_t> usable_allowed_uids(const std::set<uid_t>& wanted) {
  std::ifstream map("/proc/self/uid_map");
  std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t>> ranges;
  std::uint64_t inside = 0, outside = 0, count = 0;
  while (map >> inside >> outside >> count) ranges.emplace_back(inside, outside, count);
  const bool namespaced = !(ranges.size() == 1 && std::get<0>(ranges[0]) == 0 &&
                            std::get<1>(ranges[0]) == 0 && std::get<2>(ranges[0]) == 4294967295ULL);
  if (!namespaced) return wanted;
  std::uint64_t overflow = 65534;
  std::ifstream("/proc/sys/kernel/overflowuid") >> overflow;
  std::set<uid_t> usable;
  for (const uid_t uid : wanted) {
    if (uid == overflow) {
      spdlog::warn(
          "allow-uid {} ignored: in this user namespace every unmapped user appears as uid {}, so "
          "allowing it would let everyone in (systemd PrivateUsers=yes)",
          uid, overflow);
      continue;
    }
    const bool mapped = std::any_of(ranges.begin(), ranges.end(), [&](const auto& r) {
      return uid >= std::get<0>(r) && uid < std::get<0>(r) + std::get<2>(r);
    });
    if (!mapped) {
      spdlog::warn(
          "allow-uid {}: that user is not visible in tokend's user namespace (systemd "
          "PrivateUsers=yes) and will be refused; see systemd/README.md",
          uid);
    }
    usable.insert(uid);
  }
  return usable;
}

Result<> ProcessSignals::start(Drain drain, Reparse reparse, Apply apply) {
  m_drain = std::move(drain);
  m_reparse = std::move(reparse);
  m_apply = std::move(apply);
  auto term = net::Signal::create(m_loop);
  auto intr = net::Signal::create(m_loop);
  auto hup = net::Signal::create(m_loop);
  if (!term || !intr || !hup) return fail(Errc::io, "cannot install signal handlers");
  m_term = std::move(*term);
  m_int = std::move(*intr);
  m_hup = std::move(*hup);
  const auto stop = [this](int sig) { on_stop(sig); };
  if (auto r = m_term.start(SIGTERM, stop); !r) return r;
  if (auto r = m_int.start(SIGINT, stop); !r) return r;
  return m_hup.start(SIGHUP, [this](int) { on_reload(); });
}

void ProcessSignals::close() noexcept {
  m_term.close();
  m_int.close();
  m_hup.close();
}

void ProcessSignals::on_stop(int sig) {
  if (m_stopping) return;
  m_stopping = true;
  spdlog::info("received {}, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  notify("STOPPING=1");
  m_drain([this] { close(); });
}

void ProcessSignals::on_reload() {
  auto fresh = m_reparse();
  if (!fresh) {
    spdlog::error("SIGHUP: configuration not reloaded: {}", fresh.error().message);
    return;
  }
  m_apply(*fresh);
  notify("STATUS=configuration reloaded");
}

Result<std::string> listen_on_socket(ipc::Server& server, const std::filesystem::path& path) {
  const int activated = activated_socket();
  auto listening = activated >= 0 ? server.listen_fd(activated) : server.listen_path(path);
  if (!listening) return std::unexpected(listening.error());
  return activated >= 0 ? std::string("(socket activation)") : path.string();
}

void announce_ready(const std::string& line, const std::string& status) {
  spdlog::info("{}", line);
  notify(fmt::format("READY=1\nSTATUS={}", status));
}

}  // namespace tokend::daemon
