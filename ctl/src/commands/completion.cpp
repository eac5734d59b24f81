// tokenctl completion bash|zsh.
#include "ctl/completion.hpp"

#include "commands/common.hpp"

namespace tokend::ctl {

int cmd_completion(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl completion bash|zsh");
  auto vm = parse(args, o, {"shell"});
  const std::string shell = need(vm, "shell", "bash or zsh");
  auto script = completion_script(shell);
  if (!script) throw UsageError{script.error().message};
  say(ctx.io.out, *script);
  return k_ok;
}

}  // namespace tokend::ctl
