#include "tokens/replica.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <uv.h>

#include <algorithm>

namespace tokend::tokens {

namespace {

constexpr std::size_t k_notify_limit = 7999;
constexpr std::uint64_t k_max_retry_ms = 30'000;

std::string dump(const json::Json& j) {
  return j.dump(-1, ' ', false, json::Json::error_handler_t::replace);
}

}  // namespace

std::string encode_replica_event(std::string_view origin, std::string_view user,
                                 const Event& event) {
  json::Json j{{"v", 1},
               {"r", origin},
               {"u", user},
               {"k", to_string(event.kind)},
               {"p", event.profile},
               {"t", event.at_ms},
               {"d", event.data}};
  std::string out = dump(j);
  if (out.size() > k_notify_limit) {
    j["d"] = json::Json{{"truncated", true}};
    out = dump(j);
  }
  return out;
}

Result<ReplicaEvent> decode_replica_event(std::string_view payload) {
  auto bad = [](std::string_view why) {
    return fail(Errc::invalid_argument, fmt::format("not a replica event: {}", why));
  };
  auto j = json::parse(payload, "replica event");
  if (!j) return bad("not JSON");
  if (!j->is_object() || !j->contains("v") || (*j)["v"] != 1) return bad("unknown version");
  for (const char* key : {"r", "u", "k", "p"}) {
    if (!j->contains(key) || !(*j)[key].is_string()) return bad(fmt::format("no string '{}'", key));
  }
  ReplicaEvent e;
  e.origin = (*j)["r"].get<std::string>();
  e.user = (*j)["u"].get<std::string>();
  auto kind = event_kind_of((*j)["k"].get<std::string>());
  if (!kind) return bad("unknown event kind");
  e.kind = *kind;
  e.profile = (*j)["p"].get<std::string>();
  if (j->contains("t") && (*j)["t"].is_number_integer()) e.at_ms = (*j)["t"].get<std::int64_t>();
  if (j->contains("d") && (*j)["d"].is_object()) e.data = (*j)["d"];
  return e;
}

FeedWatcher::FeedWatcher(net::Loop& loop, store::ChangeFeed& feed, OnNotification on_notification,
                         OnResync on_resync)
    : m_loop(loop),
      m_feed(feed),
      m_on_notification(std::move(on_notification)),
      m_on_resync(std::move(on_resync)) {}

Result<> FeedWatcher::start() {
  auto timer = net::Timer::create(m_loop);
  if (!timer) return std::unexpected(timer.error());
  m_retry = std::move(*timer);
  return watch();
}

Result<> FeedWatcher::watch() {
  const int fd = m_feed.socket();
  if (fd < 0) return fail(Errc::unavailable, "the listening connection to PostgreSQL is down");
  auto poll = net::Poll::create_socket(m_loop, fd);
  if (!poll) return std::unexpected(poll.error());
  m_poll = std::move(*poll);
  if (const int rc =
          m_poll.start(UV_READABLE,
                       [this](int status, int /*events*/) {
                         if (status < 0) {
                           lost(net::uv_error(status, "watching the listening connection"));
                           return;
                         }
                         on_readable();
                       });
      rc != 0) {
    m_poll.close();
    return std::unexpected(net::uv_error(rc, "watching the listening connection"));
  }
  // What arrived before the poll existed (LISTEN's answer may carry some).
  on_readable();
  return {};
}

void FeedWatcher::on_readable() {
  if (m_closed || !m_poll.valid()) return;
  auto notes = m_feed.read();
  if (!notes) {
    lost(notes.error());
    return;
  }
  for (const auto& n : *notes) m_on_notification(n);
}

void FeedWatcher::lost(const Error& why) {
  // The poll goes before the socket it watches (reconnect() closes it).
  m_poll.close();
  if (m_closed) return;
  spdlog::warn("{}; reconnecting in {} ms (events of other replicas are missed meanwhile)",
               why.message, m_retry_ms);
  m_retry.start(m_retry_ms, 0, [this] { try_reconnect(); });
}

void FeedWatcher::try_reconnect() {
  if (m_closed) return;
  auto r = m_feed.reconnect();
  if (r) r = watch();
  if (!r) {
    m_retry_ms = std::min(m_retry_ms * 2, k_max_retry_ms);
    spdlog::warn("reconnecting the listening connection to PostgreSQL: {}; next try in {} ms",
                 r.error().message, m_retry_ms);
    m_poll.close();
    m_retry.start(m_retry_ms, 0, [this] { try_reconnect(); });
    return;
  }
  ++m_reconnects;
  m_retry_ms = 1'000;
  spdlog::info("listening to the other replicas again; re-reading every loaded user");
  m_on_resync();
}

void FeedWatcher::close() {
  m_closed = true;
  m_poll.close();
  m_retry.close();
}

}  // namespace tokend::tokens
