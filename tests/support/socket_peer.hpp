// A scripted peer on a real Unix socket, for tests of the client side: it
// accepts one connection and runs a script on it in a thread. Plus the
// blocking reads and writes such scripts are made of.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

namespace tokend::test {

class ScriptedPeer {
 public:
  // Listens on `socket` before returning, so a client may connect at once.
  // `script` runs on the one accepted connection, which is closed after it.
  ScriptedPeer(std::filesystem::path socket, std::function<void(int fd)> script);
  ~ScriptedPeer();
  ScriptedPeer(const ScriptedPeer&) = delete;
  ScriptedPeer& operator=(const ScriptedPeer&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return m_path; }
  // Waits for the script to finish (at once if it already has).
  void join();

 private:
  std::filesystem::path m_path;
  int m_listen = -1;
  std::thread m_thread;
};

// Sends all of `s`; stops quietly when the connection fails.
void write_all(int fd, std::string_view s);
// Reads until `buf` holds "\r\n\r\n"; returns the head and leaves the rest in
// `buf`. Empty when the connection ends first.
std::string read_head(int fd, std::string& buf);
// Reads until `buf` holds n bytes (or the connection ends).
void read_exactly(int fd, std::string& buf, std::size_t n);

}  // namespace tokend::test
