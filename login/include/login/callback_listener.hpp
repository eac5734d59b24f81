// The loopback OAuth redirect listener (RFC 8252 §7.3): plain HTTP/1.1 on
// 127.0.0.1 / [::1], one request per connection, open only while a login
// flow is pending. Requests go to the login manager's handler; everything
// else about them (size, time, connection count) is bounded here.
#pragma once

#include "login/callback_port.hpp"
#include "net/loop.hpp"

namespace tokend::login {

class UvCallbackPort final : public login::CallbackPort {
 public:
  explicit UvCallbackPort(net::Loop& loop) : m_loop(loop) {}
  Result<std::unique_ptr<login::CallbackListener>> listen(const std::string& host,
                                                          std::uint16_t port,
                                                          Handler handler) override;

 private:
  net::Loop& m_loop;
};

}  // namespace tokend::login
