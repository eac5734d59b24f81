// URLs, request paths and queries: the shapes every other parser relies on.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.hpp"
#include "ipc/http.hpp"
#include "net/url.hpp"

using namespace tokend;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (const auto url = net::parse_url(text, "url"); url) (void)net::is_loopback_host(url->host);
  (void)net::origin_key(text);
  if (const auto path = ipc::decode_path(text); path) {
    // An encoded NUL never survives decoding (a raw one is the HTTP parser's to refuse).
    if (text.find('\0') == std::string_view::npos && path->find('\0') != std::string::npos)
      std::abort();
  }
  (void)ipc::parse_query(text);
  return 0;
}
