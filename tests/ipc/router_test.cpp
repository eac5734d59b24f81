#include "ipc/router.hpp"

#include <catch2/catch_test_macros.hpp>
#include <memory>
#include <optional>

#include "ipc/http.hpp"

using namespace tokend::ipc;

TEST_CASE("router matches parameters, rest segments and reports allowed methods", "[ipc][router]") {
  Router r;
  int hit = 0;
  r.add("GET", "/v1/profiles", [&](const auto&) { hit = 1; });
  r.add("GET", "/v1/profiles/{name}", [&](const auto&) { hit = 2; });
  r.add("PUT", "/v1/profiles/{name}", [&](const auto&) { hit = 3; });
  r.add("GET", "/v1/profiles/{name}/token", [&](const auto&) { hit = 4; });
  r.add("GET", "/v1/proxy/{name}/{rest...}", [&](const auto&) { hit = 5; });

  auto m = r.match("GET", "/v1/profiles/jira");
  REQUIRE(m.handler);
  CHECK(m.param("name") == "jira");
  (*m.handler)(nullptr);
  CHECK(hit == 2);
  m = r.match("GET", "/v1/profiles/jira/token");
  REQUIRE(m.handler);
  m = r.match("DELETE", "/v1/profiles/jira");
  CHECK_FALSE(m.handler);
  CHECK(m.allowed == std::vector<std::string>{"GET", "PUT"});
  m = r.match("GET", "/v1/proxy/jira/rest/api/3/myself");
  REQUIRE(m.handler);
  CHECK(m.param("rest") == "rest/api/3/myself");
  CHECK(m.param("name") == "jira");
  CHECK_FALSE(r.match("GET", "/v1/profiles/a/b/c").handler);
  CHECK_FALSE(r.match("GET", "/v2/profiles").handler);
  CHECK(r.match("GET", "/v1/profiles").handler);
}

// Routes are looked up by the path's segment count (up to a dozen), every
// route beyond: both ways must find the same routes, in the table's order.
TEST_CASE("router: short and very long paths, an empty rest, literals before parameters",
          "[ipc][router]") {
  Router r;
  int hit = 0;
  r.add("GET", "/v1/proxy/{name}/{rest...}", [&](const auto&) { hit = 1; });
  r.add("GET", "/v1/profiles/{name}", [&](const auto&) { hit = 2; });
  r.add("GET", "/v1/profiles/all", [&](const auto&) { hit = 3; });
  r.add("POST", "/v1/deep/a/b/c/d/e/f/g/h/i/j/k/l/m", [&](const auto&) { hit = 4; });

  std::string deep = "/v1/proxy/jira";
  for (int i = 0; i < 20; ++i) deep += "/s" + std::to_string(i);
  auto m = r.match("GET", deep);
  REQUIRE(m.handler);
  CHECK(m.param("rest").starts_with("s0/s1/"));
  CHECK(m.param("rest").ends_with("/s19"));

  m = r.match("GET", "/v1/proxy/jira");  // the rest may be empty
  REQUIRE(m.handler);
  CHECK(m.param("rest").empty());

  m = r.match("GET", "/v1/profiles/all");
  REQUIRE(m.handler);
  (*m.handler)(nullptr);
  CHECK(hit == 3);  // "all" sorts before "{name}"
  m = r.match("GET", "/v1/profiles/jira");
  REQUIRE(m.handler);
  (*m.handler)(nullptr);
  CHECK(hit == 2);

  m = r.match("GET", "/v1/deep/a/b/c/d/e/f/g/h/i/j/k/l/m");  // 15 segments
  CHECK_FALSE(m.handler);
  CHECK(m.allowed == std::vector<std::string>{"POST"});
  CHECK(r.match("POST", "/v1/deep/a/b/c/d/e/f/g/h/i/j/k/l/m").handler);
  CHECK_FALSE(r.match("POST", "/v1/deep/a/b/c/d/e/f/g/h/i/j/k/l").handler);
  CHECK_FALSE(r.match("GET", "/").handler);
}

TEST_CASE("path decoding refuses encoded separators and bad escapes", "[ipc][http]") {
  CHECK(*decode_path("/v1/a%20b") == "/v1/a b");
  CHECK_FALSE(decode_path("/v1/a%2Fb"));
  CHECK_FALSE(decode_path("/v1/a%2fb"));
  CHECK_FALSE(decode_path("/v1/a%00"));
  CHECK_FALSE(decode_path("/v1/a%"));
  CHECK_FALSE(decode_path("/v1/a%4"));
  CHECK_FALSE(decode_path("/v1/a%zz"));
  auto q = parse_query("a=1&b=x+y&c=%41&&d");
  REQUIRE(q);
  REQUIRE(q->size() == 4);
  CHECK((*q)[1].second == "x y");
  CHECK((*q)[2].second == "A");
  CHECK((*q)[3].first == "d");
  CHECK_FALSE(parse_query("a=%G1"));
}

TEST_CASE("error responses carry code and message", "[ipc][http]") {
  auto r = error_response(tokend::Error{tokend::Errc::not_found, "no profile named 'x'"});
  CHECK(r.status == 404);
  CHECK(r.body.find(R"("code":"not_found")") != std::string::npos);
  CHECK(answer_for(tokend::Errc::reauth_required).status == 401);
  CHECK(answer_for(tokend::Errc::invalid_argument).status == 400);
}

TEST_CASE("one table answers every error code, in the API and for forwarded calls", "[ipc][http]") {
  using tokend::Errc;
  // The API names an error by its code; a forwarded call names the failures
  // on its way upstream from the caller's side.
  CHECK(answer_for(Errc::transient).status == 503);
  CHECK(answer_for(Errc::transient).code == "transient");
  CHECK(answer_for(Errc::transient, ErrorContext::forwarded).status == 502);
  CHECK(answer_for(Errc::transient, ErrorContext::forwarded).code == "upstream_unreachable");
  CHECK(answer_for(Errc::timeout, ErrorContext::forwarded).code == "upstream_timeout");
  CHECK(answer_for(Errc::permission).code == "permission");
  CHECK(answer_for(Errc::permission, ErrorContext::forwarded).code == "policy_denied");
  CHECK(answer_for(Errc::limit_exceeded, ErrorContext::forwarded).status == 429);
  CHECK(answer_for(Errc::limit_exceeded, ErrorContext::forwarded).code == "rate_limited");
  CHECK(answer_for(Errc::not_found, ErrorContext::forwarded).code == "not_found");
  // Every code has a row: nothing falls through to the catch-all 500 unless it is one.
  for (int i = 0; i <= static_cast<int>(Errc::internal); ++i) {
    const auto code = static_cast<Errc>(i);
    const auto a = answer_for(code);
    CHECK(a.code == tokend::errc_name(code));
    CHECK(a.status >= 400);
    CHECK(a.status < 600);
  }
  CHECK(answer_for(Errc::io).status == 500);
  CHECK(answer_for(Errc::config).status == 422);
  auto r = error_response(tokend::Error{Errc::timeout, "slow"}, tokend::json::Json::object(),
                          ErrorContext::forwarded);
  CHECK(r.status == 504);
  CHECK(r.body.find(R"("code":"upstream_timeout")") != std::string::npos);
}

namespace {

// An exchange another router accepted: records what the handler answered.
class RecordingExchange final : public Exchange {
 public:
  explicit RecordingExchange(Request r, Peer p) : m_request(std::move(r)), m_peer(std::move(p)) {}
  [[nodiscard]] const Request& request() const override { return m_request; }
  [[nodiscard]] const Peer& peer() const override { return m_peer; }
  [[nodiscard]] std::string_view param(std::string_view) const override { return "outer"; }
  void respond(Response response) override {
    if (!answer) answer = std::move(response);
  }
  std::shared_ptr<Stream> start_stream(int, Headers, StreamFraming) override { return nullptr; }
  [[nodiscard]] bool pending() const override { return !answer; }
  void on_abandon(std::function<void()>) override {}

  std::optional<Response> answer;

 private:
  Request m_request;
  Peer m_peer;
};

std::shared_ptr<RecordingExchange> exchange(std::string method, std::string path) {
  Request r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.target = r.path;
  Peer p;
  p.uid = 33;
  p.pid = 7;
  return std::make_shared<RecordingExchange>(std::move(r), p);
}

}  // namespace

TEST_CASE("dispatch hands an exchange to this router's handler with its parameters and a peer",
          "[ipc][router]") {
  Router inner;
  std::string seen_name, seen_user, seen_service;
  uid_t seen_uid = 0;
  inner.add("GET", "/v1/profiles/{name}/token", [&](const std::shared_ptr<Exchange>& ex) {
    seen_name = std::string(ex->param("name"));
    seen_user = ex->peer().user;
    seen_service = ex->peer().service;
    seen_uid = ex->peer().uid;
    CHECK(ex->pending());
    ex->respond(Response::json(200, {{"ok", true}}));
  });
  auto ex = exchange("GET", "/v1/profiles/jira/token");
  Peer as = ex->peer();
  as.user = "alice@example.com";
  as.service = "mcp";
  inner.dispatch(ex, as);
  CHECK(seen_name == "jira");  // the inner router's parameter, not the outer exchange's
  CHECK(seen_user == "alice@example.com");
  CHECK(seen_service == "mcp");
  CHECK(seen_uid == 33);
  REQUIRE(ex->answer);
  CHECK(ex->answer->status == 200);
  CHECK(ex->peer().user.empty());  // the outer exchange is unchanged
}

TEST_CASE("dispatch answers 404 and 405 for what this router does not have", "[ipc][router]") {
  Router inner;
  int calls = 0;
  inner.add("GET", "/v1/profiles", [&](const auto&) { ++calls; });
  auto missing = exchange("GET", "/v1/nothing");
  inner.dispatch(missing, missing->peer());
  REQUIRE(missing->answer);
  CHECK(missing->answer->status == 404);
  auto wrong_method = exchange("DELETE", "/v1/profiles");
  inner.dispatch(wrong_method, wrong_method->peer());
  REQUIRE(wrong_method->answer);
  CHECK(wrong_method->answer->status == 405);
  CHECK(calls == 0);
}
