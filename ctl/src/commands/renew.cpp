// tokenctl renew: refresh now and print the new expiry.
#include <fmt/format.h>

#include <algorithm>

#include "commands/common.hpp"
#include "ctl/format.hpp"

namespace tokend::ctl {

namespace {

// The OAuth profiles that have a refresh token; nullopt (after saying why)
// when tokend could not list them.
std::optional<std::vector<std::string>> renewable(const Ctx& ctx, int& exit) {
  auto list = ctx.api().profiles();
  if (!list) {
    exit = report(ctx, list.error());
    return std::nullopt;
  }
  std::vector<std::string> names;
  for (const auto& p : list->profiles) {
    if (p.kind == "oauth2" && p.has_refresh_token) names.push_back(p.name);
  }
  return names;
}

// Renews one profile; its exit code.
int renew(const Ctx& ctx, const std::string& name) {
  auto r = ctx.api().refresh(name);
  if (!r) return report(ctx, r.error());
  const std::string until = r->expires_at
                                ? fmt::format("valid until {} ({})", rfc3339(*r->expires_at),
                                              relative_time(r->expires_at, now_s()))
                                : "no expiry";
  say(ctx.io.out, fmt::format("{}: renewed, {}\n", name, until));
  return k_ok;
}

}  // namespace

int cmd_renew(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl renew PROFILE | --all");
  o.add_options()("all", "every OAuth profile that has a refresh token");
  auto vm = parse(args, o, {"profile"});
  std::vector<std::string> names;
  if (vm.count("all") != 0) {
    if (vm.count("profile") != 0) throw UsageError{"give a PROFILE or --all, not both"};
    int exit = k_ok;
    auto all = renewable(ctx, exit);
    if (!all) return exit;
    if (all->empty()) {
      say(ctx.io.out, "no OAuth profile with a refresh token\n");
      return k_ok;
    }
    names = std::move(*all);
  } else {
    names.push_back(need(vm, "profile", "PROFILE or --all"));
  }
  int worst = k_ok;
  for (const auto& name : names) worst = std::max(worst, renew(ctx, name));
  return worst;
}

}  // namespace tokend::ctl
