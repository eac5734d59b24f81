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
  r.content_type = "application/json";
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

namespace {

// The one table from an error's code to its answer. A forwarded call (the
// proxy, the MCP gateway) speaks for an upstream, so the failures that
// happened on the way there get names from the caller's side: the upstream
// was unreachable (502) or slow (504), the profile's policy or rate limit said
// no. Rows with an empty forwarded code answer the same either way.
struct Row {
  Errc code;
  int status;
  int forwarded_status;
  std::string_view forwarded_code;
};

constexpr Row k_rows[] = {
    {Errc::invalid_argument, 400, 400, {}},
    {Errc::login_failed, 400, 400, {}},
    {Errc::not_found, 404, 404, {}},
    {Errc::already_exists, 409, 409, {}},
    {Errc::conflict, 409, 409, {}},
    {Errc::permission, 403, 403, "policy_denied"},
    {Errc::limit_exceeded, 429, 429, "rate_limited"},
    {Errc::reauth_required, 401, 401, {}},
    {Errc::timeout, 504, 504, "upstream_timeout"},
    {Errc::transient, 503, 502, "upstream_unreachable"},
    {Errc::unavailable, 503, 503, {}},
    {Errc::protocol, 502, 502, {}},
    {Errc::config, 422, 422, {}},
    {Errc::io, 500, 500, {}},
    {Errc::database, 500, 500, {}},
    {Errc::wrong_key, 500, 500, {}},
    {Errc::corrupt, 500, 500, {}},
    {Errc::internal, 500, 500, {}},
};

}  // namespace

ErrorAnswer answer_for(Errc code, ErrorContext where) {
  for (const Row& r : k_rows) {
    if (r.code != code) continue;
    if (where == ErrorContext::forwarded && !r.forwarded_code.empty())
      return {r.forwarded_status, r.forwarded_code};
    return {r.status, errc_name(code)};
  }
  return {500, errc_name(Errc::internal)};
}

Response error_response(const Error& e, const json::Json& extra, ErrorContext where) {
  const ErrorAnswer a = answer_for(e.code, where);
  return Response::error(a.status, a.code, e.message, extra);
}

std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q) {
  return tokend::parse_query(q);
}

std::optional<std::string> decode_path(std::string_view p) {
  if (p.find('%') == std::string_view::npos) return std::string(p);  // nothing to decode
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
