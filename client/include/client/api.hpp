// The local API as typed calls: tokenctl asks for health(), profile(name),
// token(...) and reads fields of small structs, and never spells a /v1 path
// or a JSON field name itself. Every path is built in `paths`, with profile
// names percent-encoded. Core only, like client.hpp.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "client/client.hpp"
#include "core/error.hpp"
#include "core/json.hpp"
#include "core/secret.hpp"

namespace tokend::client {

// Percent-encodes one path segment: RFC 3986 unreserved bytes stay, every
// other byte becomes %XX.
std::string path_segment(std::string_view s);

// The routes of the local API, in one place.
namespace paths {
std::string health();
std::string profiles();
std::string profile(std::string_view name);
// min_valid: seconds or "half"; empty: not sent. wait: seconds, not sent when absent.
std::string token(std::string_view name, std::string_view min_valid,
                  std::optional<std::int64_t> wait_s);
std::string refresh(std::string_view name);
std::string logout(std::string_view name);
std::string test(std::string_view name);
std::string login(std::string_view name, std::optional<std::int64_t> wait_s = std::nullopt);
std::string login_complete(std::string_view name);
std::string endpoint(std::string_view name, std::optional<std::int64_t> wait_s);
std::string events(std::optional<std::string_view> profile);
// "/v1/mcp/NAME" (the bridge's passthrough) and "/v1/proxy/NAME/" (what
// tokenctl api appends its PATH to).
std::string mcp(std::string_view name);
std::string proxy_prefix(std::string_view name);
}  // namespace paths

// Overwrites every string in a JSON value (bodies that carry secrets).
void wipe_strings(json::Json& j);

// Why a call failed.
struct ApiError {
  enum class Stage {
    connect,   // no connection (Errc::unavailable: nothing listens)
    exchange,  // the connection failed before a whole answer arrived
    answer,    // tokend answered with an error, or with an unusable answer
  };
  Stage stage = Stage::answer;
  // connect, exchange: the client's error. answer: the Errc tokend's error
  // code names (Errc::internal when it names none) and tokend's message,
  // with "; run: COMMAND" when it names a command that is not in it yet.
  Error error;
  int status = 0;  // answer: tokend's HTTP status

  [[nodiscard]] bool reauth() const noexcept {
    return stage == Stage::answer && error.code == Errc::reauth_required;
  }
};

template <class T = void>
using ApiResult = std::expected<T, ApiError>;

struct Health {
  std::string version = "?";
  std::int64_t pid = 0;
  std::int64_t uptime_s = 0;
  std::int64_t profiles = 0;
};

// A profile as tokend shows it (never with secrets); `json` is the whole
// answer, for output that prints it.
struct Profile {
  json::Json json;
  std::string name;
  std::string kind;
  std::string provider;
  std::string state;
  bool has_refresh_token = false;
  std::optional<std::int64_t> expires_at;
  std::optional<std::int64_t> next_refresh_at;
  std::string mcp_server;  // config.mcp_server
  std::string cloud_id;    // config.cloud_id
};

struct ProfileList {
  json::Json json;  // the "profiles" array as tokend sent it
  std::vector<Profile> profiles;
};

// A PUT's answer: 201 when the profile is new, 200 when it was replaced.
struct StoredProfile {
  int status = 0;
  Profile profile;
};

// A token answer. Holds the secret: every copy is wiped on destruction.
class TokenAnswer {
 public:
  explicit TokenAnswer(json::Json body) : m_json(std::move(body)) {}
  TokenAnswer(TokenAnswer&&) noexcept = default;
  TokenAnswer& operator=(TokenAnswer&&) = delete;
  TokenAnswer(const TokenAnswer&) = delete;
  TokenAnswer& operator=(const TokenAnswer&) = delete;
  ~TokenAnswer() { wipe_strings(m_json); }

  [[nodiscard]] const json::Json& json() const noexcept { return m_json; }
  // Copies the caller must wipe; empty when absent.
  [[nodiscard]] std::string token() const;
  [[nodiscard]] std::string authorization() const;
  [[nodiscard]] std::string token_type() const;
  [[nodiscard]] std::optional<std::int64_t> expires_at() const;

 private:
  json::Json m_json;
};

struct TokenRequest {
  std::string min_valid;  // seconds, "half", or empty for tokend's default
  std::optional<std::int64_t> wait_s;
};

struct Refreshed {
  std::optional<std::int64_t> expires_at;
};

struct LoggedOut {
  bool revoked = false;
  std::string reason;  // why not, when not revoked
};

struct TestResult {
  json::Json json;  // the whole answer, the provider's body included
  bool ok = false;
  std::int64_t status = 0;
  std::string url;
  std::string summary;
};

struct LoginStart {
  std::string authorization_server_note;
  // code flow
  std::string authorize_url;
  bool listening = false;
  // device flow
  std::string verification_uri;
  std::string verification_uri_complete;
  std::string user_code;
};

// A login flow's state: pending, succeeded, failed, expired, cancelled or
// none (nothing tokend knows of).
struct LoginFlow {
  std::string state;
  std::string error;  // the flow's error message (with the command to run), if any
  std::string warning;
  std::optional<std::int64_t> expires_at;
};

// A stand-in endpoint: tokend keeps it open while `connection` stays open.
struct Endpoint {
  Client connection;
  std::string url;
  std::vector<std::pair<std::string, std::string>> urls;  // product, URL
  std::string user;
  Secret standin;
};

// An answer to a request sent on a connection the caller holds: the body
// parsed, or the ApiError tokend's error answer makes.
ApiResult<json::Json> parse_answer(const ClientResponse& r);
LoginFlow login_flow(const json::Json& body);

class ApiClient {
 public:
  using ms = std::chrono::milliseconds;
  explicit ApiClient(std::filesystem::path socket) : m_socket(std::move(socket)) {}

  // Each call makes its own connection.
  [[nodiscard]] ApiResult<Client> connect() const;

  ApiResult<Health> health(ms timeout = std::chrono::seconds(5)) const;
  ApiResult<ProfileList> profiles() const;
  ApiResult<Profile> profile(std::string_view name, ms timeout = std::chrono::seconds(30)) const;
  // `body` is the JSON text of the profile (it may carry secrets; the caller wipes it).
  ApiResult<StoredProfile> put_profile(std::string_view name, std::string_view body) const;
  ApiResult<> remove_profile(std::string_view name) const;

  // The timeout is stretched by the wait.
  ApiResult<TokenAnswer> token(std::string_view name, const TokenRequest& request) const;
  ApiResult<Refreshed> refresh(std::string_view name) const;
  ApiResult<LoggedOut> logout(std::string_view name) const;
  ApiResult<TestResult> test(std::string_view name) const;

  ApiResult<LoginStart> start_login(std::string_view name, bool device) const;
  ApiResult<LoginFlow> login(std::string_view name) const;
  // `body` carries the pasted code (the caller wipes it).
  ApiResult<LoginFlow> complete_login(std::string_view name, std::string_view body) const;
  ApiResult<> cancel_login(std::string_view name) const;
  // The long poll GET .../login?wait=N, sent on a connection the caller
  // holds and reads (tokenctl login polls stdin and a signal pipe as well);
  // parse the answer with parse_answer() and login_flow().
  static Result<> send_login_watch(Client& c, std::string_view name, std::int64_t wait_s);

  // POST .../endpoint with the command's pid; the first line of the answer
  // describes the endpoint, the rest of it is the endpoint's life. An answer
  // without url or stand-in is an ApiError at the answer stage.
  ApiResult<Endpoint> open_endpoint(std::string_view name, std::optional<std::int64_t> wait_s,
                                    pid_t command_pid) const;

  // The event stream: on_event gets each event's JSON. Returns when tokend
  // ends the stream; a refusal is an ApiError at the answer stage.
  ApiResult<> events(std::optional<std::string_view> profile,
                     const std::function<void(const json::Json&)>& on_event) const;

 private:
  ApiResult<json::Json> call(std::string_view method, const std::string& target,
                             std::string_view body, ms timeout, int* status = nullptr) const;
  std::filesystem::path m_socket;
};

}  // namespace tokend::client
