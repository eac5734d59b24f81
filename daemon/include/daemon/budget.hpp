// Server mode's request budgets (docs/server-mode.md, "Request budgets"):
// each user's (`user-rate-limit`) and each service's (`[service.NAME]
// rate-limit`, default `service-rate-limit`), in requests a minute, kept as
// token buckets that hold a minute's worth: a burst up to the whole budget
// passes and the budget refills evenly. A request spends one from its
// user's budget and, when a service makes it, one from that service's; a
// request either budget refuses spends neither.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "daemon/identity.hpp"
#include "ipc/http.hpp"

namespace tokend::daemon {

// Why a request was refused: whose budget is spent, and in how many whole
// seconds (at least 1) a request would pass.
struct BudgetRefusal {
  enum class Whose { user, service };
  Whose whose = Whose::user;
  std::string name;  // the user id or the service's name
  std::size_t limit = 0;
  std::chrono::seconds retry_after{1};
};

// The limit of a service: its own rate-limit, else `fallback`
// (service-rate-limit); 0: no limit. A name no service has: 0.
std::size_t service_rate_limit(const IdentityConfig& identity, std::string_view service,
                               std::size_t fallback);

class RequestBudgets {
 public:
  // A request of `user` (limit `user_limit`), made by `service` (empty:
  // none; limit `service_limit`); limits in requests a minute, 0: none.
  // nullopt: it passes, and one request is taken from each budget; else the
  // budget that refused (the longer wait when both do), and nothing is
  // taken.
  std::optional<BudgetRefusal> take(std::string_view user, std::size_t user_limit,
                                    std::string_view service, std::size_t service_limit,
                                    MonoTime now);

 private:
  struct Bucket {
    double tokens = 0;
    bool used = false;  // false: full
    MonoTime last{};
    // Tops the bucket up to `now` (at most a minute's worth of `rate`).
    void refill(double rate, MonoTime now);
    // How long until one request would pass (0: now).
    [[nodiscard]] Millis wait(double rate) const;
  };
  std::map<std::string, Bucket, std::less<>> m_users;
  std::map<std::string, Bucket, std::less<>> m_services;
};

// 429 rate_limited with Retry-After, its message naming the budget and the
// setting to change.
ipc::Response budget_response(const BudgetRefusal& refusal);

}  // namespace tokend::daemon
