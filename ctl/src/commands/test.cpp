// tokenctl test: checks the profile's token against the provider.
#include <fmt/format.h>

#include "commands/common.hpp"

namespace tokend::ctl {

int cmd_test(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl test PROFILE [--json]");
  o.add_options()("json", "print tokend's whole answer (including the provider's body) as JSON");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto t = ctx.api().test(name);
  if (!t) return report(ctx, t.error());
  if (vm.count("json") != 0) {
    say(ctx.io.out, t->json.dump(2) + "\n");
  } else {
    std::string line =
        fmt::format("{} {}: {} {}", t->ok ? "OK" : "FAILED", name, t->status, t->url);
    if (!t->summary.empty()) line += " \u2014 " + t->summary;
    say(ctx.io.out, line + "\n");
  }
  return t->ok ? k_ok : k_error;
}

}  // namespace tokend::ctl
