// Lifecycle events (GET /v1/events, docs/API.md): published by the token service,
// delivered synchronously to subscribers on the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/json.hpp"

namespace tokend::tokens {

// What happened; the names (to_string) are the `event:` of /v1/events.
enum class EventKind {
  profile_added,
  profile_updated,
  profile_removed,
  refreshed,
  refresh_failed,
  expiring,
  reauth_required,
  consent_required,
  sink_failed,
  client_registered,
  login_started,
  login_succeeded,
  login_failed,
  login_cancelled,
  logged_out,
};

std::string_view to_string(EventKind kind) noexcept;
std::optional<EventKind> event_kind_of(std::string_view name) noexcept;

struct Event {
  std::uint64_t id = 0;
  EventKind kind = EventKind::profile_updated;
  std::string profile;
  std::int64_t at_ms = 0;
  json::Json data = json::Json::object();  // never contains a secret
};

class EventBus {
 public:
  using Listener = std::function<void(const Event&)>;

  // Unsubscribes on destruction.
  class Subscription {
   public:
    Subscription() = default;
    Subscription(EventBus* bus, std::uint64_t id) : m_bus(bus), m_id(id) {}
    Subscription(Subscription&& o) noexcept : m_bus(o.m_bus), m_id(o.m_id) { o.m_bus = nullptr; }
    Subscription& operator=(Subscription&& o) noexcept;
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;
    ~Subscription() { reset(); }
    void reset();

   private:
    EventBus* m_bus = nullptr;
    std::uint64_t m_id = 0;
  };

  [[nodiscard]] Subscription subscribe(Listener listener);
  void publish(EventKind kind, std::string profile, std::int64_t at_ms,
               json::Json data = json::Json::object());
  [[nodiscard]] std::size_t subscriber_count() const { return m_listeners.size(); }

 private:
  std::map<std::uint64_t, Listener> m_listeners;
  std::uint64_t m_next_listener = 1;
  std::uint64_t m_next_event = 1;
};

}  // namespace tokend::tokens
