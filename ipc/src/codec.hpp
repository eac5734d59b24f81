// HTTP/1.1 on plain buffers: requests parsed out of the bytes a connection
// has read, answers turned into the bytes it writes. No socket, no loop, no
// clock: the connection (connection.hpp) moves the bytes and keeps the time,
// so everything here can be tested on strings.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/http.hpp"
#include "ipc/router.hpp"

namespace tokend::ipc::codec {

struct DecodeLimits {
  std::size_t max_header_bytes = 16 * 1024;
  std::uint64_t max_body_bytes = 1024 * 1024;             // ordinary routes
  std::uint64_t max_upload_bytes = 256ULL * 1024 * 1024;  // routes that take large bodies
  // A large body is kept in memory up to this, then in a spool.
  std::size_t spool_threshold = 1024 * 1024;
};

// Why the bytes read cannot be served: the status and message of the answer,
// after which the connection closes (the rest of the stream cannot be trusted).
struct Refusal {
  int status = 400;
  std::string_view message;
};

struct Decoded {
  enum class Kind {
    need_more,  // no complete request yet; what was read is kept
    request,    // `request` holds the next request
    refused,    // `refusal` says what to answer
  };
  Kind kind = Kind::need_more;
  Request request;  // method, target, version, keep_alive, headers, body or body_spool
  Refusal refusal;
};

// Reads requests one after another out of a connection's input. A request
// whose body is over the ordinary limit is allowed the upload limit only if
// its route takes large bodies; such a body goes to a spool (a temporary
// file) once past the spool threshold.
class RequestDecoder {
 public:
  // Whether the route of `method` on the decoded `path` takes large bodies.
  // Asked once per request, and only for a body over the ordinary limit, so
  // ordinary requests are not routed twice.
  using LargeBodyRoute = std::function<bool(std::string_view method, std::string_view path)>;

  explicit RequestDecoder(LargeBodyRoute large_body_route);
  ~RequestDecoder();
  RequestDecoder(const RequestDecoder&) = delete;
  RequestDecoder& operator=(const RequestDecoder&) = delete;

  // Parses what it can of `in` and erases the bytes it used. A request that
  // is complete is returned at once; bytes after it (pipelined requests) stay
  // in `in` for the next call. `limits` may change between requests.
  Decoded decode(std::string& in, const DecodeLimits& limits);

  // The request being read goes to a route that takes large bodies.
  [[nodiscard]] bool large_body() const;

  // Forgets a partly read request.
  void reset();

 private:
  struct State;
  std::unique_ptr<State> m_state;
};

// 1xx, 204 and 304 carry no body and no Content-Length (RFC 9110 §8.6).
bool bodiless(int status);

// The status line and header of a whole answer to a request of HTTP version
// `version` (10 or 11), appended to `out` (a buffer the caller reuses).
void encode_head(const Response& response, unsigned version, bool keep_alive, std::string& out);
// The whole answer: its head and body (wiped when sensitive).
std::string encode_response(Response response, unsigned version, bool keep_alive);

// How a streamed body can be delimited for a request of `version`: HTTP/1.0
// has no chunked coding, so such a peer gets a close-delimited body.
StreamFraming framing_for(StreamFraming wanted, unsigned version);
// The status line and header of a streamed answer; the body follows in
// pieces (encode_chunk for a chunked one).
std::string encode_stream_head(int status, const Headers& headers, const StreamFraming& framing,
                               unsigned version, bool keep_alive);
// One piece of a chunked body; empty input gives an empty string, since an
// empty chunk would end the body.
std::string encode_chunk(std::string_view bytes);
inline constexpr std::string_view k_last_chunk = "0\r\n\r\n";

// The answer to a request that is refused before any handler sees it
// (parse errors, limits, timeouts, denied peers, too many connections); it
// asks for the connection to be closed.
Response refusal_answer(int status, std::string_view message);

// Fills `request.path` and `request.query` from its target; the 400 answer
// when the target is not an absolute path or has a malformed escape.
std::optional<Response> resolve_target(Request& request);

// The answer when the router found no handler: 405 with Allow when the path
// exists for other methods (501 for a method nobody knows), 404 otherwise.
Response no_route_answer(std::string_view method, const std::vector<std::string>& allowed);

}  // namespace tokend::ipc::codec
