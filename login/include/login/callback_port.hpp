// The loopback redirect listener (RFC 8252 §7.3) as the login manager sees
// it. The daemon's implementation lives in ipc (libuv TCP + Beast); tests
// use a fake that delivers requests directly.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/error.hpp"

namespace tokend::login {

struct CallbackRequest {
  std::string method;
  std::string path;   // percent-encoded, as received
  std::string query;  // without '?', percent-encoded
};

struct CallbackReply {
  int status = 200;
  std::string html;
};

// Closing (destroying) the listener closes the port and every connection.
class CallbackListener {
 public:
  virtual ~CallbackListener() = default;
};

class CallbackPort {
 public:
  // `reply` may be called later (after the code exchange); calling it after
  // the listener is gone is harmless.
  using Handler =
      std::function<void(const CallbackRequest&, std::function<void(CallbackReply)> reply)>;
  virtual ~CallbackPort() = default;
  // Binds host:port (a loopback address) now; Errc::conflict when the port is
  // taken, naming it.
  virtual Result<std::unique_ptr<CallbackListener>> listen(const std::string& host,
                                                           std::uint16_t port, Handler handler) = 0;
};

}  // namespace tokend::login
