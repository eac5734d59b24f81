// tokenctl token and headers: the profile's current token on stdout.
#include <fmt/format.h>

#include "commands/common.hpp"
#include "core/secret.hpp"
#include "ctl/format.hpp"

namespace tokend::ctl {

client::TokenRequest token_request(const po::variables_map& vm,
                                   std::string_view default_min_valid) {
  client::TokenRequest r;
  if (auto mv = seconds(vm, "min-valid", 86'400)) {
    r.min_valid = fmt::format("{}", *mv);
  } else {
    r.min_valid = default_min_valid;
  }
  if (auto w = seconds(vm, "wait", 3'600)) r.wait_s = *w;
  return r;
}

int cmd_token(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl token PROFILE [--min-valid S] [--wait S] [--format F]");
  o.add_options()(
      "min-valid", po::value<std::string>(),
      "seconds the token must stay valid (default 60; capped at what a fresh token gives)")(
      "wait", po::value<std::string>(), "seconds to wait for a refresh or login in progress")(
      "format", po::value<std::string>()->default_value("raw"),
      "raw|header|json|env|exec-credential");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto format = parse_token_format(vm["format"].as<std::string>());
  if (!format) throw UsageError{format.error().message};
  std::string out;
  {
    auto t = ctx.api().token(name, token_request(vm));
    if (!t) return report(ctx, t.error());
    out = render_token(t->json(), *format);
  }
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

// Claude Code's headersHelper (and other MCP clients) run this and read a
// JSON object of header names and values from stdout. On any failure stdout
// stays empty and the exit code is non-zero, so a client never sends a
// half-formed header. Such clients ask only when they connect, so the token
// has at least half its lifetime left unless --min-valid says otherwise.
int cmd_headers(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl headers PROFILE [--min-valid S]");
  o.add_options()("min-valid", po::value<std::string>(),
                  "seconds the token must stay valid (default: half the token's lifetime; capped "
                  "at what a fresh "
                  "token gives)");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  std::string authorization;
  {
    auto t = ctx.api().token(name, token_request(vm, "half"));
    if (!t) return report(ctx, t.error());
    authorization = t->authorization();
  }
  if (authorization.empty()) return error(ctx, "tokend's answer carries no authorization value");
  // Exactly {"Authorization": "..."}, the value JSON-escaped.
  std::string out = "{\"Authorization\": " + json::Json(authorization).dump() + "}\n";
  secure_wipe(authorization);
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

}  // namespace tokend::ctl
