// Token endpoint answers (RFC 6749 §5.1/§5.2), as a hostile provider may send
// them: any status, any content type, any body. Whatever comes back must be
// either a clean failure or a token set that is safe to store and to serve.
#include <cstdint>
#include <cstdlib>

#include "fuzz_input.hpp"
#include "oauth/protocol.hpp"

using namespace tokend;

namespace {

constexpr long k_statuses[] = {200, 201, 204, 400, 401, 403, 404, 429, 500, 502, 503};

bool has_control(std::string_view s) {
  for (const char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  net::HttpResponse response;
  response.status = k_statuses[in.byte() % std::size(k_statuses)];
  const auto content_type = in.line();
  if (!content_type.empty())
    response.headers.emplace_back("content-type", std::string(content_type));
  const auto retry_after = in.line();
  if (!retry_after.empty()) response.headers.emplace_back("retry-after", std::string(retry_after));
  response.body = Secret(in.rest());

  const WallTime sent_at{std::chrono::milliseconds{1'700'000'000'000}};
  const auto result = oauth::interpret_token_response(
      Result<net::HttpResponse>(std::move(response)), sent_at, std::chrono::seconds{3600});
  if (result) {
    // A token set that reaches the store may go into headers, sinks and
    // environments: no control characters anywhere in it.
    if (result->access_token.empty()) std::abort();
    if (has_control(result->access_token.reveal()) || has_control(result->refresh_token.reveal()) ||
        has_control(result->token_type) || has_control(result->scope))
      std::abort();
  } else if (has_control(result.error().message)) {
    std::abort();  // messages reach logs and listings
  }
  (void)oauth::parse_retry_after(retry_after, sent_at);
  return 0;
}
