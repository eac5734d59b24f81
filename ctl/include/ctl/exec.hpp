// tokenctl exec: running a command with a fresh token in its environment.
//
// What the child gets (exec_token_env) is a pure function, unit-tested; the
// process handling (run_command) is tested end to end with the real binary.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.hpp"

namespace tokend::ctl {

// [A-Za-z_][A-Za-z0-9_]* — what a POSIX shell accepts as a variable name.
bool is_env_name(std::string_view name);

// What exec_token_env needs to know about the profile and its token
// (GET /v1/profiles/NAME and GET /v1/profiles/NAME/token).
struct TokenEnvInput {
  std::string_view kind;           // oauth2 | api-token | pat
  std::string_view provider;       // atlassian | generic | mcp; empty for other kinds
  std::string_view cloud_id;       // config.cloud_id, empty when unknown
  std::string_view token;          // the bare token
  std::string_view token_type;     // "Bearer", "Basic"
  std::string_view authorization;  // the Authorization header value
  std::optional<std::int64_t> expires_at;
};

// The variables `tokenctl exec` sets, in this order:
//   TOKEND_TOKEN, TOKEND_TOKEN_TYPE, TOKEND_AUTHORIZATION and, when the
//   token expires, TOKEND_EXPIRES_AT (unix seconds) — the names
//   `tokenctl token --format env` prints;
//   for an oauth2 profile of the atlassian provider also
//   JIRA_OAUTH_ACCESS_TOKEN (what existing Jira token-manager scripts read)
//   and, when the profile knows it, JIRA_OAUTH_CLOUD_ID;
//   then NAME=token for every name in `extra` (--env NAME), which wins over
//   a default of the same name.
// No name appears twice.
std::vector<std::pair<std::string, std::string>> exec_token_env(const TokenEnvInput& in,
                                                                std::span<const std::string> extra);

// What exec_endpoint_env needs: the profile and the stand-in endpoint
// tokend opened for the command (POST /v1/profiles/NAME/endpoint).
struct EndpointEnvInput {
  std::string_view kind;      // oauth2 | api-token | pat
  std::string_view provider;  // atlassian | generic | ...
  std::string_view cloud_id;  // config.cloud_id, empty when unknown
  std::string_view url;       // the endpoint's base for the whole upstream
  std::span<const std::pair<std::string, std::string>>
      product_urls;  // "jira" -> base, "confluence" -> base
  std::string_view standin;
  std::string_view user;  // a user name for Basic clients
};

// The variable names the command wants (tokenctl exec --endpoint flags).
struct EndpointEnvNames {
  std::vector<std::string> url;  // --url-env NAME (the base) or NAME=PRODUCT (that product's base)
  std::vector<std::string> standin;  // --standin-env NAME, and --env NAME
  std::vector<std::string> user;     // --user-env NAME
};

// The variables `tokenctl exec --endpoint` sets, in this order:
//   TOKEND_URL (the endpoint's base), TOKEND_JIRA_URL and
//   TOKEND_CONFLUENCE_URL (when the profile reaches those products),
//   TOKEND_TOKEN (the stand-in), TOKEND_TOKEN_TYPE (Bearer),
//   TOKEND_AUTHORIZATION ("Bearer " + stand-in), TOKEND_USER;
//   for an oauth2 profile of the atlassian provider also
//   JIRA_OAUTH_ACCESS_TOKEN (the stand-in) and JIRA_OAUTH_CLOUD_ID;
//   then the names asked for, which win over a default of the same name.
// Errc::invalid_argument for a bad name or a product the profile does not
// reach (the message lists those it does). No name appears twice.
Result<std::vector<std::pair<std::string, std::string>>> exec_endpoint_env(
    const EndpointEnvInput& in, const EndpointEnvNames& names);

// The child's environment: every "NAME=value" entry of `current` whose NAME
// is not set by `vars` (entries without '=' are kept as they are), then
// `vars` as "NAME=value".
std::vector<std::string> merge_environment(
    std::span<const char* const> current,
    std::span<const std::pair<std::string, std::string>> vars);

// tokenctl's own environment, as merge_environment takes it.
std::vector<const char*> process_environment();

// How a child ended.
struct ChildExit {
  int code = 0;    // exit status when it exited
  int signal = 0;  // the signal that killed it, else 0
};

// Runs argv[0] (looked up in PATH as execvp does; no shell) with `env` as its
// whole environment, in tokenctl's process group, with stdin, stdout and
// stderr inherited. SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
// sent to tokenctl by another process (kill, sigqueue) are passed on to the
// child; the same signals from the terminal are not, because the terminal
// already sent them to the child, which shares tokenctl's foreground process
// group. Waits for the child.
// Errors: Errc::not_found when the command cannot be found, Errc::permission
// when it cannot be executed (errors from execvp), Errc::io when no process
// could be started. Nothing has run in those cases.
Result<ChildExit> run_command(const std::vector<std::string>& argv,
                              const std::vector<std::string>& env);

// A command started but held before exec, so that its pid is known while
// its environment is still being made (tokend audits the calls made through a
// stand-in endpoint with the command's own pid). The same process rules as
// run_command; signals forwarded while it is held reach it (and end it).
class HeldCommand {
 public:
  // Forks the child and holds it. `env_bytes`: the most the environment
  // given to run() may take (pointers and strings; see environment_bytes).
  static Result<HeldCommand> start(const std::vector<std::string>& argv, std::size_t env_bytes);
  HeldCommand(HeldCommand&&) noexcept;
  HeldCommand& operator=(HeldCommand&&) = delete;
  ~HeldCommand();  // never run: the child exits without running anything, and is reaped
  [[nodiscard]] pid_t pid() const;
  // Execs the command with `env` as its whole environment and waits for it;
  // errors as run_command. Once only.
  Result<ChildExit> run(const std::vector<std::string>& env);

  struct State;

 private:
  explicit HeldCommand(std::unique_ptr<State> state);
  std::unique_ptr<State> m_state;
};

// What an environment made of `current` plus up to `extra` bytes of added
// variables needs in HeldCommand::start.
std::size_t environment_bytes(std::span<const char* const> current, std::size_t extra);

// Ends tokenctl the way the child ended, after stdio was flushed: a signal
// death is repeated on tokenctl itself (default action restored, no core
// file), so that a shell sees "killed by SIGINT" and stops a script as it
// would for the command itself. Returns the exit code to use otherwise: the
// child's status, or 128 + signal when re-raising did not end tokenctl.
int exit_like(const ChildExit& child);

}  // namespace tokend::ctl
