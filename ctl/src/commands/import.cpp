// tokenctl import: takes over a script's JIRA_OAUTH_* token set from a .env
// file or the environment.
#include "ctl/import.hpp"

#include <fmt/format.h>

#include <span>

#include "commands/common.hpp"
#include "commands/profile_options.hpp"
#include "core/paths.hpp"
#include "core/secret.hpp"
#include "ctl/dotenv.hpp"
#include "ctl/format.hpp"

namespace tokend::ctl {

namespace {

po::options_description import_options() {
  po::options_description o(
      "tokenctl import PROFILE --dotenv FILE | --from-env [options]\n"
      "Reads JIRA_OAUTH_CLIENT_ID, _CLIENT_SECRET, _REDIRECT_URI, _ACCESS_TOKEN and "
      "_REFRESH_TOKEN,\n"
      "and when present JIRA_OAUTH_SCOPES, JIRA_OAUTH_SITE (or JIRA_URL, JIRA_BASE_URL) and\n"
      "JIRA_OAUTH_EXPIRES_AT (else the access token's JWT exp). Options override the file");
  o.add_options()("dotenv", po::value<std::string>(),
                  "read the JIRA_OAUTH_* variables from this .env file")(
      "from-env", "read them from the environment");
  add_profile_options(o);
  return o;
}

DotenvValues variables_from_env() {
  DotenvValues vars;
  const EnvLookup env = process_env();
  for (const auto& names : {std::span<const std::string_view>(k_import_required),
                            std::span<const std::string_view>(k_import_optional)}) {
    for (const auto n : names) {
      if (auto v = env(std::string(n).c_str()))
        vars.insert_or_assign(std::string(n), Secret::adopt(std::move(*v)));
    }
  }
  return vars;
}

// Flags override the file's values (and satisfy a missing variable).
void apply_overrides(const po::variables_map& vm, DotenvValues& vars) {
  const std::pair<const char*, const char*> overrides[] = {
      {"client-id", "JIRA_OAUTH_CLIENT_ID"},
      {"redirect-uri", "JIRA_OAUTH_REDIRECT_URI"},
      {"scopes", "JIRA_OAUTH_SCOPES"},
      {"site", "JIRA_OAUTH_SITE"}};
  for (const auto& [flag, variable] : overrides) {
    if (auto v = opt(vm, flag)) vars.insert_or_assign(variable, Secret(*v));
  }
}

std::string next_refresh(const client::Profile& p) {
  if (p.next_refresh_at) return "next refresh " + relative_time(p.next_refresh_at, now_s());
  if (p.state == "refreshing") return "refreshing now";
  return fmt::format("no refresh scheduled (state {})", p.state);
}

// Without a sink the script's copy of the refresh token goes stale.
void warn_no_sink(const Ctx& ctx, const std::string& name, const std::optional<std::string>& dotenv,
                  const std::string& provider) {
  std::string note = fmt::format(
      "Note: tokend refreshes {} from now on. A refresh can replace the refresh token, and then "
      "the one in {} stops "
      "working{}: stop any script that refreshes it.",
      name, dotenv ? *dotenv : "your scripts' environment",
      provider == "atlassian" ? " (Atlassian accepts the previous one for 10 minutes)" : "");
  if (dotenv) {
    note += fmt::format(
        " Scripts that only read the access token can have tokend keep it current there: add "
        "--sink-dotenv {}=JIRA_OAUTH_ACCESS_TOKEN.",
        *dotenv);
  }
  say(ctx.io.err, note + "\n");
}

}  // namespace

int cmd_import(Ctx& ctx, const Args& args) {
  auto vm = parse(args, import_options(), {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  const auto dotenv = opt(vm, "dotenv");
  const bool from_env = vm.count("from-env") != 0;
  if (dotenv.has_value() == from_env) throw UsageError{"give either --dotenv FILE or --from-env"};
  check_profile_options(vm);

  DotenvValues vars;
  if (dotenv) {
    auto r = read_dotenv_file(*dotenv);
    if (!r) {
      if (r.error().code == Errc::io) throw UsageError{r.error().message};
      return error(ctx, r.error().message);
    }
    vars = std::move(*r);
  } else {
    vars = variables_from_env();
  }
  apply_overrides(vm, vars);
  const std::string provider = opt(vm, "provider").value_or("atlassian");
  auto body = import_profile_body(vars, provider);
  vars.clear();
  const std::string source = dotenv ? *dotenv : "the environment";
  if (!body) {
    if (body.error().code == Errc::not_found)
      throw UsageError{fmt::format("{} in {}", body.error().message, source)};
    return error(ctx, fmt::format("{}: {}", source, body.error().message));
  }
  apply_profile_options(vm, *body);
  const bool has_sink = body->contains("sinks");

  std::string payload = body->dump();
  client::wipe_strings(*body);
  auto stored = ctx.api().put_profile(name, payload);
  secure_wipe(payload);
  if (!stored) return report(ctx, stored.error());

  const auto& p = stored->profile;
  const std::string shown_provider = p.provider.empty() ? provider : p.provider;
  say(ctx.io.out,
      fmt::format("Imported {}{} ({} OAuth, {}); {}\n", name,
                  stored->status == 200 ? " over the existing profile" : "", shown_provider,
                  p.has_refresh_token ? "refresh token stored" : "no refresh token",
                  next_refresh(p)));
  if (!has_sink) warn_no_sink(ctx, name, dotenv, shown_provider);
  return k_ok;
}

}  // namespace tokend::ctl
