// One sorted route table. Every handler receives an Exchange; it answers once,
// now or later (an Exchange is shared, so asynchronous handlers keep it), or
// turns the response into an event stream.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/http.hpp"

namespace tokend::ipc {

// A long-lived response body (Server-Sent Events).
class Stream {
 public:
  virtual ~Stream() = default;
  // Queues bytes; false once the peer has gone.
  virtual bool send(std::string_view bytes) = 0;
  [[nodiscard]] virtual bool open() const = 0;
  // Called once when the peer goes away or the server shuts down.
  virtual void on_close(std::function<void()> cb) = 0;
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
  virtual std::shared_ptr<Stream> start_stream(int status, Headers headers) = 0;
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

  struct Match {
    const Handler* handler = nullptr;
    std::map<std::string, std::string, std::less<>> params;
    std::vector<std::string> allowed;  // methods for the path, when the method did not match
    bool large_body = false;
  };
  [[nodiscard]] Match match(std::string_view method, std::string_view path) const;

 private:
  struct Route {
    std::string method;
    std::string pattern;
    std::vector<std::string> segments;
    Handler handler;
    bool large_body = false;
  };
  std::vector<Route> m_routes;  // kept sorted by (pattern, method)
};

}  // namespace tokend::ipc
