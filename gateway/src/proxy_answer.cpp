#include "gateway/proxy_answer.hpp"

#include <fmt/format.h>
#include <strings.h>

#include <charconv>

namespace tokend::gateway {

namespace {

// A proxied answer that streams: the body goes to the caller as it arrives,
// framed by the upstream's length or chunked, paced by the caller's socket
// (the upstream transfer pauses while more than a window is queued).
void stream_answer(const std::shared_ptr<ipc::Exchange>& ex, ipc::Response head,
                   const std::shared_ptr<proxy::ProxyBody>& body) {
  constexpr std::size_t k_window = 256 * 1024;
  ipc::StreamFraming framing;
  framing.kind = ipc::StreamFraming::Kind::chunked;
  if (body->length) framing = ipc::StreamFraming{ipc::StreamFraming::Kind::length, *body->length};
  auto stream = ex->start_stream(head.status, std::move(head.headers), framing);
  if (!stream) return body->cancel();
  stream->on_close([body] { body->cancel(); });
  body->attach({[stream, body](std::string_view bytes) {
                  if (!stream->send(bytes)) return false;  // the caller left: on_close cancels
                  if (stream->queued() < k_window) return true;
                  stream->on_drained([body] { body->resume(); });
                  return false;
                },
                [stream](bool complete) {
                  if (complete)
                    stream->finish();
                  else
                    stream->close();  // a cut-off body must not look complete
                }});
}

}  // namespace

ipc::Response reauth_error(const Error& e, std::string_view profile) {
  return ipc::error_response(e, {{"command", fmt::format("tokenctl login {}", profile)}});
}

Result<proxy::ProxyCall> proxy_call(const ipc::Request& req, std::string profile, std::string rest,
                                    const ipc::Peer& peer) {
  proxy::ProxyCall call;
  call.profile = std::move(profile);
  call.method = req.method;
  call.rest = std::move(rest);
  if (const auto q = req.target.find('?'); q != std::string::npos)
    call.raw_query = req.target.substr(q + 1);
  call.headers = req.headers;
  call.body = req.body;
  call.body_spool = req.body_spool;
  call.peer_uid = static_cast<std::int64_t>(peer.uid);
  call.peer_pid = static_cast<std::int64_t>(peer.pid);
  call.user = peer.user;
  call.service = peer.service;
  if (auto wait = req.header("x-tokend-retry-wait")) {
    std::int64_t n = -1;
    const auto [end, ec] = std::from_chars(wait->data(), wait->data() + wait->size(), n);
    if (ec != std::errc{} || end != wait->data() + wait->size() || n < 0 || n > 60) {
      return fail(Errc::invalid_argument,
                  "X-Tokend-Retry-Wait must be a number of seconds from 0 to 60");
    }
    call.retry_wait_s = n;
  }
  return call;
}

void respond_proxied(const std::shared_ptr<ipc::Exchange>& ex, const std::string& profile,
                     std::expected<proxy::ProxyResult, proxy::ProxyError> r) {
  if (!r) {
    const Error& e = r.error().error;
    ipc::Response res =
        e.code == Errc::reauth_required
            ? reauth_error(e, profile)
            : ipc::error_response(e, json::Json::object(), ipc::ErrorContext::forwarded);
    if (e.code == Errc::limit_exceeded && r.error().retry_after) {
      res.headers.emplace_back("Retry-After",
                               std::to_string((r.error().retry_after->count() + 999) / 1000));
    }
    const std::string_view code = ipc::answer_for(e.code, ipc::ErrorContext::forwarded).code;
    // Tells tokend's own refusals from the upstream's (whose X-Tokend-*
    // headers never pass): tokenctl mcp turns them into JSON-RPC errors.
    res.headers.emplace_back("X-Tokend-Error", std::string(code));
    return ex->respond(std::move(res));
  }
  ipc::Response res;
  res.status = r->status;
  for (auto& [k, v] : r->headers) {
    if (k.size() == 6 && ::strncasecmp(k.data(), "server", 6) == 0) continue;
    res.headers.emplace_back(std::move(k), std::move(v));
  }
  if (r->stream) return stream_answer(ex, std::move(res), r->stream);
  res.body = std::move(r->body);
  ex->respond(std::move(res));
}

}  // namespace tokend::gateway
