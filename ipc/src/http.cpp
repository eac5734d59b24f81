#include "ipc/http.hpp"

#include <strings.h>

#include "core/encoding.hpp"

namespace tokend::ipc {

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k.size() == name.size() && ::strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  }
  return std::nullopt;
}

std::optional<std::string_view> Request::query_param(std::string_view name) const {
  for (const auto& [k, v] : query) {
    if (k == name) return v;
  }
  return std::nullopt;
}

Response Response::json(int status, const json::Json& body) {
  Response r;
  r.status = status;
  r.headers.emplace_back("Content-Type", "application/json");
  r.body = body.dump(-1, ' ', false, json::Json::error_handler_t::replace);
  r.body += '\n';
  return r;
}

Response Response::error(int status, std::string_view code, std::string_view message,
                         const json::Json& extra) {
  json::Json err = {{"code", code}, {"message", message}};
  for (const auto& [k, v] : extra.items()) err[k] = v;
  return json(status, {{"error", err}});
}

int status_for(Errc code) {
  switch (code) {
    case Errc::invalid_argument:
    case Errc::login_failed:
      return 400;
    case Errc::not_found:
      return 404;
    case Errc::already_exists:
    case Errc::conflict:
      return 409;
    case Errc::permission:
      return 403;
    case Errc::limit_exceeded:
      return 429;
    case Errc::reauth_required:
      return 401;
    case Errc::timeout:
      return 504;
    case Errc::transient:
    case Errc::unavailable:
      return 503;
    case Errc::protocol:
      return 502;
    case Errc::config:
      return 422;
    case Errc::io:
    case Errc::database:
    case Errc::wrong_key:
    case Errc::corrupt:
    case Errc::internal:
      return 500;
  }
  return 500;
}

std::string_view error_code_name(Errc code) {
  return errc_name(code);
}

Response error_response(const Error& e, const json::Json& extra) {
  return Response::error(status_for(e.code), error_code_name(e.code), e.message, extra);
}

std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q) {
  return tokend::parse_query(q);
}

std::optional<std::string> decode_path(std::string_view p) {
  auto d = tokend::percent_decode(p, false);
  if (!d) return std::nullopt;
  // An encoded slash or NUL changes the meaning of the path: refuse.
  for (std::size_t i = 0; i + 2 < p.size(); ++i) {
    if (p[i] == '%' && p[i + 1] == '2' && (p[i + 2] == 'f' || p[i + 2] == 'F')) return std::nullopt;
    if (p[i] == '%' && p[i + 1] == '0' && p[i + 2] == '0') return std::nullopt;
  }
  return d;
}

}  // namespace tokend::ipc
