// The outbound HTTP client's refusals that hold whatever its callers built.
#include "net/http_client.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <optional>

#include "net/loop.hpp"

using namespace tokend;

// Issue 13 finding 1, defence in depth: a CR, LF or NUL in any outgoing
// header (a token type, a token, a caller's header) stops the request
// before a connection is even made.
TEST_CASE("a line break or NUL in an outgoing header: the request is not sent", "[net]") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 4) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  const std::string url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/token";

  net::Loop loop;
  {
    net::HttpClient http(loop, net::HttpClientOptions{});
    const net::HttpHeaders bad[] = {
        {{"Authorization", "Bearer\r\nX-Injected: 1 secret-MARKER"}},
        {{"Authorization", "Bearer a\nb"}},
        {{"X-A", std::string("a\0b", 3)}},
        {{"X-A\r\nX-B", "1"}},
    };
    for (const auto& headers : bad) {
      std::optional<Result<net::HttpResponse>> got;
      net::HttpRequest r;
      r.url = url;
      r.headers = headers;
      http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
      for (int i = 0; i < 100 && !got; ++i) loop.run();
      REQUIRE(got.has_value());
      REQUIRE_FALSE(*got);
      CHECK(got->error().code == Errc::invalid_argument);
      CHECK(got->error().message.find("line break") != std::string::npos);
      CHECK(got->error().message.find("MARKER") == std::string::npos);
    }
    http.close();
  }
  CHECK(loop.close() == 0);
  // Nothing ever connected.
  CHECK(::accept(listener, nullptr, nullptr) < 0);
  ::close(listener);
}
