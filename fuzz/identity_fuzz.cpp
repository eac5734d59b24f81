// Server mode's identify(): who a request acts for, from the user header,
// Authorization, X-Tokend-Act-As, the session cookie and the peer (uid, TLS,
// client certificate names), every one of them the caller's bytes. Checks
// what must hold whatever they are: an accepted request names a valid user
// id, through a trusted proxy on the Unix socket, a session over TLS, or a
// service whose policy allows that user; a refusal is 401 or 403 with a code;
// no refusal repeats the secret sent in Authorization.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/identity.hpp"
#include "fuzz_input.hpp"
#include "store/pg_store.hpp"

using namespace tokend;

namespace {

constexpr uid_t k_proxy_uid = 33;
constexpr std::string_view k_secret = "fuzz-service-secret-0123456789abcdef-0123456789";

const daemon::IdentityConfig& config() {
  static const daemon::IdentityConfig c = [] {
    daemon::IdentityConfig out;
    out.trusted_proxy_uids = {k_proxy_uid};
    const Secret secret(k_secret);
    auto by_secret = daemon::make_service_policy("mcp", &secret, "", {"*@example.com"});
    auto by_cert = daemon::make_service_policy("gate", nullptr, "gate.example.com", {"alice"});
    if (!by_secret || !by_cert) std::abort();
    out.services = {std::move(*by_secret), std::move(*by_cert)};
    return out;
  }();
  return c;
}

bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  fuzz::Input in(data, size);
  const std::uint8_t flags = in.byte();
  ipc::Peer peer;
  peer.tls = (flags & 1) != 0;
  peer.uid = (flags & 2) != 0 ? k_proxy_uid : 1000;
  if ((flags & 4) != 0) peer.client_cert_names.emplace_back(in.line());
  daemon::SessionCookie session;
  session.present = (flags & 8) != 0;
  // The session's user comes from the database, checked at sign-in.
  if ((flags & 16) != 0) session.user = "alice@example.com";
  session.public_url = "https://tokend.example.com";

  ipc::Request request;
  request.method = std::string(in.line());
  // Each following line is a header: its first byte picks which.
  for (int i = 0; i < 6 && !in.rest().empty(); ++i) {
    const std::uint8_t which = in.byte();
    std::string value(in.line());
    switch (which % 5) {
      case 0: request.headers.emplace_back("X-Forwarded-User", std::move(value)); break;
      case 1: request.headers.emplace_back("X-Tokend-Act-As", std::move(value)); break;
      case 2: request.headers.emplace_back("Authorization", std::move(value)); break;
      case 3: request.headers.emplace_back("authorization", "Bearer " + std::string(k_secret)); break;
      default: request.headers.emplace_back("Origin", std::move(value)); break;
    }
  }

  const auto caller = daemon::identify(config(), request, peer, session);
  if (caller) {
    if (!store::check_user_id(caller->user)) std::abort();
    if (caller->service.empty()) {
      // A proxy's user on the socket, or a session over TLS; nothing else.
      const bool by_proxy = !peer.tls && peer.uid == k_proxy_uid;
      const bool by_session = peer.tls && session.present && caller->user == session.user;
      if (!by_proxy && !by_session) std::abort();
    } else {
      const daemon::ServicePolicy* policy = nullptr;
      for (const auto& s : config().services)
        if (s.name == caller->service) policy = &s;
      if (policy == nullptr || !policy->may_act_for(caller->user)) std::abort();
      // A certificate service only over TLS.
      if (policy->name == "gate" && !peer.tls) std::abort();
    }
  } else {
    const auto& r = caller.error();
    if ((r.status != 401 && r.status != 403) || r.code.empty() || r.message.empty()) std::abort();
    // A message may repeat what the caller sent in the user or act-as
    // header, never what it sent in Authorization.
    bool echoed = false;
    for (const auto& [name, value] : request.headers)
      if (name != "Authorization" && name != "authorization" && contains(value, k_secret))
        echoed = true;
    if (!echoed && contains(r.message, k_secret)) std::abort();
  }

  // The act-for patterns, from the same bytes.
  if (auto pattern = daemon::UserPattern::parse(in.line()); pattern)
    (void)pattern->matches(in.rest());
  return 0;
}
