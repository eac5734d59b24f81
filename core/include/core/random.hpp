// Cryptographically secure randomness from the kernel (getrandom).
#pragma once

#include <cstddef>

#include "core/error.hpp"
#include "core/secret.hpp"

namespace tokend {

Result<> fill_random(void* data, std::size_t size);
Result<Secret> random_secret(std::size_t size);

}  // namespace tokend
