// WWW-Authenticate challenges (RFC 6750 §3, RFC 9728 §5.1) from hostile
// servers, and the discovery URLs built from what they name.
#include <cstdint>

#include "fuzz_input.hpp"
#include "oauth/discovery.hpp"

using namespace tokend;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  if (const auto url = oauth::resource_metadata_of(in.rest()); url) {
    (void)oauth::protected_resource_urls(*url);
  }
  (void)oauth::metadata_urls(in.rest());
  return 0;
}
