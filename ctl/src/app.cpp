#include "ctl/app.hpp"

#include <fcntl.h>
#include <poll.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <ctime>
#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <span>
#include <sstream>

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/encoding.hpp"
#include "core/names.hpp"
#include "core/paths.hpp"
#include "ctl/api.hpp"
#include "ctl/browser.hpp"
#include "ctl/completion.hpp"
#include "ctl/dotenv.hpp"
#include "ctl/exec.hpp"
#include "ctl/format.hpp"
#include "ctl/import.hpp"
#include "ctl/input.hpp"
#include "ctl/interrupt.hpp"
#include "ctl/mcp/bridge.hpp"
#include "ctl/mcp/config.hpp"
#include "client/client.hpp"

namespace tokend::ctl {

namespace po = boost::program_options;

namespace {

constexpr std::string_view k_start_hint =
    "start it with: systemctl --user start tokend (or run tokend in a terminal)";

// What tokenctl says and exits with when it cannot talk to tokend: not
// reachable (3, with the command that starts it), or a socket it refuses to
// trust (1: starting tokend would not fix that).
struct ConnectFailure {
  std::string message;
  int exit;
};
ConnectFailure connect_failure(const Error& e);

struct Ctx {
  Io io;
  std::filesystem::path socket;
  bool colour = false;
};

struct UsageError {
  std::string message;
};

// Thrown by parse() for COMMAND --help: carries the command's option list.
struct HelpRequest {
  std::string options;
};

void say(std::FILE* f, const std::string& s) {
  std::fputs(s.c_str(), f);
  std::fflush(f);
}

int error(const Ctx& ctx, const std::string& message, int code = k_error) {
  say(ctx.io.err, "tokenctl: " + message + "\n");
  return code;
}

ConnectFailure connect_failure(const Error& e) {
  if (e.code == Errc::unavailable) return {fmt::format("{}; {}", e.message, k_start_hint), k_unreachable};
  return {e.message, k_error};
}

std::int64_t now_s() { return static_cast<std::int64_t>(std::time(nullptr)); }

// Percent-encodes a path segment (profile names are restricted, but be safe).
std::string seg(std::string_view s) {
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

// A string or integer field of an answer; empty/nullopt when absent or of
// another type (answers are trusted, but a wrong type must not throw).
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

// Overwrites every string in a JSON value (request bodies carrying secrets).
void wipe_strings(json::Json& j) {
  if (j.is_string()) {
    secure_wipe(j.get_ref<std::string&>());
  } else if (j.is_structured()) {
    for (auto& v : j) wipe_strings(v);
  }
}

// The message of an {"error": {...}} answer, or `fallback`.
std::string error_message(const json::Json& body, std::string fallback) {
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    if (auto m = jstr(body["error"], "message"); !m.empty()) {
      // A re-authentication error names the command that does it (exit 4).
      const std::string command = jstr(body["error"], "command");
      if (!command.empty() && m.find(command) == std::string::npos) m += "; run: " + command;
      return m;
    }
  }
  return fallback;
}

// A call to tokend. On failure `exit` is the exit code and `message` says
// why; the message is printed unless the caller asked for a quiet call.
struct Call {
  std::optional<client::ClientResponse> response;
  json::Json body;
  int exit = k_ok;
  std::string message;
};

enum class Report { print, quiet };

Call call(const Ctx& ctx, std::string_view method, const std::string& target, std::string_view body = {},
          std::chrono::milliseconds timeout = std::chrono::seconds(30), Report report = Report::print) {
  Call c;
  auto finish = [&](std::string message, int code) {
    c.message = std::move(message);
    c.exit = code;
    if (report == Report::print) error(ctx, c.message, code);
    return c;
  };
  auto client = client::Client::connect(ctx.socket);
  if (!client) {
    auto f = connect_failure(client.error());
    return finish(std::move(f.message), f.exit);
  }
  auto r = client->request(method, target, body, {}, timeout);
  if (!r) return finish(r.error().message, r.error().code == Errc::unavailable ? k_unreachable : k_error);
  if (!r->body.empty()) {
    auto j = json::parse(r->body, "tokend's answer");
    if (j) c.body = std::move(*j);
  }
  const int status = r->status;
  c.response = std::move(*r);
  if (status >= 400) {
    std::string code;
    if (c.body.is_object() && c.body.contains("error") && c.body["error"].is_object()) code = jstr(c.body["error"], "code");
    return finish(error_message(c.body, fmt::format("tokend answered {}", status)),
                  code == "reauth_required" ? k_reauth : k_error);
  }
  return c;
}

// Parses a command's options; positional arguments in order of `positional`.
po::variables_map parse(const std::vector<std::string>& args, const po::options_description& opts,
                        const std::vector<std::string>& positional, bool allow_extra = false) {
  for (const auto& a : args) {
    if (a == "--") break;
    if (a == "--help" || a == "-h") {
      std::ostringstream os;
      if (!opts.options().empty()) os << "\n" << opts;
      throw HelpRequest{os.str()};
    }
  }
  po::options_description all;
  all.add(opts);
  po::positional_options_description pos;
  for (const auto& name : positional) {
    all.add_options()(name.c_str(), po::value<std::string>());
    pos.add(name.c_str(), 1);
  }
  if (allow_extra) {
    all.add_options()("args", po::value<std::vector<std::string>>());
    pos.add("args", -1);
  }
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError{e.what()};
  }
  return vm;
}

std::string need(const po::variables_map& vm, const char* name, std::string_view what) {
  if (vm.count(name) == 0) throw UsageError{fmt::format("missing {}", what)};
  std::string v = vm[name].as<std::string>();
  if (std::string_view(name) == "profile") {
    if (auto ok = validate_profile_name(v); !ok) throw UsageError{ok.error().message};
  }
  return v;
}

std::optional<std::string> opt(const po::variables_map& vm, const char* name) {
  if (vm.count(name) == 0) return std::nullopt;
  return vm[name].as<std::string>();
}

// A whole number of seconds in [0, max]. (Boost's unsigned parsing wraps "-5".)
std::optional<unsigned> seconds(const po::variables_map& vm, const char* name, unsigned max) {
  auto v = opt(vm, name);
  if (!v) return std::nullopt;
  unsigned n = 0;
  const auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), n);
  if (ec != std::errc{} || end != v->data() + v->size() || n > max) {
    throw UsageError{fmt::format("--{} must be a whole number of seconds from 0 to {}", name, max)};
  }
  return n;
}

// ---------------------------------------------------------------------------

int cmd_ping(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl ping");
  parse(args, o, {});
  auto c = call(ctx, "GET", "/v1/health", {}, std::chrono::seconds(5));
  if (c.exit != k_ok) return c.exit;
  say(ctx.io.out, fmt::format("tokend {} is running on {} (pid {}, up {} s, {} profiles)\n",
                              c.body.value("version", "?"), ctx.socket.string(), c.body.value("pid", 0),
                              c.body.value("uptime_s", 0), c.body.value("profiles", 0)));
  return k_ok;
}

int cmd_version(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl version");
  parse(args, o, {});
  say(ctx.io.out, fmt::format("tokenctl {}\n", TOKEND_VERSION));
  return k_ok;
}

int cmd_status(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl status [PROFILE] [--json]");
  o.add_options()("json", "print JSON");
  auto vm = parse(args, o, {"profile"});
  const bool as_json = vm.count("json") != 0;
  if (auto name = opt(vm, "profile")) {
    if (auto ok = validate_profile_name(*name); !ok) throw UsageError{ok.error().message};
    auto c = call(ctx, "GET", "/v1/profiles/" + seg(*name));
    if (c.exit != k_ok) return c.exit;
    say(ctx.io.out, as_json ? c.body.dump(2) + "\n" : render_profile_detail(c.body, now_s(), ctx.colour));
    return k_ok;
  }
  auto c = call(ctx, "GET", "/v1/profiles");
  if (c.exit != k_ok) return c.exit;
  const auto& profiles = c.body["profiles"];
  say(ctx.io.out, as_json ? profiles.dump(2) + "\n" : render_status_table(profiles, now_s(), ctx.colour));
  return k_ok;
}

int cmd_list(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl list [--json] [--quiet]");
  o.add_options()("json", "print JSON")("quiet,q", "names only");
  auto vm = parse(args, o, {});
  auto c = call(ctx, "GET", "/v1/profiles");
  if (c.exit != k_ok) return c.exit;
  const auto& profiles = c.body["profiles"];
  if (vm.count("json") != 0) {
    say(ctx.io.out, profiles.dump(2) + "\n");
    return k_ok;
  }
  std::string out;
  for (const auto& p : profiles) {
    if (vm.count("quiet") != 0) {
      out += p.value("name", "") + "\n";
    } else {
      out += fmt::format("{:<24} {:<10} {}\n", p.value("name", ""), p.value("kind", ""), p.value("state", ""));
    }
  }
  say(ctx.io.out, out);
  return k_ok;
}

// GET /v1/profiles/NAME/token with the --min-valid and --wait options of
// `vm` (either may be absent from the command): the call, its timeout
// stretched by the wait.
// Without --min-valid, `default_min_valid` (if any) is sent as min_valid.
Call get_token(const Ctx& ctx, const std::string& name, const po::variables_map& vm,
               std::string_view default_min_valid = {}) {
  std::string target = "/v1/profiles/" + seg(name) + "/token";
  std::string sep = "?";
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  if (auto mv = seconds(vm, "min-valid", 86'400)) {
    target += fmt::format("{}min_valid={}", sep, *mv);
    sep = "&";
  } else if (!default_min_valid.empty()) {
    target += fmt::format("{}min_valid={}", sep, default_min_valid);
    sep = "&";
  }
  if (auto w = seconds(vm, "wait", 3'600)) {
    target += fmt::format("{}wait={}", sep, *w);
    timeout += std::chrono::seconds(*w);
  }
  return call(ctx, "GET", target, {}, timeout);
}

// The answer of a token call carries the secret: wipe both copies.
void wipe_call(Call& c) {
  wipe_strings(c.body);
  if (c.response) secure_wipe(c.response->body);
}

int cmd_token(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl token PROFILE [--min-valid S] [--wait S] [--format F]");
  o.add_options()("min-valid", po::value<std::string>(),
                  "seconds the token must stay valid (default 60; capped at what a fresh token gives)")(
      "wait", po::value<std::string>(), "seconds to wait for a refresh or login in progress")(
      "format", po::value<std::string>()->default_value("raw"), "raw|header|json|env|exec-credential");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto format = parse_token_format(vm["format"].as<std::string>());
  if (!format) throw UsageError{format.error().message};
  auto c = get_token(ctx, name, vm);
  if (c.exit != k_ok) return c.exit;
  std::string out = render_token(c.body, *format);
  wipe_call(c);
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

// Claude Code's headersHelper (and other MCP clients) run this and read a
// JSON object of header names and values from stdout. On any failure stdout
// stays empty and the exit code is non-zero, so a client never sends a
// half-formed header. Such clients ask only when they connect, so the token
// has at least half its lifetime left unless --min-valid says otherwise.
int cmd_headers(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl headers PROFILE [--min-valid S]");
  o.add_options()("min-valid", po::value<std::string>(),
                  "seconds the token must stay valid (default: half the token's lifetime; capped at what a fresh "
                  "token gives)");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto c = get_token(ctx, name, vm, "half");
  if (c.exit != k_ok) return c.exit;
  std::string authorization = jstr(c.body, "authorization");
  wipe_call(c);
  if (authorization.empty()) return error(ctx, "tokend's answer carries no authorization value");
  // Exactly {"Authorization": "..."}, the value JSON-escaped.
  std::string out = "{\"Authorization\": " + json::Json(authorization).dump() + "}\n";
  secure_wipe(authorization);
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

// The settings `add` and `import` share: every oauth2 field of the profile
// API that is not a secret, plus site, api_base and sinks (all kinds).
void add_profile_options(po::options_description& o) {
  o.add_options()("provider", po::value<std::string>(),
                  "atlassian, atlassian-dc (Data Center, needs --site and --redirect-uri), generic or mcp (oauth2)")(
      "client-id", po::value<std::string>(), "OAuth client id")(
      "scopes", po::value<std::string>(), "space-separated scopes")(
      "issuer", po::value<std::string>(), "issuer URL for discovery (RFC 8414 / OIDC)")(
      "authorize-url", po::value<std::string>(), "authorization endpoint")(
      "token-url", po::value<std::string>(), "token endpoint")(
      "device-authorization-url", po::value<std::string>(), "device authorization endpoint (RFC 8628, login --device)")(
      "registration-url", po::value<std::string>(), "dynamic client registration endpoint (RFC 7591)")(
      "revocation-url", po::value<std::string>(), "token revocation endpoint (RFC 7009, used by logout)")(
      "userinfo-url", po::value<std::string>(), "endpoint tokenctl test calls (generic, mcp)")(
      "redirect-uri", po::value<std::string>(), "redirect URI (http://127.0.0.1:PORT/PATH is served by tokend)")(
      "mcp-server", po::value<std::string>(), "MCP server URL (provider mcp)")(
      "resource", po::value<std::string>(), "resource indicator (RFC 8707)")(
      "audience", po::value<std::string>(), "audience parameter of the authorization request")(
      "pkce", po::value<std::string>(), "S256 (default), required or off")(
      "prompt", po::value<std::string>(),
      "prompt parameter of the authorization request (default: consent when offline_access is asked for)")(
      "authorize-param", po::value<std::vector<std::string>>(),
      "extra authorization request parameter K=V, repeatable (e.g. access_type=offline, login_hint=me@example.com)")(
      "authorization-server", po::value<std::string>(),
      "provider mcp: which of the MCP server's authorization servers to use (issuer URL)")(
      "token-endpoint-auth", po::value<std::string>(), "client_secret_basic (default), client_secret_post or none")(
      "reuse-window", po::value<std::string>(), "seconds the provider accepts a rotated refresh token (atlassian: 600)")(
      "refresh-buffer", po::value<std::string>(), "refresh this many seconds before expiry (default: tokend's)")(
      "site", po::value<std::string>(), "Jira/Confluence site URL")(
      "api-base", po::value<std::string>(), "base URL for proxied calls (generic)")(
      "sink-file", po::value<std::vector<std::string>>(), "also write the token to this file at every refresh (0600)")(
      "sink-dotenv", po::value<std::vector<std::string>>(),
      "also update VARIABLE in this .env file: PATH[=VARIABLE] (default ACCESS_TOKEN)");
}

void check_choice(const po::variables_map& vm, const char* flag, std::initializer_list<std::string_view> choices) {
  const auto v = opt(vm, flag);
  if (!v) return;
  for (const auto c : choices) {
    if (*v == c) return;
  }
  throw UsageError{fmt::format("--{} must be one of: {}", flag, fmt::join(choices, ", "))};
}

// Usage errors in add_profile_options() values, before anything is read.
void check_profile_options(const po::variables_map& vm) {
  check_choice(vm, "provider", {"atlassian", "atlassian-dc", "generic", "mcp"});
  if (vm.count("authorize-param") != 0) {
    for (const auto& kv : vm["authorize-param"].as<std::vector<std::string>>()) {
      if (kv.find('=') == std::string::npos || kv.front() == '=') {
        throw UsageError{fmt::format("--authorize-param takes NAME=VALUE, not '{}'", kv.substr(0, 64))};
      }
    }
  }
  check_choice(vm, "pkce", {"S256", "required", "off"});
  check_choice(vm, "token-endpoint-auth", {"client_secret_basic", "client_secret_post", "none"});
  seconds(vm, "reuse-window", 86'400);
  seconds(vm, "refresh-buffer", 86'400);
}

// Sets the fields of add_profile_options() given on the command line
// (checked by check_profile_options first).
void apply_profile_options(const po::variables_map& vm, json::Json& body) {
  const std::pair<const char*, const char*> plain[] = {
      {"provider", "provider"},
      {"client-id", "client_id"},
      {"scopes", "scopes"},
      {"issuer", "issuer"},
      {"authorize-url", "authorize_url"},
      {"token-url", "token_url"},
      {"device-authorization-url", "device_authorization_url"},
      {"registration-url", "registration_url"},
      {"revocation-url", "revocation_url"},
      {"userinfo-url", "userinfo_url"},
      {"redirect-uri", "redirect_uri"},
      {"mcp-server", "mcp_server"},
      {"resource", "resource"},
      {"audience", "audience"},
      {"pkce", "pkce"},
      {"prompt", "prompt"},
      {"authorization-server", "authorization_server"},
      {"token-endpoint-auth", "token_endpoint_auth"},
      {"site", "site"},
      {"api-base", "api_base"}};
  for (const auto& [flag, field] : plain) {
    if (auto v = opt(vm, flag)) body[field] = *v;
  }
  if (vm.count("authorize-param") != 0) {
    json::Json params = json::Json::object();
    for (const auto& kv : vm["authorize-param"].as<std::vector<std::string>>()) {
      const auto eq = kv.find('=');
      params[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    body["authorize_params"] = std::move(params);
  }
  if (auto w = seconds(vm, "reuse-window", 86'400)) body["reuse_window"] = *w;
  if (auto b = seconds(vm, "refresh-buffer", 86'400)) body["refresh_buffer"] = *b;
  if (vm.count("sink-file") != 0 || vm.count("sink-dotenv") != 0) {
    json::Json sinks = json::Json::array();
    auto absolute = [](const std::string& p) {
      return std::filesystem::path(p).is_absolute() ? p : std::filesystem::absolute(p).string();
    };
    if (vm.count("sink-file") != 0) {
      for (const auto& p : vm["sink-file"].as<std::vector<std::string>>()) {
        sinks.push_back({{"type", "file"}, {"path", absolute(p)}});
      }
    }
    if (vm.count("sink-dotenv") != 0) {
      for (const auto& spec : vm["sink-dotenv"].as<std::vector<std::string>>()) {
        const auto eq = spec.rfind('=');
        json::Json sink = {{"type", "dotenv"}, {"path", absolute(spec.substr(0, eq))}};
        if (eq != std::string::npos) sink["variable"] = spec.substr(eq + 1);
        sinks.push_back(std::move(sink));
      }
    }
    body["sinks"] = std::move(sinks);
  }
}

int cmd_add(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl add PROFILE --kind oauth2|api-token|pat [options]");
  o.add_options()("kind", po::value<std::string>(), "oauth2, api-token or pat");
  add_profile_options(o);
  o.add_options()("client-secret-file", po::value<std::string>(), "file holding the client secret, or - for stdin")(
      "email", po::value<std::string>(), "account email (api-token)")(
      "token-file", po::value<std::string>(), "file holding the API token, PAT or access token, or - for stdin")(
      "refresh-token-file", po::value<std::string>(), "file holding a refresh token, or - for stdin")(
      "expires-in", po::value<std::string>(), "seconds the supplied access token stays valid");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  const std::string kind = need(vm, "kind", "--kind oauth2|api-token|pat");
  if (kind != "oauth2" && kind != "api-token" && kind != "pat") {
    throw UsageError{fmt::format("unknown kind '{}'; use oauth2, api-token or pat", kind)};
  }
  check_profile_options(vm);
  int stdin_users = 0;
  for (const char* f : {"client-secret-file", "token-file", "refresh-token-file"}) {
    if (opt(vm, f) == "-") ++stdin_users;
  }
  if (stdin_users > 1) throw UsageError{"only one secret can come from standard input (-)"};

  json::Json body = {{"kind", kind}};
  apply_profile_options(vm, body);
  if (auto e = opt(vm, "email")) body["email"] = *e;
  if (auto e = seconds(vm, "expires-in", 10U * 365 * 24 * 3600)) body["expires_in"] = *e;

  std::vector<Secret> held;  // wiped on return
  auto secret_from = [&](const char* flag, const char* field, std::string_view what, bool required) -> int {
    std::optional<Secret> s;
    if (auto src = opt(vm, flag)) {
      auto r = read_secret(*src, what, ctx.io.in);
      if (!r) throw UsageError{r.error().message};
      s = std::move(*r);
    } else if (required) {
      if (::isatty(::fileno(ctx.io.in)) == 0) {
        throw UsageError{fmt::format("kind {} needs the {}: pass --{} FILE (or - for standard input)", kind, what, flag)};
      }
      auto r = prompt_secret(fmt::format("{} for {}: ", what, name));
      if (!r) throw UsageError{r.error().message};
      s = std::move(*r);
    }
    if (s) {
      body[field] = std::string(s->reveal());
      held.push_back(std::move(*s));
    }
    return 0;
  };
  const bool static_kind = kind != "oauth2";
  secret_from("token-file", static_kind ? "token" : "access_token",
              kind == "api-token" ? "API token" : kind == "pat" ? "personal access token" : "access token",
              static_kind);
  secret_from("refresh-token-file", "refresh_token", "refresh token", false);
  secret_from("client-secret-file", "client_secret", "client secret", false);

  std::string payload = body.dump();
  wipe_strings(body);
  auto c = call(ctx, "PUT", "/v1/profiles/" + seg(name), payload);
  secure_wipe(payload);
  if (c.exit != k_ok) return c.exit;
  say(ctx.io.out, fmt::format("{} profile {} ({}), state {}\n", c.response->status == 201 ? "added" : "updated", name,
                              c.body.value("kind", kind), c.body.value("state", "?")));
  return k_ok;
}

int cmd_import(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o(
      "tokenctl import PROFILE --dotenv FILE | --from-env [options]\n"
      "Reads JIRA_OAUTH_CLIENT_ID, _CLIENT_SECRET, _REDIRECT_URI, _ACCESS_TOKEN and _REFRESH_TOKEN,\n"
      "and when present JIRA_OAUTH_SCOPES, JIRA_OAUTH_SITE (or JIRA_URL, JIRA_BASE_URL) and\n"
      "JIRA_OAUTH_EXPIRES_AT (else the access token's JWT exp). Options override the file");
  o.add_options()("dotenv", po::value<std::string>(), "read the JIRA_OAUTH_* variables from this .env file")(
      "from-env", "read them from the environment");
  add_profile_options(o);
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  const auto dotenv = opt(vm, "dotenv");
  const bool from_env = vm.count("from-env") != 0;
  if (dotenv.has_value() == from_env) throw UsageError{"give either --dotenv FILE or --from-env"};
  check_profile_options(vm);

  DotenvValues vars;
  if (dotenv) {
    auto r = read_dotenv_file(*dotenv);
    if (!r) {
      if (r.error().code == Errc::io) throw UsageError{r.error().message};
      return error(ctx, r.error().message);
    }
    vars = std::move(*r);
  } else {
    const EnvLookup env = process_env();
    for (const auto& names : {std::span<const std::string_view>(k_import_required),
                              std::span<const std::string_view>(k_import_optional)}) {
      for (const auto n : names) {
        if (auto v = env(std::string(n).c_str())) vars.insert_or_assign(std::string(n), Secret::adopt(std::move(*v)));
      }
    }
  }
  // Flags override the file's values (and satisfy a missing variable).
  const std::pair<const char*, const char*> overrides[] = {{"client-id", "JIRA_OAUTH_CLIENT_ID"},
                                                          {"redirect-uri", "JIRA_OAUTH_REDIRECT_URI"},
                                                          {"scopes", "JIRA_OAUTH_SCOPES"},
                                                          {"site", "JIRA_OAUTH_SITE"}};
  for (const auto& [flag, variable] : overrides) {
    if (auto v = opt(vm, flag)) vars.insert_or_assign(variable, Secret(*v));
  }
  const std::string provider = opt(vm, "provider").value_or("atlassian");
  auto body = import_profile_body(vars, provider);
  vars.clear();
  const std::string source = dotenv ? *dotenv : "the environment";
  if (!body) {
    if (body.error().code == Errc::not_found) throw UsageError{fmt::format("{} in {}", body.error().message, source)};
    return error(ctx, fmt::format("{}: {}", source, body.error().message));
  }
  apply_profile_options(vm, *body);
  const bool has_sink = body->contains("sinks");

  std::string payload = body->dump();
  wipe_strings(*body);
  auto c = call(ctx, "PUT", "/v1/profiles/" + seg(name), payload);
  secure_wipe(payload);
  if (c.exit != k_ok) return c.exit;

  const std::string shown_provider = jstr(c.body, "provider").empty() ? provider : jstr(c.body, "provider");
  std::string next;
  if (auto n = jint(c.body, "next_refresh_at")) {
    next = "next refresh " + relative_time(n, now_s());
  } else if (jstr(c.body, "state") == "refreshing") {
    next = "refreshing now";
  } else {
    next = fmt::format("no refresh scheduled (state {})", jstr(c.body, "state"));
  }
  say(ctx.io.out, fmt::format("Imported {}{} ({} OAuth, {}); {}\n", name,
                              c.response->status == 200 ? " over the existing profile" : "", shown_provider,
                              jbool(c.body, "has_refresh_token") ? "refresh token stored" : "no refresh token", next));
  if (!has_sink) {
    std::string note = fmt::format(
        "Note: tokend refreshes {} from now on. A refresh can replace the refresh token, and then the one in {} stops "
        "working{}: stop any script that refreshes it.",
        name, dotenv ? *dotenv : "your scripts' environment",
        shown_provider == "atlassian" ? " (Atlassian accepts the previous one for 10 minutes)" : "");
    if (dotenv) {
      note += fmt::format(" Scripts that only read the access token can have tokend keep it current there: add "
                          "--sink-dotenv {}=JIRA_OAUTH_ACCESS_TOKEN.",
                          *dotenv);
    }
    say(ctx.io.err, note + "\n");
  }
  return k_ok;
}

int cmd_renew(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl renew PROFILE | --all");
  o.add_options()("all", "every OAuth profile that has a refresh token");
  auto vm = parse(args, o, {"profile"});
  std::vector<std::string> names;
  if (vm.count("all") != 0) {
    if (vm.count("profile") != 0) throw UsageError{"give a PROFILE or --all, not both"};
    auto c = call(ctx, "GET", "/v1/profiles");
    if (c.exit != k_ok) return c.exit;
    for (const auto& p : c.body["profiles"]) {
      if (p.value("kind", "") == "oauth2" && p.value("has_refresh_token", false)) names.push_back(p.value("name", ""));
    }
    if (names.empty()) {
      say(ctx.io.out, "no OAuth profile with a refresh token\n");
      return k_ok;
    }
  } else {
    names.push_back(need(vm, "profile", "PROFILE or --all"));
  }
  int worst = k_ok;
  for (const auto& name : names) {
    auto c = call(ctx, "POST", "/v1/profiles/" + seg(name) + "/refresh", {}, std::chrono::seconds(120));
    if (c.exit != k_ok) {
      worst = std::max(worst, c.exit);
      continue;
    }
    const auto exp = c.body.find("expires_at");
    const std::string until = exp != c.body.end() && exp->is_number_integer()
                                  ? fmt::format("valid until {} ({})", rfc3339(exp->get<std::int64_t>()),
                                                relative_time(exp->get<std::int64_t>(), now_s()))
                                  : "no expiry";
    say(ctx.io.out, fmt::format("{}: renewed, {}\n", name, until));
  }
  return worst;
}

int cmd_remove(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl remove PROFILE");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto c = call(ctx, "DELETE", "/v1/profiles/" + seg(name));
  if (c.exit != k_ok) return c.exit;
  say(ctx.io.out, fmt::format("removed profile {}\n", name));
  return k_ok;
}

int cmd_logout(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl logout PROFILE");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto c = call(ctx, "POST", "/v1/profiles/" + seg(name) + "/logout", {}, std::chrono::seconds(60));
  if (c.exit != k_ok) return c.exit;
  if (jbool(c.body, "revoked")) {
    say(ctx.io.out, fmt::format("Logged out of {}; the provider revoked the token.\n", name));
  } else {
    const std::string reason = jstr(c.body, "reason");
    say(ctx.io.out, fmt::format("Logged out of {} (tokens forgotten; not revoked: {}).\n", name,
                                reason.empty() ? "tokend gave no reason" : reason));
  }
  return k_ok;
}

int cmd_test(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl test PROFILE [--json]");
  o.add_options()("json", "print tokend's whole answer (including the provider's body) as JSON");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto c = call(ctx, "POST", "/v1/profiles/" + seg(name) + "/test", {}, std::chrono::seconds(60));
  if (c.exit != k_ok) return c.exit;
  const bool ok = jbool(c.body, "ok");
  if (vm.count("json") != 0) {
    say(ctx.io.out, c.body.dump(2) + "\n");
  } else {
    std::string line = fmt::format("{} {}: {} {}", ok ? "OK" : "FAILED", name,
                                   jint(c.body, "status").value_or(0), jstr(c.body, "url"));
    if (const auto summary = jstr(c.body, "summary"); !summary.empty()) line += " \u2014 " + summary;
    say(ctx.io.out, line + "\n");
  }
  return ok ? k_ok : k_error;
}

// --- login -----------------------------------------------------------------

constexpr std::string_view k_paste_prompt =
    "After you approve, paste the URL your browser ended on (or just the code) here:\n";

std::string login_path(const std::string& name) { return "/v1/profiles/" + seg(name) + "/login"; }

// "Logged in: NAME (...)" with the token's expiry from the profile (the
// flow's answer is the fallback).
int logged_in(const Ctx& ctx, const std::string& name, const json::Json& flow) {
  auto p = call(ctx, "GET", "/v1/profiles/" + seg(name), {}, std::chrono::seconds(10), Report::quiet);
  auto expires_at = p.exit == k_ok ? jint(p.body, "expires_at") : jint(flow, "expires_at");
  const auto now = now_s();
  say(ctx.io.out, expires_at ? fmt::format("Logged in: {} (token valid until {}, {})\n", name,
                                           local_clock_time(*expires_at, now), relative_time(expires_at, now))
                             : fmt::format("Logged in: {} (the token does not expire)\n", name));
  if (const auto warning = jstr(flow, "warning"); !warning.empty()) say(ctx.io.err, "tokenctl: note: " + warning + "\n");
  return k_ok;
}

// How a flow ended, from a GET .../login or login/complete answer: nullopt
// while it is pending, else the exit code after saying so.
std::optional<int> login_outcome(const Ctx& ctx, const std::string& name, const json::Json& flow) {
  const std::string state = jstr(flow, "state");
  if (state == "pending") return std::nullopt;
  if (state == "succeeded") return logged_in(ctx, name, flow);
  std::string message = error_message(flow, "");
  if (message.empty()) {
    if (state == "expired") {
      message = fmt::format("the login for {} expired before it was finished; run tokenctl login {} again", name, name);
    } else if (state == "cancelled") {
      message = fmt::format("the login for {} was cancelled (another login for it started, or it was cancelled "
                            "through the API)", name);
    } else if (state == "none") {
      message = fmt::format("tokend has no login for {} in progress (was tokend restarted?); run tokenctl login {} again",
                            name, name);
    } else {
      message = fmt::format("the login for {} ended: {}", name, state.empty() ? "tokend did not say how" : state);
    }
  }
  return error(ctx, message);
}

// Cancels the pending flow on a fresh connection and reports `message`,
// unless the flow ended by itself in the meantime.
int cancel_login(const Ctx& ctx, const std::string& name, const std::string& message) {
  auto c = call(ctx, "DELETE", login_path(name), {}, std::chrono::seconds(10), Report::quiet);
  if (c.exit == k_unreachable) return error(ctx, c.message, k_unreachable);
  if (c.response && c.response->status == 409) {
    auto st = call(ctx, "GET", login_path(name), {}, std::chrono::seconds(10), Report::quiet);
    if (st.exit == k_ok && jstr(st.body, "state") == "succeeded") return logged_in(ctx, name, st.body);
  }
  return error(ctx, message);
}

// Finishes the flow with a pasted line. nullopt: keep waiting (blank line, or
// the code was refused and the flow still takes another).
std::optional<int> complete_login(const Ctx& ctx, const std::string& name, std::string& line) {
  auto body = login_paste_body(line);
  secure_wipe(line);
  if (!body) {
    say(ctx.io.err, std::string(k_paste_prompt));
    return std::nullopt;
  }
  std::string payload = body->dump();
  wipe_strings(*body);
  auto c = call(ctx, "POST", login_path(name) + "/complete", payload, std::chrono::seconds(120), Report::quiet);
  secure_wipe(payload);
  if (c.exit == k_ok) return login_outcome(ctx, name, c.body);
  if (c.exit == k_unreachable) return error(ctx, c.message, k_unreachable);
  // Refused (wrong state, an error= in the URL, a bad code, or no code flow
  // pending): the flow's own state says whether it is over.
  auto st = call(ctx, "GET", login_path(name), {}, std::chrono::seconds(10), Report::quiet);
  if (st.exit != k_ok) return error(ctx, c.message, c.exit);
  const std::string state = jstr(st.body, "state");
  if (state == "pending") {
    error(ctx, c.message);
    say(ctx.io.err, std::string(k_paste_prompt));
    return std::nullopt;
  }
  if (state == "failed" && error_message(st.body, "").empty()) return error(ctx, c.message, c.exit);
  return login_outcome(ctx, name, st.body);
}

struct LoginWait {
  std::string name;
  std::chrono::steady_clock::time_point deadline;
  unsigned timeout_s = 600;
  bool read_paste = false;                   // also take a pasted redirect URL or code
  std::optional<BackgroundProcess> browser;  // reaped while waiting
  std::string opener;
};

// Long-polls GET .../login?wait=N until the flow leaves pending, watching
// stdin for a pasted line (w.read_paste) and the interrupt pipe at the same
// time. Ctrl-C and the timeout cancel the flow.
int wait_for_login(const Ctx& ctx, LoginWait& w, const InterruptWatch& interrupt) {
  using clock = std::chrono::steady_clock;
  constexpr auto k_answer_grace = std::chrono::seconds(15);
  const int in_fd = ::fileno(ctx.io.in);
  bool stdin_open = w.read_paste && in_fd >= 0;
  std::string pasted;  // a line being typed or pasted; wiped
  struct Wipe {
    std::string& s;
    ~Wipe() { secure_wipe(s); }
  } wipe{pasted};
  std::optional<client::Client> poller;
  std::optional<clock::time_point> answer_due;  // set while a GET is outstanding
  const std::string lost = fmt::format("lost the connection to tokend at {}; {}", ctx.socket.string(), k_start_hint);

  for (;;) {
    if (interrupt.interrupted()) {
      if (::isatty(::fileno(ctx.io.err)) != 0) say(ctx.io.err, "\n");
      return cancel_login(ctx, w.name, "login cancelled");
    }
    if (w.browser) {
      if (auto status = w.browser->reap(); status && *status != 0) {
        say(ctx.io.err, fmt::format("({} failed (status {}); open the URL above yourself)\n", w.opener, *status));
      }
    }
    const auto now = clock::now();
    if (now >= w.deadline) {
      return cancel_login(ctx, w.name, fmt::format("the login did not finish within {} s; cancelled it", w.timeout_s));
    }
    if (!answer_due) {
      if (!poller) {
        auto c = client::Client::connect(ctx.socket);
        if (!c) {
          const auto f = connect_failure(c.error());
          return error(ctx, f.message, f.exit);
        }
        poller.emplace(std::move(*c));
      }
      const auto left = std::chrono::ceil<std::chrono::seconds>(w.deadline - now).count();
      const auto wait_s = std::clamp<std::int64_t>(left, 1, 30);
      if (!poller->send_request("GET", fmt::format("{}?wait={}", login_path(w.name), wait_s))) {
        return error(ctx, lost, k_unreachable);
      }
      answer_due = now + std::chrono::seconds(wait_s) + k_answer_grace;
    }

    pollfd fds[3];
    nfds_t n = 0;
    fds[n++] = {poller->fd(), POLLIN, 0};
    const nfds_t in_slot = stdin_open ? n : 3;
    if (stdin_open) fds[n++] = {in_fd, POLLIN, 0};
    if (interrupt.fd() >= 0) fds[n++] = {interrupt.fd(), POLLIN, 0};
    // Wake at least once a second to notice the browser helper exiting.
    const auto until = std::min({w.deadline, *answer_due, now + std::chrono::seconds(1)});
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count();
    const int pr = ::poll(fds, n, static_cast<int>(std::max<std::int64_t>(ms, 0)));
    if (pr < 0) {
      if (errno == EINTR) continue;
      return error(ctx, "waiting for the login: " + errno_text(errno));
    }

    if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      auto r = poller->read_response(k_answer_grace);
      answer_due.reset();
      if (!r) {
        if (r.error().code == Errc::timeout) return error(ctx, r.error().message);
        return error(ctx, lost, k_unreachable);
      }
      json::Json flow;
      if (auto j = json::parse(r->body, "tokend's answer")) flow = std::move(*j);
      if (r->status >= 400) return error(ctx, error_message(flow, fmt::format("tokend answered {}", r->status)));
      if (auto rc = login_outcome(ctx, w.name, flow)) return *rc;
      for (const auto& [k, v] : r->headers) {
        if (k.size() == 10 && ::strncasecmp(k.c_str(), "connection", 10) == 0 && v == "close") poller.reset();
      }
    } else if (clock::now() >= *answer_due) {
      return error(ctx, "tokend did not answer while the login was pending", k_error);
    }

    if (in_slot < n && (fds[in_slot].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      char chunk[4096];
      const ssize_t got = ::read(in_fd, chunk, sizeof chunk);
      if (got < 0 && errno != EINTR && errno != EAGAIN) stdin_open = false;
      if (got == 0) {
        stdin_open = false;
        if (!pasted.empty()) pasted += '\n';  // a last line without a newline
      }
      if (got > 0) pasted.append(chunk, static_cast<std::size_t>(got));
      secure_wipe(chunk, sizeof chunk);
      if (pasted.size() > 64 * 1024) {
        secure_wipe(pasted);
        pasted.clear();
        say(ctx.io.err, "tokenctl: that line is longer than 64 KiB; paste the redirect URL or the code\n");
      }
      std::size_t nl;
      while ((nl = pasted.find('\n')) != std::string::npos) {
        std::string line = pasted.substr(0, nl);
        std::fill(pasted.begin(), pasted.begin() + static_cast<std::ptrdiff_t>(nl) + 1, '\0');
        pasted.erase(0, nl + 1);
        if (auto rc = complete_login(ctx, w.name, line)) return *rc;
      }
    }
  }
}

// scheme://host:port of a URL, lower-cased, the port explicit ("" when the
// text is not an http(s) URL): enough to tell two sites apart.
std::string site_of(std::string_view url) {
  const auto sep = url.find("://");
  if (sep == std::string_view::npos) return {};
  std::string scheme(url.substr(0, sep));
  std::string_view authority = url.substr(sep + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  if (const auto at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string host(authority);
  for (auto& c : scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (auto& c : host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (scheme != "http" && scheme != "https") return {};
  const auto close = host.rfind(']');
  const auto colon = host.rfind(':');
  if (colon == std::string::npos || (close != std::string::npos && colon < close)) {
    host += scheme == "https" ? ":443" : ":80";
  }
  return scheme + "://" + host;
}

// An MCP server picks its own authorization server. When that is another
// site, the person about to sign in should know whom they are signing in to
// before the browser opens (a server could name someone else's, a confused
// deputy).
void hint_foreign_authorization_server(const Ctx& ctx, const std::string& name, const std::string& authorize_url) {
  auto p = call(ctx, "GET", "/v1/profiles/" + seg(name), {}, std::chrono::seconds(10), Report::quiet);
  if (p.exit != k_ok || jstr(p.body, "provider") != "mcp") return;
  const std::string server = p.body.contains("config") ? jstr(p.body["config"], "mcp_server") : std::string();
  const std::string server_site = site_of(server);
  const std::string auth_site = site_of(authorize_url);
  if (server_site.empty() || auth_site.empty() || server_site == auth_site) return;
  say(ctx.io.err, fmt::format("Note: the MCP server {} sends you to sign in at {}, a different site. Continue only if "
                              "you expect that site to grant access to this server.\n",
                              server_site, auth_site));
}

int cmd_login(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl login PROFILE [--device] [--no-browser] [--timeout S]");
  o.add_options()("device", "device authorization grant (RFC 8628): enter a code shown here on any device")(
      "no-browser", "do not open a browser: print the URL and read back the redirect URL or code you paste")(
      "timeout", po::value<std::string>(), "seconds to wait for the login to finish (default 600)");
  auto vm = parse(args, o, {"profile"});
  LoginWait w;
  w.name = need(vm, "profile", "PROFILE");
  const bool device = vm.count("device") != 0;
  const bool no_browser = vm.count("no-browser") != 0;
  w.timeout_s = seconds(vm, "timeout", 86'400).value_or(600);
  if (w.timeout_s == 0) throw UsageError{"--timeout must be at least 1 second"};

  // Starting may take a while (discovery, client registration); Ctrl-C then
  // still ends tokenctl the default way, and a flow tokend starts after all
  // expires or is replaced by the next login.
  json::Json request = {{"flow", device ? "device" : "code"}};
  if (!device) request["listen"] = true;  // "listen" is a code-flow setting
  auto started = call(ctx, "POST", login_path(w.name), request.dump(), std::chrono::seconds(90));
  if (started.exit != k_ok) return started.exit;
  InterruptWatch interrupt;  // from here on Ctrl-C cancels the flow
  w.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(w.timeout_s);

  const EnvLookup env = process_env();
  const auto opener = no_browser ? std::nullopt : url_opener(env);
  // Starts the browser; false (after saying why) when that did not work.
  auto open_browser = [&](const std::string& url) {
    if (!opener) return false;
    auto p = BackgroundProcess::start(*opener, url);
    if (!p) {
      say(ctx.io.err, fmt::format("tokenctl: {}\n", p.error().message));
      return false;
    }
    w.browser.emplace(std::move(*p));
    w.opener = *opener;
    return true;
  };
  const auto& a = started.body;
  // Which of the MCP server's authorization servers this login uses.
  if (const std::string note = jstr(a, "authorization_server_note"); !note.empty()) say(ctx.io.err, note + "\n");
  if (device) {
    say(ctx.io.err, fmt::format("To sign in, open {} and enter the code {}\n", jstr(a, "verification_uri"),
                                jstr(a, "user_code")));
    const std::string complete = jstr(a, "verification_uri_complete");
    if (!complete.empty()) say(ctx.io.err, fmt::format("  (or open {}, which has the code filled in)\n", complete));
    open_browser(complete.empty() ? jstr(a, "verification_uri") : complete);
  } else {
    const std::string url = jstr(a, "authorize_url");
    const bool listening = jbool(a, "listening");
    hint_foreign_authorization_server(ctx, w.name, url);
    if (open_browser(url)) {
      say(ctx.io.err, fmt::format("Opening your browser to sign in to {}... If it does not open, visit:\n  {}\n",
                                  w.name, url));
    } else {
      if (!no_browser && !opener) {
        say(ctx.io.err, "(No browser to open here: DISPLAY and WAYLAND_DISPLAY are not set; BROWSER picks one.)\n");
      }
      say(ctx.io.err, fmt::format("To sign in to {}, open this URL in a browser:\n  {}\n", w.name, url));
    }
    // A paste finishes the flow when the browser is elsewhere, or when tokend
    // cannot catch the redirect itself.
    w.read_paste = no_browser || !listening || !w.browser;
  }
  say(ctx.io.err, "Waiting for the login to finish (Ctrl-C cancels)...\n");
  if (w.read_paste) say(ctx.io.err, std::string(k_paste_prompt));
  return wait_for_login(ctx, w, interrupt);
}

// --- api and exec ------------------------------------------------------------

// Closes a file descriptor on scope exit.
struct FdCloser {
  int fd = -1;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

// A proxied call (docs/API.md, ANY /v1/proxy/{name}/{rest}), like `gh api`.
// Bodies stream both ways. Exit codes: 0 for an answer below 400; 1 for 400
// and above (4 when tokend says reauth_required), for a cut-off answer or an
// unreadable --data source; 2 usage; 3 tokend not reachable (or the
// connection lost before an answer started).
int cmd_api(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o(
      "tokenctl api PROFILE METHOD PATH [--data @FILE|-|STRING] [-H \"Name: value\"]... [--include]\n"
      "Sends METHOD to tokend's proxy for PROFILE (PATH e.g. jira/rest/api/3/myself; a leading / and a\n"
      "query string are fine) and prints the answer's body. tokend adds the profile's credential and\n"
      "drops an Authorization or Cookie header given here. For an answer of 400 or more the status goes\n"
      "to stderr and the exit code is 1 (4 when a new login is needed); tokend's own errors print\n"
      "their message instead of the body");
  o.add_options()("data,d", po::value<std::string>(),
                  "request body: @FILE (streamed from the file), - (streamed from standard input) or the text "
                  "itself; Content-Type application/json unless -H sets one")(
      "header,H", po::value<std::vector<std::string>>(), "a request header, \"Name: value\" (repeatable)")(
      "include,i", "print the status line and headers before the body")(
      "timeout", po::value<std::string>(), "give up after this many seconds without progress (default 120; 0: never)");
  auto vm = parse(args, o, {"profile", "method", "path"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto method = normalize_method(need(vm, "method", "METHOD"));
  if (!method) throw UsageError{method.error().message};
  auto target = proxy_target(name, need(vm, "path", "PATH"));
  if (!target) throw UsageError{target.error().message};
  const bool include = vm.count("include") != 0;
  const auto timeout = std::chrono::seconds(seconds(vm, "timeout", 86'400).value_or(120));

  client::Headers headers;
  bool has_content_type = false;
  if (vm.count("header") != 0) {
    for (const auto& h : vm["header"].as<std::vector<std::string>>()) {
      auto parsed = parse_header_arg(h);
      if (!parsed) throw UsageError{parsed.error().message};
      if (is_framing_header(parsed->first)) {
        throw UsageError{fmt::format("-H {}: tokenctl handles this header itself", parsed->first)};
      }
      if (is_replaced_header(parsed->first)) {
        say(ctx.io.err, fmt::format("tokenctl: note: tokend drops the {} header; the profile's credential is used\n",
                                    parsed->first));
      }
      has_content_type = has_content_type || ::strcasecmp(parsed->first.c_str(), "Content-Type") == 0;
      headers.push_back(std::move(*parsed));
    }
  }

  // The body source is opened before anything is sent: a missing file is a
  // usage error and tokend never sees half a request.
  const auto data = parse_data_arg(opt(vm, "data"));
  std::optional<client::BodyReader> body;
  FdCloser file;
  if (data) {
    if (!has_content_type) headers.emplace_back("Content-Type", "application/json");
    switch (data->kind) {
      case DataArg::Kind::literal: body = client::BodyReader::from_string(data->value); break;
      case DataArg::Kind::stdin_stream: body = client::BodyReader::from_fd(::fileno(ctx.io.in), "standard input"); break;
      case DataArg::Kind::file: {
        if (data->value.empty()) throw UsageError{"--data @FILE needs a file name after the @"};
        file.fd = ::open(data->value.c_str(), O_RDONLY | O_CLOEXEC);
        if (file.fd < 0) throw UsageError{fmt::format("cannot open {}: {}", data->value, errno_text(errno))};
        struct stat st {};
        if (::fstat(file.fd, &st) == 0 && S_ISDIR(st.st_mode)) throw UsageError{data->value + " is a directory"};
        body = client::BodyReader::from_fd(file.fd, data->value);
        break;
      }
    }
  }

  auto client = client::Client::connect(ctx.socket);
  if (!client) {
    const auto f = connect_failure(client.error());
    return error(ctx, f.message, f.exit);
  }

  // An answer of 400 or more is held back (up to k_error_peek bytes) to see
  // whether tokend itself wrote it; anything else streams to stdout.
  constexpr std::size_t k_error_peek = 64 * 1024;
  client::ResponseHead head;
  bool holding = false;
  std::string held;
  int write_errno = 0;
  auto write_out = [&](std::string_view d) {
    if (write_errno != 0) return false;
    if (std::fwrite(d.data(), 1, d.size(), ctx.io.out) != d.size() || std::fflush(ctx.io.out) != 0) {
      write_errno = errno != 0 ? errno : EIO;
      return false;
    }
    return true;
  };
  auto r = client->exchange(
      *method, *target, headers, body ? &*body : nullptr,
      [&](const client::ResponseHead& h) {
        head = h;
        holding = h.status >= 400;
        return !include || write_out(render_response_head(h));
      },
      [&](std::string_view d) {
        if (!holding) return write_out(d);
        held.append(d);
        if (held.size() <= k_error_peek) return true;
        holding = false;
        const bool ok = write_out(held);
        held.clear();
        return ok;
      },
      timeout);
  if (write_errno != 0) return error(ctx, "writing the answer to standard output: " + errno_text(write_errno));
  if (!r) {
    const Error& e = r.error();
    if (head.status != 0) {
      write_out(held);
      return error(ctx, fmt::format("the answer (HTTP {}) was cut off: {}", head.status, e.message));
    }
    if (e.code == Errc::unavailable) {
      return error(ctx, fmt::format("{}; {}", e.message, k_start_hint), k_unreachable);
    }
    return error(ctx, e.message, e.code == Errc::invalid_argument ? k_usage : k_error);
  }
  if (head.status < 400) return k_ok;
  const auto own = holding ? parse_tokend_error(held) : std::nullopt;
  if (include || !own) write_out(held);
  if (own) {
    std::string message = fmt::format("HTTP {}: {}", head.status, own->message);
    if (!own->command.empty() && own->message.find(own->command) == std::string::npos) {
      message += fmt::format(" (run: {})", own->command);
    }
    return error(ctx, message, own->code == "reauth_required" ? k_reauth : k_error);
  }
  return error(ctx, fmt::format("HTTP {}{}{}", head.status, head.reason.empty() ? "" : " ", head.reason));
}

// A stand-in endpoint tokend keeps open while `client` stays connected
// (POST /v1/profiles/NAME/endpoint; see docs/API.md).
struct OpenedEndpoint {
  std::optional<client::Client> client;
  json::Json answer;  // url, urls, port, user, standin
  int exit = k_ok;
};

OpenedEndpoint open_endpoint(const Ctx& ctx, const std::string& name, std::optional<std::int64_t> wait_s,
                             pid_t command_pid) {
  OpenedEndpoint out;
  auto client = client::Client::connect(ctx.socket);
  if (!client) {
    const auto f = connect_failure(client.error());
    out.exit = error(ctx, f.message, f.exit);
    return out;
  }
  std::string target = "/v1/profiles/" + seg(name) + "/endpoint";
  if (wait_s) target += fmt::format("?wait={}", *wait_s);
  int status = 0;
  std::string received;  // the first line of a 200; the whole answer otherwise
  bool line_done = false;
  // Calls through the endpoint are audited with the command's pid.
  const std::string request = json::Json{{"pid", command_pid}}.dump();
  auto body = client::BodyReader::from_string(request);
  auto head = client->exchange(
      "POST", target, {}, &body,
      [&](const client::ResponseHead& h) {
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
  if (!head) {
    out.exit = error(ctx, head.error().message, head.error().code == Errc::unavailable ? k_unreachable : k_error);
    return out;
  }
  auto parsed = json::parse(received, "tokend's answer");
  secure_wipe(received);
  if (status != 200) {
    const json::Json err = parsed ? *parsed : json::Json::object();
    const bool reauth = err.is_object() && err.contains("error") && err["error"].is_object() &&
                        jstr(err["error"], "code") == "reauth_required";
    out.exit = error(ctx, error_message(err, fmt::format("tokend answered {}", status)), reauth ? k_reauth : k_error);
    return out;
  }
  if (!line_done || !parsed || jstr(*parsed, "url").empty() || jstr(*parsed, "standin").empty()) {
    if (parsed) wipe_strings(*parsed);
    out.exit = error(ctx, "tokend's endpoint answer is incomplete");
    return out;
  }
  out.answer = std::move(*parsed);
  out.client.emplace(std::move(*client));
  return out;
}

// Runs a command with a fresh token in its environment (see ctl/exec.hpp for
// the variables and the signal rules), or with --endpoint a loopback URL and
// a stand-in credential. Exit codes: the command's own; when a
// signal killed it, tokenctl kills itself with the same signal (a shell then
// reports the same death), falling back to 128 + the signal number. Before
// the command runs: 1, 2, 3, 4 as usual, 127 when the command is not found,
// 126 when it cannot be executed.
int cmd_exec(Ctx& ctx, const std::vector<std::string>& args) {
  const auto dash = std::find(args.begin(), args.end(), "--");
  const std::vector<std::string> own(args.begin(), dash);
  po::options_description o(
      "tokenctl exec PROFILE [--env NAME]... [--min-valid S] [--wait S] -- CMD [ARG...]\n"
      "tokenctl exec PROFILE --endpoint [--url-env NAME[=PRODUCT]]... [--standin-env NAME]...\n"
      "              [--user-env NAME]... [--wait S] -- CMD [ARG...]\n"
      "Runs CMD (no shell). Signals sent to tokenctl reach CMD; its exit status is tokenctl's.\n"
      "Without --endpoint CMD gets the profile's token in TOKEND_TOKEN, TOKEND_AUTHORIZATION,\n"
      "TOKEND_TOKEN_TYPE and TOKEND_EXPIRES_AT, for Atlassian OAuth profiles also in\n"
      "JIRA_OAUTH_ACCESS_TOKEN (and JIRA_OAUTH_CLOUD_ID): it goes stale when the token expires.\n"
      "With --endpoint (recommended) CMD never sees the token: tokend opens a loopback URL that\n"
      "reaches the profile's upstream with a fresh token on every call, for as long as CMD runs,\n"
      "and CMD gets that URL in TOKEND_URL (TOKEND_JIRA_URL, TOKEND_CONFLUENCE_URL) and a random\n"
      "stand-in credential in TOKEND_TOKEN (TOKEND_AUTHORIZATION, JIRA_OAUTH_ACCESS_TOKEN), to\n"
      "send as a Bearer token or as the Basic password (any user name; TOKEND_USER)");
  o.add_options()("env", po::value<std::vector<std::string>>(),
                  "also put the token (with --endpoint: the stand-in) into variable NAME (repeatable)")(
      "min-valid", po::value<std::string>(),
                  "seconds the token must stay valid (default 60; capped at what a fresh token gives)")(
      "wait", po::value<std::string>(), "seconds to wait for a refresh or login in progress")(
      "endpoint", "give CMD a loopback URL and a stand-in credential instead of the token")(
      "url-env", po::value<std::vector<std::string>>(),
                 "with --endpoint: put the endpoint's URL into NAME, or with NAME=jira|confluence that "
                 "product's URL (repeatable)")(
      "standin-env", po::value<std::vector<std::string>>(),
                     "with --endpoint: put the stand-in credential into NAME (repeatable)")(
      "user-env", po::value<std::vector<std::string>>(),
                  "with --endpoint: put a user name for Basic authentication into NAME (repeatable)");
  auto vm = parse(own, o, {"profile"}, /*allow_extra=*/true);
  const std::string name = need(vm, "profile", "PROFILE");
  if (dash == args.end()) throw UsageError{"put -- before the command: tokenctl exec PROFILE -- CMD [ARG...]"};
  if (vm.count("args") != 0) {
    throw UsageError{fmt::format("unexpected '{}' before --", vm["args"].as<std::vector<std::string>>()[0].substr(0, 64))};
  }
  const std::vector<std::string> command(dash + 1, args.end());
  if (command.empty() || command[0].empty()) throw UsageError{"no command after --"};
  auto list = [&](const char* key) {
    return vm.count(key) != 0 ? vm[key].as<std::vector<std::string>>() : std::vector<std::string>{};
  };
  std::vector<std::string> extra = list("env");
  for (const auto& n : extra) {
    if (!is_env_name(n)) {
      throw UsageError{fmt::format("--env {}: not a variable name (letters, digits and _, not starting with a digit)",
                                   n.substr(0, 64))};
    }
  }
  const bool endpoint = vm.count("endpoint") != 0;
  if (!endpoint) {
    for (const char* flag : {"url-env", "standin-env", "user-env"}) {
      if (vm.count(flag) != 0) throw UsageError{fmt::format("--{} needs --endpoint", flag)};
    }
  } else if (vm.count("min-valid") != 0) {
    throw UsageError{"--min-valid does not apply to --endpoint: every call gets a fresh token"};
  }
  // seconds() throws UsageError for a bad value: check before any call.
  seconds(vm, "min-valid", 86'400);
  const auto wait_s = seconds(vm, "wait", 3'600);

  auto profile = call(ctx, "GET", "/v1/profiles/" + seg(name));
  if (profile.exit != k_ok) return profile.exit;
  const json::Json config = profile.body.is_object() && profile.body.contains("config") ? profile.body["config"]
                                                                                          : json::Json::object();
  const std::string kind = jstr(profile.body, "kind");
  const std::string provider = jstr(profile.body, "provider");
  const std::string cloud_id = jstr(config, "cloud_id");

  std::vector<std::pair<std::string, std::string>> vars;
  // Held open while CMD runs: its end closes the endpoint.
  std::optional<client::Client> endpoint_connection;
  // With --endpoint CMD is started first and held before exec, so that
  // tokend knows its pid when it opens the endpoint.
  std::optional<HeldCommand> held;
  if (endpoint) {
    EndpointEnvNames names{list("url-env"), extra, list("user-env")};
    for (auto& n : list("standin-env")) names.standin.push_back(std::move(n));
    // Names are checked before tokend opens anything (products once it has).
    for (const auto& [flag, specs] : {std::pair{"--url-env", &names.url}, std::pair{"--standin-env", &names.standin},
                                      std::pair{"--user-env", &names.user}}) {
      for (const auto& spec : *specs) {
        const std::string n = spec.substr(0, spec.find('='));
        if (!is_env_name(n) || (spec.find('=') != std::string::npos && std::string_view(flag) != "--url-env")) {
          throw UsageError{fmt::format("{} {}: not a variable name (letters, digits and _, not starting with a digit)",
                                       flag, spec.substr(0, 64))};
        }
      }
    }
    const auto current = process_environment();
    auto started = HeldCommand::start(command, environment_bytes(current, 256 * 1024));
    if (!started) return error(ctx, started.error().message);
    held.emplace(std::move(*started));
    auto opened = open_endpoint(ctx, name, wait_s, held->pid());
    if (opened.exit != k_ok) return opened.exit;
    std::vector<std::pair<std::string, std::string>> product_urls;
    if (opened.answer.contains("urls") && opened.answer["urls"].is_object()) {
      for (const auto& [product, url] : opened.answer["urls"].items()) {
        if (url.is_string()) product_urls.emplace_back(product, url.get<std::string>());
      }
    }
    std::string standin = jstr(opened.answer, "standin");
    auto built = exec_endpoint_env({kind, provider, cloud_id, jstr(opened.answer, "url"), product_urls, standin,
                                    jstr(opened.answer, "user")},
                                   names);
    secure_wipe(standin);
    wipe_strings(opened.answer);
    if (!built) return error(ctx, built.error().message, k_usage);
    vars = std::move(*built);
    endpoint_connection.emplace(std::move(*opened.client));
  } else {
    auto token = get_token(ctx, name, vm);
    if (token.exit != k_ok) return token.exit;
    std::string bare = jstr(token.body, "token");
    std::string authorization = jstr(token.body, "authorization");
    const std::string token_type = jstr(token.body, "token_type");
    const auto expires_at = jint(token.body, "expires_at");
    wipe_call(token);
    if (bare.empty()) return error(ctx, "tokend's answer carries no token");
    vars = exec_token_env({kind, provider, cloud_id, bare, token_type, authorization, expires_at}, extra);
    secure_wipe(bare);
    secure_wipe(authorization);
  }
  auto env = merge_environment(process_environment(), vars);
  for (auto& v : vars) secure_wipe(v.second);

  auto child = held ? held->run(env) : run_command(command, env);
  for (auto& e : env) secure_wipe(e);
  endpoint_connection.reset();  // the endpoint closes with the command
  if (!child) {
    const Errc code = child.error().code;
    return error(ctx, child.error().message, code == Errc::not_found ? 127 : code == Errc::permission ? 126 : k_error);
  }
  return exit_like(*child);
}

int cmd_monitor(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl monitor [PROFILE] [--json]");
  o.add_options()("json", "one JSON object per event");
  auto vm = parse(args, o, {"profile"});
  const bool as_json = vm.count("json") != 0;
  std::string target = "/v1/events";
  if (auto p = opt(vm, "profile")) {
    if (auto ok = validate_profile_name(*p); !ok) throw UsageError{ok.error().message};
    target += "?profile=" + seg(*p);
  }
  auto client = client::Client::connect(ctx.socket);
  if (!client) {
    const auto f = connect_failure(client.error());
    return error(ctx, f.message, f.exit);
  }
  int status = 0;
  std::string pending;
  std::string error_body;
  auto r = client->stream(
      target, [&](int s) { status = s; },
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
          std::size_t pos = 0;
          while (pos < block.size()) {
            const auto nl = block.find('\n', pos);
            const std::string_view line = std::string_view(block).substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
            if (line.starts_with("data: ")) {
              auto j = json::parse(line.substr(6), "event");
              if (j) say(ctx.io.out, as_json ? j->dump() + "\n" : render_event_line(*j, ctx.colour));
            }
            if (nl == std::string::npos) break;
            pos = nl + 1;
          }
        }
        return true;
      });
  if (!r) return error(ctx, r.error().message, k_unreachable);
  if (status != 200) {
    auto j = json::parse(error_body, "answer");
    return error(ctx, j && j->contains("error") ? (*j)["error"].value("message", "event stream refused")
                                                : fmt::format("tokend answered {}", status));
  }
  return error(ctx, "tokend closed the event stream", k_unreachable);
}

int cmd_completion(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl completion bash|zsh");
  auto vm = parse(args, o, {"shell"});
  const std::string shell = need(vm, "shell", "bash or zsh");
  auto script = completion_script(shell);
  if (!script) throw UsageError{script.error().message};
  say(ctx.io.out, *script);
  return k_ok;
}

constexpr std::string_view k_mcp_config_help = R"(
tokenctl mcp config PROFILE --client CLIENT [--name ENTRY] [--write [--file PATH] [--force]]
tokenctl mcp config PROFILE --client CLIENT [--name ENTRY] [EXEC_OPTION...] -- CMD [ARG...]

Prints CLIENT's config entry that starts `tokenctl mcp PROFILE` (the MCP bridge through
tokend), in CLIENT's own format; with -- CMD, an entry that runs the local server CMD under
`tokenctl exec PROFILE --endpoint [EXEC_OPTION...] -- CMD` instead (options between PROFILE
and -- that are not listed here go to exec as they are). See docs/mcp-clients.md.

  --client CLIENT   claude-code, claude-desktop, codex, cursor, vscode, gemini or opencode
  --name ENTRY      the entry's name (default: PROFILE, '.' turned into '-')
  --write           merge the entry into CLIENT's user config file, keeping a backup
                    (FILE.bak-YYYYmmddTHHMMSS) and every other entry; re-running changes nothing
  --file PATH       with --write: this file instead (e.g. a project's .mcp.json or .vscode/mcp.json)
  --force           with --write: replace an entry of that name that does not run tokenctl

The entry runs tokenctl by its absolute path (GUI clients do not have your PATH); a
non-default --socket or TOKEND_SOCKET goes into its environment.
Exit codes: 0 ok, 1 error (the file is unchanged), 2 usage.
)";

// `tokenctl mcp config ...`: the client's config entry for this profile
// (DESIGN §11); the work is in ctl/mcp_config.hpp.
int cmd_mcp_config(Ctx& ctx, const std::vector<std::string>& args) {
  auto parsed = parse_mcp_config_args(args);
  if (!parsed) throw UsageError{parsed.error().message};
  if (parsed->help) throw HelpRequest{std::string(k_mcp_config_help)};
  const McpClient client = *parsed->client;
  const EnvLookup env = process_env();

  // The socket goes into the entry only when it is not the one tokenctl
  // would find anyway, made absolute: the client starts in another directory.
  std::vector<std::pair<std::string, std::string>> vars;
  const EnvLookup env_without_socket = [&env](const char* name) -> std::optional<std::string> {
    if (std::string_view(name) == "TOKEND_SOCKET") return std::nullopt;
    return env(name);
  };
  if (ctx.socket != resolve_socket_path(env_without_socket)) {
    std::error_code ec;
    const auto absolute = std::filesystem::absolute(ctx.socket, ec);
    vars.emplace_back("TOKEND_SOCKET", (ec ? ctx.socket : absolute).string());
  }
  std::string name = parsed->name.value_or(default_entry_name(parsed->profile));
  McpServerEntry entry = parsed->command.empty()
                             ? bridge_entry(std::move(name), tokenctl_path(), parsed->profile, std::move(vars))
                             : exec_entry(std::move(name), tokenctl_path(), parsed->profile, parsed->exec_options,
                                          parsed->command, std::move(vars));

  const auto path = parsed->file.value_or(default_config_path(client, host_os(), env));
  if (!parsed->write) {
    auto text = render_entry(client, entry);
    if (!text) return error(ctx, text.error().message);
    say(ctx.io.out, *text);
    say(ctx.io.err, fmt::format("# {} reads this from {}; add --write to merge it there (a backup is kept)\n",
                                mcp_client_name(client), path.string()));
    return k_ok;
  }
  auto r = write_entry_to_file(client, path, entry, parsed->force, std::time(nullptr));
  if (!r) return error(ctx, r.error().message);
  switch (r->action) {
    case MergeAction::unchanged:
      say(ctx.io.out, fmt::format("{}: entry \"{}\" is already up to date\n", r->file.string(), entry.name));
      break;
    case MergeAction::added:
    case MergeAction::replaced:
      say(ctx.io.out, fmt::format("{}: {} entry \"{}\"{}\n", r->file.string(),
                                  r->action == MergeAction::added ? "added" : "replaced", entry.name,
                                  r->backup ? fmt::format(" (previous file kept as {})", r->backup->string()) : ""));
      break;
  }
  return k_ok;
}

// `tokenctl mcp PROFILE [--wait S]`: a stdio MCP server bridging to the
// profile's remote MCP server through tokend (DESIGN §11).
int cmd_mcp_bridge(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o(
      "tokenctl mcp PROFILE [--wait S] [--no-browser]\n"
      "A stdio MCP server for any MCP client ({\"command\": \"tokenctl\", \"args\": [\"mcp\", \"PROFILE\"]}): each\n"
      "JSON-RPC message goes through tokend to the profile's MCP server with a fresh token, which never\n"
      "leaves tokend. A 401 refreshes and replays once; when no token can be had, requests get a JSON-RPC\n"
      "error naming tokenctl login PROFILE (code -32001) and the bridge keeps running. A profile that\n"
      "never signed in starts its login (browser, or the URL on stderr). Ends on stdin EOF or SIGTERM,\n"
      "deleting the server's session; stdout carries JSON-RPC only");
  o.add_options()("wait", po::value<std::string>(), "seconds a request waits for a login instead of failing at once")(
      "no-browser", "never open a browser for the first login: print the URL on stderr");
  auto vm = parse(args, o, {"profile"});
  mcp::BridgeOptions b;
  b.profile = need(vm, "profile", "PROFILE");
  if (auto ok = validate_profile_name(b.profile); !ok) throw UsageError{ok.error().message};
  b.wait_s = seconds(vm, "wait", 3'600).value_or(0);
  b.open_browser = vm.count("no-browser") == 0;
  b.socket = ctx.socket;
  b.in_fd = ::fileno(ctx.io.in);
  b.out_fd = ::fileno(ctx.io.out);
  b.err = ctx.io.err;
  return mcp::run_bridge(b);
}

int cmd_mcp(Ctx& ctx, const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "config") return cmd_mcp_config(ctx, std::vector<std::string>(args.begin() + 1, args.end()));
  return cmd_mcp_bridge(ctx, args);
}

struct Command {
  const char* name;
  int (*fn)(Ctx&, const std::vector<std::string>&);
  const char* synopsis;
};

constexpr Command k_commands[] = {
    {"status", cmd_status, "status [PROFILE] [--json]          profiles, states and expiry"},
    {"list", cmd_list, "list [--json] [-q]                  profile names, kinds and states"},
    {"token", cmd_token, "token PROFILE [--min-valid S] [--wait S] [--format raw|header|json|env|exec-credential]"},
    {"headers", cmd_headers, "headers PROFILE                     {\"Authorization\": ...} for an MCP headersHelper"},
    {"exec", cmd_exec, "exec PROFILE [--endpoint] [--env NAME]... -- CMD [ARG...]   run CMD with a fresh credential"},
    {"mcp", cmd_mcp,
     "mcp PROFILE [--wait S] | mcp config PROFILE --client CLIENT [--write] [-- CMD...]   MCP bridge; client set-up"},
    {"api", cmd_api,
     "api PROFILE METHOD PATH [--data @FILE|-|TEXT] [-H \"K: V\"]... [--include]   a call through tokend's proxy"},
    {"add", cmd_add, "add PROFILE --kind oauth2|api-token|pat [...]   store a profile (see tokenctl add --help)"},
    {"import", cmd_import,
     "import PROFILE --dotenv FILE | --from-env [...]   take over a script's JIRA_OAUTH_* token set"},
    {"login", cmd_login, "login PROFILE [--device] [--no-browser] [--timeout S]   sign in with the browser"},
    {"logout", cmd_logout, "logout PROFILE                      revoke and forget the tokens"},
    {"test", cmd_test, "test PROFILE [--json]               check the token against the provider"},
    {"renew", cmd_renew, "renew PROFILE | --all                refresh now and print the new expiry"},
    {"remove", cmd_remove, "remove PROFILE                      delete a profile and its tokens"},
    {"monitor", cmd_monitor, "monitor [PROFILE] [--json]          live events until Ctrl-C"},
    {"ping", cmd_ping, "ping                                is tokend running?"},
    {"version", cmd_version, "version                             tokenctl's version"},
    {"completion", cmd_completion, "completion bash|zsh                 shell completion script"},
};

std::string usage() {
  std::string s =
      "tokenctl — client of the tokend credential daemon\n\n"
      "Usage: tokenctl [--socket PATH] COMMAND [ARGS...]\n\nCommands:\n";
  for (const auto& c : k_commands) s += fmt::format("  tokenctl {}\n", c.synopsis);
  s += "\nGlobal options:\n"
       "  --socket PATH   tokend's socket (env TOKEND_SOCKET; default $XDG_RUNTIME_DIR/tokend/tokend.sock)\n"
       "  --help, -h      this help; tokenctl COMMAND --help for a command's options\n\n"
       "Secrets are read from files, standard input (-) or a prompt, never from arguments.\n"
       "Exit codes: 0 ok, 1 error, 2 usage, 3 tokend not reachable, 4 re-authentication required.\n"
       "NO_COLOR disables colour.\n";
  return s;
}

}  // namespace

int run(const std::vector<std::string>& args, const Io& io) {
  Ctx ctx;
  ctx.io = io;
  std::optional<std::filesystem::path> socket_flag;
  std::size_t i = 0;
  for (; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--socket" && i + 1 < args.size()) {
      socket_flag = args[++i];
    } else if (a.starts_with("--socket=")) {
      socket_flag = a.substr(9);
    } else if (a == "--help" || a == "-h" || a == "help") {
      say(io.out, usage());
      return k_ok;
    } else if (a == "--version") {
      say(io.out, fmt::format("tokenctl {}\n", TOKEND_VERSION));
      return k_ok;
    } else {
      break;
    }
  }
  if (i >= args.size()) {
    say(io.err, usage());
    return k_usage;
  }
  const EnvLookup env = process_env();
  ctx.socket = resolve_socket_path(env, socket_flag);
  ctx.colour = ::isatty(::fileno(io.out)) != 0 && !env("NO_COLOR").has_value() && env("TERM") != "dumb";

  const std::string& name = args[i];
  const std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
  for (const auto& c : k_commands) {
    if (name != c.name) continue;
    try {
      return c.fn(ctx, rest);
    } catch (const HelpRequest& h) {
      say(io.out, fmt::format("Usage: tokenctl {}\n{}", c.synopsis, h.options));
      return k_ok;
    } catch (const UsageError& e) {
      say(io.err, fmt::format("tokenctl {}: {}\nUsage: tokenctl {}\n", name, e.message, c.synopsis));
      return k_usage;
    }
  }
  say(io.err, fmt::format("tokenctl: unknown command '{}'\n\n{}", name.substr(0, 64), usage()));
  return k_usage;
}

}  // namespace tokend::ctl
