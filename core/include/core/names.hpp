// Profile names appear in URLs and file names: 1-64 characters of
// [A-Za-z0-9._-], not starting with '.' or '-'. Shared by the daemon and
// tokenctl so both reject a bad name with the same message.
#pragma once

#include <string_view>

#include "core/error.hpp"

namespace tokend {

Result<> validate_profile_name(std::string_view name);

}  // namespace tokend
