// tokenctl add: stores a profile (PUT), its secrets read from files,
// standard input or a prompt.
#include <fmt/format.h>
#include <unistd.h>

#include "commands/common.hpp"
#include "commands/profile_options.hpp"
#include "core/secret.hpp"
#include "ctl/input.hpp"

namespace tokend::ctl {

namespace {

po::options_description add_options() {
  po::options_description o("tokenctl add PROFILE --kind oauth2|api-token|pat [options]");
  o.add_options()("kind", po::value<std::string>(), "oauth2, api-token or pat");
  add_profile_options(o);
  o.add_options()("client-secret-file", po::value<std::string>(),
                  "file holding the client secret, or - for stdin")(
      "email", po::value<std::string>(), "account email (api-token)")(
      "token-file", po::value<std::string>(),
      "file holding the API token, PAT or access token, or - for stdin")(
      "refresh-token-file", po::value<std::string>(),
      "file holding a refresh token, or - for stdin")(
      "expires-in", po::value<std::string>(), "seconds the supplied access token stays valid");
  return o;
}

// The secrets of one `add`: read into the request body, and kept (wiped on
// destruction) until it is sent.
struct SecretReader {
  const Ctx& ctx;
  const po::variables_map& vm;
  const std::string& name;
  const std::string& kind;
  json::Json& body;
  std::vector<Secret> held;

  // The secret from --FLAG FILE, or (when `required`) a prompt on a terminal.
  void read(const char* flag, const char* field, std::string_view what, bool required) {
    std::optional<Secret> s;
    if (auto src = opt(vm, flag)) {
      auto r = read_secret(*src, what, ctx.io.in);
      if (!r) throw UsageError{r.error().message};
      s = std::move(*r);
    } else if (required) {
      if (::isatty(::fileno(ctx.io.in)) == 0) {
        throw UsageError{fmt::format(
            "kind {} needs the {}: pass --{} FILE (or - for standard input)", kind, what, flag)};
      }
      auto r = prompt_secret(fmt::format("{} for {}: ", what, name));
      if (!r) throw UsageError{r.error().message};
      s = std::move(*r);
    }
    if (s) {
      body[field] = std::string(s->reveal());
      held.push_back(std::move(*s));
    }
  }
};

}  // namespace

int cmd_add(Ctx& ctx, const Args& args) {
  auto vm = parse(args, add_options(), {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  const std::string kind = need(vm, "kind", "--kind oauth2|api-token|pat");
  if (kind != "oauth2" && kind != "api-token" && kind != "pat") {
    throw UsageError{fmt::format("unknown kind '{}'; use oauth2, api-token or pat", kind)};
  }
  check_profile_options(vm);
  int stdin_users = 0;
  for (const char* f : {"client-secret-file", "token-file", "refresh-token-file"}) {
    if (opt(vm, f) == "-") ++stdin_users;
  }
  if (stdin_users > 1) throw UsageError{"only one secret can come from standard input (-)"};

  json::Json body = {{"kind", kind}};
  apply_profile_options(vm, body);
  if (auto e = opt(vm, "email")) body["email"] = *e;
  if (auto e = seconds(vm, "expires-in", 10U * 365 * 24 * 3600)) body["expires_in"] = *e;

  SecretReader secrets{ctx, vm, name, kind, body, {}};
  const bool static_kind = kind != "oauth2";
  secrets.read("token-file", static_kind ? "token" : "access_token",
               kind == "api-token" ? "API token"
               : kind == "pat"     ? "personal access token"
                                   : "access token",
               static_kind);
  secrets.read("refresh-token-file", "refresh_token", "refresh token", false);
  secrets.read("client-secret-file", "client_secret", "client secret", false);

  std::string payload = body.dump();
  client::wipe_strings(body);
  auto stored = ctx.api().put_profile(name, payload);
  secure_wipe(payload);
  if (!stored) return report(ctx, stored.error());
  const auto& p = stored->profile;
  say(ctx.io.out,
      fmt::format("{} profile {} ({}), state {}\n", stored->status == 201 ? "added" : "updated",
                  name, p.kind.empty() ? kind : p.kind, p.state.empty() ? "?" : p.state));
  return k_ok;
}

}  // namespace tokend::ctl
