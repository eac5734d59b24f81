#include "codec.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/write.hpp>  // operator<< on a head
#include <charconv>
#include <cstddef>
#include <iterator>
#include <sstream>

#include "core/secret.hpp"
#include "net/spool.hpp"

namespace tokend::ipc::codec {

namespace http = boost::beast::http;
namespace asio = boost::asio;

namespace {

constexpr std::string_view k_header_too_large = "request header is larger than the limit";
constexpr std::string_view k_body_too_large = "request body is larger than the limit";
constexpr std::string_view k_spool_failed =
    "the request body could not be kept in a temporary file";

// Which answer a parse error gets.
Refusal refusal_for_parse_error(const boost::system::error_code& ec) {
  if (ec == http::error::header_limit) return {431, k_header_too_large};
  if (ec == http::error::body_limit) return {413, k_body_too_large};
  if (ec == http::error::buffer_overflow) return {431, k_header_too_large};
  return {400, "malformed HTTP request"};
}

Decoded refused(Refusal refusal) {
  Decoded d;
  d.kind = Decoded::Kind::refused;
  d.refusal = refusal;
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------
// RequestDecoder

// Beast's parser, writing the request line, the fields and the body straight
// into our Request: no field container to fill and copy out of (the socket
// API's hot path; Beast's own request_parser cost a quarter of a token
// request's instructions).
class RequestParser final : public http::basic_parser<true> {
 public:
  Request& request() { return m_request; }
  // A Transfer-Encoding field was sent.
  [[nodiscard]] bool has_transfer_encoding() const { return m_transfer_encoding; }

 private:
  static constexpr std::size_t k_reserve_cap = 64 * 1024;

  void on_request_impl(http::verb /*method*/, boost::beast::string_view method_str,
                       boost::beast::string_view target, int version,
                       boost::system::error_code& /*ec*/) override {
    m_request.method.assign(method_str.data(), method_str.size());
    m_request.target.assign(target.data(), target.size());
    m_request.version = static_cast<unsigned>(version);
    m_request.headers.reserve(8);
  }
  void on_response_impl(int /*code*/, boost::beast::string_view /*reason*/, int /*version*/,
                        boost::system::error_code& ec) override {
    ec = http::error::bad_version;  // never called for a request parser
  }
  void on_field_impl(http::field name, boost::beast::string_view name_string,
                     boost::beast::string_view value, boost::system::error_code& /*ec*/) override {
    if (name == http::field::transfer_encoding) m_transfer_encoding = true;
    m_request.headers.emplace_back(std::string(name_string.data(), name_string.size()),
                                   std::string(value.data(), value.size()));
  }
  void on_header_impl(boost::system::error_code& /*ec*/) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& content_length,
                         boost::system::error_code& /*ec*/) override {
    // The announced length was checked against the body limit already; a
    // large one is spooled as it arrives, so reserve only so much.
    if (content_length) {
      m_request.body.reserve(
          static_cast<std::size_t>(std::min<std::uint64_t>(*content_length, k_reserve_cap)));
    }
  }
  std::size_t on_body_impl(boost::beast::string_view body,
                           boost::system::error_code& /*ec*/) override {
    m_request.body.append(body.data(), body.size());
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t /*size*/, boost::beast::string_view /*extensions*/,
                            boost::system::error_code& /*ec*/) override {}
  std::size_t on_chunk_body_impl(std::uint64_t /*remain*/, boost::beast::string_view body,
                                 boost::system::error_code& /*ec*/) override {
    m_request.body.append(body.data(), body.size());
    return body.size();
  }
  void on_finish_impl(boost::system::error_code& /*ec*/) override {}

  Request m_request;
  bool m_transfer_encoding = false;
};

struct RequestDecoder::State {
  using Parser = RequestParser;

  LargeBodyRoute large_body_route;
  // One parser per request; none between requests.
  std::optional<Parser> parser;
  bool body_checked = false;  // the route was asked about a large body
  bool large_body = false;
  std::shared_ptr<net::Spool> spool;

  void begin(const DecodeLimits& limits);
  std::optional<Refusal> check_body(const DecodeLimits& limits);
  std::optional<Refusal> finish(Request& req);
};

void RequestDecoder::State::begin(const DecodeLimits& limits) {
  parser.emplace();
  parser->header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
  // The route decides the real limit once the header is in (check_body).
  parser->body_limit(std::max<std::uint64_t>(limits.max_body_bytes, limits.max_upload_bytes));
  parser->eager(true);
  body_checked = false;
  large_body = false;
  spool.reset();
}

// With the header in: the body limit of the route, and a large body moved
// to a spool as it arrives.
std::optional<Refusal> RequestDecoder::State::check_body(const DecodeLimits& limits) {
  const Request& msg = parser->request();
  const std::uint64_t have = (spool ? spool->size() : 0) + msg.body.size();
  const auto announced = parser->content_length();
  const std::uint64_t small = limits.max_body_bytes;
  if (!body_checked && (have > small || (announced && *announced > small))) {
    body_checked = true;
    const std::string_view target = msg.target;
    const std::string_view method = msg.method;
    const auto qpos = target.find('?');
    if (auto path = decode_path(target.substr(0, qpos)); path && large_body_route) {
      large_body = large_body_route(method, *path);
    }
  }
  const std::uint64_t limit = large_body ? limits.max_upload_bytes : small;
  if (have > limit || (announced && *announced > limit)) return Refusal{413, k_body_too_large};
  if (!large_body) return std::nullopt;
  auto& body = parser->request().body;
  if (body.size() < limits.spool_threshold) return std::nullopt;
  if (!spool) {
    auto created = net::Spool::create();
    if (!created) {
      spdlog::error("{}", created.error().message);
      return Refusal{500, k_spool_failed};
    }
    spool = std::move(*created);
  }
  if (auto r = spool->append(body); !r) return Refusal{500, k_spool_failed};
  // Also drop the capacity Beast reserved for the announced length.
  std::string().swap(body);
  return std::nullopt;
}

// The parsed message as the plain Request handlers see.
std::optional<Refusal> RequestDecoder::State::finish(Request& req) {
  // RFC 7230 §3.3.3: a Transfer-Encoding whose last coding is not chunked
  // leaves the body length unknowable; answer 400 and close rather than read
  // the rest as another request (request smuggling).
  if (parser->has_transfer_encoding() && !parser->chunked()) {
    return Refusal{400, "Transfer-Encoding must end with chunked"};
  }
  const bool keep_alive = parser->keep_alive();
  req = std::move(parser->request());
  req.keep_alive = keep_alive;
  parser.reset();
  if (spool) {
    if (auto r = spool->append(req.body); !r) return Refusal{500, k_spool_failed};
    secure_wipe(req.body);
    std::string().swap(req.body);
    req.body_spool = std::move(spool);
  }
  return std::nullopt;
}

RequestDecoder::RequestDecoder(LargeBodyRoute large_body_route)
    : m_state(std::make_unique<State>()) {
  m_state->large_body_route = std::move(large_body_route);
}

RequestDecoder::~RequestDecoder() = default;

Decoded RequestDecoder::decode(std::string& in, const DecodeLimits& limits) {
  auto& s = *m_state;
  while (!in.empty()) {
    if (!s.parser) s.begin(limits);
    boost::system::error_code ec;
    const std::size_t used = s.parser->put(asio::buffer(in.data(), in.size()), ec);
    in.erase(0, used);
    if (ec && ec != http::error::need_more) {
      reset();
      return refused(refusal_for_parse_error(ec));
    }
    if (s.parser->is_header_done()) {
      if (auto refusal = s.check_body(limits)) {
        reset();
        return refused(*refusal);
      }
    }
    if (ec == http::error::need_more) {
      // Beast keeps no partial header: until it is complete the bytes stay
      // in `in`, so that is where an oversized one shows.
      if (in.size() > limits.max_header_bytes && !s.parser->is_header_done()) {
        reset();
        return refused({431, k_header_too_large});
      }
      break;
    }
    if (!s.parser->is_done()) continue;
    Decoded d;
    if (auto refusal = s.finish(d.request)) {
      reset();
      return refused(*refusal);
    }
    d.kind = Decoded::Kind::request;
    return d;
  }
  return {};
}

bool RequestDecoder::large_body() const {
  return m_state->parser && m_state->large_body;
}

void RequestDecoder::reset() {
  m_state->parser.reset();
  m_state->spool.reset();
  m_state->body_checked = false;
  m_state->large_body = false;
}

// ---------------------------------------------------------------------------
// Answers

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return (x | 0x20) == (y | 0x20);  // header names are ASCII tokens
         });
}

template <class Int>
void append_number(std::string& out, Int n) {
  char digits[24];
  const auto end = std::to_chars(std::begin(digits), std::end(digits), n).ptr;
  out.append(std::begin(digits), end);
}

// A header a handler may not set itself: the framing is ours.
bool framing_header(std::string_view name) {
  if (name.empty()) return false;
  switch (name.front()) {  // most names are ruled out by their first letter
    case 'c':
    case 'C':
      return iequals(name, "content-length") || iequals(name, "connection");
    case 't':
    case 'T':
      return iequals(name, "transfer-encoding");
    default:
      return false;
  }
}

// A name or value that would end the header early or split it (defence in
// depth: values from upstreams were checked where they came in).
bool breaks_head(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return c == '\r' || c == '\n' || c == '\0'; });
}

}  // namespace

// The head is written by hand: a plain answer is the socket API's hot path,
// and Beast's field container costs an allocation per header on top of the
// serializer. Beast still names the status (the same reason phrases) and
// frames streamed heads below.
bool bodiless(int status) {
  return (status >= 100 && status < 200) || status == 204 || status == 304;
}

void encode_head(const Response& response, unsigned version, bool keep_alive, std::string& out) {
  using namespace std::string_view_literals;
  const int status = response.status;
  out.reserve(out.size() + 128 + response.headers.size() * 48);
  if (status == 200 && version != 10) {
    out += "HTTP/1.1 200 OK\r\nServer: tokend\r\n"sv;  // most answers, in one piece
  } else {
    out += version == 10 ? "HTTP/1.0 "sv : "HTTP/1.1 "sv;
    append_number(out, status);
    out += ' ';
    const auto reason = http::obsolete_reason(static_cast<http::status>(status));
    out.append(reason.data(), reason.size());
    out += "\r\nServer: tokend\r\n"sv;
  }
  if (!response.content_type.empty() && !breaks_head(response.content_type)) {
    out += "Content-Type: "sv;
    out += response.content_type;
    out += "\r\n"sv;
  }
  for (const auto& [name, value] : response.headers) {
    if (framing_header(name)) continue;
    if (name.empty() || breaks_head(name) || breaks_head(value)) {
      spdlog::warn("an answer's header {} was dropped: its name or value holds CR, LF or NUL",
                   breaks_head(name) ? std::string("(unprintable)") : name);
      continue;
    }
    out += name;
    out += ": "sv;
    out += value;
    out += "\r\n"sv;
  }
  if (!bodiless(status)) {
    out += "Content-Length: "sv;
    append_number(out, response.body.size());
    out += "\r\n"sv;
  }
  if (version == 10 && keep_alive) out += "Connection: keep-alive\r\n"sv;
  if (version != 10 && !keep_alive) out += "Connection: close\r\n"sv;
  out += "\r\n"sv;
}

std::string encode_response(Response response, unsigned version, bool keep_alive) {
  std::string out;
  out.reserve(128 + response.body.size() + response.headers.size() * 48);
  encode_head(response, version, keep_alive, out);
  if (!bodiless(response.status)) out += response.body;
  if (response.sensitive) secure_wipe(response.body);
  return out;
}

StreamFraming framing_for(StreamFraming wanted, unsigned version) {
  if (wanted.kind == StreamFraming::Kind::chunked && version == 10) {
    wanted.kind = StreamFraming::Kind::close;
  }
  return wanted;
}

std::string encode_stream_head(int status, const Headers& headers, const StreamFraming& framing,
                               unsigned version, bool keep_alive) {
  http::response<http::empty_body> res{static_cast<http::status>(status),
                                       version == 10 ? 10U : 11U};
  res.set(http::field::server, "tokend");
  for (const auto& [k, v] : headers) res.insert(k, v);
  switch (framing.kind) {
    case StreamFraming::Kind::close:
      break;
    case StreamFraming::Kind::chunked:
      res.chunked(true);
      break;
    case StreamFraming::Kind::length:
      res.content_length(framing.length);
      break;
  }
  res.keep_alive(keep_alive);
  std::ostringstream os;
  os << res.base();
  return os.str();
}

std::string encode_chunk(std::string_view bytes) {
  if (bytes.empty()) return {};
  std::string chunk = fmt::format("{:x}\r\n", bytes.size());
  chunk.reserve(chunk.size() + bytes.size() + 2);
  chunk.append(bytes);
  chunk.append("\r\n");
  return chunk;
}

Response refusal_answer(int status, std::string_view message) {
  const std::string_view code = status == 431   ? "header_too_large"
                                : status == 413 ? "body_too_large"
                                : status == 408 ? "request_timeout"
                                : status == 403 ? "forbidden"
                                : status == 503 ? "unavailable"
                                : status >= 500 ? "internal"  // our own failure, not the caller's
                                                : "bad_request";
  Response r = Response::error(status, code, message);
  r.close = true;
  return r;
}

std::optional<Response> resolve_target(Request& request) {
  if (request.target.empty() || request.target.front() != '/') {
    return Response::error(400, "bad_request", "request target must be an absolute path");
  }
  const std::string_view target(request.target);
  const auto qpos = target.find('?');
  auto path = decode_path(target.substr(0, qpos));
  if (!path) {
    return Response::error(400, "bad_request", "request path has a malformed or forbidden escape");
  }
  request.path = std::move(*path);
  if (qpos == std::string_view::npos) return std::nullopt;
  auto query = parse_query(target.substr(qpos + 1));
  if (!query) return Response::error(400, "bad_request", "query string has a malformed escape");
  request.query = std::move(*query);
  return std::nullopt;
}

Response no_route_answer(std::string_view method, const std::vector<std::string>& allowed) {
  if (allowed.empty())
    return Response::error(404, "not_found", "no such endpoint; see docs/API.md");
  std::string allow;
  for (const auto& m : allowed) allow += (allow.empty() ? "" : ", ") + m;
  static constexpr std::string_view k_methods[] = {"GET",    "HEAD",  "PUT",    "POST",
                                                   "DELETE", "PATCH", "OPTIONS"};
  const bool known =
      std::find(std::begin(k_methods), std::end(k_methods), method) != std::end(k_methods);
  Response r =
      known ? Response::error(405, "method_not_allowed",
                              fmt::format("{} is not allowed on this path; use {}", method, allow))
            : Response::error(501, "not_implemented", "unknown HTTP method");
  r.headers.emplace_back("Allow", allow);
  return r;
}

}  // namespace tokend::ipc::codec
