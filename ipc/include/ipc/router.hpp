// One sorted route table. Every handler receives an Exchange; it answers once,
// now or later (an Exchange is shared, so asynchronous handlers keep it), or
// turns the response into an event stream.
#pragma once

#include <array>
#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/http.hpp"

namespace tokend::ipc {

// How a streamed response body is delimited.
struct StreamFraming {
  enum class Kind {
    close,    // by closing the connection (event streams)
    chunked,  // chunked transfer coding; the connection stays open after finish()
    length,   // Content-Length given up front; likewise
  };
  Kind kind = Kind::close;
  std::uint64_t length = 0;  // Kind::length
};

// A response body sent as it is produced: Server-Sent Events, proxied answers.
class Stream {
 public:
  virtual ~Stream() = default;
  // Queues bytes; false once the peer has gone. A close-delimited stream
  // whose peer does not read is cut off; a framed one is the producer's to
  // pace with queued() and on_drained().
  virtual bool send(std::string_view bytes) = 0;
  [[nodiscard]] virtual bool open() const = 0;
  // Bytes accepted but not yet written to the socket.
  [[nodiscard]] virtual std::size_t queued() const = 0;
  // Called once, the next time the queue runs low (or at once if it is).
  virtual void on_drained(std::function<void()> cb) = 0;
  // Called once when the peer goes away or the server shuts down.
  virtual void on_close(std::function<void()> cb) = 0;
  // The body is complete. A framed stream ends its response and the
  // connection serves the next request; a close-delimited one closes.
  virtual void finish() = 0;
  // Ends the stream and the connection now (an incomplete body).
  virtual void close() = 0;
};

class Exchange {
 public:
  virtual ~Exchange() = default;
  [[nodiscard]] virtual const Request& request() const = 0;
  [[nodiscard]] virtual const Peer& peer() const = 0;
  // Path parameter by name ("name" in /v1/profiles/{name}).
  [[nodiscard]] virtual std::string_view param(std::string_view name) const = 0;
  // Answers the request. Later calls are ignored; a no-op if the peer left.
  virtual void respond(Response response) = 0;
  // Sends the status line and headers now and hands over a stream for the body.
  virtual std::shared_ptr<Stream> start_stream(int status, Headers headers,
                                               StreamFraming framing = {}) = 0;
  // True while the peer is still connected and no answer was given.
  [[nodiscard]] virtual bool pending() const = 0;
  // Called if the peer goes away before the answer.
  virtual void on_abandon(std::function<void()> cb) = 0;
};

using Handler = std::function<void(const std::shared_ptr<Exchange>&)>;

class Router {
 public:
  // pattern: "/v1/profiles/{name}/token"; a final "{rest...}" takes the
  // remainder of the path.
  // large_body: requests may carry up to ServerLimits::max_upload_bytes,
  // spooled to a temporary file past the first megabyte.
  void add(std::string method, std::string pattern, Handler handler, bool large_body = false);

  // Routes have at most two parameters: they stay inline, no allocation.
  using Params = boost::container::small_vector<std::pair<std::string, std::string>, 2>;
  struct Match {
    const Handler* handler = nullptr;
    Params params;                     // in the pattern's order
    std::vector<std::string> allowed;  // methods for the path, when the method did not match
    bool large_body = false;
    [[nodiscard]] std::string_view param(std::string_view name) const;
  };
  // Allocates only for the matched route's parameters (a hot path: every
  // request on the socket comes through here).
  [[nodiscard]] Match match(std::string_view method, std::string_view path) const;

  // Routes an exchange another router accepted (server mode's front router
  // hands each request to its user's router): the handler sees this
  // router's path parameters and `peer` in place of the exchange's own; a
  // path or method this router does not have is answered 404 or 405.
  void dispatch(const std::shared_ptr<Exchange>& ex, Peer peer) const;

 private:
  struct Segment {
    enum class Kind { literal, param, rest };
    Kind kind = Kind::literal;
    std::string text;  // the literal, or the parameter's name
  };
  struct Route {
    std::string method;
    std::string pattern;
    std::vector<Segment> segments;
    Handler handler;
    bool large_body = false;
    std::size_t fixed = 0;  // segments before a final {rest...}; all of them without one
    bool rest = false;      // ends in {rest...}
  };
  [[nodiscard]] static bool fits(const Route& route, std::span<const std::string_view> segments);
  std::vector<Route> m_routes;  // kept sorted by (pattern, method)
  // For a path of n segments (n < k_indexed), the routes that can fit it, in
  // table order: those of n segments and those whose {rest...} follows at
  // most n. Longer paths try every route.
  static constexpr std::size_t k_indexed = 12;
  std::array<std::vector<const Route*>, k_indexed> m_by_count;
};

}  // namespace tokend::ipc
