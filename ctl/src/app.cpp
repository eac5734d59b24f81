#include "ctl/app.hpp"

#include <unistd.h>

#include <charconv>
#include <ctime>
#include <functional>
#include <map>
#include <optional>
#include <sstream>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include "core/encoding.hpp"
#include "core/names.hpp"
#include "core/paths.hpp"
#include "ctl/completion.hpp"
#include "ctl/format.hpp"
#include "ctl/input.hpp"
#include "ipc/client.hpp"

namespace tokend::ctl {

namespace po = boost::program_options;

namespace {

constexpr std::string_view k_start_hint =
    "start it with: systemctl --user start tokend (or run tokend in a terminal)";

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

// A call to tokend; on failure, returns the exit code after printing why.
struct Call {
  std::optional<ipc::ClientResponse> response;
  json::Json body;
  int exit = k_ok;
};

Call call(const Ctx& ctx, std::string_view method, const std::string& target, std::string_view body = {},
          std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  Call c;
  auto client = ipc::Client::connect(ctx.socket);
  if (!client) {
    c.exit = error(ctx, fmt::format("{}; {}", client.error().message, k_start_hint), k_unreachable);
    return c;
  }
  auto r = client->request(method, target, body, {}, timeout);
  if (!r) {
    c.exit = error(ctx, r.error().message, r.error().code == Errc::unavailable ? k_unreachable : k_error);
    return c;
  }
  if (!r->body.empty()) {
    auto j = json::parse(r->body, "tokend's answer");
    if (j) c.body = std::move(*j);
  }
  if (r->status >= 400) {
    std::string code;
    std::string message = fmt::format("tokend answered {}", r->status);
    if (c.body.is_object() && c.body.contains("error") && c.body["error"].is_object()) {
      code = c.body["error"].value("code", "");
      message = c.body["error"].value("message", message);
    }
    c.exit = error(ctx, message, code == "reauth_required" ? k_reauth : k_error);
  }
  c.response = std::move(*r);
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

int cmd_token(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl token PROFILE [--min-valid S] [--wait S] [--format F]");
  o.add_options()("min-valid", po::value<std::string>(), "seconds the token must stay valid (default 60)")(
      "wait", po::value<std::string>(), "seconds to wait for a refresh or login in progress")(
      "format", po::value<std::string>()->default_value("raw"), "raw|header|json|env|exec-credential");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto format = parse_token_format(vm["format"].as<std::string>());
  if (!format) throw UsageError{format.error().message};
  std::string target = "/v1/profiles/" + seg(name) + "/token";
  std::string sep = "?";
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  if (auto mv = seconds(vm, "min-valid", 86'400)) {
    target += fmt::format("{}min_valid={}", sep, *mv);
    sep = "&";
  }
  if (auto w = seconds(vm, "wait", 3'600)) {
    target += fmt::format("{}wait={}", sep, *w);
    timeout += std::chrono::seconds(*w);
  }
  auto c = call(ctx, "GET", target, {}, timeout);
  if (c.exit != k_ok) return c.exit;
  std::string out = render_token(c.body, *format);
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

int cmd_headers(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl headers PROFILE");
  o.add_options()("min-valid", po::value<std::string>(), "seconds the token must stay valid (default 60)");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  std::string target = "/v1/profiles/" + seg(name) + "/token";
  if (auto mv = seconds(vm, "min-valid", 86'400)) target += fmt::format("?min_valid={}", *mv);
  auto c = call(ctx, "GET", target);
  if (c.exit != k_ok) return c.exit;
  std::string out = json::Json{{"Authorization", c.body.value("authorization", "")}}.dump() + "\n";
  say(ctx.io.out, out);
  secure_wipe(out);
  return k_ok;
}

int cmd_add(Ctx& ctx, const std::vector<std::string>& args) {
  po::options_description o("tokenctl add PROFILE --kind oauth2|api-token|pat [options]");
  o.add_options()("kind", po::value<std::string>(), "oauth2, api-token or pat")(
      "provider", po::value<std::string>(), "atlassian, generic or mcp (oauth2)")(
      "client-id", po::value<std::string>(), "OAuth client id")(
      "client-secret-file", po::value<std::string>(), "file holding the client secret, or - for stdin")(
      "scopes", po::value<std::string>(), "space-separated scopes")(
      "issuer", po::value<std::string>(), "issuer URL for discovery")(
      "authorize-url", po::value<std::string>(), "authorization endpoint")(
      "token-url", po::value<std::string>(), "token endpoint")(
      "redirect-uri", po::value<std::string>(), "loopback redirect URI")(
      "mcp-server", po::value<std::string>(), "MCP server URL (provider mcp)")(
      "site", po::value<std::string>(), "Jira/Confluence site URL")(
      "email", po::value<std::string>(), "account email (api-token)")(
      "token-file", po::value<std::string>(), "file holding the API token, PAT or access token, or - for stdin")(
      "refresh-token-file", po::value<std::string>(), "file holding a refresh token, or - for stdin")(
      "expires-in", po::value<std::string>(), "seconds the supplied access token stays valid")(
      "token-endpoint-auth", po::value<std::string>(), "client_secret_basic (default), client_secret_post or none")(
      "sink-file", po::value<std::vector<std::string>>(), "also write the token to this file at every refresh (0600)")(
      "sink-dotenv", po::value<std::vector<std::string>>(),
      "also update VARIABLE in this .env file: PATH[=VARIABLE] (default ACCESS_TOKEN)")(
      "reuse-window", po::value<std::string>(), "seconds the provider accepts a rotated refresh token (atlassian: 600)")(
      "api-base", po::value<std::string>(), "base URL for proxied calls (generic)");
  auto vm = parse(args, o, {"profile"});
  const std::string name = need(vm, "profile", "PROFILE");
  const std::string kind = need(vm, "kind", "--kind oauth2|api-token|pat");
  if (kind != "oauth2" && kind != "api-token" && kind != "pat") {
    throw UsageError{fmt::format("unknown kind '{}'; use oauth2, api-token or pat", kind)};
  }
  int stdin_users = 0;
  for (const char* f : {"client-secret-file", "token-file", "refresh-token-file"}) {
    if (opt(vm, f) == "-") ++stdin_users;
  }
  if (stdin_users > 1) throw UsageError{"only one secret can come from standard input (-)"};

  json::Json body = {{"kind", kind}};
  const std::pair<const char*, const char*> plain[] = {
      {"provider", "provider"}, {"client-id", "client_id"}, {"scopes", "scopes"},
      {"issuer", "issuer"},     {"authorize-url", "authorize_url"}, {"token-url", "token_url"},
      {"redirect-uri", "redirect_uri"}, {"mcp-server", "mcp_server"}, {"site", "site"},
      {"email", "email"},       {"api-base", "api_base"}, {"token-endpoint-auth", "token_endpoint_auth"}};
  for (const auto& [flag, field] : plain) {
    if (auto v = opt(vm, flag)) body[field] = *v;
  }
  if (auto e = seconds(vm, "expires-in", 10U * 365 * 24 * 3600)) body["expires_in"] = *e;
  if (auto w = seconds(vm, "reuse-window", 86'400)) body["reuse_window"] = *w;
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
  body.clear();
  auto c = call(ctx, "PUT", "/v1/profiles/" + seg(name), payload);
  secure_wipe(payload);
  if (c.exit != k_ok) return c.exit;
  say(ctx.io.out, fmt::format("{} profile {} ({}), state {}\n", c.response->status == 201 ? "added" : "updated", name,
                              c.body.value("kind", kind), c.body.value("state", "?")));
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
  auto client = ipc::Client::connect(ctx.socket);
  if (!client) return error(ctx, fmt::format("{}; {}", client.error().message, k_start_hint), k_unreachable);
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
    {"add", cmd_add, "add PROFILE --kind oauth2|api-token|pat [...]   store a profile (see tokenctl add --help)"},
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
