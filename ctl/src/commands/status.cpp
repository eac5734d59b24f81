// tokenctl status and list: the profiles tokend holds.
#include <fmt/format.h>

#include "commands/common.hpp"
#include "ctl/format.hpp"

namespace tokend::ctl {

int cmd_status(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl status [PROFILE] [--json]");
  o.add_options()("json", "print JSON");
  auto vm = parse(args, o, {"profile"});
  const bool as_json = vm.count("json") != 0;
  if (auto name = optional_profile(vm)) {
    auto p = ctx.api().profile(*name);
    if (!p) return report(ctx, p.error());
    say(ctx.io.out,
        as_json ? p->json.dump(2) + "\n" : render_profile_detail(p->json, now_s(), ctx.colour));
    return k_ok;
  }
  auto list = ctx.api().profiles();
  if (!list) return report(ctx, list.error());
  say(ctx.io.out,
      as_json ? list->json.dump(2) + "\n" : render_status_table(list->json, now_s(), ctx.colour));
  return k_ok;
}

int cmd_list(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl list [--json] [--quiet]");
  o.add_options()("json", "print JSON")("quiet,q", "names only");
  auto vm = parse(args, o, {});
  auto list = ctx.api().profiles();
  if (!list) return report(ctx, list.error());
  if (vm.count("json") != 0) {
    say(ctx.io.out, list->json.dump(2) + "\n");
    return k_ok;
  }
  std::string out;
  for (const auto& p : list->profiles) {
    out += vm.count("quiet") != 0 ? p.name + "\n"
                                  : fmt::format("{:<24} {:<10} {}\n", p.name, p.kind, p.state);
  }
  say(ctx.io.out, out);
  return k_ok;
}

}  // namespace tokend::ctl
