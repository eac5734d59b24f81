// The API server on a real loop and a real socket. The loop runs on its own
// thread; the test thread is the client. Every test ends with the server
// drained or closed and uv_loop_close() == 0.
#include "ipc/server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>

#include "ipc/router.hpp"
#include "net/loop.hpp"
#include "support/socket_client.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using namespace std::chrono_literals;
using test::RawClient;
using test::status_of;

namespace {

class ServerFixture {
 public:
  explicit ServerFixture(ipc::ServerLimits limits = {}) : m_limits(limits) {
    m_socket = m_dir / "run/tokend.sock";
    std::promise<std::string> ready;
    auto started = ready.get_future();
    m_thread = std::thread([this, &ready] { loop_thread(ready); });
    const std::string err = started.get();
    if (!err.empty()) throw std::runtime_error(err);
  }

  ~ServerFixture() { stop(); }

  // Asks the loop thread to drain; returns uv_loop_close()'s result.
  int stop(std::chrono::milliseconds grace = 2s) {
    if (!m_thread.joinable()) return m_close_rc;
    m_grace = grace;
    uv_async_send(&m_stop);
    m_thread.join();
    return m_close_rc;
  }

  // Runs `f` on the loop thread (for async answers).
  void post(std::function<void()> f) {
    {
      std::lock_guard lock(m_mutex);
      m_posted.push_back(std::move(f));
    }
    uv_async_send(&m_wake);
  }

  const std::filesystem::path& socket() const { return m_socket; }
  const ipc::ServerStats stats() {
    std::promise<ipc::ServerStats> p;
    auto f = p.get_future();
    post([&] { p.set_value(m_server->stats()); });
    return f.get();
  }

  std::shared_ptr<ipc::Exchange> held;  // an unanswered exchange (loop thread only)
  std::promise<void> held_ready;
  std::promise<void> drain_started;

 private:
  void loop_thread(std::promise<std::string>& ready) {
    net::Loop loop;
    {
      ipc::Router router;
      router.add("GET", "/echo", [](const std::shared_ptr<ipc::Exchange>& ex) {
        ex->respond(ipc::Response::json(200, {{"path", ex->request().path},
                                              {"q", ex->request().query_param("q").value_or("")}}));
      });
      router.add("POST", "/echo", [](const std::shared_ptr<ipc::Exchange>& ex) {
        ipc::Response r;
        r.body = ex->request().body;
        ex->respond(std::move(r));
      });
      router.add("GET", "/items/{id}", [](const std::shared_ptr<ipc::Exchange>& ex) {
        ex->respond(ipc::Response::json(200, {{"id", ex->param("id")}}));
      });
      router.add("GET", "/hold", [this](const std::shared_ptr<ipc::Exchange>& ex) {
        held = ex;
        held_ready.set_value();
      });
      // A framed stream finished while most of it is still queued, after its
      // producer asked to hear when the queue drains.
      router.add("GET", "/big", [](const std::shared_ptr<ipc::Exchange>& ex) {
        constexpr std::size_t k_piece = 256 * 1024;
        constexpr std::size_t k_pieces = 12;
        auto s = ex->start_stream(
            200, {}, ipc::StreamFraming{ipc::StreamFraming::Kind::length, k_piece * k_pieces});
        const std::string piece(k_piece, 'x');
        for (std::size_t i = 0; i < k_pieces; ++i) s->send(piece);
        s->on_drained([] {});
        s->finish();
      });
      router.add("GET", "/stream", [](const std::shared_ptr<ipc::Exchange>& ex) {
        auto s = ex->start_stream(200, {{"Content-Type", "text/event-stream"}});
        s->send("data: one\n\n");
      });
      ipc::Server server(loop, router, m_limits);
      m_server = &server;
      m_stop.data = this;
      m_wake.data = this;
      uv_async_init(loop.get(), &m_stop, [](uv_async_t* a) {
        auto* self = static_cast<ServerFixture*>(a->data);
        self->m_server->drain(self->m_grace, [self] { self->close_asyncs(); });
        self->drain_started.set_value();
      });
      uv_async_init(loop.get(), &m_wake, [](uv_async_t* a) {
        auto* self = static_cast<ServerFixture*>(a->data);
        std::vector<std::function<void()>> todo;
        {
          std::lock_guard lock(self->m_mutex);
          todo.swap(self->m_posted);
        }
        for (auto& f : todo) f();
      });
      auto r = server.listen_path(m_socket);
      ready.set_value(r ? "" : r.error().message);
      if (!r) close_asyncs();
      loop.run();
      held.reset();
      m_server = nullptr;
    }  // ~Server before the loop closes
    m_close_rc = loop.close();
  }

  void close_asyncs() {
    uv_close(reinterpret_cast<uv_handle_t*>(&m_stop), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&m_wake), nullptr);
  }

  test::TempDir m_dir;
  std::filesystem::path m_socket;
  ipc::ServerLimits m_limits;
  std::thread m_thread;
  uv_async_t m_stop{};
  uv_async_t m_wake{};
  std::chrono::milliseconds m_grace{2000};
  ipc::Server* m_server = nullptr;
  std::mutex m_mutex;
  std::vector<std::function<void()>> m_posted;
  int m_close_rc = -1;
};

}  // namespace

TEST_CASE("a request is answered and keep-alive carries the next one", "[ipc][server]") {
  ServerFixture f;
  RawClient c(f.socket());
  REQUIRE(c.connected());
  REQUIRE(c.send("GET /echo?q=a%20b HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r1 = c.read_response();
  CHECK(status_of(r1) == 200);
  CHECK(test::body_of(r1).find(R"("q":"a b")") != std::string::npos);
  REQUIRE(c.send("GET /items/42 HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto r2 = c.read_response();
  CHECK(status_of(r2) == 200);
  CHECK(test::body_of(r2).find(R"("id":"42")") != std::string::npos);
  CHECK(f.stop() == 0);
}

TEST_CASE("a framed stream finished with writes queued arrives whole", "[ipc][server]") {
  ServerFixture f;
  RawClient c(f.socket());
  REQUIRE(c.connected());
  REQUIRE(c.send("GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  const auto all = c.read_to_eof();
  REQUIRE(all.has_value());
  CHECK(status_of(*all) == 200);
  CHECK(test::body_of(*all).size() == 12U * 256 * 1024);
  CHECK(f.stop() == 0);
}

TEST_CASE("pipelined requests are answered in order", "[ipc][server]") {
  ServerFixture f;
  RawClient c(f.socket());
  std::string batch;
  for (int i = 0; i < 20; ++i)
    batch += "GET /items/" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  batch += "POST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
  REQUIRE(c.send(batch));
  for (int i = 0; i < 20; ++i) {
    auto r = c.read_response();
    REQUIRE(status_of(r) == 200);
    REQUIRE(test::body_of(r).find("\"" + std::to_string(i) + "\"") != std::string::npos);
  }
  auto last = c.read_response();
  CHECK(test::body_of(last) == "hello");
  CHECK(f.stop() == 0);
}

TEST_CASE("unknown paths, wrong methods and unknown methods", "[ipc][server]") {
  ServerFixture f;
  RawClient c(f.socket());
  c.send("GET /nope HTTP/1.1\r\n\r\n");
  auto r = c.read_response();
  CHECK(status_of(r) == 404);
  CHECK(test::body_of(r).find(R"("code":"not_found")") != std::string::npos);
  c.send("DELETE /echo HTTP/1.1\r\n\r\n");
  r = c.read_response();
  CHECK(status_of(r) == 405);
  CHECK(r.find("Allow: GET, POST") != std::string::npos);
  c.send("BREW /echo HTTP/1.1\r\n\r\n");
  r = c.read_response();
  CHECK(status_of(r) == 501);
  c.send("GET /items/%2F..%2Fx HTTP/1.1\r\n\r\n");
  r = c.read_response();
  CHECK(status_of(r) == 400);
  c.send("GET /echo?q=%zz HTTP/1.1\r\n\r\n");
  CHECK(status_of(c.read_response()) == 400);
  CHECK(f.stop() == 0);
}

TEST_CASE("limits: header 431, body 413, malformed 400, each followed by a close",
          "[ipc][server]") {
  ipc::ServerLimits limits;
  limits.max_header_bytes = 2048;
  limits.max_body_bytes = 4096;
  ServerFixture f(limits);
  {
    RawClient c(f.socket());
    c.send("GET /echo HTTP/1.1\r\nX-Big: " + std::string(4000, 'a') + "\r\n\r\n");
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 431);
  }
  {
    RawClient c(f.socket());
    c.send("POST /echo HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 413);
  }
  {
    RawClient c(f.socket());
    c.send("POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'b'));
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 413);
  }
  {
    RawClient c(f.socket());
    c.send("GET /echo HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 400);
  }
  {
    RawClient c(f.socket());
    c.send("\x01\x02garbage\r\n\r\n");
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 400);
  }
  // The server still answers.
  RawClient ok(f.socket());
  ok.send("GET /echo HTTP/1.1\r\n\r\n");
  CHECK(status_of(ok.read_response()) == 200);
  CHECK(f.stop() == 0);
}

TEST_CASE("a closing answer's connection ends when the peer closes, however much it had sent",
          "[ipc][server]") {
  // An HTTP/1.0 request answered and closed, with more than a request's worth
  // of pipelined bytes behind it: the server used to stop reading those
  // and so missed the peer's close, holding the slot until the linger timer.
  ipc::ServerLimits limits;
  limits.max_header_bytes = 2048;
  limits.max_body_bytes = 4096;
  limits.linger = std::chrono::hours{1};  // only the peer's close can end it in time
  ServerFixture f(limits);
  {
    RawClient c(f.socket());
    c.send("GET /echo HTTP/1.0\r\n\r\n" + std::string(8000, 'x'));
    auto all = c.read_to_eof();
    REQUIRE(all);
    CHECK(status_of(*all) == 200);
  }  // closed here
  const auto until = std::chrono::steady_clock::now() + 20s;
  auto open = f.stats().open_connections;
  while (open != 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);  // polling a counter, with a deadline
    open = f.stats().open_connections;
  }
  CHECK(open == 0);
  CHECK(f.stop() == 0);
}

TEST_CASE("timeouts: a slow request gets 408, an idle connection is closed", "[ipc][server]") {
  ipc::ServerLimits limits;
  limits.request_timeout = 150ms;
  limits.idle_timeout = 150ms;
  ServerFixture f(limits);
  RawClient slow(f.socket());
  slow.send("GET /echo HTTP/1.1\r\nHost: x\r\n");  // never finishes the header
  auto all = slow.read_to_eof();
  REQUIRE(all);
  CHECK(status_of(*all) == 408);

  RawClient idle(f.socket());
  idle.send("GET /echo HTTP/1.1\r\n\r\n");
  CHECK(status_of(idle.read_response()) == 200);
  auto rest = idle.read_to_eof();  // closed by the idle timer, nothing more sent
  REQUIRE(rest);
  CHECK(rest->empty());
  CHECK(f.stop() == 0);
}

TEST_CASE("the idle timeout runs from the answer, not from the request's own deadline",
          "[ipc][server]") {
  // The connection moves one deadline from request to idle without
  // restarting its timer; an early timer must not close the connection.
  ipc::ServerLimits limits;
  limits.request_timeout = 100ms;
  limits.idle_timeout = 600ms;
  ServerFixture f(limits);
  RawClient c(f.socket());
  for (int i = 0; i < 3; ++i) {
    c.send("GET /echo HTTP/1.1\r\n\r\n");
    CHECK(status_of(c.read_response()) == 200);
  }
  const auto answered = std::chrono::steady_clock::now();
  auto rest = c.read_to_eof();
  const auto idle_for = std::chrono::steady_clock::now() - answered;
  REQUIRE(rest);
  CHECK(rest->empty());
  CHECK(idle_for >= 550ms);  // closed by the idle timeout, not the request's 100 ms
  CHECK(f.stop() == 0);
}

TEST_CASE("connections over the limit get 503", "[ipc][server]") {
  ipc::ServerLimits limits;
  limits.max_connections = 2;
  ServerFixture f(limits);
  RawClient a(f.socket());
  RawClient b(f.socket());
  a.send("GET /echo HTTP/1.1\r\n\r\n");
  b.send("GET /echo HTTP/1.1\r\n\r\n");
  CHECK(status_of(a.read_response()) == 200);
  CHECK(status_of(b.read_response()) == 200);
  RawClient c(f.socket());
  c.send("GET /echo HTTP/1.1\r\n\r\n");
  auto all = c.read_to_eof();
  REQUIRE(all);
  CHECK(status_of(*all) == 503);
  CHECK(f.stats().connections_refused == 1);
  CHECK(f.stop() == 0);
}

TEST_CASE("drain lets a request in flight finish, then closes everything", "[ipc][server]") {
  ServerFixture f;
  RawClient stream(f.socket());
  stream.send("GET /stream HTTP/1.1\r\n\r\n");
  CHECK(stream.read_until("data: one").find("text/event-stream") != std::string::npos);
  RawClient c(f.socket());
  c.send("GET /hold HTTP/1.1\r\n\r\n");
  f.held_ready.get_future().wait();
  std::promise<void> answered;
  std::thread stopper([&] { CHECK(f.stop(5s) == 0); });
  f.drain_started.get_future().wait();
  // While draining, the held request is still answered.
  f.post([&] {
    f.held->respond(ipc::Response::json(200, {{"late", true}}));
    answered.set_value();
  });
  answered.get_future().wait();
  auto all = c.read_to_eof();
  REQUIRE(all);
  CHECK(status_of(*all) == 200);
  CHECK(all->find("Connection: close") != std::string::npos);
  CHECK(stream.read_to_eof().has_value());  // the event stream was ended
  stopper.join();
}

TEST_CASE("a live server on the socket is refused; a stale socket is replaced", "[ipc][server]") {
  ServerFixture f;
  net::Loop loop;
  ipc::Router router;
  {
    ipc::Server second(loop, router, {});
    auto r = second.listen_path(f.socket());
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("already running") != std::string::npos);
  }
  CHECK(f.stop() == 0);
  // The first server removed its socket on close; leave a stale one behind.
  test::TempDir d;
  const auto stale = d / "stale.sock";
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, stale.c_str(), sizeof addr.sun_path - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(fd);  // bound, never listening: nobody answers
  }
  {
    ipc::Server third(loop, router, {});
    CHECK(third.listen_path(stale));
  }
  CHECK(loop.close() == 0);
}

TEST_CASE(
    "a loopback listener serves TCP peers and its Server may be destroyed from a loop callback",
    "[ipc][server]") {
  net::Loop loop;
  ipc::Router router;
  std::unique_ptr<ipc::Server> server;
  std::shared_ptr<ipc::Exchange> held;
  router.add("GET", "/{rest...}", [&](const std::shared_ptr<ipc::Exchange>& ex) {
    if (ex->request().path == "/hold") {
      held = ex;  // unanswered while the server goes away
      return;
    }
    ex->respond(ipc::Response::json(200, {{"path", ex->request().path}, {"uid", ex->peer().uid}}));
  });
  server = std::make_unique<ipc::Server>(loop, router, ipc::ServerLimits{});
  auto port = server->listen_loopback();
  REQUIRE(port);
  CHECK(*port != 0);

  // The client runs on its own thread; the loop thread ends the server once
  // a request is being held, from inside a timer callback.
  std::promise<std::string> first;
  std::promise<std::string> second;
  std::thread client([&, p = *port] {
    auto request = [&](const std::string& path) {
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_port = htons(p);
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(fd);
        return std::string("connect failed");
      }
      const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
      (void)::send(fd, req.data(), req.size(), 0);
      std::string out;
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
        out.append(buf, static_cast<std::size_t>(n));
      ::close(fd);
      return out;
    };
    first.set_value(request("/a/b"));
    second.set_value(request("/hold"));
  });
  auto timer = net::Timer::create(loop);
  REQUIRE(timer);
  int ticks = 0;
  timer->start(5, 5, [&] {
    if (!held && ++ticks < 2000) return;  // gives up after 10 s (the checks below then fail)
    server.reset();                       // from a loop callback, with a request in flight
    timer->close();
  });
  loop.run();
  client.join();
  const std::string a = first.get_future().get();
  CHECK(status_of(a) == 200);
  CHECK(a.find("\"path\":\"/a/b\"") != std::string::npos);
  CHECK(second.get_future().get().empty());  // closed without an answer
  REQUIRE(held);
  CHECK_FALSE(held->pending());
  held.reset();
  CHECK(loop.close() == 0);
}
