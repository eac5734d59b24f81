// client::ApiClient against a scripted tokend on a real Unix socket: the
// method, path and body each call sends, and how answers and errors become
// structs and ApiErrors. client_stream_test.cpp covers the Client below it.
#include "client/api.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>

#include "support/socket_peer.hpp"
#include "support/temp_dir.hpp"

using tokend::Errc;
using tokend::client::ApiClient;
using tokend::client::ApiError;
using tokend::test::read_exactly;
using tokend::test::read_head;
using tokend::test::ScriptedPeer;
using tokend::test::TempDir;
using tokend::test::write_all;
namespace paths = tokend::client::paths;
namespace json = tokend::json;

namespace {

// What the fake tokend received.
struct Received {
  std::string method;
  std::string target;
  std::string head;
  std::string body;
};

// Accepts one connection, reads one request (Content-Length body) and
// writes `answer` as it is, then closes.
class FakeTokend {
 public:
  FakeTokend(const TempDir& dir, std::string answer)
      : m_peer(dir / "tokend.sock", [this, answer = std::move(answer)](int fd) {
          read_request(fd);
          write_all(fd, answer);
        }) {}
  [[nodiscard]] ApiClient api() const { return ApiClient(m_peer.path()); }
  // Once the call returned: waits for the fake to finish its answer.
  const Received& received() {
    m_peer.join();
    return m_received;
  }

 private:
  void read_request(int fd) {
    std::string buf;
    m_received.head = read_head(fd, buf);
    if (m_received.head.empty()) return;
    const auto sp1 = m_received.head.find(' ');
    const auto sp2 = m_received.head.find(' ', sp1 + 1);
    m_received.method = m_received.head.substr(0, sp1);
    m_received.target = m_received.head.substr(sp1 + 1, sp2 - sp1 - 1);
    std::size_t length = 0;
    if (const auto cl = m_received.head.find("Content-Length: "); cl != std::string::npos) {
      length = std::stoul(m_received.head.substr(cl + 16));
    }
    read_exactly(fd, buf, length);
    m_received.body = buf;
  }

  // Before the peer: its thread writes here until the peer is destroyed.
  Received m_received;
  ScriptedPeer m_peer;
};

std::string answer(int status, const std::string& body, const std::string& reason = "X") {
  return "HTTP/1.1 " + std::to_string(status) + " " + reason +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\n\r\n" + body;
}

}  // namespace

TEST_CASE("paths are built in one place, profile names percent-encoded", "[client][api]") {
  CHECK(tokend::client::path_segment("jira.prod_1-x~") == "jira.prod_1-x~");
  CHECK(tokend::client::path_segment("a b/c%") == "a%20b%2Fc%25");
  CHECK(paths::health() == "/v1/health");
  CHECK(paths::profiles() == "/v1/profiles");
  CHECK(paths::profile("a/b") == "/v1/profiles/a%2Fb");
  CHECK(paths::token("p", "", std::nullopt) == "/v1/profiles/p/token");
  CHECK(paths::token("p", "half", std::nullopt) == "/v1/profiles/p/token?min_valid=half");
  CHECK(paths::token("p", "60", 5) == "/v1/profiles/p/token?min_valid=60&wait=5");
  CHECK(paths::token("p", "", 5) == "/v1/profiles/p/token?wait=5");
  CHECK(paths::refresh("p") == "/v1/profiles/p/refresh");
  CHECK(paths::logout("p") == "/v1/profiles/p/logout");
  CHECK(paths::test("p") == "/v1/profiles/p/test");
  CHECK(paths::login("p") == "/v1/profiles/p/login");
  CHECK(paths::login("p", 30) == "/v1/profiles/p/login?wait=30");
  CHECK(paths::login_complete("p") == "/v1/profiles/p/login/complete");
  CHECK(paths::endpoint("p", std::nullopt) == "/v1/profiles/p/endpoint");
  CHECK(paths::endpoint("p", 7) == "/v1/profiles/p/endpoint?wait=7");
  CHECK(paths::events(std::nullopt) == "/v1/events");
  CHECK(paths::events("a b") == "/v1/events?profile=a%20b");
  CHECK(paths::mcp("p") == "/v1/mcp/p");
  CHECK(paths::proxy_prefix("p") == "/v1/proxy/p/");
}

TEST_CASE("health() reads version, pid, uptime and profile count", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(dir, answer(200, R"({"version":"1.2.3","pid":42,"uptime_s":7,"profiles":3})"));
  auto h = tokend.api().health();
  REQUIRE(h);
  CHECK(tokend.received().method == "GET");
  CHECK(tokend.received().target == "/v1/health");
  CHECK(h->version == "1.2.3");
  CHECK(h->pid == 42);
  CHECK(h->uptime_s == 7);
  CHECK(h->profiles == 3);
}

TEST_CASE("health() keeps defaults for missing or mistyped fields", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(dir, answer(200, R"({"version":5,"pid":"x"})"));
  auto h = tokend.api().health();
  REQUIRE(h);
  CHECK(h->version == "?");
  CHECK(h->pid == 0);
}

TEST_CASE("profiles() lists summaries and keeps the array as sent", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(
      dir, answer(200, R"({"profiles":[{"name":"a","kind":"oauth2","state":"valid",)"
                       R"("has_refresh_token":true},{"name":"b","kind":"pat","state":"valid"}]})"));
  auto list = tokend.api().profiles();
  REQUIRE(list);
  CHECK(tokend.received().target == "/v1/profiles");
  REQUIRE(list->profiles.size() == 2);
  CHECK(list->profiles[0].name == "a");
  CHECK(list->profiles[0].kind == "oauth2");
  CHECK(list->profiles[0].has_refresh_token);
  CHECK_FALSE(list->profiles[1].has_refresh_token);
  CHECK(list->json.is_array());
  CHECK(list->json.size() == 2);
}

TEST_CASE("profile() reads the fields commands use, config included", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(
      dir, answer(200, R"({"name":"m","kind":"oauth2","provider":"mcp","state":"valid",)"
                       R"("expires_at":1700000000,"config":{"mcp_server":"https://mcp.example/",)"
                       R"("cloud_id":"c1"}})"));
  auto p = tokend.api().profile("m");
  REQUIRE(p);
  CHECK(tokend.received().method == "GET");
  CHECK(tokend.received().target == "/v1/profiles/m");
  CHECK(p->provider == "mcp");
  CHECK(p->expires_at == 1700000000);
  CHECK_FALSE(p->next_refresh_at);
  CHECK(p->mcp_server == "https://mcp.example/");
  CHECK(p->cloud_id == "c1");
  CHECK(p->json["name"] == "m");
}

TEST_CASE("put_profile() sends the body as given and reports 201 for a new profile",
          "[client][api]") {
  TempDir dir;
  FakeTokend tokend(dir, answer(201, R"({"name":"n","kind":"pat","state":"valid"})"));
  auto stored = tokend.api().put_profile("n", R"({"kind":"pat","token":"t"})");
  REQUIRE(stored);
  CHECK(tokend.received().method == "PUT");
  CHECK(tokend.received().target == "/v1/profiles/n");
  CHECK(tokend.received().body == R"({"kind":"pat","token":"t"})");
  CHECK(stored->status == 201);
  CHECK(stored->profile.kind == "pat");
}

TEST_CASE("remove_profile() sends DELETE", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(dir, answer(200, R"({"removed":true})"));
  REQUIRE(tokend.api().remove_profile("gone"));
  CHECK(tokend.received().method == "DELETE");
  CHECK(tokend.received().target == "/v1/profiles/gone");
}

TEST_CASE("token() sends min_valid and wait and reads the token answer", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(
      dir, answer(200, R"({"token":"tok","authorization":"Bearer tok","token_type":"Bearer",)"
                       R"("expires_at":99})"));
  auto t = tokend.api().token("p", {"half", 5});
  REQUIRE(t);
  CHECK(tokend.received().target == "/v1/profiles/p/token?min_valid=half&wait=5");
  CHECK(t->token() == "tok");
  CHECK(t->authorization() == "Bearer tok");
  CHECK(t->token_type() == "Bearer");
  CHECK(t->expires_at() == 99);
}

TEST_CASE("refresh(), logout() and test() POST and read their answers", "[client][api]") {
  TempDir dir;
  SECTION("refresh") {
    FakeTokend tokend(dir, answer(200, R"({"expires_at":123})"));
    auto r = tokend.api().refresh("p");
    REQUIRE(r);
    CHECK(tokend.received().method == "POST");
    CHECK(tokend.received().target == "/v1/profiles/p/refresh");
    CHECK(r->expires_at == 123);
  }
  SECTION("logout") {
    FakeTokend tokend(dir, answer(200, R"({"revoked":false,"reason":"no revocation endpoint"})"));
    auto r = tokend.api().logout("p");
    REQUIRE(r);
    CHECK(tokend.received().target == "/v1/profiles/p/logout");
    CHECK_FALSE(r->revoked);
    CHECK(r->reason == "no revocation endpoint");
  }
  SECTION("test") {
    FakeTokend tokend(
        dir, answer(200, R"({"ok":true,"status":200,"url":"https://x/me","summary":"me"})"));
    auto r = tokend.api().test("p");
    REQUIRE(r);
    CHECK(tokend.received().target == "/v1/profiles/p/test");
    CHECK(r->ok);
    CHECK(r->status == 200);
    CHECK(r->url == "https://x/me");
    CHECK(r->summary == "me");
  }
}

TEST_CASE("start_login() asks for the code flow with a listener, or the device flow",
          "[client][api]") {
  TempDir dir;
  SECTION("code") {
    FakeTokend tokend(
        dir, answer(200, R"({"authorize_url":"https://as/authorize?x","listening":true})"));
    auto s = tokend.api().start_login("p", false);
    REQUIRE(s);
    CHECK(tokend.received().method == "POST");
    CHECK(tokend.received().target == "/v1/profiles/p/login");
    CHECK(tokend.received().body == R"({"flow":"code","listen":true})");
    CHECK(s->authorize_url == "https://as/authorize?x");
    CHECK(s->listening);
  }
  SECTION("device") {
    FakeTokend tokend(
        dir, answer(200, R"({"verification_uri":"https://as/device","user_code":"AB-CD"})"));
    auto s = tokend.api().start_login("p", true);
    REQUIRE(s);
    CHECK(tokend.received().body == R"({"flow":"device"})");
    CHECK(s->verification_uri == "https://as/device");
    CHECK(s->user_code == "AB-CD");
    CHECK(s->verification_uri_complete.empty());
  }
}

TEST_CASE("a login flow's state and error come from its answer", "[client][api]") {
  TempDir dir;
  FakeTokend tokend(dir, answer(200, R"({"state":"failed","error":{"code":"login_failed",)"
                                     R"("message":"the provider said no"}})"));
  auto f = tokend.api().complete_login("p", R"({"code":"c"})");
  REQUIRE(f);
  CHECK(tokend.received().method == "POST");
  CHECK(tokend.received().target == "/v1/profiles/p/login/complete");
  CHECK(tokend.received().body == R"({"code":"c"})");
  CHECK(f->state == "failed");
  CHECK(f->error == "the provider said no");
}

TEST_CASE("an error answer becomes an ApiError with tokend's message, code and status",
          "[client][api]") {
  TempDir dir;
  SECTION("reauth_required names the command") {
    FakeTokend tokend(dir,
                      answer(401, R"({"error":{"code":"reauth_required","message":"sign in again",)"
                                  R"("command":"tokenctl login p"}})"));
    auto t = tokend.api().token("p", {});
    REQUIRE_FALSE(t);
    CHECK(t.error().stage == ApiError::Stage::answer);
    CHECK(t.error().reauth());
    CHECK(t.error().status == 401);
    CHECK(t.error().error.message == "sign in again; run: tokenctl login p");
  }
  SECTION("a command already in the message is not repeated") {
    FakeTokend tokend(
        dir, answer(401, R"({"error":{"code":"reauth_required",)"
                         R"("message":"run tokenctl login p","command":"tokenctl login p"}})"));
    auto t = tokend.api().token("p", {});
    REQUIRE_FALSE(t);
    CHECK(t.error().error.message == "run tokenctl login p");
  }
  SECTION("409 on cancelling a login that already ended") {
    FakeTokend tokend(dir,
                      answer(409, R"({"error":{"code":"conflict","message":"no login pending"}})"));
    auto c = tokend.api().cancel_login("p");
    REQUIRE_FALSE(c);
    CHECK(tokend.received().method == "DELETE");
    CHECK(tokend.received().target == "/v1/profiles/p/login");
    CHECK(c.error().status == 409);
    CHECK(c.error().error.code == Errc::conflict);
    CHECK_FALSE(c.error().reauth());
  }
  SECTION("an answer without tokend's error body") {
    FakeTokend tokend(dir, answer(502, "upstream broke"));
    auto p = tokend.api().profile("p");
    REQUIRE_FALSE(p);
    CHECK(p.error().stage == ApiError::Stage::answer);
    CHECK(p.error().error.code == Errc::internal);
    CHECK(p.error().error.message == "tokend answered 502");
  }
}

TEST_CASE("no tokend is a connect failure; a dropped connection an exchange failure",
          "[client][api]") {
  TempDir dir;
  SECTION("nothing listens") {
    auto h = ApiClient(dir / "nobody.sock").health();
    REQUIRE_FALSE(h);
    CHECK(h.error().stage == ApiError::Stage::connect);
    CHECK(h.error().error.code == Errc::unavailable);
  }
  SECTION("closed before answering") {
    FakeTokend tokend(dir, "");
    auto h = tokend.api().health();
    REQUIRE_FALSE(h);
    CHECK(h.error().stage == ApiError::Stage::exchange);
  }
}

TEST_CASE("open_endpoint() sends the pid and keeps the connection after the first line",
          "[client][api]") {
  TempDir dir;
  SECTION("a whole endpoint line") {
    FakeTokend tokend(dir,
                      "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n\r\n"
                      R"({"url":"http://127.0.0.1:5/","urls":{"jira":"http://127.0.0.1:5/jira/"},)"
                      R"("user":"tokend","standin":"s3cret"})"
                      "\n");
    auto e = tokend.api().open_endpoint("p", 3, 4242);
    REQUIRE(e);
    CHECK(tokend.received().method == "POST");
    CHECK(tokend.received().target == "/v1/profiles/p/endpoint?wait=3");
    CHECK(tokend.received().body == R"({"pid":4242})");
    CHECK(e->url == "http://127.0.0.1:5/");
    REQUIRE(e->urls.size() == 1);
    CHECK(e->urls[0] == std::pair<std::string, std::string>{"jira", "http://127.0.0.1:5/jira/"});
    CHECK(e->user == "tokend");
    CHECK(e->standin.reveal() == "s3cret");
  }
  SECTION("an answer without the stand-in") {
    FakeTokend tokend(dir, "HTTP/1.1 200 OK\r\n\r\n{\"url\":\"http://127.0.0.1:5/\"}\n");
    auto e = tokend.api().open_endpoint("p", std::nullopt, 1);
    REQUIRE_FALSE(e);
    CHECK(tokend.received().target == "/v1/profiles/p/endpoint");
    CHECK(e.error().stage == ApiError::Stage::answer);
    CHECK(e.error().error.message == "tokend's endpoint answer is incomplete");
  }
  SECTION("refused") {
    FakeTokend tokend(dir,
                      answer(401, R"({"error":{"code":"reauth_required","message":"log in"}})"));
    auto e = tokend.api().open_endpoint("p", std::nullopt, 1);
    REQUIRE_FALSE(e);
    CHECK(e.error().reauth());
    CHECK(e.error().error.message == "log in");
  }
}

TEST_CASE("events() hands over each event's data and reports a refused stream", "[client][api]") {
  TempDir dir;
  SECTION("two events, then tokend ends the stream") {
    FakeTokend tokend(dir,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
                      "event: refreshed\ndata: {\"profile\":\"a\"}\n\n: keep-alive\n\n"
                      "data: {\"profile\":\"b\"}\n\n");
    std::vector<std::string> seen;
    auto r = tokend.api().events(
        "a", [&](const json::Json& e) { seen.push_back(e.value("profile", "")); });
    REQUIRE(r);
    CHECK(tokend.received().target == "/v1/events?profile=a");
    CHECK(seen == std::vector<std::string>{"a", "b"});
  }
  SECTION("refused") {
    FakeTokend tokend(dir,
                      answer(404, R"({"error":{"code":"not_found","message":"no profile 'x'"}})"));
    auto r = tokend.api().events(std::nullopt, [](const json::Json&) {});
    REQUIRE_FALSE(r);
    CHECK(tokend.received().target == "/v1/events");
    CHECK(r.error().stage == ApiError::Stage::answer);
    CHECK(r.error().error.message == "no profile 'x'");
  }
}
