// Server mode's front router holds the API's route shapes: every route the
// API registers, with its body limit, all to one handler.
#include <catch2/catch_test_macros.hpp>
#include <memory>
#include <string>

#include "api/api.hpp"

using namespace tokend;

TEST_CASE("the route shapes are the API's routes with their body limits", "[api][routes]") {
  ipc::Router front;
  int calls = 0;
  api::Api::register_route_shapes(front, [&](const std::shared_ptr<ipc::Exchange>&) { ++calls; });
  struct Case {
    const char* method;
    const char* path;
    bool large_body;
  };
  const Case routes[] = {
      {"GET", "/v1/health", false},
      {"GET", "/v1/profiles", false},
      {"PUT", "/v1/profiles/jira", false},
      {"GET", "/v1/profiles/jira/token", false},
      {"POST", "/v1/profiles/jira/login/complete", false},
      {"DELETE", "/v1/profiles/jira/login", false},
      {"POST", "/v1/profiles/jira/endpoint", false},
      {"PATCH", "/v1/proxy/jira/rest/api/3/issue/X-1", true},
      {"HEAD", "/v1/proxy/jira/a", true},
      {"POST", "/v1/mcp/jira", true},
      {"GET", "/v1/events", false},
      {"GET", "/v1/audit", false},
      {"GET", "/v1/metrics", false},
  };
  for (const auto& r : routes) {
    CAPTURE(r.method, r.path);
    const auto m = front.match(r.method, r.path);
    REQUIRE(m.handler != nullptr);
    CHECK(m.large_body == r.large_body);
    (*m.handler)(nullptr);
  }
  CHECK(calls == static_cast<int>(std::size(routes)));
  CHECK(front.match("GET", "/v1/nothing").handler == nullptr);
  CHECK(front.match("PATCH", "/v1/mcp/jira").allowed.size() == 3);
}
