// The profile settings `add` and `import` share: every oauth2 field of the
// profile API that is not a secret, plus site, api_base and sinks (all kinds).
#pragma once

#include "commands/common.hpp"
#include "core/json.hpp"

namespace tokend::ctl {

void add_profile_options(po::options_description& o);
// Usage errors in add_profile_options() values, before anything is read.
void check_profile_options(const po::variables_map& vm);
// Sets the fields of add_profile_options() given on the command line
// (checked by check_profile_options first).
void apply_profile_options(const po::variables_map& vm, json::Json& body);

}  // namespace tokend::ctl
