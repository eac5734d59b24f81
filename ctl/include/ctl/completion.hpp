#pragma once

#include <string>
#include <string_view>

#include "core/error.hpp"

namespace tokend::ctl {

// The completion script for "bash" or "zsh".
Result<std::string> completion_script(std::string_view shell);

}  // namespace tokend::ctl
