#include "ctl/exec.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>

#include "core/fd.hpp"
#include "core/secret.hpp"

extern char** environ;  // NOLINT: POSIX declares it only for _GNU_SOURCE/_DARWIN_C_SOURCE

namespace tokend::ctl {

bool is_env_name(std::string_view name) {
  if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

namespace {

// Sets NAME in `vars`, replacing an earlier value (the last one given wins).
void set_var(std::vector<std::pair<std::string, std::string>>& vars, std::string_view name,
             std::string_view value) {
  const auto it =
      std::find_if(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; });
  if (it != vars.end()) {
    it->second.assign(value);
  } else {
    vars.emplace_back(std::string(name), std::string(value));
  }
}

}  // namespace

std::vector<std::pair<std::string, std::string>> exec_token_env(
    const TokenEnvInput& in, std::span<const std::string> extra) {
  std::vector<std::pair<std::string, std::string>> vars;
  auto set = [&](std::string_view name, std::string_view value) { set_var(vars, name, value); };
  set("TOKEND_TOKEN", in.token);
  set("TOKEND_TOKEN_TYPE", in.token_type);
  set("TOKEND_AUTHORIZATION", in.authorization);
  if (in.expires_at) set("TOKEND_EXPIRES_AT", fmt::format("{}", *in.expires_at));
  if (in.kind == "oauth2" && in.provider == "atlassian") {
    set("JIRA_OAUTH_ACCESS_TOKEN", in.token);
    if (!in.cloud_id.empty()) set("JIRA_OAUTH_CLOUD_ID", in.cloud_id);
  }
  for (const auto& name : extra) set(name, in.token);
  return vars;
}

Result<std::vector<std::pair<std::string, std::string>>> exec_endpoint_env(
    const EndpointEnvInput& in, const EndpointEnvNames& names) {
  std::vector<std::pair<std::string, std::string>> vars;
  auto set = [&](std::string_view name, std::string_view value) { set_var(vars, name, value); };
  auto product_url = [&](std::string_view product) -> const std::string* {
    const auto it = std::find_if(in.product_urls.begin(), in.product_urls.end(),
                                 [&](const auto& p) { return p.first == product; });
    return it == in.product_urls.end() ? nullptr : &it->second;
  };
  auto bad_name = [](std::string_view flag, std::string_view name) {
    return fail(
        Errc::invalid_argument,
        fmt::format("{} {}: not a variable name (letters, digits and _, not starting with a digit)",
                    flag, name.substr(0, 64)));
  };
  set("TOKEND_URL", in.url);
  if (const auto* jira = product_url("jira")) set("TOKEND_JIRA_URL", *jira);
  if (const auto* confluence = product_url("confluence")) set("TOKEND_CONFLUENCE_URL", *confluence);
  set("TOKEND_TOKEN", in.standin);
  set("TOKEND_TOKEN_TYPE", "Bearer");
  set("TOKEND_AUTHORIZATION", fmt::format("Bearer {}", in.standin));
  set("TOKEND_USER", in.user);
  if (in.kind == "oauth2" && in.provider == "atlassian") {
    set("JIRA_OAUTH_ACCESS_TOKEN", in.standin);
    if (!in.cloud_id.empty()) set("JIRA_OAUTH_CLOUD_ID", in.cloud_id);
  }
  for (const auto& spec : names.url) {
    const auto eq = spec.find('=');
    const std::string_view name = std::string_view(spec).substr(0, eq);
    if (!is_env_name(name)) return bad_name("--url-env", name);
    if (eq == std::string::npos) {
      set(name, in.url);
      continue;
    }
    const std::string_view product = std::string_view(spec).substr(eq + 1);
    const std::string* url = product_url(product);
    if (url == nullptr) {
      std::string known;
      for (const auto& [p, _] : in.product_urls) known += (known.empty() ? "" : ", ") + p;
      return fail(
          Errc::invalid_argument,
          fmt::format("--url-env {}: this profile has no product '{}'{}", spec.substr(0, 96),
                      product.substr(0, 32),
                      known.empty() ? std::string(" (it has one base URL: use --url-env NAME)")
                                    : " (it has: " + known + ")"));
    }
    set(name, *url);
  }
  for (const auto& name : names.standin) {
    if (!is_env_name(name)) return bad_name("--standin-env", name);
    set(name, in.standin);
  }
  for (const auto& name : names.user) {
    if (!is_env_name(name)) return bad_name("--user-env", name);
    set(name, in.user);
  }
  return vars;
}

std::vector<std::string> merge_environment(
    std::span<const char* const> current,
    std::span<const std::pair<std::string, std::string>> vars) {
  std::vector<std::string> out;
  out.reserve(current.size() + vars.size());
  for (const char* entry : current) {
    if (entry == nullptr) continue;
    const std::string_view e(entry);
    const auto eq = e.find('=');
    const std::string_view name = e.substr(0, eq);
    const bool replaced =
        eq != std::string_view::npos &&
        std::any_of(vars.begin(), vars.end(), [&](const auto& v) { return v.first == name; });
    if (!replaced) out.emplace_back(e);
  }
  for (const auto& [name, value] : vars) out.push_back(fmt::format("{}={}", name, value));
  return out;
}

std::vector<const char*> process_environment() {
  std::vector<const char*> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) out.push_back(*e);
  return out;
}

namespace {

constexpr int k_forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

std::atomic<pid_t> g_child{0};
static_assert(std::atomic<pid_t>::is_always_lock_free, "the signal handler reads the child's pid");

// Was the signal sent by a process (kill, sigqueue, tkill) rather than by the
// kernel for the terminal (Ctrl-C, Ctrl-\, hangup)? The terminal's signals
// already reached the child: it is in the same foreground process group.
bool sent_by_process(const siginfo_t* info) {
  if (info == nullptr) return false;
  if (info->si_code == SI_USER || info->si_code == SI_QUEUE) return true;
#ifdef SI_TKILL
  if (info->si_code == SI_TKILL) return true;
#endif
  return false;
}

extern "C" void forward_signal(int sig, siginfo_t* info, void*) {
  const pid_t child = g_child.load();
  if (child <= 0 || !sent_by_process(info) || info->si_pid == child) return;
  const int saved = errno;
  ::kill(child, sig);
  errno = saved;
}

// The handlers while a child runs; the previous dispositions come back on
// destruction (and the child gets them back before exec).
class SignalForwarding {
 public:
  SignalForwarding() = default;
  ~SignalForwarding() {
    if (m_installed) restore();
  }
  SignalForwarding(const SignalForwarding&) = delete;
  SignalForwarding& operator=(const SignalForwarding&) = delete;
  void install() {
    m_installed = true;
    struct sigaction sa{};
    sa.sa_sigaction = forward_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    for (std::size_t i = 0; i < std::size(k_forwarded); ++i)
      ::sigaction(k_forwarded[i], &sa, &m_old[i]);
  }
  // Async-signal-safe: also used in the child between fork and exec.
  void restore() noexcept {
    for (std::size_t i = 0; i < std::size(k_forwarded); ++i)
      ::sigaction(k_forwarded[i], &m_old[i], nullptr);
  }

 private:
  struct sigaction m_old[std::size(k_forwarded)]{};
  bool m_installed = false;
};

// A close-on-exec pipe: the child reports a failed exec through one, and
// waits for its environment on another. Read end first.
Result<std::pair<Fd, Fd>> cloexec_pipe() {
  int p[2];
  if (::pipe(p) != 0) return fail(Errc::io, "creating a pipe: " + errno_text(errno));
  for (const int fd : p) ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  return std::pair<Fd, Fd>(p[0], p[1]);
}

}  // namespace

// The held child: forked with the forwarded signals' handlers in place, it
// waits on `go` and then execs with the environment the parent wrote into
// `region`, a shared anonymous mapping at the same address in both.
struct HeldCommand::State {
  std::vector<std::string> argv;
  pid_t pid = -1;
  Fd go_write;
  Fd err_read;
  void* region = nullptr;
  std::size_t region_size = 0;
  SignalForwarding forwarding;

  ~State() {
    // Closed before the wait, not after: an unreleased child sees `go` end
    // and exits unrun, so the wait returns.
    go_write.reset();
    err_read.reset();
    if (pid > 0) {
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      g_child.store(0);
    }
    if (region != nullptr) ::munmap(region, region_size);
  }
};

HeldCommand::HeldCommand(std::unique_ptr<State> state) : m_state(std::move(state)) {}
HeldCommand::HeldCommand(HeldCommand&&) noexcept = default;
HeldCommand::~HeldCommand() = default;
pid_t HeldCommand::pid() const {
  return m_state->pid;
}

Result<HeldCommand> HeldCommand::start(const std::vector<std::string>& argv,
                                       std::size_t env_bytes) {
  if (argv.empty()) return fail(Errc::invalid_argument, "no command to run");
  auto state = std::make_unique<State>();
  state->argv = argv;
  state->region_size = env_bytes;
  state->region =
      ::mmap(nullptr, env_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (state->region == MAP_FAILED) {
    state->region = nullptr;
    return fail(Errc::io, "mapping memory for the command's environment: " + errno_text(errno));
  }
  std::vector<char*> c_argv;
  for (auto& a : state->argv) c_argv.push_back(a.data());
  c_argv.push_back(nullptr);

  auto err_pipe = cloexec_pipe();
  if (!err_pipe) return std::unexpected(err_pipe.error());
  auto& [err_read, err_write] = *err_pipe;
  state->err_read = std::move(err_read);
  auto go_pipe = cloexec_pipe();
  if (!go_pipe) return std::unexpected(go_pipe.error());
  auto& [go_read, go_write] = *go_pipe;
  state->go_write = std::move(go_write);

  // Block the forwarded signals across fork: one that arrives before the
  // child's pid is known is delivered (and forwarded) once they are
  // unblocked; the child unblocks them after restoring the dispositions.
  sigset_t forwarded;
  sigset_t old_mask;
  sigemptyset(&forwarded);
  for (const int s : k_forwarded) sigaddset(&forwarded, s);
  ::sigprocmask(SIG_BLOCK, &forwarded, &old_mask);
  state->forwarding.install();
  std::fflush(nullptr);  // nothing buffered may be written twice
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec.
    ::close(state->err_read.get());
    ::close(state->go_write.get());
    state->forwarding.restore();
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    char go = 0;
    ssize_t n = 0;
    do {
      n = ::read(go_read.get(), &go, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1) ::_exit(127);  // not released: never runs
    environ = static_cast<char**>(state->region);
    ::execvp(c_argv[0], c_argv.data());
    const int e = errno;
    [[maybe_unused]] const auto w = ::write(err_write.get(), &e, sizeof e);
    ::_exit(127);
  }
  const int fork_errno = errno;
  if (pid > 0) g_child.store(pid);
  ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
  err_write.reset();
  go_read.reset();
  if (pid < 0) return fail(Errc::io, "starting a process: " + errno_text(fork_errno));
  state->pid = pid;
  return HeldCommand(std::move(state));
}

Result<ChildExit> HeldCommand::run(const std::vector<std::string>& env) {
  State& st = *m_state;
  // The environment block: the pointer array, then the strings.
  const std::size_t pointers = (env.size() + 1) * sizeof(char*);
  std::size_t need = pointers;
  for (const auto& e : env) need += e.size() + 1;
  if (need > st.region_size) {
    return fail(Errc::invalid_argument,
                fmt::format("the command's environment ({} bytes) is larger than the {} "
                            "bytes set aside for it",
                            need, st.region_size));
  }
  auto** table = static_cast<char**>(st.region);
  char* text = static_cast<char*>(st.region) + pointers;
  for (std::size_t i = 0; i < env.size(); ++i) {
    table[i] = text;
    std::memcpy(text, env[i].c_str(), env[i].size() + 1);
    text += env[i].size() + 1;
  }
  table[env.size()] = nullptr;

  const char go = 'g';
  ssize_t n = 0;
  do {
    n = ::write(st.go_write.get(), &go, 1);
  } while (n < 0 && errno == EINTR);
  st.go_write.reset();

  int exec_errno = 0;
  ssize_t got = 0;
  do {
    got = ::read(st.err_read.get(), &exec_errno, sizeof exec_errno);
  } while (got < 0 && errno == EINTR);
  st.err_read.reset();
  // The environment (secrets among it) has been copied by exec, or is moot.
  secure_wipe(st.region, st.region_size);

  int status = 0;
  pid_t r = 0;
  do {
    r = ::waitpid(st.pid, &status, 0);
  } while (r < 0 && errno == EINTR);
  const int wait_errno = errno;
  st.pid = -1;
  g_child.store(0);
  const std::string& command = st.argv[0];
  if (got == static_cast<ssize_t>(sizeof exec_errno)) {
    const std::string what = fmt::format("cannot run {}: {}", command, errno_text(exec_errno));
    return fail(exec_errno == ENOENT ? Errc::not_found : Errc::permission, what);
  }
  if (r < 0)
    return fail(Errc::io, fmt::format("waiting for {}: {}", command, errno_text(wait_errno)));
  ChildExit out;
  if (WIFEXITED(status)) out.code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) out.signal = WTERMSIG(status);
  return out;
}

std::size_t environment_bytes(std::span<const char* const> current, std::size_t extra) {
  std::size_t n = (current.size() + 1) * sizeof(char*) + extra;
  for (const char* e : current) n += e != nullptr ? std::strlen(e) + 1 + sizeof(char*) : 0;
  return n;
}

Result<ChildExit> run_command(const std::vector<std::string>& argv,
                              const std::vector<std::string>& env) {
  std::size_t need = (env.size() + 1) * sizeof(char*);
  for (const auto& e : env) need += e.size() + 1;
  auto held = HeldCommand::start(argv, need);
  if (!held) return std::unexpected(held.error());
  return held->run(env);
}

int exit_like(const ChildExit& child) {
  if (child.signal == 0) return child.code;
  std::fflush(nullptr);
  // The child may have dumped core already; tokenctl's own would be noise.
  const rlimit no_core{0, 0};
  ::setrlimit(RLIMIT_CORE, &no_core);
  struct sigaction dfl{};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(child.signal, &dfl, nullptr);
  sigset_t only;
  sigemptyset(&only);
  sigaddset(&only, child.signal);
  ::sigprocmask(SIG_UNBLOCK, &only, nullptr);
  ::raise(child.signal);
  // Still here: a signal whose default action is not to terminate.
  return 128 + child.signal;
}

}  // namespace tokend::ctl
