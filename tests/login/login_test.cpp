// Login pieces: PKCE against the RFC 7636 known-answer vector, discovery URL
// rules, challenge and metadata checks, token requests, and the login
// manager's flows with a fake clock, timer, transport and listener.
#include "login/login.hpp"

#include <spdlog/spdlog.h>

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"
#include "net/url.hpp"
#include "oauth/discovery.hpp"
#include "oauth/pkce.hpp"
#include "oauth/protocol.hpp"
#include "store/store_support.hpp"
#include "support/temp_dir.hpp"
#include "tokens/fake_transport.hpp"
#include "tokens/profile_spec.hpp"

using namespace tokend;
using namespace tokend::oauth;
using namespace tokend::tokens;
using namespace tokend::login;
using namespace std::chrono_literals;
using json::Json;

TEST_CASE("PKCE S256 matches RFC 7636 appendix B", "[login]") {
  const unsigned char octets[32] = {116, 24,  223, 180, 151, 153, 224, 37,  79,  250, 96,
                                    125, 216, 173, 187, 186, 22,  212, 37,  77,  105, 214,
                                    191, 240, 91,  88,  5,   88,  83,  132, 141, 121};
  const auto p = make_pkce(std::string_view(reinterpret_cast<const char*>(octets), sizeof octets));
  CHECK(p.verifier.reveal() == "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
  CHECK(p.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
  auto r = random_urlsafe(32);
  REQUIRE(r);
  CHECK(r->reveal().size() == 43);
}

TEST_CASE("metadata URLs follow RFC 8414 and OIDC", "[login]") {
  auto root = metadata_urls("https://as.example.com");
  REQUIRE(root);
  CHECK(*root ==
        std::vector<std::string>{"https://as.example.com/.well-known/oauth-authorization-server",
                                 "https://as.example.com/.well-known/openid-configuration"});
  auto path = metadata_urls("https://as.example.com:8443/tenant/");
  REQUIRE(path);
  CHECK(*path == std::vector<std::string>{
                     "https://as.example.com:8443/.well-known/oauth-authorization-server/tenant",
                     "https://as.example.com:8443/.well-known/openid-configuration/tenant",
                     "https://as.example.com:8443/tenant/.well-known/openid-configuration"});
  CHECK_FALSE(metadata_urls("ftp://as.example.com"));
  CHECK_FALSE(metadata_urls("https://as.example.com/?x=1"));
  auto prm = protected_resource_urls("https://mcp.example.com/v1/mcp");
  REQUIRE(prm);
  CHECK(*prm == std::vector<std::string>{
                    "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp",
                    "https://mcp.example.com/.well-known/oauth-protected-resource"});
}

TEST_CASE("resource_metadata is read from a Bearer challenge", "[login]") {
  struct Case {
    std::string header;
    std::optional<std::string> want;
  };
  const Case cases[] = {
      {R"(Bearer resource_metadata="https://x/.well-known/oauth-protected-resource")",
       "https://x/.well-known/oauth-protected-resource"},
      {R"(Bearer realm="mcp", error="invalid_token", resource_metadata="https://x/m")",
       "https://x/m"},
      {R"(bearer Resource_Metadata=https://x/m)", "https://x/m"},
      {R"(Bearer realm="a\"b", resource_metadata="https://x/m")", "https://x/m"},
      {R"(Basic realm="x")", std::nullopt},
      {R"(Bearer realm="x")", std::nullopt},
      {R"(Bearer resource_metadata="unterminated)", std::nullopt},
      {"", std::nullopt},
      {"Bearer", std::nullopt},
  };
  for (const auto& c : cases) {
    INFO(c.header);
    CHECK(resource_metadata_of(c.header) == c.want);
  }
}

TEST_CASE("server metadata must name the issuer asked for and use https", "[login]") {
  Json good = {{"issuer", "https://as.example.com"},
               {"authorization_endpoint", "https://as.example.com/authorize"},
               {"token_endpoint", "https://as.example.com/token"},
               {"scopes_supported", {"openid", "offline_access"}}};
  auto ok = check_server_metadata(good, "https://as.example.com");
  REQUIRE(ok);
  CHECK(ok->token_endpoint == "https://as.example.com/token");
  CHECK(ok->scopes_supported == std::vector<std::string>{"openid", "offline_access"});
  CHECK_FALSE(ok->code_challenge_methods_supported);

  Json other = good;
  other["issuer"] = "https://evil.example.com";
  auto mismatch = check_server_metadata(other, "https://as.example.com");
  REQUIRE_FALSE(mismatch);
  CHECK(mismatch.error().message.find("evil.example.com") != std::string::npos);

  Json plain = good;
  plain["token_endpoint"] = "http://as.example.com/token";
  CHECK_FALSE(check_server_metadata(plain, "https://as.example.com"));
  Json none = good;
  none.erase("token_endpoint");
  CHECK_FALSE(check_server_metadata(none, "https://as.example.com"));
  CHECK_FALSE(check_server_metadata(Json::array(), "https://as.example.com"));
}

TEST_CASE("protected resource metadata must be for the server asked about", "[login]") {
  Json prm = {{"resource", "https://mcp.example.com/mcp"},
              {"authorization_servers", {"https://as.example.com"}}};
  auto ok = check_resource_metadata(prm, "https://MCP.example.com/mcp/");
  REQUIRE(ok);
  CHECK(ok->authorization_servers.front() == "https://as.example.com");
  CHECK_FALSE(check_resource_metadata(prm, "https://other.example.com/mcp"));
  Json no_as = {{"resource", "https://mcp.example.com/mcp"}};
  CHECK_FALSE(check_resource_metadata(no_as, "https://mcp.example.com/mcp"));
  Json bad_as = {{"resource", "https://mcp.example.com/mcp"},
                 {"authorization_servers", {"http://as.example.com"}}};
  CHECK_FALSE(check_resource_metadata(bad_as, "https://mcp.example.com/mcp"));
}

// Issue 13 finding 11: a remote document cannot point tokend at a local service.
TEST_CASE("URLs named by remote metadata or challenges must be remote https", "[login]") {
  Json local_token = {{"issuer", "https://as.example.com"},
                      {"authorization_endpoint", "https://as.example.com/authorize"},
                      {"token_endpoint", "http://127.0.0.1:8080/token"}};
  CHECK_FALSE(check_server_metadata(local_token, "https://as.example.com"));
  Json local_registration = {{"issuer", "https://as.example.com"},
                             {"token_endpoint", "https://as.example.com/token"},
                             {"registration_endpoint", "http://localhost:9000/admin/users"}};
  auto refused = check_server_metadata(local_registration, "https://as.example.com");
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("registration_endpoint") != std::string::npos);
  Json local_https = {{"issuer", "https://as.example.com"},
                      {"token_endpoint", "https://[::1]:8443/token"}};
  CHECK_FALSE(check_server_metadata(local_https, "https://as.example.com"));
  // A document that came from loopback (development, tests) may name loopback URLs.
  Json dev = {{"issuer", "http://127.0.0.1:5556"},
              {"token_endpoint", "http://127.0.0.1:5556/token"}};
  CHECK(check_server_metadata(dev, "http://127.0.0.1:5556"));
  Json prm = {{"resource", "https://mcp.example.com/mcp"},
              {"authorization_servers", {"http://127.0.0.1:7000"}}};
  CHECK_FALSE(check_resource_metadata(prm, "https://mcp.example.com/mcp"));
  Json local_prm = {{"resource", "http://localhost:3000/mcp"},
                    {"authorization_servers", {"http://localhost:3001"}}};
  CHECK(check_resource_metadata(local_prm, "http://localhost:3000/mcp"));
  // The resource_metadata URL of a WWW-Authenticate challenge.
  CHECK_FALSE(check_discovered_url("resource_metadata", "http://127.0.0.1:2375/containers/json",
                                   "https://mcp.example.com/mcp"));
  CHECK(check_discovered_url("resource_metadata",
                             "https://mcp.example.com/.well-known/oauth-protected-resource",
                             "https://mcp.example.com/mcp"));
}

// Issue 13 finding 12: loopback is an address, not a text prefix.
TEST_CASE("the loopback test parses the address", "[login]") {
  for (const char* host :
       {"127.0.0.1", "127.1.2.3", "localhost", "LocalHost", "[::1]", "[0:0:0:0:0:0:0:1]"}) {
    INFO(host);
    CHECK(net::is_loopback_host(host));
  }
  for (const char* host :
       {"127.0.0.1.", "127.0.0.1.evil.example", "127.evil", "127.0.0.1.nip.io", "127.0.0.256",
        "localhost.", "[::2]", "[::ffff:127.0.0.1]x", "128.0.0.1", "0x7f.0.0.1", ""}) {
    INFO(host);
    CHECK_FALSE(net::is_loopback_host(host));
  }
  CHECK_FALSE(check_endpoint_url("token_url", "http://127.0.0.1./token"));
  CHECK_FALSE(check_endpoint_url("token_url", "http://127.0.0.1.evil.example/token"));
  CHECK(check_endpoint_url("token_url", "http://127.0.0.1:8080/token"));
}

TEST_CASE("token requests carry client auth and the RFC 8707 resource", "[login]") {
  TokenEndpoint e;
  e.token_url = "https://as.example.com/token";
  e.client_id = "cid";
  e.client_secret = Secret(std::string_view("s e/cret"));
  e.resource = "https://mcp.example.com/mcp";
  e.auth = ClientAuth::post;
  auto r = make_token_request(e, {{"grant_type", "authorization_code"}, {"code", "c&1"}}, 5s);
  CHECK(r.body.reveal() ==
        "grant_type=authorization_code&code=c%261&client_id=cid&client_secret=s+e%2Fcret&resource="
        "https%3A%2F%2Fmcp."
        "example.com%2Fmcp");
  e.auth = ClientAuth::basic;
  e.json_body = true;
  r = make_token_request(e, {{"grant_type", "authorization_code"}, {"code", "c"}}, 5s);
  auto j = json::parse(r.body.reveal(), "body");
  REQUIRE(j);
  CHECK((*j)["resource"] == "https://mcp.example.com/mcp");
  CHECK_FALSE(j->contains("client_secret"));
  bool basic = false;
  for (const auto& [k, v] : r.headers)
    basic = basic || (k == "Authorization" && v.starts_with("Basic "));
  CHECK(basic);
}

// --- the login manager ----------------------------------------------------------

namespace {

class FakeListener final : public CallbackListener {
 public:
  explicit FakeListener(bool* open) : m_open(open) { *m_open = true; }
  ~FakeListener() override { *m_open = false; }
  FakeListener(const FakeListener&) = delete;
  FakeListener& operator=(const FakeListener&) = delete;

 private:
  bool* m_open;
};

class FakeCallbacks final : public CallbackPort {
 public:
  bool open = false;
  bool taken = false;
  std::uint16_t port = 0;
  Handler handler;
  Result<std::unique_ptr<CallbackListener>> listen(const std::string&, std::uint16_t p,
                                                   Handler h) override {
    if (taken)
      return fail(Errc::conflict,
                  "the redirect URI's address 127.0.0.1:" + std::to_string(p) + " is in use");
    port = p;
    handler = std::move(h);
    return std::unique_ptr<CallbackListener>(std::make_unique<FakeListener>(&open));
  }
  // What the browser gets back (filled in when tokend answers, maybe later).
  std::shared_ptr<std::optional<CallbackReply>> hit(const std::string& path,
                                                    const std::string& query) {
    auto out = std::make_shared<std::optional<CallbackReply>>();
    handler({"GET", path, query}, [out](CallbackReply r) { *out = std::move(r); });
    return out;
  }
};

struct LoginRig {
  test::TempDir dir;
  FakeClock clock;
  store::SqlcipherStore store;
  EventBus events;
  FakeTimerPort engine_timer{clock};
  FakeTimerPort login_timer{clock};
  FakeTransport http;
  FakeCallbacks callbacks;
  std::unique_ptr<TokenService> tokens;
  std::unique_ptr<LoginManager> login;
  std::vector<Event> seen;
  EventBus::Subscription sub;

  explicit LoginRig(std::string replica = {})
      : store(*store::SqlcipherStore::open(dir / "t.db", test::random_raw_key(), clock)) {
    spdlog::set_level(spdlog::level::off);
    sub = events.subscribe([this](const Event& e) { seen.push_back(e); });
    tokens =
        std::make_unique<TokenService>(store, clock, events, engine_timer, http, EngineOptions{});
    REQUIRE(tokens->load());
    LoginOptions o;
    o.random = [n = 0](std::size_t) mutable {
      return Result<Secret>(
          Secret("fixed-random-value-" + std::to_string(++n) + "-padded-to-forty-three-chars"));
    };
    if (!replica.empty()) {
      // Replicas draw different states and verifiers.
      o.random = [n = 0, replica](std::size_t) mutable {
        return Result<Secret>(Secret("random-" + replica + "-" + std::to_string(++n) +
                                     "-padded-to-forty-three-characters"));
      };
      o.replica_id = replica;
    }
    login =
        std::make_unique<LoginManager>(*tokens, clock, events, login_timer, http, &callbacks, o);
  }
  ~LoginRig() {
    login->shutdown();
    tokens->shutdown();
  }

  void add(Json body) {
    auto spec = parse_profile_spec("p", body, to_unix_ms(clock.wall_now()));
    REQUIRE(spec);
    REQUIRE(tokens->put_profile(std::move(*spec)));
  }
  Json start(LoginRequest req = {}) {
    std::optional<Result<Json>> got;
    login->start("p", req, [&](Result<Json> r) { got = std::move(r); });
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    return **got;
  }
  std::string param(const std::string& url, const std::string& name) {
    auto q = parse_query(url.substr(url.find('?') + 1));
    for (const auto& [k, v] : *q) {
      if (k == name) return v;
    }
    return {};
  }
  std::string last_body() { return std::string(http.pending.back().request.body.reveal()); }
};

const Json k_generic = {{"kind", "oauth2"},
                        {"client_id", "cid"},
                        {"authorize_url", "https://as.example.com/authorize"},
                        {"token_url", "https://as.example.com/token"},
                        {"device_authorization_url", "https://as.example.com/device"},
                        {"redirect_uri", "http://127.0.0.1:8765/cb"}};

std::string tokens_json() {
  return R"({"access_token":"at-1","refresh_token":"rt-1","token_type":"Bearer","expires_in":3600})";
}

}  // namespace

TEST_CASE("a code flow: listener, state, PKCE, exchange, stored, listener closed", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  const Json flow = rig.start();
  CHECK(flow["state"] == "pending");
  CHECK(flow["listening"] == true);
  CHECK(rig.callbacks.open);
  CHECK(rig.callbacks.port == 8765);
  const std::string url = flow["authorize_url"];
  const std::string state = rig.param(url, "state");
  CHECK(rig.param(url, "code_challenge_method") == "S256");
  CHECK(rig.param(url, "redirect_uri") == "http://127.0.0.1:8765/cb");

  // Another path gets 404 and changes nothing.
  auto other = rig.callbacks.hit("/favicon.ico", "");
  REQUIRE(*other);
  CHECK((*other)->status == 404);

  auto reply = rig.callbacks.hit("/cb", "code=abc&state=" + form_encode(state));
  CHECK_FALSE(*reply);  // answered after the exchange
  REQUIRE(rig.http.pending.size() == 1);
  const std::string body = rig.last_body();
  const std::string verifier = rig.param("?" + body, "code_verifier");
  CHECK(pkce_challenge(verifier) == rig.param(url, "code_challenge"));
  CHECK(rig.param("?" + body, "code") == "abc");
  // A replayed redirect while the exchange runs is refused.
  auto replay = rig.callbacks.hit("/cb", "code=abc&state=" + form_encode(state));
  REQUIRE(*replay);
  CHECK((*replay)->status == 409);

  rig.http.reply(200, tokens_json());
  REQUIRE(*reply);
  CHECK((*reply)->status == 200);
  CHECK(rig.login->status("p")["state"] == "succeeded");
  CHECK_FALSE(rig.callbacks.open);
  auto grant = rig.tokens->token("p", {});
  REQUIRE(grant);
  CHECK(grant->token() == "at-1");
  CHECK(std::any_of(rig.seen.begin(), rig.seen.end(),
                    [](const Event& e) { return e.kind == EventKind::login_succeeded; }));
}

// Issue 13 finding 3: any web page can make the browser send a request to
// the listener; one without this flow's state must not end the login.
TEST_CASE("a redirect without this flow's state is refused and the flow keeps waiting", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  const std::string state = rig.param(rig.start()["authorize_url"], "state");
  for (const std::string& query : std::vector<std::string>{
           "code=abc&state=forged", "code=abc", "", "error=access_denied",
           "error=access_denied&state=forged", "state=" + form_encode(state) + "x&code=abc"}) {
    INFO(query);
    auto reply = rig.callbacks.hit("/cb", query);
    REQUIRE(*reply);
    CHECK((*reply)->status == 400);
    CHECK(rig.http.pending.empty());  // no exchange attempted
    CHECK(rig.login->status("p")["state"] == "pending");
    CHECK(rig.callbacks.open);
    CHECK(rig.store.get_credential("p")->generation == 0);
  }
  // The provider's own redirect still gets through afterwards.
  auto reply = rig.callbacks.hit("/cb", "code=abc&state=" + form_encode(state));
  REQUIRE_FALSE(*reply);  // answered after the exchange
  REQUIRE(rig.http.pending.size() == 1);
  rig.http.reply(200, tokens_json());
  REQUIRE(*reply);
  CHECK((*reply)->status == 200);
  CHECK(rig.login->status("p")["state"] == "succeeded");
}

TEST_CASE("an error redirect with this flow's state ends the flow and stores nothing", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  const std::string state = rig.param(rig.start()["authorize_url"], "state");
  auto reply = rig.callbacks.hit(
      "/cb", "error=access_denied&error_description=no&state=" + form_encode(state));
  REQUIRE(*reply);
  CHECK((*reply)->status == 400);
  CHECK(rig.http.pending.empty());
  const Json s = rig.login->status("p");
  CHECK(s["state"] == "failed");
  CHECK(s["error"]["reason"] == "access_denied");
  CHECK_FALSE(rig.callbacks.open);
  CHECK(rig.store.get_credential("p")->generation == 0);
  CHECK_FALSE(rig.tokens->token("p", {}));
}

TEST_CASE("a rejected code (PKCE mismatch, reuse) ends the flow with invalid_grant", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  rig.start({.device = false, .listen = false});
  CHECK_FALSE(rig.callbacks.open);
  std::optional<Result<Json>> done;
  rig.login->complete("p", Json{{"code", "abc"}}, [&](Result<Json> r) { done = std::move(r); });
  rig.http.reply(400,
                 R"({"error":"invalid_grant","error_description":"PKCE verification failed"})");
  REQUIRE(done.has_value());
  REQUIRE(done->has_value());
  CHECK((**done)["state"] == "failed");
  CHECK((**done)["error"]["reason"] == "invalid_grant");
  CHECK(rig.store.get_credential("p")->generation == 0);
}

// Server mode's fixed redirect URI (/connect/callback) finds the flow by its
// state among one user's flows: only a pending code flow that awaits a
// redirect, with exactly that state, is found.
TEST_CASE("awaiting_state finds only the pending code flow with exactly that state", "[login]") {
  LoginRig rig;
  Json body = k_generic;
  body["redirect_uri"] = "https://tokend.example.com/connect/callback";
  rig.add(body);
  const Json flow = rig.start({.device = false, .listen = false});
  CHECK(flow["listening"] == false);  // an https redirect URI: no loopback listener
  const std::string state = rig.param(flow["authorize_url"], "state");
  REQUIRE_FALSE(state.empty());
  CHECK(rig.login->awaiting_state(state) == std::optional<std::string>("p"));
  CHECK_FALSE(rig.login->awaiting_state(""));
  CHECK_FALSE(rig.login->awaiting_state(state + "x"));
  CHECK_FALSE(rig.login->awaiting_state(state.substr(1)));
  CHECK_FALSE(rig.login->awaiting_state("forged"));

  // While the code is exchanged, and once the flow ended, nothing awaits it.
  std::optional<Result<Json>> done;
  rig.login->complete("p", Json{{"redirect_url", "?code=abc&state=" + form_encode(state)}},
                      [&](Result<Json> r) { done = std::move(r); });
  CHECK_FALSE(rig.login->awaiting_state(state));
  rig.http.reply(200, tokens_json());
  REQUIRE(done.has_value());
  REQUIRE(done->has_value());
  CHECK((**done)["state"] == "succeeded");
  CHECK_FALSE(rig.login->awaiting_state(state));
}

TEST_CASE("a flow expires on the fake clock and closes its listener", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  rig.start();
  CHECK(rig.callbacks.open);
  rig.clock.advance(599s);
  CHECK_FALSE(rig.login_timer.fire_due());
  rig.clock.advance(2s);
  CHECK(rig.login_timer.fire_due());
  CHECK(rig.login->status("p")["state"] == "expired");
  CHECK_FALSE(rig.callbacks.open);
}

TEST_CASE("a taken port fails the start and leaves no flow", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  rig.callbacks.taken = true;
  std::optional<Result<Json>> got;
  rig.login->start("p", {}, [&](Result<Json> r) { got = std::move(r); });
  REQUIRE(got.has_value());
  REQUIRE_FALSE(got->has_value());
  CHECK(got->error().code == Errc::conflict);
  CHECK(got->error().message.find("--redirect-uri") != std::string::npos);
  CHECK(rig.login->status("p")["state"] == "none");
}

TEST_CASE("the device flow polls at the interval, slows down by 5 s, then stores", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  std::optional<Result<Json>> got;
  rig.login->start("p", {.device = true, .listen = true},
                   [&](Result<Json> r) { got = std::move(r); });
  REQUIRE(rig.http.pending.size() == 1);
  rig.http.reply(
      200,
      R"({"device_code":"dc","user_code":"ABCD-EFGH","verification_uri":"https://as.example.com/d",)"
      R"("expires_in":600,"interval":2})");
  REQUIRE(got.has_value());
  REQUIRE(got->has_value());
  CHECK((**got)["user_code"] == "ABCD-EFGH");
  CHECK(rig.http.pending.empty());

  rig.clock.advance(1s);
  CHECK_FALSE(rig.login_timer.fire_due());
  rig.clock.advance(1s);
  CHECK(rig.login_timer.fire_due());
  REQUIRE(rig.http.pending.size() == 1);
  CHECK(rig.last_body().find("device_code=dc") != std::string::npos);
  rig.http.reply(400, R"({"error":"slow_down"})");
  // Now every 7 s.
  rig.clock.advance(6s);
  CHECK_FALSE(rig.login_timer.fire_due());
  rig.clock.advance(1s);
  CHECK(rig.login_timer.fire_due());
  rig.http.reply(400, R"({"error":"authorization_pending"})");
  rig.clock.advance(7s);
  CHECK(rig.login_timer.fire_due());
  rig.http.reply(200, tokens_json());
  CHECK(rig.login->status("p")["state"] == "succeeded");
  CHECK(rig.tokens->token("p", {}));
}

TEST_CASE("device flow: expired_token and access_denied end it", "[login]") {
  for (const std::string error : {"expired_token", "access_denied"}) {
    LoginRig rig;
    rig.add(k_generic);
    rig.login->start("p", {.device = true, .listen = true}, [](Result<Json>) {});
    rig.http.reply(
        200,
        R"({"device_code":"dc","user_code":"U","verification_uri":"https://as.example.com/d"})");
    rig.clock.advance(5s);
    REQUIRE(rig.login_timer.fire_due());
    rig.http.reply(400, R"({"error":")" + error + R"("})");
    const Json s = rig.login->status("p");
    CHECK(s["error"]["reason"] == error);
    CHECK(rig.http.pending.empty());
    CHECK_FALSE(rig.login_timer.fire_due());
  }
}

TEST_CASE("a verification_uri that is not https is refused", "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  std::optional<Result<Json>> got;
  rig.login->start("p", {.device = true, .listen = true},
                   [&](Result<Json> r) { got = std::move(r); });
  rig.http.reply(
      200, R"J({"device_code":"dc","user_code":"U","verification_uri":"javascript:alert(1)"})J");
  REQUIRE(got.has_value());
  CHECK_FALSE(got->has_value());
}

TEST_CASE("a device start cancelled before the provider answers is answered, not left hanging",
          "[login]") {
  LoginRig rig;
  rig.add(k_generic);
  std::optional<Result<Json>> got;
  rig.login->start("p", {.device = true, .listen = true},
                   [&](Result<Json> r) { got = std::move(r); });
  REQUIRE(rig.http.pending.size() == 1);
  CHECK_FALSE(got.has_value());
  REQUIRE(rig.login->cancel("p"));
  REQUIRE(got.has_value());
  REQUIRE_FALSE(got->has_value());
  CHECK(got->error().code == Errc::conflict);
  CHECK(rig.http.pending.empty());  // the provider request was cancelled too
}

// --- MCP client duties (2026-07-28), CIMD, iss, prompt ------------------

namespace {

const std::string k_mcp = "https://mcp.example.com/mcp";
const std::string k_as1 = "https://as1.example.com";
const std::string k_as2 = "https://as2.example.com";

Json as_metadata(const std::string& issuer, bool cimd = false) {
  Json m = {{"issuer", issuer},
            {"authorization_endpoint", issuer + "/authorize"},
            {"token_endpoint", issuer + "/token"},
            {"registration_endpoint", issuer + "/register"},
            {"scopes_supported", {"mcp", "offline_access"}},
            {"token_endpoint_auth_methods_supported", {"none"}},
            {"authorization_response_iss_parameter_supported", true}};
  if (cimd) m["client_id_metadata_document_supported"] = true;
  return m;
}

// Starts a login and answers the MCP discovery: the probe's 401, the
// protected-resource metadata naming `servers`, then `chosen`'s metadata.
// `got` receives the start's answer (it may come after this returns).
void start_mcp(LoginRig& rig, const std::vector<std::string>& servers, const std::string& chosen,
               std::optional<Result<Json>>& got) {
  got.reset();
  rig.login->start("p", {}, [&got](Result<Json> r) { got = std::move(r); });
  REQUIRE(rig.http.pending.size() == 1);
  CHECK(rig.http.pending.front().request.url == k_mcp);
  rig.http.reply(401, "{}", "application/json",
                 {{"www-authenticate",
                   "Bearer resource_metadata=\"https://mcp.example.com/.well-known/prm\""}});
  REQUIRE(rig.http.pending.size() == 1);
  rig.http.reply(
      200,
      Json{{"resource", k_mcp}, {"authorization_servers", servers}, {"scopes_supported", {"mcp"}}}
          .dump());
  if (got.has_value()) return;  // refused before the authorization server is asked
  REQUIRE(rig.http.pending.size() == 1);
  CHECK(rig.http.pending.front().request.url == chosen + "/.well-known/oauth-authorization-server");
  rig.http.reply(200, as_metadata(chosen).dump());
}

}  // namespace

TEST_CASE(
    "MCP: the first of several authorization servers or the configured one; DCR native, keyed by "
    "issuer",
    "[login][mcp]") {
  LoginRig rig;
  rig.add({{"kind", "oauth2"},
           {"provider", "mcp"},
           {"mcp_server", k_mcp},
           {"redirect_uri", "http://127.0.0.1:8765/cb"}});
  std::optional<Result<Json>> got;
  start_mcp(rig, {k_as1, k_as2}, k_as1, got);
  CHECK_FALSE(got.has_value());
  // Dynamic registration: a native client, the loopback redirect.
  REQUIRE(rig.http.pending.size() == 1);
  CHECK(rig.http.pending.front().request.url == k_as1 + "/register");
  auto reg = json::parse(rig.last_body(), "registration");
  REQUIRE(reg);
  CHECK((*reg)["application_type"] == "native");
  CHECK((*reg)["redirect_uris"] == Json::array({"http://127.0.0.1:8765/cb"}));
  CHECK((*reg)["token_endpoint_auth_method"] == "none");
  rig.http.reply(201, R"({"client_id":"client-at-as1"})");
  REQUIRE(got.has_value());
  REQUIRE(got->has_value());
  const Json flow = **got;
  CHECK(flow["authorization_server"] == k_as1);
  CHECK(flow["authorization_servers"] == Json::array({k_as1, k_as2}));
  CHECK(flow["authorization_server_note"].get<std::string>().find("--authorization-server") !=
        std::string::npos);
  CHECK(rig.param(flow["authorize_url"], "client_id") == "client-at-as1");
  CHECK(rig.param(flow["authorize_url"], "resource") == k_mcp);
  // offline_access is offered, so it is asked for, with prompt=consent.
  CHECK(rig.param(flow["authorize_url"], "scope") == "mcp offline_access");
  CHECK(rig.param(flow["authorize_url"], "prompt") == "consent");
  auto config = rig.tokens->profile_of("p")->config;
  CHECK(config.client_registered_for == k_as1);
  REQUIRE(rig.login->cancel("p"));

  SECTION("the same authorization server again: the registration is reused") {
    start_mcp(rig, {k_as1, k_as2}, k_as1, got);
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(rig.http.pending.empty());
    CHECK(rig.param((**got)["authorize_url"], "client_id") == "client-at-as1");
  }
  SECTION("another one: registered again there, keyed by its issuer") {
    rig.add({{"kind", "oauth2"},
             {"provider", "mcp"},
             {"mcp_server", k_mcp},
             {"redirect_uri", "http://127.0.0.1:8765/cb"},
             {"authorization_server", k_as2}});
    REQUIRE(rig.tokens->profile_of("p")->config.client_registered_for ==
            k_as1);  // kept over the PUT
    start_mcp(rig, {k_as1, k_as2}, k_as2, got);
    REQUIRE(rig.http.pending.size() == 1);
    CHECK(rig.http.pending.front().request.url == k_as2 + "/register");
    rig.http.reply(201, R"({"client_id":"client-at-as2"})");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK((**got)["authorization_server"] == k_as2);
    CHECK(rig.param((**got)["authorize_url"], "client_id") == "client-at-as2");
    CHECK(rig.tokens->profile_of("p")->config.client_registered_for == k_as2);
  }
  SECTION(
      "a configured authorization server the MCP server does not name is refused, naming the "
      "choices") {
    rig.add({{"kind", "oauth2"},
             {"provider", "mcp"},
             {"mcp_server", k_mcp},
             {"redirect_uri", "http://127.0.0.1:8765/cb"},
             {"authorization_server", "https://elsewhere.example.com"}});
    start_mcp(rig, {k_as1, k_as2}, k_as1, got);
    REQUIRE(got.has_value());
    REQUIRE_FALSE(got->has_value());
    CHECK(got->error().message.find(k_as1 + ", " + k_as2) != std::string::npos);
    CHECK(rig.http.pending.empty());
  }
}

TEST_CASE(
    "CIMD: a metadata-document client id is checked before the flow; pre-registered, CIMD, then "
    "DCR",
    "[login][cimd]") {
  const std::string doc_url = "https://app.example.com/tokend/client.json";
  LoginRig rig;
  rig.add({{"kind", "oauth2"},
           {"issuer", k_as1},
           {"client_id", doc_url},
           {"redirect_uri", "http://127.0.0.1:8765/cb"}});
  std::optional<Result<Json>> got;
  auto start = [&](bool cimd) {
    rig.login->start("p", {}, [&got](Result<Json> r) { got = std::move(r); });
    if (rig.http.pending.size() == 1 &&
        rig.http.pending.front().request.url.find("well-known") != std::string::npos) {
      rig.http.reply(200, as_metadata(k_as1, cimd).dump());
    }
  };
  SECTION("the document does not list the redirect URI: the error says which it allows") {
    start(true);
    REQUIRE(rig.http.pending.size() == 1);
    CHECK(rig.http.pending.front().request.url == doc_url);
    rig.http.reply(200, Json{{"client_id", doc_url},
                             {"redirect_uris", {"http://127.0.0.1:9999/cb", "http://localhost/x"}}}
                            .dump());
    REQUIRE(got.has_value());
    REQUIRE_FALSE(got->has_value());
    CHECK(got->error().message.find("http://127.0.0.1:8765/cb is not listed") != std::string::npos);
    CHECK(got->error().message.find("http://127.0.0.1:9999/cb, http://localhost/x") !=
          std::string::npos);
  }
  SECTION("a document for another client id is refused") {
    start(true);
    rig.http.reply(200, Json{{"client_id", "https://evil.example.com/c.json"},
                             {"redirect_uris", {"http://127.0.0.1:8765/cb"}}}
                            .dump());
    REQUIRE(got.has_value());
    REQUIRE_FALSE(got->has_value());
    CHECK(got->error().message.find("client_id is its own URL") != std::string::npos);
  }
  SECTION("a good document: the URL is the client id") {
    start(true);
    rig.http.reply(200, Json{{"client_id", doc_url},
                             {"redirect_uris", {"http://127.0.0.1:8765/cb"}},
                             {"token_endpoint_auth_method", "none"}}
                            .dump());
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(rig.param((**got)["authorize_url"], "client_id") == doc_url);
  }
  SECTION("a server without CIMD support: dynamic registration instead, the document URL kept") {
    start(false);
    REQUIRE(rig.http.pending.size() == 1);
    CHECK(rig.http.pending.front().request.url == k_as1 + "/register");
    rig.http.reply(201, R"({"client_id":"dcr-client"})");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(rig.param((**got)["authorize_url"], "client_id") == "dcr-client");
    CHECK(rig.tokens->profile_of("p")->config.client_id_metadata_document == doc_url);
  }
}

TEST_CASE(
    "RFC 9207: iss must be the issuer when advertised or present; nothing is redeemed otherwise",
    "[login][iss]") {
  struct Case {
    std::string iss_param;  // "" = none
    bool ok;
    const char* reason;
  };
  const Case cases[] = {{"&iss=" + form_encode(k_as1), true, ""},
                        {"&iss=" + form_encode("https://evil.example.com"), false, "iss_mismatch"},
                        {"&iss=" + form_encode(k_as1 + "/"), false, "iss_mismatch"},
                        {"", false, "iss_missing"}};
  for (const auto& c : cases) {
    INFO(c.iss_param);
    LoginRig rig;
    rig.add({{"kind", "oauth2"},
             {"issuer", k_as1},
             {"client_id", "cid"},
             {"redirect_uri", "http://127.0.0.1:8765/cb"}});
    std::optional<Result<Json>> got;
    rig.login->start("p", {}, [&](Result<Json> r) { got = std::move(r); });
    rig.http.reply(200, as_metadata(k_as1).dump());
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    const std::string state = rig.param((**got)["authorize_url"], "state");
    auto reply = rig.callbacks.hit("/cb", "code=abc&state=" + form_encode(state) + c.iss_param);
    if (c.ok) {
      REQUIRE(rig.http.pending.size() == 1);  // the exchange
      rig.http.reply(200, tokens_json());
      CHECK(rig.login->status("p")["state"] == "succeeded");
    } else {
      CHECK(rig.http.pending.empty());  // nothing redeemed
      REQUIRE(*reply);
      CHECK((*reply)->status == 400);
      CHECK(rig.login->status("p")["error"]["reason"] == c.reason);
      CHECK_FALSE(rig.tokens->get("p")->has_token);
    }
  }
}

// --- server mode: flows kept where every replica finds them --------------------

namespace {

// One user's login_flows table, as PgStore keeps it (store/login_flows.hpp),
// shared by two managers (two replicas).
class FakeFlowStore final : public store::LoginFlowStore {
 public:
  struct Row {
    std::string state;  // the real store keeps its SHA-256
    store::PendingLogin flow;
  };
  std::map<std::string, Row, std::less<>> rows;  // by profile
  FakeClock* clock = nullptr;
  int takes = 0;

  Result<> put_login_flow(const Secret& state, const store::PendingLogin& f) override {
    Row r{std::string(state.reveal()), {}};
    r.flow.profile = f.profile;
    r.flow.code_verifier = Secret(f.code_verifier.reveal());
    r.flow.redirect_uri = f.redirect_uri;
    r.flow.issuer = f.issuer;
    r.flow.issuer_required = f.issuer_required;
    r.flow.resource = f.resource;
    r.flow.scopes = f.scopes;
    r.flow.started_at_ms = f.started_at_ms;
    r.flow.expires_at_ms = f.expires_at_ms;
    r.flow.replica = f.replica;
    r.flow.flow_id = f.flow_id;
    rows.insert_or_assign(f.profile, std::move(r));
    return {};
  }
  Result<std::optional<store::PendingLogin>> take_login_flow(
      std::optional<std::string_view> profile, const Secret* state) override {
    ++takes;
    for (auto it = rows.begin(); it != rows.end(); ++it) {
      if (profile && it->first != *profile) continue;
      if (state != nullptr && it->second.state != state->reveal()) continue;
      store::PendingLogin out = std::move(it->second.flow);
      rows.erase(it);
      if (out.expires_at_ms <= to_unix_ms(clock->wall_now())) return std::nullopt;
      return std::optional<store::PendingLogin>(std::move(out));
    }
    return std::optional<store::PendingLogin>{};
  }
  Result<bool> has_login_flow(std::string_view profile, const Secret& state) override {
    auto it = rows.find(profile);
    return it != rows.end() && it->second.state == state.reveal();
  }
  Result<> drop_login_flow(std::string_view profile, const Secret& state) override {
    auto it = rows.find(profile);
    if (it != rows.end() && it->second.state == state.reveal()) rows.erase(it);
    return {};
  }
};

const std::string k_public_callback = "https://tokend.example.com/connect/callback";

struct TwoReplicas {
  FakeFlowStore flows;
  LoginRig a{"A"};
  LoginRig b{"B"};
  TwoReplicas() {
    flows.clock = &a.clock;
    Json body = k_generic;
    body["redirect_uri"] = k_public_callback;
    for (LoginRig* r : {&a, &b}) {
      r->login->share_flows(&flows);
      r->add(body);
    }
  }
  // The events a replica's bus saw of one kind.
  static std::vector<Event> of(const LoginRig& r, EventKind kind) {
    std::vector<Event> out;
    for (const auto& e : r.seen) {
      if (e.kind == kind) out.push_back(e);
    }
    return out;
  }
  // What the server does with another replica's event (Tenant::apply_remote).
  static void relay(const LoginRig& from, LoginRig& to, EventKind kind) {
    for (const auto& e : of(from, kind)) to.login->remote_event(e.kind, e.profile, e.data);
  }
};

// The answer comes after the exchange, maybe later: read it through the pointer.
std::shared_ptr<std::optional<Result<Json>>> complete_with(LoginRig& r, const std::string& query) {
  auto done = std::make_shared<std::optional<Result<Json>>>();
  r.login->complete("p", Json{{"redirect_url", k_public_callback + "?" + query}},
                    [done](Result<Json> x) { *done = std::move(x); });
  return done;
}

}  // namespace

TEST_CASE("server mode: a flow started on one replica is completed on another, once",
          "[login][replicas]") {
  TwoReplicas t;
  const Json flow = t.a.start({.device = false, .listen = false});
  const std::string url = flow["authorize_url"];
  const std::string state = t.a.param(url, "state");
  REQUIRE(t.flows.rows.size() == 1);
  CHECK(t.flows.rows.at("p").flow.replica == "A");
  CHECK(t.flows.rows.at("p").flow.flow_id == flow["id"].get<std::int64_t>());
  CHECK(t.flows.rows.at("p").flow.redirect_uri == k_public_callback);

  // Replica B gets the provider's redirect: it claims the flow.
  CHECK(t.b.login->claim_state(state) == std::optional<std::string>("p"));
  CHECK(t.flows.rows.empty());
  std::optional<Result<Json>> done;
  t.b.login->complete(
      "p", Json{{"redirect_url", k_public_callback + "?code=abc&state=" + form_encode(state)}},
      [&](Result<Json> r) { done = std::move(r); });
  REQUIRE(t.b.http.pending.size() == 1);
  const std::string body = t.b.last_body();
  // A's PKCE verifier, A's redirect URI.
  CHECK(pkce_challenge(t.b.param("?" + body, "code_verifier")) == t.a.param(url, "code_challenge"));
  CHECK(t.b.param("?" + body, "redirect_uri") == k_public_callback);
  CHECK(t.b.param("?" + body, "code") == "abc");
  // A replay of the redirect, to either replica, finds nothing to claim.
  CHECK_FALSE(t.b.login->claim_state(state));
  t.b.http.reply(200, tokens_json());
  REQUIRE(done.has_value());
  REQUIRE(done->has_value());
  CHECK((**done)["state"] == "succeeded");
  CHECK(t.b.tokens->token("p", {})->token() == "at-1");
  const auto succeeded = TwoReplicas::of(t.b, EventKind::login_succeeded);
  REQUIRE(succeeded.size() == 1);
  CHECK(succeeded[0].data["replica"] == "A");
  CHECK(succeeded[0].data["flow_id"] == flow["id"]);

  // A learns the outcome from B's event, publishing nothing of its own.
  CHECK(t.a.login->status("p")["state"] == "pending");
  const std::size_t seen = t.a.seen.size();
  TwoReplicas::relay(t.b, t.a, EventKind::login_succeeded);
  CHECK(t.a.login->status("p")["state"] == "succeeded");
  CHECK(t.a.seen.size() == seen);
  CHECK_FALSE(t.a.login->claim_state(state));
  CHECK(t.a.http.pending.empty());
  // Another event of the profile (not this flow's) changes nothing.
  t.a.login->remote_event(EventKind::login_failed, "p", {{"replica", "A"}, {"flow_id", 999}});
  CHECK(t.a.login->status("p")["state"] == "succeeded");
}

TEST_CASE("server mode: a redirect reaching the starting replica after another claimed it",
          "[login][replicas]") {
  TwoReplicas t;
  const Json flow = t.a.start({.device = false, .listen = false});
  const std::string state = t.a.param(flow["authorize_url"], "state");
  REQUIRE(t.b.login->claim_state(state));
  // A still holds the flow as pending, but the store no longer has it: A
  // redeems nothing and says so.
  REQUIRE(t.a.login->claim_state(state) == std::optional<std::string>("p"));
  auto done = complete_with(t.a, "code=abc&state=" + form_encode(state));
  REQUIRE(done->has_value());
  REQUIRE_FALSE((*done)->has_value());
  CHECK((*done)->error().code == Errc::conflict);
  CHECK(t.a.http.pending.empty());
  Json s = t.a.login->status("p");
  CHECK(s["state"] == "pending");
  CHECK(s["phase"] == "completing_elsewhere");
  CHECK_FALSE(t.a.login->awaiting_state(state));

  // B's exchange fails; A's flow ends with B's reason.
  auto b_done = complete_with(t.b, "code=abc&state=" + form_encode(state));
  t.b.http.reply(400, R"({"error":"invalid_grant"})");
  REQUIRE(b_done->has_value());
  CHECK((**b_done)->at("state") == "failed");
  TwoReplicas::relay(t.b, t.a, EventKind::login_failed);
  s = t.a.login->status("p");
  CHECK(s["state"] == "failed");
  CHECK(s["error"]["reason"] == "invalid_grant");
}

TEST_CASE("server mode: a start, cancel or expiry on one replica ends the flow on the other",
          "[login][replicas]") {
  TwoReplicas t;
  SECTION("a newer start on B replaces A's flow") {
    const std::string old_state = t.a.param(t.a.start({false, false})["authorize_url"], "state");
    const std::string new_state = t.b.param(t.b.start({false, false})["authorize_url"], "state");
    REQUIRE(t.flows.rows.size() == 1);
    CHECK(t.flows.rows.at("p").flow.replica == "B");
    TwoReplicas::relay(t.b, t.a, EventKind::login_started);
    const Json s = t.a.login->status("p");
    CHECK(s["state"] == "cancelled");
    CHECK(s["error"]["reason"] == "replaced");
    CHECK_FALSE(t.b.login->claim_state(old_state));
    CHECK(t.a.login->claim_state(new_state) == std::optional<std::string>("p"));
  }
  SECTION("a cancel on B of the flow A holds") {
    const std::string state = t.a.param(t.a.start({false, false})["authorize_url"], "state");
    REQUIRE(t.b.login->cancel("p"));
    CHECK(t.flows.rows.empty());
    TwoReplicas::relay(t.b, t.a, EventKind::login_cancelled);
    CHECK(t.a.login->status("p")["state"] == "cancelled");
    CHECK_FALSE(t.b.login->claim_state(state));
    CHECK(t.b.login->cancel("p").error().code == Errc::conflict);
  }
  SECTION("A's flow expires: it leaves the store") {
    t.a.start({false, false});
    REQUIRE(t.flows.rows.size() == 1);
    t.a.clock.advance(601s);
    CHECK(t.a.login_timer.fire_due());
    CHECK(t.a.login->status("p")["state"] == "expired");
    CHECK(t.flows.rows.empty());
  }
  SECTION("A shuts down: the flow stays for another replica to complete") {
    const std::string state = t.a.param(t.a.start({false, false})["authorize_url"], "state");
    t.a.login->shutdown();
    REQUIRE(t.flows.rows.size() == 1);
    CHECK(t.b.login->claim_state(state) == std::optional<std::string>("p"));
  }
  SECTION("a bare code pasted on B completes A's flow by its profile") {
    t.a.start({false, false});
    std::optional<Result<Json>> done;
    t.b.login->complete("p", Json{{"code", "abc"}}, [&](Result<Json> r) { done = std::move(r); });
    REQUIRE(t.b.http.pending.size() == 1);
    t.b.http.reply(200, tokens_json());
    REQUIRE(done.has_value());
    REQUIRE(done->has_value());
    CHECK((**done)["state"] == "succeeded");
    TwoReplicas::relay(t.b, t.a, EventKind::login_succeeded);
    CHECK(t.a.login->status("p")["state"] == "succeeded");
  }
}

TEST_CASE(
    "server mode: after lost events, a flow completed elsewhere is judged from the credential",
    "[login][replicas]") {
  TwoReplicas t;
  const std::string state = t.a.param(t.a.start({false, false})["authorize_url"], "state");
  // Still kept: resync changes nothing.
  t.a.login->resync();
  CHECK(t.a.login->status("p")["state"] == "pending");
  CHECK_FALSE(t.a.login->status("p").contains("phase"));
  // B claims it: the row is gone, no new tokens yet: completing elsewhere.
  REQUIRE(t.b.login->claim_state(state));
  t.a.login->resync();
  CHECK(t.a.login->status("p")["phase"] == "completing_elsewhere");
  // B's tokens reach the shared credential (here: A's own store); B's event
  // was lost, and the next resync finds them.
  t.a.clock.advance(1s);
  store::TokenSet tokens;
  tokens.access_token = Secret("at-elsewhere");
  tokens.token_type = "Bearer";
  tokens.obtained_at_ms = to_unix_ms(t.a.clock.wall_now());
  tokens.expires_at_ms = tokens.obtained_at_ms + 3'600'000;
  REQUIRE(t.a.tokens->install_tokens("p", tokens));
  t.a.login->resync();
  const Json s = t.a.login->status("p");
  CHECK(s["state"] == "succeeded");
  CHECK(s["expires_at"] == *tokens.expires_at_ms / 1000);
}
