// Server mode's replicas: what one tells the others, and the watcher of the
// channel it arrives on.
//
// A replica publishes each of its users' events to the others (the server
// sends encode_replica_event() with NOTIFY); each other replica decodes it,
// re-reads that profile from the store (TokenService::reload) and publishes
// the event to that user's subscribers. FeedWatcher watches the listening
// connection (a store::ChangeFeed) on the loop: one net::Poll on its socket,
// and after a loss one net::Timer that reconnects (1 s, doubling to 30 s),
// then asks its owner to re-read everything, since notifications sent
// meanwhile are lost.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "net/loop.hpp"
#include "store/change_feed.hpp"
#include "tokens/events.hpp"

namespace tokend::tokens {

// The channel the replicas of one database talk on.
inline constexpr const char* k_replica_channel = "tokend_events";

struct ReplicaEvent {
  std::string origin;  // the replica that published it
  std::string user;
  EventKind kind = EventKind::profile_updated;
  std::string profile;
  std::int64_t at_ms = 0;
  json::Json data = json::Json::object();
};

// At most 7999 bytes (NOTIFY's limit): data that would not fit is replaced
// by {"truncated": true}; the receivers re-read the profile anyway.
std::string encode_replica_event(std::string_view origin, std::string_view user,
                                 const Event& event);
// Errc::invalid_argument for anything that is not one.
Result<ReplicaEvent> decode_replica_event(std::string_view payload);

class FeedWatcher {
 public:
  using OnNotification = std::function<void(const store::Notification&)>;
  // After a reconnect: what was sent while disconnected is lost.
  using OnResync = std::function<void()>;

  FeedWatcher(net::Loop& loop, store::ChangeFeed& feed, OnNotification on_notification,
              OnResync on_resync);
  FeedWatcher(const FeedWatcher&) = delete;
  FeedWatcher& operator=(const FeedWatcher&) = delete;
  ~FeedWatcher() = default;

  // Starts watching the feed's socket.
  Result<> start();
  // Idempotent; the handles close on the loop.
  void close();
  [[nodiscard]] bool connected() const { return m_poll.valid(); }
  [[nodiscard]] std::uint64_t reconnects() const { return m_reconnects; }

 private:
  Result<> watch();
  void on_readable();
  void lost(const Error& why);
  void try_reconnect();

  net::Loop& m_loop;
  store::ChangeFeed& m_feed;
  OnNotification m_on_notification;
  OnResync m_on_resync;
  net::Poll m_poll;
  net::Timer m_retry;
  std::uint64_t m_retry_ms = 1'000;
  std::uint64_t m_reconnects = 0;
  bool m_closed = false;
};

}  // namespace tokend::tokens
