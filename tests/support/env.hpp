// A fixed set of environment variables for code that takes an EnvLookup, so a
// test never reads or changes the real environment.
#pragma once

#include <map>
#include <optional>
#include <string>

#include "core/paths.hpp"

namespace tokend::test {

inline EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace tokend::test
