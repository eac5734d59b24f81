#include "tokens/events.hpp"

#include <vector>

#include <spdlog/spdlog.h>

namespace tokend::tokens {

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

void EventBus::publish(std::string type, std::string profile, std::int64_t at_ms, json::Json data) {
  Event e{m_next_event++, std::move(type), std::move(profile), at_ms, std::move(data)};
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
