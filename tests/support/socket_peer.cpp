#include "support/socket_peer.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch_test_macros.hpp>
#include <cstring>

namespace tokend::test {

ScriptedPeer::ScriptedPeer(std::filesystem::path socket, std::function<void(int fd)> script)
    : m_path(std::move(socket)) {
  m_listen = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, m_path.c_str(), sizeof addr.sun_path - 1);
  REQUIRE(::bind(m_listen, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(m_listen, 1) == 0);
  m_thread = std::thread([this, script = std::move(script)] {
    const int fd = ::accept(m_listen, nullptr, nullptr);
    if (fd < 0) return;
    script(fd);
    ::close(fd);
  });
}

ScriptedPeer::~ScriptedPeer() {
  join();
  ::close(m_listen);
}

void ScriptedPeer::join() {
  if (m_thread.joinable()) m_thread.join();
}

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

std::string read_head(int fd, std::string& buf) {
  char chunk[4096];
  std::size_t end;
  while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return {};
    buf.append(chunk, static_cast<std::size_t>(n));
  }
  std::string head = buf.substr(0, end + 4);
  buf.erase(0, end + 4);
  return head;
}

void read_exactly(int fd, std::string& buf, std::size_t n) {
  char chunk[65536];
  while (buf.size() < n) {
    const ssize_t got = ::recv(fd, chunk, sizeof chunk, 0);
    if (got <= 0) return;
    buf.append(chunk, static_cast<std::size_t>(got));
  }
}

}  // namespace tokend::test
