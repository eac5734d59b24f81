#include "tokens/events.hpp"

#include <spdlog/spdlog.h>

#include <vector>

namespace tokend::tokens {

std::string_view to_string(EventKind kind) noexcept {
  switch (kind) {
    case EventKind::profile_added:
      return "profile_added";
    case EventKind::profile_updated:
      return "profile_updated";
    case EventKind::profile_removed:
      return "profile_removed";
    case EventKind::refreshed:
      return "refreshed";
    case EventKind::refresh_failed:
      return "refresh_failed";
    case EventKind::expiring:
      return "expiring";
    case EventKind::reauth_required:
      return "reauth_required";
    case EventKind::consent_required:
      return "consent_required";
    case EventKind::sink_failed:
      return "sink_failed";
    case EventKind::client_registered:
      return "client_registered";
    case EventKind::login_started:
      return "login_started";
    case EventKind::login_succeeded:
      return "login_succeeded";
    case EventKind::login_failed:
      return "login_failed";
    case EventKind::login_cancelled:
      return "login_cancelled";
    case EventKind::logged_out:
      return "logged_out";
  }
  return "unknown";
}

std::optional<EventKind> event_kind_of(std::string_view name) noexcept {
  for (int i = 0; i <= static_cast<int>(EventKind::logged_out); ++i) {
    const auto kind = static_cast<EventKind>(i);
    if (to_string(kind) == name) return kind;
  }
  return std::nullopt;
}

EventBus::Subscription& EventBus::Subscription::operator=(Subscription&& o) noexcept {
  if (this != &o) {
    reset();
    m_bus = o.m_bus;
    m_id = o.m_id;
    o.m_bus = nullptr;
  }
  return *this;
}

void EventBus::Subscription::reset() {
  if (m_bus != nullptr) m_bus->m_listeners.erase(m_id);
  m_bus = nullptr;
}

EventBus::Subscription EventBus::subscribe(Listener listener) {
  const std::uint64_t id = m_next_listener++;
  m_listeners.emplace(id, std::move(listener));
  return Subscription(this, id);
}

void EventBus::publish(EventKind kind, std::string profile, std::int64_t at_ms, json::Json data) {
  Event e{m_next_event++, kind, std::move(profile), at_ms, std::move(data)};
  // A listener may unsubscribe (itself or others) while being called.
  std::vector<std::uint64_t> ids;
  ids.reserve(m_listeners.size());
  for (const auto& [id, _] : m_listeners) ids.push_back(id);
  for (const auto id : ids) {
    auto it = m_listeners.find(id);
    if (it == m_listeners.end()) continue;
    try {
      it->second(e);
    } catch (const std::exception& ex) {
      spdlog::error("event listener failed: {}", ex.what());
    }
  }
}

}  // namespace tokend::tokens
