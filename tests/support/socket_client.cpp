#include "support/socket_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace tokend::test {

RawClient::RawClient(const std::filesystem::path& socket) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket.c_str(), sizeof addr.sun_path - 1);
  m_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (m_fd >= 0 && ::connect(m_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(m_fd);
    m_fd = -1;
  }
}

RawClient::~RawClient() {
  if (m_fd >= 0) ::close(m_fd);
}

bool RawClient::send(const std::string& bytes) {
  std::size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(m_fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

void RawClient::shutdown_write() {
  ::shutdown(m_fd, SHUT_WR);
}

bool RawClient::fill(std::chrono::steady_clock::time_point until) {
  if (m_eof) return false;
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  pollfd p{m_fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
  char buf[65536];
  const ssize_t n = ::recv(m_fd, buf, sizeof buf, 0);
  if (n <= 0) {
    m_eof = true;
    return false;
  }
  m_buf.append(buf, static_cast<std::size_t>(n));
  return true;
}

std::string RawClient::read_until(const std::string& needle, std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (m_buf.find(needle) == std::string::npos && fill(until)) {
  }
  return m_buf;
}

std::optional<std::string> RawClient::read_to_eof(std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!m_eof) {
    if (!fill(until) && !m_eof) return std::nullopt;
  }
  return m_buf;
}

std::string RawClient::read_response(std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (;;) {
    const auto head_end = m_buf.find("\r\n\r\n");
    if (head_end != std::string::npos) {
      std::size_t length = 0;
      const std::string head = m_buf.substr(0, head_end);
      std::string lower = head;
      for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (const auto p = lower.find("content-length:"); p != std::string::npos) {
        length = std::stoul(head.substr(p + 15));
      }
      if (m_buf.size() >= head_end + 4 + length) {
        std::string one = m_buf.substr(0, head_end + 4 + length);
        m_buf.erase(0, head_end + 4 + length);
        return one;
      }
    }
    if (!fill(until)) {
      std::string rest = std::move(m_buf);
      m_buf.clear();
      return rest;
    }
  }
}

int status_of(const std::string& raw) {
  if (raw.size() < 12 || !raw.starts_with("HTTP/1.")) return 0;
  return std::stoi(raw.substr(9, 3));
}

std::string body_of(const std::string& raw) {
  const auto p = raw.find("\r\n\r\n");
  return p == std::string::npos ? std::string{} : raw.substr(p + 4);
}

}  // namespace tokend::test
