// The socket API server: whatever a local client writes (several pipelined
// requests, chunked bodies, oversized headers, garbage), through a real Unix
// socket into the real Server on a real libuv loop. Every answer must be HTTP.
#include <sys/socket.h>
#include <sys/un.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>

#include "ipc/server.hpp"
#include "loop_peer.hpp"

using namespace tokend;

namespace {

struct World {
  net::Loop loop;
  ipc::Router router;
  std::unique_ptr<ipc::Server> server;
  std::filesystem::path socket_path;
  std::optional<net::Timer> tick;  // bounds every uv_run(ONCE)

  World() {
    router.add("GET", "/v1/health",
               [](const auto& ex) { ex->respond(ipc::Response::json(200, {{"ok", true}})); });
    router.add("POST", "/v1/echo", [](const auto& ex) {
      ex->respond(ipc::Response::json(
          200, {{"bytes", ex->request().body.size()}, {"query", ex->request().query.size()}}));
    });
    router.add("GET", "/v1/profiles/{name}/token", [](const auto& ex) {
      ex->respond(
          ipc::Response::error(404, "not_found", std::string(ex->param("name")).substr(0, 16)));
    });
    router.add("GET", "/v1/events", [](const auto& ex) {
      auto stream = ex->start_stream(200, {{"Content-Type", "text/event-stream"}});
      stream->send("event: hello\ndata: {}\n\n");
      stream->close();
    });
    router.add(
        "POST", "/v1/proxy/{name}/{rest...}",
        [](const auto& ex) {
          ex->respond(ipc::Response::json(200, {{"rest", std::string(ex->param("rest")).size()}}));
        },
        true);
    ipc::ServerLimits limits;
    limits.max_header_bytes = 2048;
    limits.max_body_bytes = 4096;
    limits.max_upload_bytes = 64 * 1024;
    limits.max_connections = 8;
    limits.idle_timeout = std::chrono::milliseconds{200};
    limits.request_timeout = std::chrono::milliseconds{200};
    server = std::make_unique<ipc::Server>(loop, router, limits);
    char dir[] = "/tmp/tokend-fuzz-XXXXXX";
    if (::mkdtemp(dir) == nullptr) std::abort();
    socket_path = std::filesystem::path(dir) / "s" / "tokend.sock";
    if (!server->listen_path(socket_path)) std::abort();
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
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) std::abort();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const auto path = w.socket_path.string();
  path.copy(addr.sun_path, sizeof addr.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno != EINPROGRESS &&
      errno != EAGAIN)
    std::abort();
  const auto answer = fuzz::exchange(w.loop, fd, {reinterpret_cast<const char*>(data), size},
                                     [&] { return w.server->stats().open_connections == 0; });
  // Whatever the input, what comes back is HTTP (or nothing, for a close).
  if (!answer.empty() && !answer.starts_with("HTTP/1.")) std::abort();
  return 0;
}
