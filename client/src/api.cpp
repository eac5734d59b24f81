#include "client/api.hpp"

#include <fmt/format.h>

#include <array>

namespace tokend::client {

namespace {

// A string, integer or boolean field of an answer; empty/nullopt/false when
// absent or of another type (answers are trusted, but a wrong type must not
// throw).
std::string jstr(const json::Json& j, const char* key) {
  if (!j.is_object()) return {};
  const auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

std::optional<std::int64_t> jint(const json::Json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<std::int64_t>();
}

bool jbool(const json::Json& j, const char* key) {
  if (!j.is_object()) return false;
  const auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

const json::Json& member(const json::Json& j, const char* key) {
  static const json::Json k_null;
  if (!j.is_object()) return k_null;
  const auto it = j.find(key);
  return it != j.end() ? *it : k_null;
}

// The "error" object of an {"error": {...}} answer, or null.
const json::Json& error_object(const json::Json& body) {
  static const json::Json k_none;
  const json::Json& e = member(body, "error");
  return e.is_object() ? e : k_none;
}

// The message of an {"error": {...}} answer, or `fallback`. A
// re-authentication error names the command that does it.
std::string error_message(const json::Json& body, std::string fallback) {
  const json::Json& e = error_object(body);
  std::string m = jstr(e, "message");
  if (m.empty()) return fallback;
  const std::string command = jstr(e, "command");
  if (!command.empty() && m.find(command) == std::string::npos) m += "; run: " + command;
  return m;
}

// The Errc tokend's error code names (its codes are errc_name()s).
Errc errc_named(std::string_view name) {
  constexpr std::array k_all = {Errc::invalid_argument, Errc::not_found,    Errc::already_exists,
                                Errc::conflict,         Errc::permission,   Errc::io,
                                Errc::database,         Errc::wrong_key,    Errc::corrupt,
                                Errc::config,           Errc::unavailable,  Errc::timeout,
                                Errc::limit_exceeded,   Errc::protocol,     Errc::transient,
                                Errc::reauth_required,  Errc::login_failed, Errc::internal};
  for (const Errc c : k_all) {
    if (errc_name(c) == name) return c;
  }
  return Errc::internal;
}

ApiError answer_error(int status, const json::Json& body) {
  return {ApiError::Stage::answer,
          Error{errc_named(jstr(error_object(body), "code")),
                error_message(body, fmt::format("tokend answered {}", status))},
          status};
}

std::unexpected<ApiError> failed(ApiError::Stage stage, Error e) {
  return std::unexpected(ApiError{stage, std::move(e), 0});
}

Profile profile_from(json::Json body) {
  Profile p;
  p.name = jstr(body, "name");
  p.kind = jstr(body, "kind");
  p.provider = jstr(body, "provider");
  p.state = jstr(body, "state");
  p.has_refresh_token = jbool(body, "has_refresh_token");
  p.expires_at = jint(body, "expires_at");
  p.next_refresh_at = jint(body, "next_refresh_at");
  const json::Json& config = member(body, "config");
  p.mcp_server = jstr(config, "mcp_server");
  p.cloud_id = jstr(config, "cloud_id");
  p.json = std::move(body);
  return p;
}

std::string with_wait(std::string target, std::optional<std::int64_t> wait_s) {
  if (wait_s) target += fmt::format("?wait={}", *wait_s);
  return target;
}

}  // namespace

std::string path_segment(std::string_view s) {
  std::string out;
  for (const char c : s) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                       c == '-' || c == '.' || c == '_' || c == '~';
    if (plain) {
      out += c;
    } else {
      out += fmt::format("%{:02X}", static_cast<unsigned>(static_cast<unsigned char>(c)));
    }
  }
  return out;
}

namespace paths {

std::string health() {
  return "/v1/health";
}
std::string profiles() {
  return "/v1/profiles";
}
std::string profile(std::string_view name) {
  return "/v1/profiles/" + path_segment(name);
}

std::string token(std::string_view name, std::string_view min_valid,
                  std::optional<std::int64_t> wait_s) {
  std::string target = profile(name) + "/token";
  std::string_view sep = "?";
  if (!min_valid.empty()) {
    target += fmt::format("{}min_valid={}", sep, path_segment(min_valid));
    sep = "&";
  }
  if (wait_s) target += fmt::format("{}wait={}", sep, *wait_s);
  return target;
}

std::string refresh(std::string_view name) {
  return profile(name) + "/refresh";
}
std::string logout(std::string_view name) {
  return profile(name) + "/logout";
}
std::string test(std::string_view name) {
  return profile(name) + "/test";
}
std::string login(std::string_view name, std::optional<std::int64_t> wait_s) {
  return with_wait(profile(name) + "/login", wait_s);
}
std::string login_complete(std::string_view name) {
  return profile(name) + "/login/complete";
}
std::string endpoint(std::string_view name, std::optional<std::int64_t> wait_s) {
  return with_wait(profile(name) + "/endpoint", wait_s);
}
std::string events(std::optional<std::string_view> profile) {
  std::string target = "/v1/events";
  if (profile) target += "?profile=" + path_segment(*profile);
  return target;
}
std::string mcp(std::string_view name) {
  return "/v1/mcp/" + path_segment(name);
}
std::string proxy_prefix(std::string_view name) {
  return "/v1/proxy/" + path_segment(name) + "/";
}

}  // namespace paths

void wipe_strings(json::Json& j) {
  if (j.is_string()) {
    secure_wipe(j.get_ref<std::string&>());
  } else if (j.is_structured()) {
    for (auto& v : j) wipe_strings(v);
  }
}

std::string TokenAnswer::token() const {
  return jstr(m_json, "token");
}
std::string TokenAnswer::authorization() const {
  return jstr(m_json, "authorization");
}
std::string TokenAnswer::token_type() const {
  return jstr(m_json, "token_type");
}
std::optional<std::int64_t> TokenAnswer::expires_at() const {
  return jint(m_json, "expires_at");
}

ApiResult<json::Json> parse_answer(const ClientResponse& r) {
  json::Json body;
  if (!r.body.empty()) {
    if (auto j = json::parse(r.body, "tokend's answer")) body = std::move(*j);
  }
  if (r.status >= 400) return std::unexpected(answer_error(r.status, body));
  return body;
}

LoginFlow login_flow(const json::Json& body) {
  return {jstr(body, "state"), error_message(body, ""), jstr(body, "warning"),
          jint(body, "expires_at")};
}

ApiResult<Client> ApiClient::connect() const {
  auto c = Client::connect(m_socket);
  if (!c) return failed(ApiError::Stage::connect, std::move(c.error()));
  return std::move(*c);
}

// One request on a fresh connection; the answer's body is wiped once parsed
// (a token answer carries the secret).
ApiResult<json::Json> ApiClient::call(std::string_view method, const std::string& target,
                                      std::string_view body, ms timeout, int* status) const {
  auto c = connect();
  if (!c) return std::unexpected(std::move(c.error()));
  auto r = c->request(method, target, body, {}, timeout);
  if (!r) return failed(ApiError::Stage::exchange, std::move(r.error()));
  if (status != nullptr) *status = r->status;
  auto answer = parse_answer(*r);
  secure_wipe(r->body);
  return answer;
}

ApiResult<Health> ApiClient::health(ms timeout) const {
  auto j = call("GET", paths::health(), {}, timeout);
  if (!j) return std::unexpected(std::move(j.error()));
  Health h;
  if (const json::Json& v = member(*j, "version"); v.is_string()) h.version = v.get<std::string>();
  h.pid = jint(*j, "pid").value_or(0);
  h.uptime_s = jint(*j, "uptime_s").value_or(0);
  h.profiles = jint(*j, "profiles").value_or(0);
  return h;
}

ApiResult<ProfileList> ApiClient::profiles() const {
  auto j = call("GET", paths::profiles(), {}, std::chrono::seconds(30));
  if (!j) return std::unexpected(std::move(j.error()));
  ProfileList list;
  list.json = member(*j, "profiles");
  if (list.json.is_array()) {
    for (const auto& p : list.json) list.profiles.push_back(profile_from(p));
  }
  return list;
}

ApiResult<Profile> ApiClient::profile(std::string_view name, ms timeout) const {
  auto j = call("GET", paths::profile(name), {}, timeout);
  if (!j) return std::unexpected(std::move(j.error()));
  return profile_from(std::move(*j));
}

ApiResult<StoredProfile> ApiClient::put_profile(std::string_view name,
                                                std::string_view body) const {
  int status = 0;
  auto j = call("PUT", paths::profile(name), body, std::chrono::seconds(30), &status);
  if (!j) return std::unexpected(std::move(j.error()));
  return StoredProfile{status, profile_from(std::move(*j))};
}

ApiResult<> ApiClient::remove_profile(std::string_view name) const {
  auto j = call("DELETE", paths::profile(name), {}, std::chrono::seconds(30));
  if (!j) return std::unexpected(std::move(j.error()));
  return {};
}

ApiResult<TokenAnswer> ApiClient::token(std::string_view name, const TokenRequest& request) const {
  const ms timeout = std::chrono::seconds(30 + request.wait_s.value_or(0));
  auto j = call("GET", paths::token(name, request.min_valid, request.wait_s), {}, timeout);
  if (!j) return std::unexpected(std::move(j.error()));
  return TokenAnswer(std::move(*j));
}

ApiResult<Refreshed> ApiClient::refresh(std::string_view name) const {
  auto j = call("POST", paths::refresh(name), {}, std::chrono::seconds(120));
  if (!j) return std::unexpected(std::move(j.error()));
  return Refreshed{jint(*j, "expires_at")};
}

ApiResult<LoggedOut> ApiClient::logout(std::string_view name) const {
  auto j = call("POST", paths::logout(name), {}, std::chrono::seconds(60));
  if (!j) return std::unexpected(std::move(j.error()));
  return LoggedOut{jbool(*j, "revoked"), jstr(*j, "reason")};
}

ApiResult<TestResult> ApiClient::test(std::string_view name) const {
  auto j = call("POST", paths::test(name), {}, std::chrono::seconds(60));
  if (!j) return std::unexpected(std::move(j.error()));
  TestResult t;
  t.ok = jbool(*j, "ok");
  t.status = jint(*j, "status").value_or(0);
  t.url = jstr(*j, "url");
  t.summary = jstr(*j, "summary");
  t.json = std::move(*j);
  return t;
}

ApiResult<LoginStart> ApiClient::start_login(std::string_view name, bool device) const {
  json::Json request = {{"flow", device ? "device" : "code"}};
  if (!device) request["listen"] = true;  // "listen" is a code-flow setting
  auto j = call("POST", paths::login(name), request.dump(), std::chrono::seconds(90));
  if (!j) return std::unexpected(std::move(j.error()));
  LoginStart s;
  s.authorization_server_note = jstr(*j, "authorization_server_note");
  s.authorize_url = jstr(*j, "authorize_url");
  s.listening = jbool(*j, "listening");
  s.verification_uri = jstr(*j, "verification_uri");
  s.verification_uri_complete = jstr(*j, "verification_uri_complete");
  s.user_code = jstr(*j, "user_code");
  return s;
}

ApiResult<LoginFlow> ApiClient::login(std::string_view name) const {
  auto j = call("GET", paths::login(name), {}, std::chrono::seconds(10));
  if (!j) return std::unexpected(std::move(j.error()));
  return login_flow(*j);
}

ApiResult<LoginFlow> ApiClient::complete_login(std::string_view name, std::string_view body) const {
  auto j = call("POST", paths::login_complete(name), body, std::chrono::seconds(120));
  if (!j) return std::unexpected(std::move(j.error()));
  return login_flow(*j);
}

ApiResult<> ApiClient::cancel_login(std::string_view name) const {
  auto j = call("DELETE", paths::login(name), {}, std::chrono::seconds(10));
  if (!j) return std::unexpected(std::move(j.error()));
  return {};
}

Result<> ApiClient::send_login_watch(Client& c, std::string_view name, std::int64_t wait_s) {
  return c.send_request("GET", paths::login(name, wait_s));
}

ApiResult<Endpoint> ApiClient::open_endpoint(std::string_view name,
                                             std::optional<std::int64_t> wait_s,
                                             pid_t command_pid) const {
  auto c = connect();
  if (!c) return std::unexpected(std::move(c.error()));
  int status = 0;
  std::string received;  // the first line of a 200; the whole answer otherwise
  bool line_done = false;
  // Calls through the endpoint are audited with the command's pid.
  const std::string request = json::Json{{"pid", command_pid}}.dump();
  auto body = BodyReader::from_string(request);
  auto head = c->exchange(
      "POST", paths::endpoint(name, wait_s), {}, &body,
      [&](const ResponseHead& h) {
        status = h.status;
        return true;
      },
      [&](std::string_view bytes) {
        received.append(bytes);
        if (status != 200) return received.size() < 64 * 1024;
        const auto nl = received.find('\n');
        if (nl == std::string::npos) return received.size() < 64 * 1024;
        received.resize(nl);
        line_done = true;
        return false;  // the rest of the answer is the endpoint's life
      },
      std::chrono::seconds(30 + wait_s.value_or(0)));
  if (!head) return failed(ApiError::Stage::exchange, std::move(head.error()));
  auto parsed = json::parse(received, "tokend's answer");
  secure_wipe(received);
  if (status != 200)
    return std::unexpected(answer_error(status, parsed ? *parsed : json::Json::object()));
  if (!line_done || !parsed || jstr(*parsed, "url").empty() || jstr(*parsed, "standin").empty()) {
    if (parsed) wipe_strings(*parsed);
    return failed(ApiError::Stage::answer,
                  Error{Errc::protocol, "tokend's endpoint answer is incomplete"});
  }
  Endpoint e{std::move(*c),
             jstr(*parsed, "url"),
             {},
             jstr(*parsed, "user"),
             Secret(jstr(*parsed, "standin"))};
  const json::Json& urls = member(*parsed, "urls");
  if (urls.is_object()) {
    for (const auto& [product, url] : urls.items()) {
      if (url.is_string()) e.urls.emplace_back(product, url.get<std::string>());
    }
  }
  wipe_strings(*parsed);
  return e;
}

ApiResult<> ApiClient::events(std::optional<std::string_view> profile,
                              const std::function<void(const json::Json&)>& on_event) const {
  auto c = connect();
  if (!c) return std::unexpected(std::move(c.error()));
  int status = 0;
  std::string pending;
  std::string error_body;
  auto on_block = [&](std::string_view block) {
    std::size_t pos = 0;
    while (pos < block.size()) {
      const auto nl = block.find('\n', pos);
      const std::string_view line =
          block.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
      if (line.starts_with("data: ")) {
        if (auto j = json::parse(line.substr(6), "event")) on_event(*j);
      }
      if (nl == std::string_view::npos) break;
      pos = nl + 1;
    }
  };
  auto r = c->stream(
      paths::events(profile), [&](int s) { status = s; },
      [&](std::string_view data) {
        if (status != 200) {
          error_body.append(data);
          return true;
        }
        pending.append(data);
        std::size_t end;
        while ((end = pending.find("\n\n")) != std::string::npos) {
          const std::string block = pending.substr(0, end);
          pending.erase(0, end + 2);
          on_block(block);
        }
        return true;
      });
  if (!r) return failed(ApiError::Stage::exchange, std::move(r.error()));
  if (status != 200) {
    auto j = json::parse(error_body, "answer");
    std::string message = fmt::format("tokend answered {}", status);
    if (j && j->is_object() && j->contains("error")) {
      message = json::string_or((*j)["error"], "message", "event stream refused");
    }
    return std::unexpected(
        ApiError{ApiError::Stage::answer, Error{Errc::internal, std::move(message)}, status});
  }
  return {};
}

}  // namespace tokend::client
