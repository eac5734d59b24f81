// tokenctl mcp PROFILE (the stdio bridge, ctl/src/mcp/bridge.cpp) and
// tokenctl mcp config (an MCP client's config entry, ctl/src/mcp/config.cpp).
#include <fmt/format.h>

#include <ctime>

#include "commands/common.hpp"
#include "core/paths.hpp"
#include "ctl/mcp/bridge.hpp"
#include "ctl/mcp/config.hpp"

namespace tokend::ctl {

namespace {

constexpr std::string_view k_mcp_config_help = R"(
tokenctl mcp config PROFILE --client CLIENT [--name ENTRY] [--write [--file PATH] [--force]]
tokenctl mcp config PROFILE --client CLIENT [--name ENTRY] [EXEC_OPTION...] -- CMD [ARG...]

Prints CLIENT's config entry that starts `tokenctl mcp PROFILE` (the MCP bridge through
tokend), in CLIENT's own format; with -- CMD, an entry that runs the local server CMD under
`tokenctl exec PROFILE --endpoint [EXEC_OPTION...] -- CMD` instead (options between PROFILE
and -- that are not listed here go to exec as they are). See docs/mcp-clients.md.

  --client CLIENT   claude-code, claude-desktop, codex, cursor, vscode, gemini or opencode
  --name ENTRY      the entry's name (default: PROFILE, '.' turned into '-')
  --write           merge the entry into CLIENT's user config file, keeping a backup
                    (FILE.bak-YYYYmmddTHHMMSS) and every other entry; re-running changes nothing
  --file PATH       with --write: this file instead (e.g. a project's .mcp.json or .vscode/mcp.json)
  --force           with --write: replace an entry of that name that does not run tokenctl

The entry runs tokenctl by its absolute path (GUI clients do not have your PATH); a
non-default --socket or TOKEND_SOCKET goes into its environment.
Exit codes: 0 ok, 1 error (the file is unchanged), 2 usage.
)";

// The socket goes into the entry only when it is not the one tokenctl
// would find anyway, made absolute: the client starts in another directory.
std::vector<std::pair<std::string, std::string>> socket_vars(const Ctx& ctx, const EnvLookup& env) {
  std::vector<std::pair<std::string, std::string>> vars;
  const EnvLookup env_without_socket = [&env](const char* name) -> std::optional<std::string> {
    if (std::string_view(name) == "TOKEND_SOCKET") return std::nullopt;
    return env(name);
  };
  if (ctx.socket != resolve_socket_path(env_without_socket)) {
    std::error_code ec;
    const auto absolute = std::filesystem::absolute(ctx.socket, ec);
    vars.emplace_back("TOKEND_SOCKET", (ec ? ctx.socket : absolute).string());
  }
  return vars;
}

// `tokenctl mcp config ...`: the client's config entry for this profile.
int cmd_mcp_config(Ctx& ctx, const Args& args) {
  auto parsed = parse_mcp_config_args(args);
  if (!parsed) throw UsageError{parsed.error().message};
  if (parsed->help) throw HelpRequest{std::string(k_mcp_config_help)};
  const McpClient client = *parsed->client;
  const EnvLookup env = process_env();
  std::string name = parsed->name.value_or(default_entry_name(parsed->profile));
  McpServerEntry entry =
      parsed->command.empty()
          ? bridge_entry(std::move(name), tokenctl_path(), parsed->profile, socket_vars(ctx, env))
          : exec_entry(std::move(name), tokenctl_path(), parsed->profile, parsed->exec_options,
                       parsed->command, socket_vars(ctx, env));

  const auto path = parsed->file.value_or(default_config_path(client, host_os(), env));
  if (!parsed->write) {
    auto text = render_entry(client, entry);
    if (!text) return error(ctx, text.error().message);
    say(ctx.io.out, *text);
    say(ctx.io.err,
        fmt::format("# {} reads this from {}; add --write to merge it there (a backup is kept)\n",
                    mcp_client_name(client), path.string()));
    return k_ok;
  }
  auto r = write_entry_to_file(client, path, entry, parsed->force, std::time(nullptr));
  if (!r) return error(ctx, r.error().message);
  switch (r->action) {
    case MergeAction::unchanged:
      say(ctx.io.out,
          fmt::format("{}: entry \"{}\" is already up to date\n", r->file.string(), entry.name));
      break;
    case MergeAction::added:
    case MergeAction::replaced:
      say(ctx.io.out,
          fmt::format(
              "{}: {} entry \"{}\"{}\n", r->file.string(),
              r->action == MergeAction::added ? "added" : "replaced", entry.name,
              r->backup ? fmt::format(" (previous file kept as {})", r->backup->string()) : ""));
      break;
  }
  return k_ok;
}

// `tokenctl mcp PROFILE [--wait S]`: a stdio MCP server bridging to the
// profile's remote MCP server through tokend.
int cmd_mcp_bridge(Ctx& ctx, const Args& args) {
  po::options_description o(
      "tokenctl mcp PROFILE [--wait S] [--no-browser]\n"
      "A stdio MCP server for any MCP client ({\"command\": \"tokenctl\", \"args\": [\"mcp\", "
      "\"PROFILE\"]}): each\n"
      "JSON-RPC message goes through tokend to the profile's MCP server with a fresh token, which "
      "never\n"
      "leaves tokend. A 401 refreshes and replays once; when no token can be had, requests get a "
      "JSON-RPC\n"
      "error naming tokenctl login PROFILE (code -32001) and the bridge keeps running. A profile "
      "that\n"
      "never signed in starts its login (browser, or the URL on stderr). Ends on stdin EOF or "
      "SIGTERM,\n"
      "deleting the server's session; stdout carries JSON-RPC only");
  o.add_options()("wait", po::value<std::string>(),
                  "seconds a request waits for a login instead of failing at once")(
      "no-browser", "never open a browser for the first login: print the URL on stderr");
  auto vm = parse(args, o, {"profile"});
  mcp::BridgeOptions b;
  b.profile = need(vm, "profile", "PROFILE");
  b.wait_s = seconds(vm, "wait", 3'600).value_or(0);
  b.open_browser = vm.count("no-browser") == 0;
  b.socket = ctx.socket;
  b.in_fd = ::fileno(ctx.io.in);
  b.out_fd = ::fileno(ctx.io.out);
  b.err = ctx.io.err;
  return mcp::run_bridge(b);
}

}  // namespace

int cmd_mcp(Ctx& ctx, const Args& args) {
  if (!args.empty() && args[0] == "config")
    return cmd_mcp_config(ctx, Args(args.begin() + 1, args.end()));
  return cmd_mcp_bridge(ctx, args);
}

}  // namespace tokend::ctl
