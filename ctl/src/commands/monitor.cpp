// tokenctl monitor: tokend's events, live, until Ctrl-C.
#include "commands/common.hpp"
#include "ctl/format.hpp"

namespace tokend::ctl {

int cmd_monitor(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl monitor [PROFILE] [--json]");
  o.add_options()("json", "one JSON object per event");
  auto vm = parse(args, o, {"profile"});
  const bool as_json = vm.count("json") != 0;
  const auto profile = optional_profile(vm);
  auto r = ctx.api().events(profile, [&](const json::Json& event) {
    say(ctx.io.out, as_json ? event.dump() + "\n" : render_event_line(event, ctx.colour));
  });
  if (!r) {
    // A stream that breaks off means tokend went away.
    if (r.error().stage == client::ApiError::Stage::exchange)
      return error(ctx, r.error().error.message, k_unreachable);
    return report(ctx, r.error());
  }
  return error(ctx, "tokend closed the event stream", k_unreachable);
}

}  // namespace tokend::ctl
