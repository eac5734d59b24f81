// Server mode's identity rules (daemon/identity.hpp), one table row per rule.
#include "daemon/identity.hpp"

#include <catch2/catch_test_macros.hpp>

using namespace tokend;
using namespace tokend::daemon;

namespace {

constexpr uid_t k_proxy_uid = 33;
constexpr uid_t k_other_uid = 1000;
const std::string k_mcp_secret(64, 'm');
const std::string k_bot_secret(48, 'b');

IdentityConfig config() {
  IdentityConfig c;
  c.trusted_proxy_uids = {k_proxy_uid};
  auto mcp = make_service_policy("mcp", Secret(k_mcp_secret), {"*@example.com", "bob"});
  auto bot = make_service_policy("bot", Secret(k_bot_secret), {"carol"});
  REQUIRE(mcp);
  REQUIRE(bot);
  c.services = {std::move(*mcp), std::move(*bot)};
  REQUIRE(check_identity_config(c));
  return c;
}

ipc::Request request(ipc::Headers headers) {
  ipc::Request r;
  r.method = "GET";
  r.path = "/v1/profiles";
  r.target = r.path;
  r.headers = std::move(headers);
  return r;
}

}  // namespace

TEST_CASE("identity: who each request acts for, or why not", "[daemon][identity]") {
  const auto cfg = config();
  const std::string bearer_mcp = "Bearer " + k_mcp_secret;
  struct Case {
    const char* what;
    uid_t peer;
    ipc::Headers headers;
    int status;  // 0: accepted
    std::string code_or_user;
    std::string service;
  };
  const Case cases[] = {
      {"the proxy's user header from the proxy",
       k_proxy_uid,
       {{"X-Forwarded-User", "alice"}},
       0,
       "alice",
       ""},
      {"the header name is case-insensitive",
       k_proxy_uid,
       {{"x-forwarded-user", "alice"}},
       0,
       "alice",
       ""},
      {"the user header from another peer is refused",
       k_other_uid,
       {{"X-Forwarded-User", "alice"}},
       403,
       "untrusted_user_header",
       ""},
      {"even from a peer that also is a service",
       k_other_uid,
       {{"X-Forwarded-User", "alice"}, {"Authorization", bearer_mcp}},
       403,
       "untrusted_user_header",
       ""},
      {"two user headers",
       k_proxy_uid,
       {{"X-Forwarded-User", "alice"}, {"X-Forwarded-User", "bob"}},
       403,
       "ambiguous_identity",
       ""},
      {"user header and act-as",
       k_proxy_uid,
       {{"X-Forwarded-User", "alice"}, {"X-Tokend-Act-As", "bob"}},
       403,
       "ambiguous_identity",
       ""},
      {"user header and a bearer",
       k_proxy_uid,
       {{"X-Forwarded-User", "alice"}, {"Authorization", bearer_mcp}},
       403,
       "ambiguous_identity",
       ""},
      {"an empty user id", k_proxy_uid, {{"X-Forwarded-User", ""}}, 401, "invalid_user", ""},
      {"a control character in the user id",
       k_proxy_uid,
       {{"X-Forwarded-User", "al\x01ice"}},
       401,
       "invalid_user",
       ""},
      {"a 257-byte user id",
       k_proxy_uid,
       {{"X-Forwarded-User", std::string(257, 'u')}},
       401,
       "invalid_user",
       ""},
      {"invalid UTF-8", k_proxy_uid, {{"X-Forwarded-User", "\xff\xfe"}}, 401, "invalid_user", ""},
      {"nothing at all", k_proxy_uid, {}, 401, "unauthenticated", ""},
      {"act-as without a service",
       k_other_uid,
       {{"X-Tokend-Act-As", "alice@example.com"}},
       401,
       "unauthenticated",
       ""},
      {"a service for an allowed user",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "alice@example.com"}},
       0,
       "alice@example.com",
       "mcp"},
      {"the bearer scheme is case-insensitive",
       k_other_uid,
       {{"Authorization", "bearer " + k_mcp_secret}, {"X-Tokend-Act-As", "bob"}},
       0,
       "bob",
       "mcp"},
      {"a second service",
       k_proxy_uid,
       {{"Authorization", "Bearer " + k_bot_secret}, {"X-Tokend-Act-As", "carol"}},
       0,
       "carol",
       "bot"},
      {"a service for a user outside its policy",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "carol"}},
       403,
       "act_as_denied",
       "mcp"},
      {"*@domain does not match a longer domain",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "eve@evil.example.com"}},
       403,
       "act_as_denied",
       "mcp"},
      {"*@domain does not match a smuggled @",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "eve@evil.org@example.com"}},
       403,
       "act_as_denied",
       "mcp"},
      {"*@domain needs a local part",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "@example.com"}},
       403,
       "act_as_denied",
       "mcp"},
      {"a service without act-as",
       k_other_uid,
       {{"Authorization", bearer_mcp}},
       401,
       "act_as_required",
       "mcp"},
      {"two act-as headers",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "bob"}, {"X-Tokend-Act-As", "carol"}},
       403,
       "ambiguous_identity",
       "mcp"},
      {"a wrong secret",
       k_other_uid,
       {{"Authorization", "Bearer " + std::string(64, 'x')}, {"X-Tokend-Act-As", "bob"}},
       401,
       "unauthenticated",
       ""},
      {"a secret one byte short",
       k_other_uid,
       {{"Authorization", "Bearer " + k_mcp_secret.substr(1)}, {"X-Tokend-Act-As", "bob"}},
       401,
       "unauthenticated",
       ""},
      {"an empty bearer",
       k_other_uid,
       {{"Authorization", "Bearer "}, {"X-Tokend-Act-As", "bob"}},
       401,
       "unauthenticated",
       ""},
      {"Basic is not a service's scheme",
       k_other_uid,
       {{"Authorization", "Basic bWNwOnNlY3JldA=="}, {"X-Tokend-Act-As", "bob"}},
       401,
       "unauthenticated",
       ""},
      {"a service naming an invalid user",
       k_other_uid,
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "b\nob"}},
       401,
       "invalid_user",
       "mcp"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto got = identify(cfg, request(c.headers), c.peer);
    if (c.status == 0) {
      REQUIRE(got);
      CHECK(got->user == c.code_or_user);
      CHECK(got->service == c.service);
    } else {
      REQUIRE_FALSE(got);
      CHECK(got.error().status == c.status);
      CHECK(got.error().code == c.code_or_user);
      CHECK(got.error().service == c.service);
      CHECK_FALSE(got.error().message.empty());
      // No refusal repeats a secret.
      CHECK(got.error().message.find(k_mcp_secret.substr(0, 16)) == std::string::npos);
    }
  }
}

TEST_CASE("identity: a refusal names the user only when it is a valid id", "[daemon][identity]") {
  const auto cfg = config();
  auto denied = identify(
      cfg, request({{"Authorization", "Bearer " + k_mcp_secret}, {"X-Tokend-Act-As", "carol"}}),
      k_other_uid);
  REQUIRE_FALSE(denied);
  CHECK(denied.error().user == "carol");
  auto invalid = identify(cfg, request({{"X-Forwarded-User", "a\x02"}}), k_proxy_uid);
  REQUIRE_FALSE(invalid);
  CHECK(invalid.error().user.empty());
}

TEST_CASE("identity: a configured user header replaces X-Forwarded-User", "[daemon][identity]") {
  auto cfg = config();
  cfg.user_header = "X-Auth-Request-User";
  auto ok = identify(cfg, request({{"X-Auth-Request-User", "alice"}}), k_proxy_uid);
  REQUIRE(ok);
  CHECK(ok->user == "alice");
  // The default header is then nothing special: no identity.
  auto none = identify(cfg, request({{"X-Forwarded-User", "alice"}}), k_proxy_uid);
  REQUIRE_FALSE(none);
  CHECK(none.error().code == "unauthenticated");
}

TEST_CASE("user patterns", "[daemon][identity]") {
  struct Case {
    const char* pattern;
    const char* user;
    bool matches;
  };
  const Case cases[] = {
      {"*", "anyone", true},
      {"alice", "alice", true},
      {"alice", "alice2", false},
      {"alice", "Alice", false},
      {"*@example.com", "a@example.com", true},
      {"*@example.com", "a@EXAMPLE.com", false},
      {"*@example.com", "a@sub.example.com", false},
      {"*@example.com", "a@b@example.com", false},
      {"*@example.com", "@example.com", false},
      {"*@example.com", "example.com", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.pattern, c.user);
    auto p = UserPattern::parse(c.pattern);
    REQUIRE(p);
    CHECK(p->matches(c.user) == c.matches);
  }
  for (const char* bad : {"a*", "*a", "**", "*@", "*@a@b", "*@*.com", ""}) {
    CAPTURE(bad);
    CHECK_FALSE(UserPattern::parse(bad));
  }
}

TEST_CASE("service policies refuse short secrets, bad names and empty act-for",
          "[daemon][identity]") {
  CHECK_FALSE(make_service_policy("mcp", Secret(std::string(31, 's')), {"*"}));
  CHECK(make_service_policy("mcp", Secret(std::string(32, 's') + "\n"), {"*"}));
  CHECK_FALSE(
      make_service_policy("mcp", Secret(std::string(20, 's') + " " + std::string(20, 's')), {"*"}));
  CHECK_FALSE(make_service_policy("m/cp", Secret(std::string(40, 's')), {"*"}));
  CHECK_FALSE(make_service_policy("mcp", Secret(std::string(40, 's')), {}));
  IdentityConfig twice;
  twice.services = {*make_service_policy("a", Secret(std::string(40, 's')), {"*"}),
                    *make_service_policy("b", Secret(std::string(40, 's')), {"*"})};
  auto r = check_identity_config(twice);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("same secret") != std::string::npos);
}

namespace {

// mcp (secret and certificate), gate (certificate only), bot (secret only).
IdentityConfig tls_config() {
  IdentityConfig c = config();
  c.services.clear();
  const Secret mcp_secret(k_mcp_secret);
  const Secret bot_secret(k_bot_secret);
  auto mcp =
      make_service_policy("mcp", &mcp_secret, "spiffe://example.org/mcp", {"*@example.com", "bob"});
  auto gate = make_service_policy("gate", nullptr, "gate.internal", {"carol"});
  auto bot = make_service_policy("bot", &bot_secret, "", {"carol"});
  REQUIRE(mcp);
  REQUIRE(gate);
  REQUIRE(bot);
  c.services = {std::move(*mcp), std::move(*gate), std::move(*bot)};
  REQUIRE(check_identity_config(c));
  return c;
}

ipc::Peer tls_peer(std::vector<std::string> names) {
  ipc::Peer p;
  p.tls = true;
  p.address = "192.0.2.7:50000";
  p.client_cert_names = std::move(names);
  return p;
}

}  // namespace

TEST_CASE("identity over TLS: client certificates, secrets, and never the user header",
          "[daemon][identity]") {
  const auto cfg = tls_config();
  const std::string bearer_mcp = "Bearer " + k_mcp_secret;
  const std::string bearer_bot = "Bearer " + k_bot_secret;
  struct Case {
    const char* what;
    std::vector<std::string> names;  // the verified certificate's
    ipc::Headers headers;
    int status;  // 0: accepted
    std::string code_or_user;
    std::string service;
  };
  const Case cases[] = {
      {"a certificate naming a service by URI SAN, acting for an allowed user",
       {"mcp-server", "spiffe://example.org/mcp"},
       {{"X-Tokend-Act-As", "alice@example.com"}},
       0,
       "alice@example.com",
       "mcp"},
      {"a certificate naming a service by its CN",
       {"gate.internal"},
       {{"X-Tokend-Act-As", "carol"}},
       0,
       "carol",
       "gate"},
      {"a certificate service still needs X-Tokend-Act-As",
       {"gate.internal"},
       {},
       401,
       "act_as_required",
       "gate"},
      {"a certificate service outside its act-for",
       {"gate.internal"},
       {{"X-Tokend-Act-As", "alice@example.com"}},
       403,
       "act_as_denied",
       "gate"},
      {"names are compared exactly: no case folding",
       {"GATE.internal"},
       {{"X-Tokend-Act-As", "carol"}},
       401,
       "unauthenticated",
       ""},
      {"a certificate naming no service identifies nobody",
       {"someone-else"},
       {{"X-Tokend-Act-As", "carol"}},
       401,
       "unauthenticated",
       ""},
      {"a certificate naming no service, with a service's secret: the secret decides",
       {"someone-else"},
       {{"Authorization", bearer_bot}, {"X-Tokend-Act-As", "carol"}},
       0,
       "carol",
       "bot"},
      {"the secret over TLS without a certificate",
       {},
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "bob"}},
       0,
       "bob",
       "mcp"},
      {"certificate and secret of the same service",
       {"spiffe://example.org/mcp"},
       {{"Authorization", bearer_mcp}, {"X-Tokend-Act-As", "bob"}},
       0,
       "bob",
       "mcp"},
      {"certificate of one service, secret of another",
       {"gate.internal"},
       {{"Authorization", bearer_bot}, {"X-Tokend-Act-As", "carol"}},
       403,
       "ambiguous_identity",
       "bot"},
      {"a certificate naming two services",
       {"gate.internal", "spiffe://example.org/mcp"},
       {{"X-Tokend-Act-As", "carol"}},
       403,
       "ambiguous_identity",
       ""},
      {"a certificate with a wrong secret",
       {"gate.internal"},
       {{"Authorization", "Bearer " + std::string(64, 'x')}, {"X-Tokend-Act-As", "carol"}},
       401,
       "unauthenticated",
       ""},
      {"the user header is never taken over TLS",
       {},
       {{"X-Forwarded-User", "alice"}},
       403,
       "untrusted_user_header",
       ""},
      {"not even with a service's certificate",
       {"gate.internal"},
       {{"X-Forwarded-User", "carol"}},
       403,
       "untrusted_user_header",
       ""},
      {"nothing at all over TLS", {}, {}, 401, "unauthenticated", ""},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto got = identify(cfg, request(c.headers), tls_peer(c.names));
    if (c.status == 0) {
      REQUIRE(got);
      CHECK(got->user == c.code_or_user);
      CHECK(got->service == c.service);
    } else {
      REQUIRE_FALSE(got);
      CHECK(got.error().status == c.status);
      CHECK(got.error().code == c.code_or_user);
      CHECK(got.error().service == c.service);
      CHECK(got.error().message.find(k_mcp_secret.substr(0, 16)) == std::string::npos);
    }
  }
}

TEST_CASE("identity: certificate names count only over TLS", "[daemon][identity]") {
  const auto cfg = tls_config();
  // A Unix socket peer cannot carry certificate names; were they set, they
  // are not looked at.
  ipc::Peer unix_peer;
  unix_peer.uid = k_other_uid;
  unix_peer.client_cert_names = {"gate.internal"};
  auto got = identify(cfg, request({{"X-Tokend-Act-As", "carol"}}), unix_peer);
  REQUIRE_FALSE(got);
  CHECK(got.error().code == "unauthenticated");
}

TEST_CASE("service policies: a certificate instead of or besides a secret", "[daemon][identity]") {
  auto none = make_service_policy("x", nullptr, "", {"*"});
  REQUIRE_FALSE(none);
  CHECK(none.error().message.find("secret-file or cert-subject") != std::string::npos);
  CHECK_FALSE(make_service_policy("x", nullptr, "a\nb", {"*"}));
  auto cert_only = make_service_policy("x", nullptr, "x.internal", {"*"});
  REQUIRE(cert_only);
  CHECK_FALSE(cert_only->has_secret);
  IdentityConfig twice;
  twice.services = {*make_service_policy("a", nullptr, "same", {"*"}),
                    *make_service_policy("b", nullptr, "same", {"*"})};
  auto r = check_identity_config(twice);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("same cert-subject") != std::string::npos);
  // Two certificate-only services have no secret to collide.
  IdentityConfig two;
  two.services = {*make_service_policy("a", nullptr, "a.internal", {"*"}),
                  *make_service_policy("b", nullptr, "b.internal", {"*"})};
  CHECK(check_identity_config(two));
  // A certificate-only service is never matched by a bearer secret (its
  // digest is unset).
  auto got = identify(
      two, request({{"Authorization", "Bearer " + std::string(40, 'z')}, {"X-Tokend-Act-As", "u"}}),
      tls_peer({}));
  REQUIRE_FALSE(got);
  CHECK(got.error().code == "unauthenticated");
}
