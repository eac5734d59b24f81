// tokenctl logout: revoke (when the provider can) and forget the tokens.
#include <fmt/format.h>

#include "commands/common.hpp"

namespace tokend::ctl {

int cmd_logout(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl logout PROFILE");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto r = ctx.api().logout(name);
  if (!r) return report(ctx, r.error());
  if (r->revoked) {
    say(ctx.io.out, fmt::format("Logged out of {}; the provider revoked the token.\n", name));
  } else {
    say(ctx.io.out, fmt::format("Logged out of {} (tokens forgotten; not revoked: {}).\n", name,
                                r->reason.empty() ? "tokend gave no reason" : r->reason));
  }
  return k_ok;
}

}  // namespace tokend::ctl
