// A token endpoint (any HTTP peer) whose answers a test gives by hand.
#pragma once

#include <catch2/catch_test_macros.hpp>
#include <string>
#include <vector>

#include "net/http_client.hpp"

namespace tokend::tokens {

class FakeTransport final : public net::HttpTransport {
 public:
  struct Call {
    std::uint64_t id;
    net::HttpRequest request;
    Callback done;
  };
  std::vector<Call> pending;
  std::size_t started = 0;

  std::uint64_t start(net::HttpRequest request, Callback done) override {
    ++started;
    pending.push_back({m_next, std::move(request), std::move(done)});
    return m_next++;
  }
  void cancel(std::uint64_t id) override {
    std::erase_if(pending, [id](const Call& c) { return c.id == id; });
  }
  // Answers the oldest pending request.
  void reply(long status, std::string body, std::string type = "application/json",
             net::HttpHeaders headers = {}) {
    REQUIRE_FALSE(pending.empty());
    Call c = std::move(pending.front());
    pending.erase(pending.begin());
    net::HttpResponse r;
    r.status = status;
    r.headers = std::move(headers);
    r.headers.emplace_back("content-type", std::move(type));
    r.body = Secret(body);
    c.done(std::move(r));
  }
  void fail(Errc code, std::string message) {
    REQUIRE_FALSE(pending.empty());
    Call c = std::move(pending.front());
    pending.erase(pending.begin());
    c.done(std::unexpected(Error{code, std::move(message)}));
  }

 private:
  std::uint64_t m_next = 1;
};

}  // namespace tokend::tokens
