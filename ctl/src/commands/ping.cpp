// tokenctl ping and version.
#include <fmt/format.h>

#include "commands/common.hpp"

namespace tokend::ctl {

int cmd_ping(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl ping");
  parse(args, o, {});
  auto h = ctx.api().health();
  if (!h) return report(ctx, h.error());
  say(ctx.io.out, fmt::format("tokend {} is running on {} (pid {}, up {} s, {} profiles)\n",
                              h->version, ctx.socket.string(), h->pid, h->uptime_s, h->profiles));
  return k_ok;
}

int cmd_version(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl version");
  parse(args, o, {});
  say(ctx.io.out, fmt::format("tokenctl {}\n", TOKEND_VERSION));
  return k_ok;
}

}  // namespace tokend::ctl
