// The server's HTTP/1.1 codec on plain strings: no socket, no loop.
#include "codec.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>
#include <vector>

#include "net/spool.hpp"

using namespace tokend;
using ipc::codec::Decoded;
using ipc::codec::DecodeLimits;
using ipc::codec::RequestDecoder;

namespace {

DecodeLimits small_limits() {
  DecodeLimits l;
  l.max_header_bytes = 1024;
  l.max_body_bytes = 64;
  l.max_upload_bytes = 4096;
  l.spool_threshold = 256;
  return l;
}

// Decodes every complete request now in `in`; a refusal ends the list.
std::vector<Decoded> drain(RequestDecoder& d, std::string& in, const DecodeLimits& limits) {
  std::vector<Decoded> out;
  for (;;) {
    auto got = d.decode(in, limits);
    if (got.kind == Decoded::Kind::need_more) return out;
    const bool refused = got.kind == Decoded::Kind::refused;
    out.push_back(std::move(got));
    if (refused) return out;
  }
}

Decoded decode_all(std::string in, const DecodeLimits& limits = small_limits(),
                   RequestDecoder::LargeBodyRoute large = nullptr) {
  RequestDecoder d(std::move(large));
  return d.decode(in, limits);
}

std::string read_spool(const net::Spool& spool) {
  std::string out(spool.size(), '\0');
  auto n = spool.read_at(0, out.data(), out.size());
  REQUIRE(n);
  out.resize(*n);
  return out;
}

const std::string k_pipeline =
    "GET /v1/items?q=a%20b HTTP/1.1\r\nHost: x\r\n\r\n"
    "POST /v1/echo HTTP/1.1\r\nContent-Length: 5\r\nX-Tag: two\r\n\r\nhello"
    "POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    "GET /last HTTP/1.0\r\n\r\n";

void check_pipeline(const std::vector<Decoded>& got) {
  REQUIRE(got.size() == 4);
  for (const auto& d : got) REQUIRE(d.kind == Decoded::Kind::request);
  CHECK(got[0].request.method == "GET");
  CHECK(got[0].request.target == "/v1/items?q=a%20b");
  CHECK(got[0].request.header("host") == "x");
  CHECK(got[0].request.body.empty());
  CHECK(got[1].request.method == "POST");
  CHECK(got[1].request.body == "hello");
  CHECK(got[1].request.header("X-Tag") == "two");
  CHECK(got[2].request.body == "hello world");
  CHECK(got[2].request.keep_alive);
  CHECK(got[3].request.target == "/last");
  CHECK(got[3].request.version == 10);
  CHECK_FALSE(got[3].request.keep_alive);
}

}  // namespace

TEST_CASE("pipelined requests split at every byte come out whole and in order", "[ipc][codec]") {
  const auto limits = small_limits();
  for (std::size_t split = 0; split <= k_pipeline.size(); ++split) {
    CAPTURE(split);
    RequestDecoder d(nullptr);
    std::string in = k_pipeline.substr(0, split);
    auto got = drain(d, in, limits);
    in += k_pipeline.substr(split);
    auto rest = drain(d, in, limits);
    for (auto& r : rest) got.push_back(std::move(r));
    check_pipeline(got);
    CHECK(in.empty());
  }
}

TEST_CASE("pipelined requests fed one byte at a time", "[ipc][codec]") {
  const auto limits = small_limits();
  RequestDecoder d(nullptr);
  std::string in;
  std::vector<Decoded> got;
  for (const char c : k_pipeline) {
    in += c;
    for (auto& r : drain(d, in, limits)) got.push_back(std::move(r));
  }
  check_pipeline(got);
}

TEST_CASE("a header over the limit is refused with 431", "[ipc][codec]") {
  const auto limits = small_limits();
  const std::string big(limits.max_header_bytes, 'a');
  SECTION("complete") {
    auto got = decode_all("GET / HTTP/1.1\r\nX-Big: " + big + "\r\n\r\n");
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 431);
  }
  SECTION("still arriving") {
    auto got = decode_all("GET / HTTP/1.1\r\nX-Big: " + big);
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 431);
  }
  SECTION("under the limit is served") {
    auto got = decode_all("GET / HTTP/1.1\r\nX-Big: " + big.substr(0, 900) + "\r\n\r\n");
    REQUIRE(got.kind == Decoded::Kind::request);
    CHECK(got.request.header("x-big")->size() == 900);
  }
}

TEST_CASE("a body over the limit is refused with 413 unless its route takes uploads",
          "[ipc][codec]") {
  const auto limits = small_limits();
  std::vector<std::string> asked;
  auto large = [&](std::string_view method, std::string_view path) {
    asked.push_back(std::string(method) + " " + std::string(path));
    return path.starts_with("/v1/proxy/");
  };

  SECTION("announced length over the ordinary limit: refused before the body arrives") {
    auto got = decode_all("POST /v1/echo HTTP/1.1\r\nContent-Length: 65\r\n\r\n", limits, large);
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 413);
    CHECK(asked == std::vector<std::string>{"POST /v1/echo"});
  }
  SECTION("at the ordinary limit: the route is not asked") {
    auto got =
        decode_all("POST /v1/echo HTTP/1.1\r\nContent-Length: 64\r\n\r\n" + std::string(64, 'b'),
                   limits, large);
    REQUIRE(got.kind == Decoded::Kind::request);
    CHECK(got.request.body.size() == 64);
    CHECK(asked.empty());
  }
  SECTION("a large-body route takes up to the upload limit, asked with the decoded path") {
    RequestDecoder d(large);
    std::string in = "POST /v1/proxy/a%20b HTTP/1.1\r\nContent-Length: 200\r\n\r\n";
    auto got = d.decode(in, limits);
    CHECK(got.kind == Decoded::Kind::need_more);
    CHECK(d.large_body());
    in += std::string(200, 'c');
    got = d.decode(in, limits);
    REQUIRE(got.kind == Decoded::Kind::request);
    CHECK(got.request.body == std::string(200, 'c'));
    CHECK_FALSE(got.request.body_spool);
    CHECK(asked == std::vector<std::string>{"POST /v1/proxy/a b"});
    CHECK_FALSE(d.large_body());
  }
  SECTION("over the upload limit even on a large-body route") {
    auto got =
        decode_all("POST /v1/proxy/x HTTP/1.1\r\nContent-Length: 4097\r\n\r\n", limits, large);
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 413);
  }
  SECTION("a chunked body with no announced length, over the ordinary limit") {
    auto got = decode_all("POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n" +
                              std::string(65, 'd') + "\r\n0\r\n\r\n",
                          limits, large);
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 413);
  }
}

TEST_CASE("a chunked upload to a large-body route goes to a spool past the threshold",
          "[ipc][codec]") {
  const auto limits = small_limits();
  RequestDecoder d([](std::string_view, std::string_view) { return true; });
  std::string body;
  std::string in = "POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
  for (int i = 0; i < 10; ++i) {
    const std::string piece(100, static_cast<char>('a' + i));
    body += piece;
    in += "64\r\n" + piece + "\r\n";
  }
  in += "0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
  std::vector<Decoded> got;
  // In pieces, as reads would bring it.
  std::string pending;
  for (std::size_t at = 0; at < in.size(); at += 37) {
    pending += in.substr(at, 37);
    for (auto& r : drain(d, pending, limits)) got.push_back(std::move(r));
  }
  REQUIRE(got.size() == 2);
  REQUIRE(got[0].kind == Decoded::Kind::request);
  CHECK(got[0].request.body.empty());
  REQUIRE(got[0].request.body_spool);
  CHECK(got[0].request.body_spool->size() == body.size());
  CHECK(read_spool(*got[0].request.body_spool) == body);
  REQUIRE(got[1].kind == Decoded::Kind::request);
  CHECK(got[1].request.target == "/next");
  CHECK_FALSE(got[1].request.body_spool);
}

TEST_CASE("malformed requests are refused with 400", "[ipc][codec]") {
  for (const std::string bad : {
           "GARBAGE\r\n\r\n",
           "GET / HTTP/9.9\r\n\r\n",
           "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
           "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
           "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
       }) {
    CAPTURE(bad);
    auto got = decode_all(bad);
    REQUIRE(got.kind == Decoded::Kind::refused);
    CHECK(got.refusal.status == 400);
  }
}

TEST_CASE("a Transfer-Encoding that does not end with chunked is refused", "[ipc][codec]") {
  auto got = decode_all("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc");
  REQUIRE(got.kind == Decoded::Kind::refused);
  CHECK(got.refusal.status == 400);
  CHECK(got.refusal.message == "Transfer-Encoding must end with chunked");
}

TEST_CASE("after a refusal the decoder starts afresh", "[ipc][codec]") {
  const auto limits = small_limits();
  RequestDecoder d(nullptr);
  std::string in = "GARBAGE\r\n\r\n";
  REQUIRE(d.decode(in, limits).kind == Decoded::Kind::refused);
  in = "GET /ok HTTP/1.1\r\n\r\n";
  auto got = d.decode(in, limits);
  REQUIRE(got.kind == Decoded::Kind::request);
  CHECK(got.request.target == "/ok");
}

TEST_CASE("answers are serialised with their framing", "[ipc][codec]") {
  ipc::Response r;
  r.status = 201;
  r.headers.emplace_back("X-A", "1");
  r.body = "hello";
  const auto kept = ipc::codec::encode_response(r, 11, true);
  CHECK(kept.starts_with("HTTP/1.1 201 Created\r\n"));
  CHECK(kept.find("Server: tokend\r\n") != std::string::npos);
  CHECK(kept.find("X-A: 1\r\n") != std::string::npos);
  CHECK(kept.find("Content-Length: 5\r\n") != std::string::npos);
  CHECK(kept.find("Connection: close") == std::string::npos);
  CHECK(kept.ends_with("\r\n\r\nhello"));

  CHECK(ipc::codec::encode_response(r, 11, false).find("Connection: close\r\n") !=
        std::string::npos);
  const auto old = ipc::codec::encode_response(r, 10, true);
  CHECK(old.starts_with("HTTP/1.0 201"));
  CHECK(old.find("Connection: keep-alive\r\n") != std::string::npos);
}

TEST_CASE("an answer's framing is the codec's, whatever headers a handler set", "[ipc][codec]") {
  ipc::Response r;
  r.status = 200;
  r.headers = {{"content-length", "999"},
               {"Transfer-Encoding", "chunked"},
               {"Connection", "upgrade"},
               {"X-Split", "a\r\nInjected: 1"},
               {"X-Nul", std::string("a\0b", 3)},
               {"X\nBad", "v"},
               {"X-Kept", "v"}};
  r.body = "abc";
  const auto out = ipc::codec::encode_response(r, 11, true);
  CHECK(out == "HTTP/1.1 200 OK\r\nServer: tokend\r\nX-Kept: v\r\nContent-Length: 3\r\n\r\nabc");

  // 1xx, 204 and 304 have neither a body nor a Content-Length.
  ipc::Response none;
  none.status = 204;
  none.body = "dropped";
  CHECK(ipc::codec::encode_response(none, 11, false) ==
        "HTTP/1.1 204 No Content\r\nServer: tokend\r\nConnection: close\r\n\r\n");
  none.status = 304;
  CHECK(ipc::codec::encode_response(none, 10, false) ==
        "HTTP/1.0 304 Not Modified\r\nServer: tokend\r\n\r\n");

  // A sensitive answer (a token) is framed like any other; the copies are wiped.
  ipc::Response secret;
  secret.sensitive = true;
  secret.body = "tok";
  CHECK(ipc::codec::encode_response(std::move(secret), 11, true).ends_with("\r\n\r\ntok"));
}

TEST_CASE("streamed answers: head, chunks and the HTTP/1.0 fallback", "[ipc][codec]") {
  using K = ipc::StreamFraming::Kind;
  const ipc::StreamFraming chunked{K::chunked, 0};
  CHECK(ipc::codec::framing_for(chunked, 11).kind == K::chunked);
  CHECK(ipc::codec::framing_for(chunked, 10).kind == K::close);
  CHECK(ipc::codec::framing_for({K::length, 7}, 10).kind == K::length);

  const auto head = ipc::codec::encode_stream_head(200, {{"Content-Type", "text/event-stream"}},
                                                   chunked, 11, true);
  CHECK(head.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(head.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
  CHECK(head.find("Content-Type: text/event-stream\r\n") != std::string::npos);
  CHECK(head.ends_with("\r\n\r\n"));

  const auto sized = ipc::codec::encode_stream_head(200, {}, {K::length, 7}, 11, true);
  CHECK(sized.find("Content-Length: 7\r\n") != std::string::npos);
  const auto sse = ipc::codec::encode_stream_head(200, {}, {K::close, 0}, 11, false);
  CHECK(sse.find("Connection: close\r\n") != std::string::npos);
  CHECK(sse.find("Content-Length") == std::string::npos);
  CHECK(sse.find("Transfer-Encoding") == std::string::npos);

  CHECK(ipc::codec::encode_chunk("hello") == "5\r\nhello\r\n");
  CHECK(ipc::codec::encode_chunk(std::string(26, 'z')) == "1a\r\n" + std::string(26, 'z') + "\r\n");
  CHECK(ipc::codec::encode_chunk("").empty());

  // A chunked head, two chunks and the last chunk decode back to the body.
  RequestDecoder d(nullptr);
  std::string in = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   ipc::codec::encode_chunk("ab") + ipc::codec::encode_chunk("cde") +
                   std::string(ipc::codec::k_last_chunk);
  auto got = d.decode(in, small_limits());
  REQUIRE(got.kind == Decoded::Kind::request);
  CHECK(got.request.body == "abcde");
}

TEST_CASE("refusals, targets and unrouted requests get their answers", "[ipc][codec]") {
  struct Case {
    int status;
    std::string_view code;
  };
  for (const auto& c :
       {Case{431, "header_too_large"}, Case{413, "body_too_large"}, Case{408, "request_timeout"},
        Case{403, "forbidden"}, Case{503, "unavailable"}, Case{400, "bad_request"},
        Case{500, "internal"}}) {
    const auto r = ipc::codec::refusal_answer(c.status, "why");
    CHECK(r.status == c.status);
    CHECK(r.close);
    CHECK(r.body.find("\"code\":\"" + std::string(c.code) + "\"") != std::string::npos);
    CHECK(r.body.find("\"message\":\"why\"") != std::string::npos);
  }

  ipc::Request req;
  req.target = "/v1/profiles/a%2Db/token?min_valid=60&x=%41";
  CHECK_FALSE(ipc::codec::resolve_target(req));
  CHECK(req.path == "/v1/profiles/a-b/token");
  CHECK(req.query_param("min_valid") == "60");
  CHECK(req.query_param("x") == "A");
  for (const std::string bad : {"v1/x", "", "/a%2Fb", "/a%zz", "/ok?q=%g0"}) {
    CAPTURE(bad);
    ipc::Request r;
    r.target = bad;
    const auto answer = ipc::codec::resolve_target(r);
    REQUIRE(answer);
    CHECK(answer->status == 400);
  }

  const auto not_allowed = ipc::codec::no_route_answer("DELETE", {"GET", "PUT"});
  CHECK(not_allowed.status == 405);
  bool has_allow = false;
  for (const auto& [k, v] : not_allowed.headers) has_allow |= k == "Allow" && v == "GET, PUT";
  CHECK(has_allow);
  CHECK(ipc::codec::no_route_answer("BREW", {"GET"}).status == 501);
  CHECK(ipc::codec::no_route_answer("GET", {}).status == 404);
}
