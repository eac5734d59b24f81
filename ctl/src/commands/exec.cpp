// tokenctl exec: runs a command with a fresh token in its environment (see
// ctl/exec.hpp for the variables and the signal rules), or with --endpoint a
// loopback URL and a stand-in credential. Exit codes: the command's own; when
// a signal killed it, tokenctl kills itself with the same signal (a shell
// then reports the same death), falling back to 128 + the signal number.
// Before the command runs: 1, 2, 3, 4 as usual, 127 when the command is not
// found, 126 when it cannot be executed.
#include "ctl/exec.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "commands/common.hpp"
#include "core/secret.hpp"

namespace tokend::ctl {

namespace {

using Vars = std::vector<std::pair<std::string, std::string>>;

po::options_description exec_options() {
  po::options_description o(
      "tokenctl exec PROFILE [--env NAME]... [--min-valid S] [--wait S] -- CMD [ARG...]\n"
      "tokenctl exec PROFILE --endpoint [--url-env NAME[=PRODUCT]]... [--standin-env NAME]...\n"
      "              [--user-env NAME]... [--wait S] -- CMD [ARG...]\n"
      "Runs CMD (no shell). Signals sent to tokenctl reach CMD; its exit status is tokenctl's.\n"
      "Without --endpoint CMD gets the profile's token in TOKEND_TOKEN, TOKEND_AUTHORIZATION,\n"
      "TOKEND_TOKEN_TYPE and TOKEND_EXPIRES_AT, for Atlassian OAuth profiles also in\n"
      "JIRA_OAUTH_ACCESS_TOKEN (and JIRA_OAUTH_CLOUD_ID): it goes stale when the token expires.\n"
      "With --endpoint (recommended) CMD never sees the token: tokend opens a loopback URL that\n"
      "reaches the profile's upstream with a fresh token on every call, for as long as CMD runs,\n"
      "and CMD gets that URL in TOKEND_URL (TOKEND_JIRA_URL, TOKEND_CONFLUENCE_URL) and a random\n"
      "stand-in credential in TOKEND_TOKEN (TOKEND_AUTHORIZATION, JIRA_OAUTH_ACCESS_TOKEN), to\n"
      "send as a Bearer token or as the Basic password (any user name; TOKEND_USER)");
  o.add_options()(
      "env", po::value<std::vector<std::string>>(),
      "also put the token (with --endpoint: the stand-in) into variable NAME (repeatable)")(
      "min-valid", po::value<std::string>(),
      "seconds the token must stay valid (default 60; capped at what a fresh token gives)")(
      "wait", po::value<std::string>(), "seconds to wait for a refresh or login in progress")(
      "endpoint", "give CMD a loopback URL and a stand-in credential instead of the token")(
      "url-env", po::value<std::vector<std::string>>(),
      "with --endpoint: put the endpoint's URL into NAME, or with NAME=jira|confluence that "
      "product's URL (repeatable)")(
      "standin-env", po::value<std::vector<std::string>>(),
      "with --endpoint: put the stand-in credential into NAME (repeatable)")(
      "user-env", po::value<std::vector<std::string>>(),
      "with --endpoint: put a user name for Basic authentication into NAME (repeatable)");
  return o;
}

std::vector<std::string> list(const po::variables_map& vm, const char* key) {
  return vm.count(key) != 0 ? vm[key].as<std::vector<std::string>>() : std::vector<std::string>{};
}

void check_env_names(const std::vector<std::string>& extra) {
  for (const auto& n : extra) {
    if (!is_env_name(n)) {
      throw UsageError{fmt::format(
          "--env {}: not a variable name (letters, digits and _, not starting with a digit)",
          n.substr(0, 64))};
    }
  }
}

// Which options go with --endpoint and which without.
void check_mode_options(const po::variables_map& vm, bool endpoint) {
  if (!endpoint) {
    for (const char* flag : {"url-env", "standin-env", "user-env"}) {
      if (vm.count(flag) != 0) throw UsageError{fmt::format("--{} needs --endpoint", flag)};
    }
  } else if (vm.count("min-valid") != 0) {
    throw UsageError{"--min-valid does not apply to --endpoint: every call gets a fresh token"};
  }
}

// The --endpoint variable names, checked before tokend opens anything
// (products once it has).
EndpointEnvNames endpoint_names(const po::variables_map& vm,
                                const std::vector<std::string>& extra) {
  EndpointEnvNames names{list(vm, "url-env"), extra, list(vm, "user-env")};
  for (auto& n : list(vm, "standin-env")) names.standin.push_back(std::move(n));
  for (const auto& [flag, specs] :
       {std::pair{"--url-env", &names.url}, std::pair{"--standin-env", &names.standin},
        std::pair{"--user-env", &names.user}}) {
    for (const auto& spec : *specs) {
      const std::string n = spec.substr(0, spec.find('='));
      if (!is_env_name(n) ||
          (spec.find('=') != std::string::npos && std::string_view(flag) != "--url-env")) {
        throw UsageError{fmt::format(
            "{} {}: not a variable name (letters, digits and _, not starting with a digit)", flag,
            spec.substr(0, 64))};
      }
    }
  }
  return names;
}

// What the command needs to run, and what must stay open while it does.
struct Launch {
  Vars vars;
  std::optional<client::Client> endpoint_connection;  // its end closes the endpoint
  std::optional<HeldCommand> held;                    // started, waiting for its environment
};

// --endpoint: CMD is started first and held before exec, so that tokend
// knows its pid when it opens the endpoint. The exit code on failure.
int prepare_endpoint(const Ctx& ctx, const std::string& name, const client::Profile& profile,
                     const std::vector<std::string>& command, const EndpointEnvNames& names,
                     std::optional<std::int64_t> wait_s, Launch& out) {
  auto started = HeldCommand::start(command, environment_bytes(process_environment(), 256 * 1024));
  if (!started) return error(ctx, started.error().message);
  out.held.emplace(std::move(*started));
  auto opened = ctx.api().open_endpoint(name, wait_s, out.held->pid());
  if (!opened) return report(ctx, opened.error());
  std::string standin(opened->standin.reveal());
  opened->standin.clear();
  auto built = exec_endpoint_env({profile.kind, profile.provider, profile.cloud_id, opened->url,
                                  opened->urls, standin, opened->user},
                                 names);
  secure_wipe(standin);
  if (!built) return error(ctx, built.error().message, k_usage);
  out.vars = std::move(*built);
  out.endpoint_connection.emplace(std::move(opened->connection));
  return k_ok;
}

// Without --endpoint: the token itself. The exit code on failure.
int prepare_token(const Ctx& ctx, const std::string& name, const client::Profile& profile,
                  const po::variables_map& vm, const std::vector<std::string>& extra, Launch& out) {
  std::string bare;
  std::string authorization;
  std::string token_type;
  std::optional<std::int64_t> expires_at;
  {
    auto token = ctx.api().token(name, token_request(vm));
    if (!token) return report(ctx, token.error());
    bare = token->token();
    authorization = token->authorization();
    token_type = token->token_type();
    expires_at = token->expires_at();
  }
  if (bare.empty()) return error(ctx, "tokend's answer carries no token");
  out.vars = exec_token_env({profile.kind, profile.provider, profile.cloud_id, bare, token_type,
                             authorization, expires_at},
                            extra);
  secure_wipe(bare);
  secure_wipe(authorization);
  return k_ok;
}

}  // namespace

int cmd_exec(Ctx& ctx, const Args& args) {
  const auto dash = std::find(args.begin(), args.end(), "--");
  const std::vector<std::string> own(args.begin(), dash);
  auto vm = parse(own, exec_options(), {"profile"}, /*allow_extra=*/true);
  const std::string name = need(vm, "profile", "PROFILE");
  if (dash == args.end())
    throw UsageError{"put -- before the command: tokenctl exec PROFILE -- CMD [ARG...]"};
  if (vm.count("args") != 0) {
    throw UsageError{fmt::format("unexpected '{}' before --",
                                 vm["args"].as<std::vector<std::string>>()[0].substr(0, 64))};
  }
  const std::vector<std::string> command(dash + 1, args.end());
  if (command.empty() || command[0].empty()) throw UsageError{"no command after --"};
  const std::vector<std::string> extra = list(vm, "env");
  check_env_names(extra);
  const bool endpoint = vm.count("endpoint") != 0;
  check_mode_options(vm, endpoint);
  // seconds() throws UsageError for a bad value: check before any call.
  seconds(vm, "min-valid", 86'400);
  const auto wait_s = seconds(vm, "wait", 3'600);

  auto profile = ctx.api().profile(name);
  if (!profile) return report(ctx, profile.error());

  Launch launch;
  const int prepared = endpoint ? prepare_endpoint(ctx, name, *profile, command,
                                                   endpoint_names(vm, extra), wait_s, launch)
                                : prepare_token(ctx, name, *profile, vm, extra, launch);
  if (prepared != k_ok) return prepared;
  auto env = merge_environment(process_environment(), launch.vars);
  for (auto& v : launch.vars) secure_wipe(v.second);

  auto child = launch.held ? launch.held->run(env) : run_command(command, env);
  for (auto& e : env) secure_wipe(e);
  launch.endpoint_connection.reset();  // the endpoint closes with the command
  if (!child) {
    const Errc code = child.error().code;
    return error(ctx, child.error().message,
                 code == Errc::not_found    ? 127
                 : code == Errc::permission ? 126
                                            : k_error);
  }
  return exit_like(*child);
}

}  // namespace tokend::ctl
