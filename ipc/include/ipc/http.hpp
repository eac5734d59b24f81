// The HTTP vocabulary handlers see. Beast stays inside the server's codec;
// handlers work on these plain types.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/json.hpp"

namespace tokend::net {
class Spool;  // large bodies kept in a temporary file (server side only)
}

namespace tokend::ipc {

// Who is on the other end of the socket (SO_PEERCRED / getpeereid; no uid on
// a TCP connection), and in
// server mode who the request acts for, as the front router established it
// (daemon/identity.hpp): the user, and the service acting for that user
// (empty when the user came through the trusted proxy). Both are empty in
// single-user mode.
struct Peer {
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  pid_t pid = 0;  // 0 when the platform cannot tell
  std::string user;
  std::string service;
  // A TCP peer: its address ("192.0.2.1:50000", "[::1]:50000"), for logs.
  std::string address;
  // The connection is TLS (server mode's `listen`), and the names of the
  // client certificate it verified against tls-client-ca-file: the subject
  // CN, then the DNS, email and URI subject alternative names (empty
  // without a certificate).
  bool tls = false;
  std::vector<std::string> client_cert_names;
};

using Headers = std::vector<std::pair<std::string, std::string>>;

struct Request {
  std::string method;  // as sent, e.g. "GET"
  std::string target;  // as sent, e.g. "/v1/profiles/x/token?min_valid=60"
  std::string path;    // percent-decoded path without the query
  std::vector<std::pair<std::string, std::string>> query;  // decoded
  Headers headers;
  std::string body;
  // Routes that take large bodies (the proxy): a body over the spool
  // threshold arrives here instead of in `body`.
  std::shared_ptr<net::Spool> body_spool;
  bool keep_alive = true;
  unsigned version = 11;  // 10 or 11

  [[nodiscard]] std::optional<std::string_view> header(std::string_view name) const;
  [[nodiscard]] std::optional<std::string_view> query_param(std::string_view name) const;
};

struct Response {
  int status = 200;
  // The Content-Type, when it is a string with static storage
  // ("application/json"): written without a header entry to allocate. Set
  // this or a Content-Type header, not both.
  std::string_view content_type;
  Headers headers;
  std::string body;
  bool close = false;  // close the connection after this response
  // The body holds a secret (a token): every copy is wiped once written.
  bool sensitive = false;

  static Response json(int status, const json::Json& body);
  // {"error": {"code": ..., "message": ...}} plus extra fields.
  static Response error(int status, std::string_view code, std::string_view message,
                        const json::Json& extra = json::Json::object());
};

// Where an error is answered: the API's own requests, or a forwarded call
// (proxy, MCP gateway), whose failures on the way upstream have their own names.
enum class ErrorContext { api, forwarded };

// The HTTP status and the "code" an error is answered with.
struct ErrorAnswer {
  int status = 500;
  std::string_view code;
};
ErrorAnswer answer_for(Errc code, ErrorContext where = ErrorContext::api);

// {"error": {"code", "message", ...extra}} with the status answer_for gives.
Response error_response(const Error& e, const json::Json& extra = json::Json::object(),
                        ErrorContext where = ErrorContext::api);

// Splits "a=b&c=d", percent-decoding; nullopt on malformed escapes.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q);
// Percent-decodes a path; nullopt on malformed escapes or an encoded '/' or NUL
// (which would let a caller smuggle separators past the router).
std::optional<std::string> decode_path(std::string_view p);

}  // namespace tokend::ipc
