// Notifications from the other processes that share a store (server mode's
// replicas on one PostgreSQL database: LISTEN/NOTIFY). The feed is a
// connection of its own; its owner watches socket() for readability on the
// event loop (tokens/feed_watcher.hpp) and calls read() when it is readable.
// Nothing here blocks but reconnect(), which connects.
#pragma once

#include <string>
#include <vector>

#include "core/error.hpp"

namespace tokend::store {

struct Notification {
  std::string channel;
  std::string payload;
};

class ChangeFeed {
 public:
  virtual ~ChangeFeed() = default;

  // The socket to watch; -1 while not connected.
  [[nodiscard]] virtual int socket() const = 0;
  // Consumes what the socket holds and returns the notifications that are
  // complete (possibly none). An error means the connection is lost: call
  // reconnect(). Notifications sent meanwhile are lost, so the owner
  // re-reads whatever it caches after a reconnect.
  virtual Result<std::vector<Notification>> read() = 0;
  // Connects again and listens again.
  virtual Result<> reconnect() = 0;

 protected:
  ChangeFeed() = default;
  ChangeFeed(const ChangeFeed&) = default;
  ChangeFeed& operator=(const ChangeFeed&) = default;
  ChangeFeed(ChangeFeed&&) = default;
  ChangeFeed& operator=(ChangeFeed&&) = default;
};

}  // namespace tokend::store
