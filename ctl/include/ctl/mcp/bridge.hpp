// tokenctl mcp PROFILE: a stdio MCP server that carries each JSON-RPC message
// over tokend's socket (POST /v1/mcp/{profile}) to the profile's remote MCP
// server, with a fresh token that never leaves tokend.
//
// Threads, not an event loop (tokenctl links neither libuv nor libcurl):
// the main thread reads stdin; notifications and responses are sent in the
// order they came, each request on a worker with its own keep-alive
// connection to tokend, so a slow tool call holds up nothing else; one
// thread keeps the 2025-era GET stream open. Answers, notifications and
// server requests go to stdout as they arrive, one line each, and nothing
// else ever does. On stdin EOF the requests in flight are answered first;
// SIGTERM or SIGINT cut them off. Either way the server's session is
// deleted before the bridge exits 0.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace tokend::ctl::mcp {

struct BridgeOptions {
  std::string profile;
  std::filesystem::path socket;
  // Seconds a request that needs a login waits for one before the client
  // gets an error (0: answer at once).
  std::int64_t wait_s = 0;
  // How long the first requests of a profile that has never logged in wait
  // for the login the bridge starts.
  std::int64_t first_login_wait_s = 300;
  bool open_browser = true;
  int in_fd = 0;
  int out_fd = 1;
  std::FILE* err = stderr;
};

// Runs until stdin ends or a signal. Returns the exit code: 0 after a clean
// end, 1 when the bridge could not run at all.
int run_bridge(const BridgeOptions& options);

}  // namespace tokend::ctl::mcp
