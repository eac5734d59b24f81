// tokenctl's entry: global options, the command table and dispatch. Each
// command lives in commands/NAME.cpp.
#include "ctl/app.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <optional>

#include "commands/common.hpp"
#include "core/paths.hpp"

namespace tokend::ctl {

namespace {

struct Command {
  const char* name;
  int (*fn)(Ctx&, const std::vector<std::string>&);
  const char* synopsis;
};

constexpr Command k_commands[] = {
    {"status", cmd_status, "status [PROFILE] [--json]          profiles, states and expiry"},
    {"list", cmd_list, "list [--json] [-q]                  profile names, kinds and states"},
    {"token", cmd_token,
     "token PROFILE [--min-valid S] [--wait S] [--format raw|header|json|env|exec-credential]"},
    {"headers", cmd_headers,
     "headers PROFILE                     {\"Authorization\": ...} for an MCP headersHelper"},
    {"exec", cmd_exec,
     "exec PROFILE [--endpoint] [--env NAME]... -- CMD [ARG...]   run CMD with a fresh credential"},
    {"mcp", cmd_mcp,
     "mcp PROFILE [--wait S] | mcp config PROFILE --client CLIENT [--write] [-- CMD...]   MCP "
     "bridge; client set-up"},
    {"api", cmd_api,
     "api PROFILE METHOD PATH [--data @FILE|-|TEXT] [-H \"K: V\"]... [--include]   a call through "
     "tokend's proxy"},
    {"add", cmd_add,
     "add PROFILE --kind oauth2|api-token|pat [...]   store a profile (see tokenctl add --help)"},
    {"import", cmd_import,
     "import PROFILE --dotenv FILE | --from-env [...]   take over a script's JIRA_OAUTH_* token "
     "set"},
    {"login", cmd_login,
     "login PROFILE [--device] [--no-browser] [--timeout S]   sign in with the browser"},
    {"logout", cmd_logout, "logout PROFILE                      revoke and forget the tokens"},
    {"test", cmd_test, "test PROFILE [--json]               check the token against the provider"},
    {"renew", cmd_renew,
     "renew PROFILE | --all                refresh now and print the new expiry"},
    {"remove", cmd_remove, "remove PROFILE                      delete a profile and its tokens"},
    {"monitor", cmd_monitor, "monitor [PROFILE] [--json]          live events until Ctrl-C"},
    {"ping", cmd_ping, "ping                                is tokend running?"},
    {"version", cmd_version, "version                             tokenctl's version"},
    {"completion", cmd_completion, "completion bash|zsh                 shell completion script"},
};

std::string usage() {
  std::string s =
      "tokenctl — client of the tokend credential daemon\n\n"
      "Usage: tokenctl [--socket PATH] COMMAND [ARGS...]\n\nCommands:\n";
  for (const auto& c : k_commands) s += fmt::format("  tokenctl {}\n", c.synopsis);
  s += "\nGlobal options:\n"
       "  --socket PATH   tokend's socket (env TOKEND_SOCKET; default "
       "$XDG_RUNTIME_DIR/tokend/tokend.sock)\n"
       "  --help, -h      this help; tokenctl COMMAND --help for a command's options\n\n"
       "Secrets are read from files, standard input (-) or a prompt, never from arguments.\n"
       "Exit codes: 0 ok, 1 error, 2 usage, 3 tokend not reachable, 4 re-authentication required.\n"
       "NO_COLOR disables colour.\n";
  return s;
}

}  // namespace

int run(const std::vector<std::string>& args, const Io& io) {
  Ctx ctx;
  ctx.io = io;
  std::optional<std::filesystem::path> socket_flag;
  std::size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--socket" && i + 1 < args.size()) {
      socket_flag = args[++i];
    } else if (a.starts_with("--socket=")) {
      socket_flag = a.substr(9);
    } else if (a == "--help" || a == "-h" || a == "help") {
      say(io.out, usage());
      return k_ok;
    } else if (a == "--version") {
      say(io.out, fmt::format("tokenctl {}\n", TOKEND_VERSION));
      return k_ok;
    } else {
      break;
    }
  }
  if (i >= args.size()) {
    say(io.err, usage());
    return k_usage;
  }
  const EnvLookup env = process_env();
  ctx.socket = resolve_socket_path(env, socket_flag);
  ctx.colour =
      ::isatty(::fileno(io.out)) != 0 && !env("NO_COLOR").has_value() && env("TERM") != "dumb";

  const std::string& name = args[i];
  const std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                      args.end());
  for (const auto& c : k_commands) {
    if (name != c.name) continue;
    try {
      return c.fn(ctx, rest);
    } catch (const HelpRequest& h) {
      say(io.out, fmt::format("Usage: tokenctl {}\n{}", c.synopsis, h.options));
      return k_ok;
    } catch (const UsageError& e) {
      say(io.err,
          fmt::format("tokenctl {}: {}\nUsage: tokenctl {}\n", name, e.message, c.synopsis));
      return k_usage;
    }
  }
  say(io.err, fmt::format("tokenctl: unknown command '{}'\n\n{}", name.substr(0, 64), usage()));
  return k_usage;
}

}  // namespace tokend::ctl
