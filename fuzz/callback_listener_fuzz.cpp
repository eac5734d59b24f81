// The loopback OAuth redirect listener: whatever reaches 127.0.0.1:PORT while
// a login is pending (a browser, a web page's <img>, another local user).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>

#include "login/callback_listener.hpp"
#include "loop_peer.hpp"

using namespace tokend;

namespace {

std::uint16_t free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    std::abort();
  ::close(s);
  return ntohs(a.sin_port);
}

struct World {
  net::Loop loop;
  std::unique_ptr<login::UvCallbackPort> port;
  std::unique_ptr<login::CallbackListener> listener;
  std::uint16_t number = 0;
  std::optional<net::Timer> tick;

  World() {
    port = std::make_unique<login::UvCallbackPort>(loop);
    number = free_port();
    // Answers like the login manager: the callback path with a matching state
    // gets the page, everything else an error; the flow itself stays.
    auto listening =
        port->listen("127.0.0.1", number, [](const login::CallbackRequest& req, auto reply) {
          const bool ok =
              req.path == "/callback" && req.query.find("state=s3cr3t") != std::string::npos;
          reply(login::CallbackReply{ok ? 200 : 400, ok ? "<p>done</p>" : "<p>no</p>"});
        });
    if (!listening) std::abort();
    listener = std::move(*listening);
    tick = net::Timer::create(loop).value();
    tick->start(5, 5, [] {});
  }
};

World& world() {
  static World w;
  return w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto& w = world();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(w.number);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS)
    std::abort();
  const auto answer = fuzz::exchange(w.loop, fd, {reinterpret_cast<const char*>(data), size});
  if (!answer.empty() && !answer.starts_with("HTTP/1.")) std::abort();
  return 0;
}
