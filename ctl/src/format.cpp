#include "ctl/format.hpp"

#include <fmt/format.h>

#include <ctime>

namespace tokend::ctl {

namespace {

std::string str(const json::Json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

std::optional<std::int64_t> opt_int(const json::Json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}

std::string paint(std::string_view text, std::string_view code, bool colour) {
  if (!colour) return std::string(text);
  return fmt::format("\x1b[{}m{}\x1b[0m", code, text);
}

std::string_view state_colour(std::string_view state) {
  if (state == "valid") return "32";                                   // green
  if (state == "refreshing" || state == "login_pending") return "36";  // cyan
  if (state == "backoff" || state == "expired") return "33";           // yellow
  if (state == "reauth_required") return "31";                         // red
  return "2";                                                          // dim
}

std::string duration_text(std::int64_t s) {
  if (s < 60) return fmt::format("{} s", s);
  if (s < 3600) return fmt::format("{} min", s / 60);
  if (s < 86400)
    return s % 3600 / 60 == 0 ? fmt::format("{} h", s / 3600)
                              : fmt::format("{} h {} min", s / 3600, s % 3600 / 60);
  return fmt::format("{} d {} h", s / 86400, s % 86400 / 3600);
}

}  // namespace

Result<TokenFormat> parse_token_format(std::string_view s) {
  if (s == "raw") return TokenFormat::raw;
  if (s == "header") return TokenFormat::header;
  if (s == "json") return TokenFormat::json;
  if (s == "env") return TokenFormat::env;
  if (s == "exec-credential") return TokenFormat::exec_credential;
  return fail(Errc::invalid_argument,
              fmt::format("unknown format '{}'; use raw, header, json, env or exec-credential", s));
}

std::string shell_quote(std::string_view v) {
  std::string out = "'";
  for (const char c : v) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  out += '\'';
  return out;
}

std::string rfc3339(std::int64_t unix_s) {
  const std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string local_clock_time(std::int64_t at_s, std::int64_t now_s) {
  const std::time_t at = static_cast<std::time_t>(at_s);
  const std::time_t now = static_cast<std::time_t>(now_s);
  std::tm at_tm{};
  std::tm now_tm{};
  ::localtime_r(&at, &at_tm);
  ::localtime_r(&now, &now_tm);
  const bool same_day = at_tm.tm_year == now_tm.tm_year && at_tm.tm_yday == now_tm.tm_yday;
  char buf[32];
  std::strftime(buf, sizeof buf, same_day ? "%H:%M" : "%Y-%m-%d %H:%M", &at_tm);
  return buf;
}

std::string relative_time(std::optional<std::int64_t> at_s, std::int64_t now_s) {
  if (!at_s) return "never";
  const std::int64_t d = *at_s - now_s;
  if (d == 0) return "now";
  if (d > 0) return "in " + duration_text(d);
  return duration_text(-d) + " ago";
}

std::string render_token(const json::Json& a, TokenFormat format) {
  const std::string token = str(a, "token");
  const std::string authorization = str(a, "authorization");
  const auto expires_at = opt_int(a, "expires_at");
  switch (format) {
    case TokenFormat::raw:
      return token + "\n";
    case TokenFormat::header:
      return "Authorization: " + authorization + "\n";
    case TokenFormat::json: {
      json::Json j = {{"token", token},
                      {"token_type", str(a, "token_type")},
                      {"authorization", authorization},
                      {"expires_at", expires_at ? json::Json(*expires_at) : json::Json(nullptr)},
                      {"expires_in", a.value("expires_in", json::Json(nullptr))}};
      return j.dump() + "\n";
    }
    case TokenFormat::env: {
      std::string out = "TOKEND_TOKEN=" + shell_quote(token) + "\n" +
                        "TOKEND_TOKEN_TYPE=" + shell_quote(str(a, "token_type")) + "\n" +
                        "TOKEND_AUTHORIZATION=" + shell_quote(authorization) + "\n";
      if (expires_at) out += fmt::format("TOKEND_EXPIRES_AT={}\n", *expires_at);
      return out;
    }
    case TokenFormat::exec_credential: {
      // Kubernetes client-go credential plugin output.
      json::Json status = {{"token", token}};
      if (expires_at) status["expirationTimestamp"] = rfc3339(*expires_at);
      json::Json j = {{"apiVersion", "client.authentication.k8s.io/v1"},
                      {"kind", "ExecCredential"},
                      {"status", status}};
      return j.dump() + "\n";
    }
  }
  return token + "\n";
}

std::string render_status_table(const json::Json& profiles, std::int64_t now_s, bool colour) {
  if (!profiles.is_array() || profiles.empty()) {
    return "no profiles yet; add one with: tokenctl add NAME --kind oauth2|api-token|pat ...\n";
  }
  struct Row {
    std::string name, kind, state, expires, next, error;
  };
  std::vector<Row> rows;
  rows.push_back({"PROFILE", "KIND", "STATE", "EXPIRES", "NEXT REFRESH", "LAST ERROR"});
  for (const auto& p : profiles) {
    Row r;
    r.name = str(p, "name");
    r.kind = str(p, "kind");
    if (r.kind == "oauth2" && !str(p, "provider").empty()) r.kind += "/" + str(p, "provider");
    r.state = str(p, "state");
    const auto exp = opt_int(p, "expires_at");
    r.expires =
        exp ? relative_time(exp, now_s) : (p.value("has_token", false) ? "does not expire" : "-");
    const auto next = opt_int(p, "next_refresh_at");
    r.next = next ? relative_time(next, now_s) : "-";
    r.error = str(p, "last_error");
    if (r.error.empty()) r.error = "-";
    rows.push_back(std::move(r));
  }
  std::size_t w[5] = {0, 0, 0, 0, 0};
  for (const auto& r : rows) {
    w[0] = std::max(w[0], r.name.size());
    w[1] = std::max(w[1], r.kind.size());
    w[2] = std::max(w[2], r.state.size());
    w[3] = std::max(w[3], r.expires.size());
    w[4] = std::max(w[4], r.next.size());
  }
  std::string out;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    std::string state = fmt::format("{:<{}}", r.state, w[2]);
    if (i > 0) state = paint(state, state_colour(r.state), colour);
    std::string line = fmt::format("{:<{}}  {:<{}}  {}  {:<{}}  {:<{}}  {}", r.name, w[0], r.kind,
                                   w[1], state, r.expires, w[3], r.next, w[4], r.error);
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += (i == 0 ? paint(line, "1", colour) : line) + "\n";
  }
  return out;
}

std::string render_profile_detail(const json::Json& p, std::int64_t now_s, bool colour) {
  std::string out;
  auto row = [&](std::string_view k, const std::string& v) {
    out += fmt::format("{:<14} {}\n", k, v);
  };
  row("profile", paint(str(p, "name"), "1", colour));
  row("kind", str(p, "kind"));
  if (!str(p, "provider").empty()) row("provider", str(p, "provider"));
  row("state", paint(str(p, "state"), state_colour(str(p, "state")), colour));
  const auto exp = opt_int(p, "expires_at");
  row("expires", exp ? fmt::format("{} ({})", relative_time(exp, now_s), rfc3339(*exp))
                     : (p.value("has_token", false) ? "does not expire" : "no token"));
  if (auto o = opt_int(p, "obtained_at"))
    row("obtained", fmt::format("{} ({})", relative_time(o, now_s), rfc3339(*o)));
  if (auto n = opt_int(p, "next_refresh_at")) row("next refresh", relative_time(n, now_s));
  row("refresh token", p.value("has_refresh_token", false) ? "yes" : "no");
  if (!str(p, "last_error").empty()) row("last error", paint(str(p, "last_error"), "31", colour));
  if (p.contains("config") && p["config"].is_object()) {
    for (const auto& [k, v] : p["config"].items())
      row(k, v.is_string() ? v.get<std::string>() : v.dump());
  }
  return out;
}

std::string render_event_line(const json::Json& e, bool colour) {
  const auto at = opt_int(e, "at").value_or(0);
  std::string line = fmt::format("{}  {:<16} {}", rfc3339(at), paint(str(e, "type"), "1", colour),
                                 str(e, "profile"));
  for (const auto& [k, v] : e.items()) {
    if (k == "id" || k == "type" || k == "profile" || k == "at" || k == "at_ms") continue;
    line += fmt::format("  {}={}", k, v.is_string() ? v.get<std::string>() : v.dump());
  }
  return line + "\n";
}

}  // namespace tokend::ctl
