// Client::exchange() (what tokenctl api uses) against a scripted peer on a
// real Unix socket: streamed uploads with Content-Length and chunked, an
// early answer while uploading, streamed answers, HEAD, timeouts, refused
// headers. ipc_test covers the server; this is the client tokenctl links.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch_test_macros.hpp>
#include <cstring>
#include <string>
#include <thread>

#include "client/client.hpp"
#include "support/socket_peer.hpp"
#include "support/temp_dir.hpp"

using tokend::Errc;
using tokend::client::BodyReader;
using tokend::client::Client;
using tokend::client::ResponseHead;
using tokend::test::read_exactly;
using tokend::test::read_head;
using tokend::test::ScriptedPeer;
using tokend::test::TempDir;
using tokend::test::write_all;
using namespace std::chrono_literals;

namespace {

// Decodes a chunked body from the connection (no trailers).
std::string read_chunked(int fd, std::string& buf) {
  std::string body;
  for (;;) {
    std::size_t eol;
    while ((eol = buf.find("\r\n")) == std::string::npos) read_exactly(fd, buf, buf.size() + 1);
    const std::size_t size = std::stoul(buf.substr(0, eol), nullptr, 16);
    buf.erase(0, eol + 2);
    read_exactly(fd, buf, size + 2);
    body += buf.substr(0, size);
    buf.erase(0, size + 2);
    if (size == 0) return body;
  }
}

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 4096) % 26);
  return s;
}

bool has_line(const std::string& head, const std::string& line) {
  return head.find("\r\n" + line + "\r\n") != std::string::npos;
}

}  // namespace

TEST_CASE("a file body goes out with its fstat size as Content-Length; the answer streams in",
          "[ctl][client]") {
  TempDir dir;
  const std::string upload = pattern(3 * 1024 * 1024 + 17);
  tokend::test::write_file_bytes(dir / "upload.bin", upload);
  const std::string answer = pattern(5 * 1024 * 1024);
  std::string got_head;
  std::string got_body;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    got_head = read_head(fd, buf);
    read_exactly(fd, buf, upload.size());
    got_body = buf;
    write_all(fd,
              "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: "
              "chunked\r\n\r\n");
    for (std::size_t at = 0; at < answer.size(); at += 100'000) {
      const std::string piece = answer.substr(at, 100'000);
      char size[32];
      std::snprintf(size, sizeof size, "%zx\r\n", piece.size());
      write_all(fd, size + piece + "\r\n");
    }
    write_all(fd, "0\r\n\r\n");
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  const int file = ::open((dir / "upload.bin").c_str(), O_RDONLY);
  REQUIRE(file >= 0);
  BodyReader body = BodyReader::from_fd(file, "upload.bin");
  REQUIRE(body.length == upload.size());
  int heads = 0;
  std::size_t pieces = 0;
  std::string received;
  auto r = client->exchange(
      "PUT", "/v1/proxy/p/jira/x?a=b", {{"Content-Type", "application/octet-stream"}}, &body,
      [&](const ResponseHead& h) {
        ++heads;
        CHECK(h.status == 200);
        CHECK(h.reason == "OK");
        return true;
      },
      [&](std::string_view d) {
        ++pieces;
        received.append(d);
        return true;
      },
      5s);
  ::close(file);
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(heads == 1);
  CHECK(received == answer);
  CHECK(pieces > 10);  // handed over as it came, not in one piece
  CHECK(got_head.starts_with("PUT /v1/proxy/p/jira/x?a=b HTTP/1.1\r\n"));
  CHECK(has_line(got_head, "Content-Length: " + std::to_string(upload.size())));
  CHECK(has_line(got_head, "Content-Type: application/octet-stream"));
  CHECK(got_head.find("Transfer-Encoding") == std::string::npos);
  CHECK(got_body == upload);
}

TEST_CASE("a pipe body goes out chunked", "[ctl][client]") {
  TempDir dir;
  const std::string upload = pattern(300'000);
  std::string got_head;
  std::string got_body;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    got_head = read_head(fd, buf);
    got_body = read_chunked(fd, buf);
    write_all(fd, "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
  });
  int p[2];
  REQUIRE(::pipe(p) == 0);
  std::thread writer([&] {
    for (std::size_t at = 0; at < upload.size(); at += 7'000) {
      const std::string piece = upload.substr(at, 7'000);
      REQUIRE(::write(p[1], piece.data(), piece.size()) == static_cast<ssize_t>(piece.size()));
    }
    ::close(p[1]);
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  BodyReader body = BodyReader::from_fd(p[0], "the pipe");
  CHECK_FALSE(body.length.has_value());
  std::string received;
  auto r = client->exchange(
      "POST", "/x", {}, &body, [](const ResponseHead&) { return true; },
      [&](std::string_view d) {
        received.append(d);
        return true;
      },
      5s);
  writer.join();
  ::close(p[0]);
  REQUIRE(r);
  CHECK(r->status == 201);
  CHECK(received == "ok");
  CHECK(has_line(got_head, "Transfer-Encoding: chunked"));
  CHECK(got_head.find("Content-Length") == std::string::npos);
  CHECK(got_body == upload);
}

TEST_CASE("an early answer stops the upload and is read", "[ctl][client]") {
  TempDir dir;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    read_head(fd, buf);
    write_all(fd,
              "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 11\r\nConnection: "
              "close\r\n\r\ntoo large!\n");
    ::shutdown(fd, SHUT_WR);
    // Keep reading a while without answering more, as a server draining
    // the rest does; the client must not wait for us to finish.
    char sink[65536];
    for (int i = 0; i < 64 && ::recv(fd, sink, sizeof sink, 0) > 0; ++i) {
    }
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  // An endless body: only an early answer can end this request.
  std::atomic<std::uint64_t> sent{0};
  BodyReader body;
  body.read = [&](std::span<char> buf) -> tokend::Result<std::size_t> {
    std::memset(buf.data(), 'x', buf.size());
    sent += buf.size();
    return buf.size();
  };
  std::string received;
  auto r = client->exchange(
      "POST", "/x", {}, &body, [](const ResponseHead&) { return true; },
      [&](std::string_view d) {
        received.append(d);
        return true;
      },
      5s);
  REQUIRE(r);
  CHECK(r->status == 413);
  CHECK(received == "too large!\n");
}

TEST_CASE("HEAD answers have no body to wait for", "[ctl][client]") {
  TempDir dir;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    read_head(fd, buf);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    char c;
    [[maybe_unused]] auto n = ::recv(fd, &c, 1, 0);  // wait for the client to close
  });
  std::optional<Client> client;
  {
    auto c = Client::connect(peer.path());
    REQUIRE(c);
    client.emplace(std::move(*c));
  }
  bool data = false;
  auto r = client->exchange(
      "HEAD", "/x", {}, nullptr, [](const ResponseHead&) { return true; },
      [&](std::string_view) {
        data = true;
        return true;
      },
      2s);
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK_FALSE(data);
  client.reset();
}

TEST_CASE("no progress within the idle timeout is Errc::timeout", "[ctl][client]") {
  TempDir dir;
  int done[2];
  REQUIRE(::pipe(done) == 0);
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    read_head(fd, buf);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");  // then silence
    char c;
    [[maybe_unused]] auto n = ::read(done[0], &c, 1);
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  std::string received;
  auto r = client->exchange(
      "GET", "/x", {}, nullptr, [](const ResponseHead&) { return true; },
      [&](std::string_view d) {
        received.append(d);
        return true;
      },
      200ms);
  [[maybe_unused]] auto n = ::write(done[1], "x", 1);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::timeout);
  CHECK(received == "abc");
  ::close(done[0]);
  ::close(done[1]);
}

TEST_CASE("an answer cut off in the middle is Errc::protocol", "[ctl][client]") {
  TempDir dir;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    read_head(fd, buf);
    write_all(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this");
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  bool head = false;
  auto r = client->exchange(
      "GET", "/x", {}, nullptr,
      [&](const ResponseHead&) {
        head = true;
        return true;
      },
      [](std::string_view) { return true; }, 5s);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::protocol);
  CHECK(head);
}

TEST_CASE("a file that shrinks while it is sent fails the request", "[ctl][client]") {
  TempDir dir;
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    std::string buf;
    read_head(fd, buf);
    read_exactly(fd, buf, 50);  // then the client gives up
  });
  auto client = Client::connect(peer.path());
  REQUIRE(client);
  BodyReader body;
  body.length = 100;
  int calls = 0;
  body.read = [&](std::span<char> buf) -> tokend::Result<std::size_t> {
    if (calls++ > 0) return 0;
    std::memset(buf.data(), 'x', 50);
    return 50;
  };
  auto r = client->exchange("PUT", "/x", {}, &body, nullptr, nullptr, 5s);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == Errc::io);
  CHECK(r.error().message.find("50 bytes short") != std::string::npos);
}

TEST_CASE("line breaks in the target or a header are refused before anything is sent",
          "[ctl][client]") {
  TempDir dir;
  std::atomic<bool> got_bytes{false};
  ScriptedPeer peer(dir / "peer.sock", [&](int fd) {
    char c;
    got_bytes = ::recv(fd, &c, 1, 0) > 0;
  });
  {
    auto client = Client::connect(peer.path());
    REQUIRE(client);
    const tokend::client::Headers bad_headers[] = {{{"X-A", "1\r\nX-Injected: 1"}},
                                                   {{"X-A", "1\n"}},
                                                   {{"X A", "1"}},
                                                   {{"", "1"}},
                                                   {{"X-A", std::string("1\0", 2)}},
                                                   {{"Content-Length", "5"}},
                                                   {{"transfer-encoding", "chunked"}}};
    for (const auto& h : bad_headers) {
      auto r = client->exchange("GET", "/x", h, nullptr, nullptr, nullptr, 1s);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == Errc::invalid_argument);
    }
    for (const char* target : {"/x\r\nHost: y", "/x y", "x", ""}) {
      auto r = client->exchange("GET", target, {}, nullptr, nullptr, nullptr, 1s);
      REQUIRE_FALSE(r);
      CHECK(r.error().code == Errc::invalid_argument);
    }
    auto r = client->exchange("GE T", "/x", {}, nullptr, nullptr, nullptr, 1s);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::invalid_argument);
    auto s = client->send_request("GET", "/x", {}, {{"X-A", "1\r\nX-B: 2"}});
    REQUIRE_FALSE(s);
    CHECK(s.error().code == Errc::invalid_argument);
  }
  CHECK_FALSE(got_bytes);
}
