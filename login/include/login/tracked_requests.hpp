// HTTP requests a component sends on its own behalf (the login manager's
// discovery, registration, revocation and test calls): each is forgotten
// when it answers, and every one still in flight is cancelled when the set
// is cleared or destroyed. A cancelled request's callback never runs, so
// callbacks may use their owner freely.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>

#include "core/error.hpp"
#include "net/http_client.hpp"

namespace tokend::login {

class TrackedRequests {
 public:
  using Done = std::function<void(Result<net::HttpResponse>)>;

  explicit TrackedRequests(net::HttpTransport& http) : m_http(http) {}
  TrackedRequests(const TrackedRequests&) = delete;
  TrackedRequests& operator=(const TrackedRequests&) = delete;
  ~TrackedRequests() { cancel_all(); }

  void start(net::HttpRequest request, Done done);
  void cancel_all();
  [[nodiscard]] std::size_t in_flight() const { return m_live->size(); }

 private:
  net::HttpTransport& m_http;
  // Shared with the callbacks: an id missing from it was cancelled.
  std::shared_ptr<std::set<std::uint64_t>> m_live = std::make_shared<std::set<std::uint64_t>>();
};

}  // namespace tokend::login
