// The server's TLS listener on a real loop and real sockets, with a CA made
// at test time: handshakes, ALPN, versions, client certificates, plain HTTP
// and silence on the TLS port, the limits and streams over TLS, a reloaded
// certificate. Every test ends with uv_loop_close() == 0.
#include "ipc/tls.hpp"

#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <future>
#include <mutex>
#include <thread>

#include "ipc/router.hpp"
#include "ipc/server.hpp"
#include "net/loop.hpp"
#include "support/socket_client.hpp"
#include "support/temp_dir.hpp"
#include "support/test_ca.hpp"
#include "support/tls_client.hpp"

using namespace tokend;
using namespace std::chrono_literals;
using test::status_of;
using test::TlsClient;
using test::TlsClientOptions;

namespace {

// One CA for the whole file: certificates take milliseconds, but there is
// no need to make them per test.
const test::TestCa& ca() {
  static test::TempDir dir;
  static const test::TestCa made = test::make_test_ca(dir / "ca");
  return made;
}

class TlsFixture {
 public:
  explicit TlsFixture(ipc::ServerLimits limits = {}, bool client_ca = false) : m_limits(limits) {
    ipc::TlsFiles files{ca().server_cert, ca().server_key, {}};
    if (client_ca) files.client_ca_file = ca().ca_file;
    auto ctx = ipc::TlsContext::load(files);
    if (!ctx) throw std::runtime_error(ctx.error().message);
    m_ctx = *ctx;
    std::promise<std::string> ready;
    auto started = ready.get_future();
    m_thread = std::thread([this, &ready] { loop_thread(ready); });
    const std::string err = started.get();
    if (!err.empty()) throw std::runtime_error(err);
  }
  ~TlsFixture() { stop(); }

  int stop() {
    if (!m_thread.joinable()) return m_close_rc;
    uv_async_send(&m_stop);
    m_thread.join();
    return m_close_rc;
  }

  void post(std::function<void()> f) {
    {
      std::lock_guard lock(m_mutex);
      m_posted.push_back(std::move(f));
    }
    uv_async_send(&m_wake);
  }

  ipc::ServerStats stats() {
    std::promise<ipc::ServerStats> p;
    auto f = p.get_future();
    post([&] { p.set_value(m_server->stats()); });
    return f.get();
  }

  void replace_context(std::shared_ptr<const ipc::TlsContext> ctx) {
    std::promise<void> p;
    auto f = p.get_future();
    post([&] {
      m_server->set_tls_context(std::move(ctx));
      p.set_value();
    });
    f.get();
  }

  [[nodiscard]] std::uint16_t port() const { return m_port; }
  [[nodiscard]] static TlsClientOptions trusting() {
    TlsClientOptions o;
    o.ca_file = ca().ca_file;
    return o;
  }

 private:
  void loop_thread(std::promise<std::string>& ready) {
    net::Loop loop;
    {
      ipc::Router router;
      router.add("GET", "/echo", [](const std::shared_ptr<ipc::Exchange>& ex) {
        ex->respond(ipc::Response::json(200, {{"q", ex->request().query_param("q").value_or("")}}));
      });
      router.add("POST", "/echo", [](const std::shared_ptr<ipc::Exchange>& ex) {
        ipc::Response r;
        r.body = ex->request().body;
        ex->respond(std::move(r));
      });
      router.add("GET", "/whoami", [](const std::shared_ptr<ipc::Exchange>& ex) {
        const auto& p = ex->peer();
        ex->respond(ipc::Response::json(
            200,
            {{"tls", p.tls}, {"names", p.client_cert_names}, {"has_address", !p.address.empty()}}));
      });
      router.add("GET", "/stream", [](const std::shared_ptr<ipc::Exchange>& ex) {
        auto s = ex->start_stream(200, {{"Content-Type", "text/event-stream"}});
        s->send("data: one\n\n");
        s->send("data: two\n\n");
      });
      ipc::Server server(loop, router, m_limits);
      m_server = &server;
      m_stop.data = this;
      m_wake.data = this;
      uv_async_init(loop.get(), &m_stop, [](uv_async_t* a) {
        auto* self = static_cast<TlsFixture*>(a->data);
        self->m_server->drain(2s, [self] { self->close_asyncs(); });
      });
      uv_async_init(loop.get(), &m_wake, [](uv_async_t* a) {
        auto* self = static_cast<TlsFixture*>(a->data);
        std::vector<std::function<void()>> todo;
        {
          std::lock_guard lock(self->m_mutex);
          todo.swap(self->m_posted);
        }
        for (auto& f : todo) f();
      });
      auto port = server.listen_tls("127.0.0.1", 0, m_ctx);
      m_ctx.reset();  // the listener holds it
      if (port) m_port = *port;
      ready.set_value(port ? "" : port.error().message);
      if (!port) close_asyncs();
      loop.run();
      m_server = nullptr;
    }
    m_close_rc = loop.close();
  }

  void close_asyncs() {
    uv_close(reinterpret_cast<uv_handle_t*>(&m_stop), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&m_wake), nullptr);
  }

  ipc::ServerLimits m_limits;
  std::shared_ptr<const ipc::TlsContext> m_ctx;
  std::uint16_t m_port = 0;
  std::thread m_thread;
  uv_async_t m_stop{};
  uv_async_t m_wake{};
  ipc::Server* m_server = nullptr;
  std::mutex m_mutex;
  std::vector<std::function<void()>> m_posted;
  int m_close_rc = -1;
};

// Polls until the server counts `n` open connections (closes are seen on
// the loop thread a moment after the peer's).
bool open_connections_reach(TlsFixture& f, std::uint64_t n) {
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (f.stats().open_connections != n) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::string request(const std::string& path) {
  return "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n";
}

// Reads from a raw socket until EOF (true) or the deadline (false).
bool raw_reaches_eof(int fd, std::string& got, std::chrono::milliseconds deadline) {
  timeval tv{static_cast<time_t>(deadline.count() / 1000),
             static_cast<suseconds_t>((deadline.count() % 1000) * 1000)};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) return errno == ECONNRESET;
    got.append(buf, static_cast<std::size_t>(n));
  }
}

}  // namespace

TEST_CASE("requests over TLS are answered, keep-alive carries the next, ALPN is http/1.1",
          "[ipc][tls]") {
  TlsFixture f;
  TlsClient c(f.port(), f.trusting());
  REQUIRE(c.ok());
  CHECK(c.alpn() == "http/1.1");
  CHECK(c.version() == "TLSv1.3");
  CHECK(c.server_cn() == "localhost");
  REQUIRE(c.send(request("/echo?q=a%20b")));
  auto r1 = c.read_response();
  CHECK(status_of(r1) == 200);
  CHECK(test::body_of(r1) == "{\"q\":\"a b\"}\n");
  REQUIRE(c.send(request("/whoami")));
  auto r2 = c.read_response();
  CHECK(status_of(r2) == 200);
  CHECK(test::body_of(r2) == "{\"has_address\":true,\"names\":[],\"tls\":true}\n");
  // A body bigger than one TLS record.
  const std::string big(100 * 1024, 'b');
  REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(big.size()) +
                 "\r\n\r\n" + big));
  auto r3 = c.read_response();
  CHECK(status_of(r3) == 200);
  CHECK(test::body_of(r3) == big);
  CHECK(f.stop() == 0);
}

TEST_CASE("TLS 1.2 is served; TLS 1.1 and a client without http/1.1 in ALPN are refused",
          "[ipc][tls]") {
  TlsFixture f;
  auto o12 = f.trusting();
  o12.max_version = TLS1_2_VERSION;
  TlsClient c12(f.port(), o12);
  REQUIRE(c12.ok());
  CHECK(c12.version() == "TLSv1.2");
  REQUIRE(c12.send(request("/echo")));
  CHECK(status_of(c12.read_response()) == 200);

  auto o11 = f.trusting();
  o11.max_version = TLS1_1_VERSION;
  TlsClient c11(f.port(), o11);
  CHECK_FALSE(c11.ok());

  auto h2 = f.trusting();
  h2.alpn = "h2";
  TlsClient ch2(f.port(), h2);
  CHECK_FALSE(ch2.ok());
  CHECK(ch2.error().find("no application protocol") != std::string::npos);

  auto none = f.trusting();
  none.alpn.clear();
  TlsClient cn(f.port(), none);
  REQUIRE(cn.ok());
  REQUIRE(cn.send(request("/echo")));
  CHECK(status_of(cn.read_response()) == 200);
  CHECK(f.stop() == 0);
}

TEST_CASE("plain HTTP to the TLS port gets a plain 400 and a close; garbage a close",
          "[ipc][tls]") {
  TlsFixture f;
  {
    const int fd = test::tcp_connect(f.port());
    REQUIRE(fd >= 0);
    const std::string req = request("/echo");
    REQUIRE(::send(fd, req.data(), req.size(), 0) == static_cast<ssize_t>(req.size()));
    std::string got;
    CHECK(raw_reaches_eof(fd, got, 5s));
    CHECK(status_of(got) == 400);
    CHECK(got.find("use https://") != std::string::npos);
    ::close(fd);
  }
  {
    const int fd = test::tcp_connect(f.port());
    REQUIRE(fd >= 0);
    // A handshake record header announcing a ClientHello, then nonsense.
    std::string junk("\x16\x03\x01\x00\x40", 5);
    junk += std::string(64, '\xff');
    REQUIRE(::send(fd, junk.data(), junk.size(), 0) == static_cast<ssize_t>(junk.size()));
    std::string got;
    CHECK(raw_reaches_eof(fd, got, 5s));
    CHECK(got.find("HTTP/1.1") == std::string::npos);
    ::close(fd);
  }
  // The server is unharmed.
  TlsClient c(f.port(), f.trusting());
  REQUIRE(c.ok());
  REQUIRE(c.send(request("/echo")));
  CHECK(status_of(c.read_response()) == 200);
  CHECK(f.stop() == 0);
}

TEST_CASE("a handshake that does not finish in request_timeout is closed (slowloris)",
          "[ipc][tls]") {
  ipc::ServerLimits limits;
  limits.request_timeout = 300ms;
  TlsFixture f(limits);
  const int silent = test::tcp_connect(f.port());
  const int slow = test::tcp_connect(f.port());
  REQUIRE(silent >= 0);
  REQUIRE(slow >= 0);
  // The first bytes of a ClientHello, and then nothing.
  const std::string part("\x16\x03\x01\x02\x00\x01", 6);
  REQUIRE(::send(slow, part.data(), part.size(), 0) == 6);
  const auto start = std::chrono::steady_clock::now();
  std::string got;
  CHECK(raw_reaches_eof(silent, got, 5s));
  CHECK(raw_reaches_eof(slow, got, 5s));
  CHECK(std::chrono::steady_clock::now() - start < 4s);
  CHECK(got.empty());
  ::close(silent);
  ::close(slow);
  CHECK(open_connections_reach(f, 0));
  CHECK(f.stop() == 0);
}

TEST_CASE("the limits hold over TLS: 431 for a header too large, 503 never in plain text",
          "[ipc][tls]") {
  ipc::ServerLimits limits;
  limits.max_header_bytes = 1024;
  limits.max_connections = 1;
  TlsFixture f(limits);
  {
    TlsClient c(f.port(), f.trusting());
    REQUIRE(c.ok());
    REQUIRE(
        c.send("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2000, 'a') + "\r\n\r\n"));
    CHECK(status_of(c.read_response()) == 431);
    CHECK(c.read_to_eof().has_value());
  }
  // Its slot is free once the server has seen the close.
  REQUIRE(open_connections_reach(f, 0));
  // One connection open: the next over the limit is closed without a byte.
  TlsClient held(f.port(), f.trusting());
  REQUIRE(held.ok());
  REQUIRE(held.send(request("/echo")));
  CHECK(status_of(held.read_response()) == 200);
  const int extra = test::tcp_connect(f.port());
  REQUIRE(extra >= 0);
  std::string got;
  CHECK(raw_reaches_eof(extra, got, 5s));
  CHECK(got.empty());
  ::close(extra);
  CHECK(f.stats().connections_refused >= 1);
  CHECK(f.stop() == 0);
}

TEST_CASE("an event stream over TLS arrives as sent and ends at drain", "[ipc][tls]") {
  TlsFixture f;
  TlsClient c(f.port(), f.trusting());
  REQUIRE(c.ok());
  REQUIRE(c.send(request("/stream")));
  auto got = c.read_until("data: two\n\n");
  CHECK(status_of(got) == 200);
  CHECK(got.find("text/event-stream") != std::string::npos);
  CHECK(got.find("data: one\n\ndata: two\n\n") != std::string::npos);
  CHECK(f.stop() == 0);
  CHECK(c.read_to_eof().has_value());
}

TEST_CASE(
    "client certificates: verified names reach the handler, none is allowed, another "
    "CA's ends the handshake",
    "[ipc][tls]") {
  TlsFixture f({}, /*client_ca=*/true);
  const auto good =
      ca().client("svc", "mcp-server", "URI:spiffe://example.org/mcp,DNS:mcp.internal");
  auto o = f.trusting();
  o.cert_file = good.cert;
  o.key_file = good.key;
  {
    TlsClient c(f.port(), o);
    REQUIRE(c.ok());
    REQUIRE(c.send(request("/whoami")));
    auto r = c.read_response();
    CHECK(status_of(r) == 200);
    CHECK(
        test::body_of(r) ==
        R"({"has_address":true,"names":["mcp-server","spiffe://example.org/mcp","mcp.internal"],"tls":true})"
        "\n");
  }
  {
    TlsClient c(f.port(), f.trusting());  // no certificate
    REQUIRE(c.ok());
    REQUIRE(c.send(request("/whoami")));
    CHECK(test::body_of(c.read_response()) == R"({"has_address":true,"names":[],"tls":true})"
                                              "\n");
  }
  for (const int version : {TLS1_2_VERSION, TLS1_3_VERSION}) {
    const auto rogue = ca().client("rogue", "mcp-server", "", /*rogue=*/true);
    auto r = f.trusting();
    r.cert_file = rogue.cert;
    r.key_file = rogue.key;
    r.max_version = version;
    TlsClient c(f.port(), r);
    // TLS 1.2 refuses in the handshake; TLS 1.3 after the client's
    // Finished, so the client sees it at its first read.
    if (c.ok()) {
      (void)c.send(request("/whoami"));
      auto got = c.read_to_eof();
      REQUIRE(got.has_value());
      CHECK(got->empty());
      CHECK(c.error().find("unknown ca") != std::string::npos);
    } else {
      CHECK(c.error().find("unknown ca") != std::string::npos);
    }
  }
  CHECK(f.stop() == 0);
}

TEST_CASE("a replaced certificate serves new connections; open ones keep theirs", "[ipc][tls]") {
  TlsFixture f;
  TlsClient before(f.port(), f.trusting());
  REQUIRE(before.ok());
  CHECK(before.server_cn() == "localhost");
  const auto next = ca().server("next", "tokend.example");
  auto ctx = ipc::TlsContext::load({next.cert, next.key, {}});
  REQUIRE(ctx);
  f.replace_context(*ctx);
  TlsClient after(f.port(), f.trusting());
  REQUIRE(after.ok());
  CHECK(after.server_cn() == "tokend.example");
  REQUIRE(before.send(request("/echo")));
  CHECK(status_of(before.read_response()) == 200);
  REQUIRE(after.send(request("/echo")));
  CHECK(status_of(after.read_response()) == 200);
  CHECK(f.stop() == 0);
}

TEST_CASE("the key file must be private; a key that is not the certificate's is refused",
          "[ipc][tls]") {
  test::TempDir dir;
  const auto key = dir / "server.key";
  test::write_file_bytes(key, test::read_file_bytes(ca().server_key), 0644);
  auto loose = ipc::TlsContext::load({ca().server_cert, key, {}});
  REQUIRE_FALSE(loose);
  CHECK(loose.error().message.find("tls-key-file") != std::string::npos);
  CHECK(loose.error().message.find("BEGIN") == std::string::npos);

  const auto other = ca().client("mismatch", "x");
  auto mismatch = ipc::TlsContext::load({ca().server_cert, other.key, {}});
  REQUIRE_FALSE(mismatch);
  CHECK(mismatch.error().message.find("is not the key of tls-cert-file") != std::string::npos);

  auto missing = ipc::TlsContext::load({dir / "nope.pem", ca().server_key, {}});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == Errc::config);
}
