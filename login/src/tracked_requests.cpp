#include "login/tracked_requests.hpp"

#include <vector>

namespace tokend::login {

void TrackedRequests::start(net::HttpRequest request, Done done) {
  // The transport calls back on a later loop iteration, never from start():
  // the id is in the set before any answer can look for it.
  auto live = m_live;
  auto id = std::make_shared<std::uint64_t>(0);
  *id = m_http.start(std::move(request),
                     [live, id, done = std::move(done)](Result<net::HttpResponse> res) {
                       if (live->erase(*id) == 0) return;  // cancelled
                       done(std::move(res));
                     });
  live->insert(*id);
}

void TrackedRequests::cancel_all() {
  // Emptied first: a transport that answers a cancel at once finds nothing.
  const std::vector<std::uint64_t> ids(m_live->begin(), m_live->end());
  m_live->clear();
  for (const auto id : ids) m_http.cancel(id);
}

}  // namespace tokend::login
