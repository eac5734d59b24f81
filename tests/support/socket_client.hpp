// A raw Unix-socket client for server tests: send bytes, read with deadlines.
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

namespace tokend::test {

class RawClient {
 public:
  explicit RawClient(const std::filesystem::path& socket);
  ~RawClient();
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  [[nodiscard]] bool connected() const { return m_fd >= 0; }
  bool send(const std::string& bytes);
  void shutdown_write();
  // Reads until `needle` has been seen (or EOF/deadline); returns all read so far.
  std::string read_until(const std::string& needle,
                         std::chrono::milliseconds deadline = std::chrono::seconds(10));
  // Reads until the peer closes; returns everything, or nullopt on deadline.
  std::optional<std::string> read_to_eof(
      std::chrono::milliseconds deadline = std::chrono::seconds(10));
  // Reads one whole response (Content-Length framed).
  std::string read_response(std::chrono::milliseconds deadline = std::chrono::seconds(10));
  [[nodiscard]] bool eof() const { return m_eof; }

 private:
  bool fill(std::chrono::steady_clock::time_point until);
  int m_fd = -1;
  std::string m_buf;
  bool m_eof = false;
};

// Status code of the first response in `raw`, or 0.
int status_of(const std::string& raw);
std::string body_of(const std::string& raw);

}  // namespace tokend::test
