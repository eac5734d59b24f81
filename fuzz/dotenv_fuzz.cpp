// .env files (the python-dotenv dialect `tokenctl import` reads).
#include <cstdint>
#include <cstdlib>

#include "ctl/dotenv.hpp"

using namespace tokend;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto values = ctl::parse_dotenv(text, ".env");
  if (values) {
    for (const auto& [name, value] : *values) {
      if (name.empty()) std::abort();
      (void)value;
    }
  }
  return 0;
}
