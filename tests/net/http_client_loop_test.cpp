// HttpClient's glue: libcurl multi driven by the loop, against a small HTTP
// server on the same loop (127.0.0.1, built on net::Tcp). Each test ends with
// the client closed and uv_loop_close() == 0: every poll handle and timer the
// client opened has been released.
#include <netinet/in.h>

#include <catch2/catch_test_macros.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "net/http_client.hpp"
#include "net/loop.hpp"

using namespace tokend;

namespace {

// Answers each request (one per connection, then closes) with what
// `answer` returns for its head; nullopt holds the request unanswered.
class TestServer {
 public:
  using Answer =
      std::function<std::optional<std::string>(const std::string& head, const std::string& body)>;

  TestServer(net::Loop& loop, Answer answer) : m_loop(loop), m_answer(std::move(answer)) {
    auto tcp = net::Tcp::create(loop);
    REQUIRE(tcp);
    m_listener = std::move(*tcp);
    sockaddr_in addr{};
    REQUIRE(uv_ip4_addr("127.0.0.1", 0, &addr) == 0);
    REQUIRE(m_listener.bind(reinterpret_cast<const sockaddr*>(&addr), 0) == 0);
    auto port = m_listener.local_port();
    REQUIRE(port);
    m_port = *port;
    REQUIRE(m_listener.listen(64, [this](int status) { accept(status); }) == 0);
  }

  [[nodiscard]] std::string url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(m_port) + path;
  }
  [[nodiscard]] int requests() const { return m_requests; }
  [[nodiscard]] const std::vector<std::string>& heads() const { return m_heads; }
  [[nodiscard]] std::size_t open_connections() const { return m_conns.size(); }

  // Closes the listener and every connection.
  void close() {
    m_listener.close();
    m_conns.clear();
  }

 private:
  struct Conn {
    net::Tcp tcp;
    std::string in;
    bool answered = false;
  };

  void accept(int status) {
    REQUIRE(status == 0);
    auto tcp = net::Tcp::create(m_loop);
    REQUIRE(tcp);
    auto conn = std::make_unique<Conn>();
    conn->tcp = std::move(*tcp);
    REQUIRE(m_listener.accept(conn->tcp) == 0);
    Conn* c = conn.get();
    m_conns.emplace(c, std::move(conn));
    c->tcp.read_start(
        [this](std::size_t, uv_buf_t* buf) { *buf = uv_buf_init(m_buffer, sizeof m_buffer); },
        [this, c](ssize_t n, const uv_buf_t* buf) {
          if (n < 0) {
            m_conns.erase(c);  // closes the handle from its own callback
            return;
          }
          c->in.append(buf->base, static_cast<std::size_t>(n));
          on_bytes(c);
        });
  }

  void on_bytes(Conn* c) {
    if (c->answered) return;
    const auto end = c->in.find("\r\n\r\n");
    if (end == std::string::npos) return;
    const std::string head = c->in.substr(0, end + 2);
    std::size_t length = 0;
    if (const auto cl = head.find("Content-Length: "); cl != std::string::npos) {
      length = std::stoul(head.substr(cl + 16));
    }
    if (c->in.size() < end + 4 + length) return;
    c->answered = true;
    ++m_requests;
    m_heads.push_back(head);
    auto answer = m_answer(head, c->in.substr(end + 4, length));
    if (!answer) return;  // held
    REQUIRE(c->tcp.write(std::move(*answer), [this, c](int status) {
      if (status == 0) m_conns.erase(c);
    }) == 0);
  }

  net::Loop& m_loop;
  Answer m_answer;
  net::Tcp m_listener;
  std::uint16_t m_port = 0;
  std::map<Conn*, std::unique_ptr<Conn>> m_conns;
  int m_requests = 0;
  std::vector<std::string> m_heads;
  char m_buffer[16384];
};

std::string response(int status, const std::string& body, const std::string& extra = "") {
  return "HTTP/1.1 " + std::to_string(status) +
         " X\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n" +
         extra + "\r\n" + body;
}

// The path of a request head's first line.
std::string path_of(const std::string& head) {
  const auto a = head.find(' ');
  return head.substr(a + 1, head.find(' ', a + 1) - a - 1);
}

// Turns the loop until `done` holds; fails after `limit` of loop time.
template <class Pred>
void run_until(net::Loop& loop, Pred done, std::uint64_t limit_ms = 10'000) {
  auto deadline = net::Timer::create(loop);
  REQUIRE(deadline);
  bool expired = false;
  deadline->start(limit_ms, 0, [&] { expired = true; });
  while (!done() && !expired) uv_run(loop.get(), UV_RUN_ONCE);
  deadline->close();
  REQUIRE(done());
}

}  // namespace

TEST_CASE("http client: a GET and a POST on the loop", "[net][http]") {
  net::Loop loop;
  {
    TestServer server(
        loop, [](const std::string& head, const std::string& body) -> std::optional<std::string> {
          if (path_of(head) == "/echo")
            return response(201, "you sent: " + body, "X-Thing: Value  \r\n");
          return response(200, "hello");
        });
    net::HttpClient http(loop, net::HttpClientOptions{});
    std::optional<Result<net::HttpResponse>> get;
    std::optional<Result<net::HttpResponse>> post;
    net::HttpRequest g;
    g.url = server.url("/hello");
    http.start(std::move(g), [&](Result<net::HttpResponse> r) { get = std::move(r); });
    net::HttpRequest p;
    p.method = "POST";
    p.url = server.url("/echo");
    p.body = Secret("grant_type=refresh_token");
    p.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
    http.start(std::move(p), [&](Result<net::HttpResponse> r) { post = std::move(r); });
    CHECK(http.in_flight() == 2);
    run_until(loop, [&] { return get && post; });
    REQUIRE(*get);
    CHECK((*get)->status == 200);
    CHECK((*get)->body.reveal() == "hello");
    REQUIRE(*post);
    CHECK((*post)->status == 201);
    CHECK((*post)->body.reveal() == "you sent: grant_type=refresh_token");
    CHECK((*post)->header("x-thing") == "Value");
    CHECK((*post)->header("content-length") == "34");
    CHECK(http.in_flight() == 0);
    REQUIRE(server.heads().size() == 2);
    for (const auto& head : server.heads()) {
      CHECK(head.find("User-Agent: tokend\r\n") != std::string::npos);
      CHECK(head.find("Expect:") == std::string::npos);
    }
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: no answer within the timeout is Errc::timeout", "[net][http]") {
  net::Loop loop;
  {
    TestServer server(loop, [](const std::string&, const std::string&) { return std::nullopt; });
    net::HttpClient http(loop, net::HttpClientOptions{});
    std::optional<Result<net::HttpResponse>> got;
    net::HttpRequest r;
    r.url = server.url("/never");
    r.timeout = std::chrono::milliseconds{200};
    const auto started = loop.now_ms();
    http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
    run_until(loop, [&] { return got.has_value(); });
    REQUIRE_FALSE(*got);
    CHECK(got->error().code == Errc::timeout);
    CHECK(loop.now_ms() - started >= 200);
    CHECK(server.requests() == 1);  // it was sent, then given up on
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: a streamed request waits for its head only as long as the timeout",
          "[net][http]") {
  net::Loop loop;
  {
    TestServer server(loop, [](const std::string&, const std::string&) { return std::nullopt; });
    net::HttpClient http(loop, net::HttpClientOptions{});
    std::optional<Result<net::HttpResponse>> got;
    bool head_seen = false;
    net::HttpRequest r;
    r.url = server.url("/stream");
    r.timeout = std::chrono::milliseconds{100};
    r.on_head = [&](long, const net::HttpHeaders&) { return head_seen = true; };
    r.on_data = [](std::string_view) { return true; };
    http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
    run_until(loop, [&] { return got.has_value(); });
    REQUIRE_FALSE(*got);
    CHECK(got->error().code == Errc::timeout);
    CHECK_FALSE(head_seen);
    CHECK(http.in_flight() == 0);
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: a streamed answer arrives through on_data", "[net][http]") {
  net::Loop loop;
  {
    const std::string body(300'000, 'z');
    TestServer server(loop,
                      [&](const std::string&, const std::string&) -> std::optional<std::string> {
                        return response(200, body, "Content-Type: text/event-stream\r\n");
                      });
    net::HttpClient http(loop, net::HttpClientOptions{});
    std::optional<Result<net::HttpResponse>> got;
    long head_status = 0;
    std::string streamed;
    net::HttpRequest r;
    r.url = server.url("/stream");
    r.on_head = [&](long status, const net::HttpHeaders&) {
      head_status = status;
      return true;
    };
    r.on_data = [&](std::string_view bytes) {
      streamed.append(bytes);
      return true;
    };
    http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
    run_until(loop, [&] { return got.has_value(); });
    REQUIRE(*got);
    CHECK(head_status == 200);
    CHECK((*got)->body.reveal().empty());
    CHECK(streamed == body);
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: a cancelled request never calls back", "[net][http]") {
  net::Loop loop;
  {
    net::HttpClient http(loop, net::HttpClientOptions{});
    std::uint64_t id = 0;
    bool called = false;
    // The server cancels the request once it holds it.
    TestServer server(loop,
                      [&](const std::string&, const std::string&) -> std::optional<std::string> {
                        http.cancel(id);
                        return std::nullopt;
                      });
    net::HttpRequest r;
    r.url = server.url("/held");
    r.timeout = std::chrono::milliseconds{300};
    id = http.start(std::move(r), [&](Result<net::HttpResponse>) { called = true; });
    run_until(loop, [&] { return server.requests() == 1; });
    CHECK(http.in_flight() == 0);
    // The client let go of the connection: the server sees it close.
    run_until(loop, [&] { return server.open_connections() == 0; });
    // Longer than the request's own timeout: still no callback.
    auto later = net::Timer::create(loop);
    REQUIRE(later);
    bool waited = false;
    later->start(400, 0, [&] { waited = true; });
    run_until(loop, [&] { return waited; });
    CHECK_FALSE(called);
    // The client still works.
    std::optional<Result<net::HttpResponse>> got;
    net::HttpRequest again;
    again.url = "http://127.0.0.1:1/";
    http.start(std::move(again), [&](Result<net::HttpResponse> res) { got = std::move(res); });
    run_until(loop, [&] { return got.has_value(); });
    REQUIRE_FALSE(*got);
    CHECK(got->error().code == Errc::transient);  // connection refused
    later->close();
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: many requests at once each get their own answer", "[net][http]") {
  net::Loop loop;
  {
    TestServer server(
        loop, [](const std::string& head, const std::string&) -> std::optional<std::string> {
          return response(200, "answer for " + path_of(head));
        });
    net::HttpClientOptions options;
    options.max_connections_per_host = 4;  // the rest wait for a connection
    net::HttpClient http(loop, options);
    constexpr int k_requests = 60;
    std::map<int, std::string> answers;
    int failures = 0;
    for (int i = 0; i < k_requests; ++i) {
      net::HttpRequest r;
      r.url = server.url("/r" + std::to_string(i));
      http.start(std::move(r), [&, i](Result<net::HttpResponse> res) {
        if (!res || res->status != 200) {
          ++failures;
          return;
        }
        CHECK(answers.emplace(i, std::string(res->body.reveal())).second);
      });
    }
    CHECK(http.in_flight() == k_requests);
    run_until(loop, [&] { return static_cast<int>(answers.size()) + failures == k_requests; });
    CHECK(failures == 0);
    for (const auto& [i, body] : answers) CHECK(body == "answer for /r" + std::to_string(i));
    CHECK(server.requests() == k_requests);
    CHECK(http.in_flight() == 0);
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE("http client: an answer over the cap is Errc::limit_exceeded", "[net][http]") {
  net::Loop loop;
  {
    TestServer server(
        loop, [](const std::string& head, const std::string&) -> std::optional<std::string> {
          // Without a Content-Length the cap is found while reading.
          if (path_of(head) == "/unannounced") {
            return "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + std::string(5000, 'x');
          }
          return response(200, std::string(5000, 'x'));
        });
    net::HttpClient http(loop, net::HttpClientOptions{});
    for (const char* path : {"/announced", "/unannounced"}) {
      INFO(path);
      std::optional<Result<net::HttpResponse>> got;
      net::HttpRequest r;
      r.url = server.url(path);
      r.max_response_bytes = 1000;
      http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
      run_until(loop, [&] { return got.has_value(); });
      REQUIRE_FALSE(*got);
      CHECK(got->error().code == Errc::limit_exceeded);
    }
    http.close();
    server.close();
  }
  CHECK(loop.close() == 0);
}

TEST_CASE(
    "http client: destroyed with transfers in flight, nothing calls back and every handle closes",
    "[net][http]") {
  net::Loop loop;
  bool called = false;
  {
    TestServer server(loop, [](const std::string&, const std::string&) { return std::nullopt; });
    {
      net::HttpClient http(loop, net::HttpClientOptions{});
      for (int i = 0; i < 5; ++i) {
        net::HttpRequest r;
        r.url = server.url("/held");
        http.start(std::move(r), [&](Result<net::HttpResponse>) { called = true; });
      }
      // A streamed one too (its head timer).
      net::HttpRequest s;
      s.url = server.url("/held");
      s.on_head = [](long, const net::HttpHeaders&) { return true; };
      s.on_data = [](std::string_view) { return true; };
      http.start(std::move(s), [&](Result<net::HttpResponse>) { called = true; });
      run_until(loop, [&] { return server.requests() == 6; });
      // And one that would fail on the next loop turn.
      net::HttpRequest bad;
      bad.url = server.url("/x");
      bad.headers = {{"X-A", "a\nb"}};
      http.start(std::move(bad), [&](Result<net::HttpResponse>) { called = true; });
      // ~HttpClient without close(): the destructor releases everything.
    }
    server.close();
  }
  CHECK(loop.close() == 0);
  CHECK_FALSE(called);
}

TEST_CASE("http client: a request started after close fails on the next loop turn", "[net][http]") {
  net::Loop loop;
  {
    net::HttpClient http(loop, net::HttpClientOptions{});
    http.close();
    std::optional<Result<net::HttpResponse>> got;
    net::HttpRequest r;
    r.url = "http://127.0.0.1:1/";
    http.start(std::move(r), [&](Result<net::HttpResponse> res) { got = std::move(res); });
    CHECK_FALSE(got.has_value());  // not from inside start()
    loop.run();
    REQUIRE(got.has_value());
    REQUIRE_FALSE(*got);
    CHECK(got->error().code == Errc::unavailable);
  }
  CHECK(loop.close() == 0);
}
