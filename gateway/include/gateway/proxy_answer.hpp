// What the socket's /v1/proxy route and the stand-in endpoints share: the
// proxy call built from a request, and the proxied answer (or the proxy's
// refusal) written back, streamed when it streams.
#pragma once

#include <memory>
#include <string>

#include "ipc/router.hpp"
#include "proxy/proxy.hpp"

namespace tokend::gateway {

// The call for `profile` and `rest` with the request's method, query,
// headers and body, audited as `peer`. Errc::invalid_argument for a bad
// X-Tokend-Retry-Wait.
Result<proxy::ProxyCall> proxy_call(const ipc::Request& req, std::string profile, std::string rest,
                                    const ipc::Peer& peer);

// Answers `ex` with the proxy's outcome: the upstream's answer (its Server
// header dropped; bodies streamed as they arrive), or the refusal as a tokend
// error (403 policy_denied, 429 rate_limited with Retry-After, 502, 504,
// 401 reauth_required naming the login command, ...).
void respond_proxied(const std::shared_ptr<ipc::Exchange>& ex, const std::string& profile,
                     std::expected<proxy::ProxyResult, proxy::ProxyError> outcome);

// 401 reauth_required with the command that logs in again.
ipc::Response reauth_error(const Error& e, std::string_view profile);

}  // namespace tokend::gateway
