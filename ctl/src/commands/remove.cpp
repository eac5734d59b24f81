// tokenctl remove: deletes a profile and its tokens.
#include <fmt/format.h>

#include "commands/common.hpp"

namespace tokend::ctl {

int cmd_remove(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl remove PROFILE");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  if (auto r = ctx.api().remove_profile(name); !r) return report(ctx, r.error());
  say(ctx.io.out, fmt::format("removed profile {}\n", name));
  return k_ok;
}

}  // namespace tokend::ctl
