// tokenctl: the commands (ctl/src/commands/) over the local API (client::ApiClient).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace tokend::ctl {

// Exit codes are part of the scripting contract.
enum Exit : int {
  k_ok = 0,
  k_error = 1,
  k_usage = 2,
  k_unreachable = 3,  // tokend not running
  k_reauth = 4,       // re-authentication required
};

struct Io {
  std::FILE* out = stdout;
  std::FILE* err = stderr;
  std::FILE* in = stdin;
};

int run(const std::vector<std::string>& args, const Io& io = {});

}  // namespace tokend::ctl
