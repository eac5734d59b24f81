#include "daemon/budget.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace tokend::daemon {

std::size_t service_rate_limit(const IdentityConfig& identity, std::string_view service,
                               std::size_t fallback) {
  for (const auto& s : identity.services) {
    if (s.name == service) return s.rate_limit.value_or(fallback);
  }
  return 0;
}

void RequestBudgets::Bucket::refill(double rate, MonoTime now) {
  if (!used) {
    tokens = rate;
    used = true;
  } else {
    const auto elapsed =
        std::max<std::int64_t>(0, std::chrono::duration_cast<Millis>(now - last).count());
    tokens = std::min(rate, tokens + static_cast<double>(elapsed) * rate / 60'000.0);
  }
  last = now;
}

// Refills add fractions of a request: a bucket a rounding error short of a
// whole request has it.
constexpr double k_epsilon = 1e-9;

Millis RequestBudgets::Bucket::wait(double rate) const {
  if (tokens >= 1.0 - k_epsilon) return Millis(0);
  const double ms = std::ceil((1.0 - tokens) * 60'000.0 / rate - 1e-6);
  return Millis(std::max<std::int64_t>(1, static_cast<std::int64_t>(ms)));
}

std::optional<BudgetRefusal> RequestBudgets::take(std::string_view user, std::size_t user_limit,
                                                  std::string_view service,
                                                  std::size_t service_limit, MonoTime now) {
  auto bucket_of = [](std::map<std::string, Bucket, std::less<>>& buckets, std::string_view name) {
    auto it = buckets.find(name);
    if (it == buckets.end()) it = buckets.emplace(std::string(name), Bucket{}).first;
    return &it->second;
  };
  Bucket* u = nullptr;
  Bucket* s = nullptr;
  Millis user_wait{0};
  Millis service_wait{0};
  if (user_limit > 0) {
    u = bucket_of(m_users, user);
    u->refill(static_cast<double>(user_limit), now);
    user_wait = u->wait(static_cast<double>(user_limit));
  }
  if (!service.empty() && service_limit > 0) {
    s = bucket_of(m_services, service);
    s->refill(static_cast<double>(service_limit), now);
    service_wait = s->wait(static_cast<double>(service_limit));
  }
  if (user_wait.count() == 0 && service_wait.count() == 0) {
    if (u != nullptr) u->tokens = std::max(0.0, u->tokens - 1.0);
    if (s != nullptr) s->tokens = std::max(0.0, s->tokens - 1.0);
    return std::nullopt;
  }
  BudgetRefusal r;
  Millis wait{0};
  if (service_wait > user_wait) {
    r.whose = BudgetRefusal::Whose::service;
    r.name = std::string(service);
    r.limit = service_limit;
    wait = service_wait;
  } else {
    r.whose = BudgetRefusal::Whose::user;
    r.name = std::string(user);
    r.limit = user_limit;
    wait = user_wait;
  }
  r.retry_after = std::chrono::seconds(std::max<std::int64_t>(1, (wait.count() + 999) / 1000));
  return r;
}

ipc::Response budget_response(const BudgetRefusal& refusal) {
  const auto seconds = refusal.retry_after.count();
  const std::string message =
      refusal.whose == BudgetRefusal::Whose::user
          ? fmt::format(
                "user '{}' made more than {} requests in a minute (user-rate-limit); "
                "try again in {} s",
                refusal.name, refusal.limit, seconds)
          : fmt::format(
                "service '{}' made more than {} requests in a minute ([service.{}] "
                "rate-limit, or service-rate-limit); try again in {} s",
                refusal.name, refusal.limit, refusal.name, seconds);
  auto r = ipc::Response::error(429, "rate_limited", message);
  r.headers.emplace_back("Retry-After", std::to_string(seconds));
  return r;
}

}  // namespace tokend::daemon
