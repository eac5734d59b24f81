#include "commands/login.hpp"

#include <fmt/format.h>

#include <cctype>

#include "core/paths.hpp"

namespace tokend::ctl {

namespace {

// scheme://host:port of a URL, lower-cased, the port explicit ("" when the
// text is not an http(s) URL): enough to tell two sites apart.
std::string site_of(std::string_view url) {
  const auto sep = url.find("://");
  if (sep == std::string_view::npos) return {};
  std::string scheme(url.substr(0, sep));
  std::string_view authority = url.substr(sep + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  if (const auto at = authority.rfind('@'); at != std::string_view::npos)
    authority.remove_prefix(at + 1);
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
void hint_foreign_authorization_server(const Ctx& ctx, const std::string& name,
                                       const std::string& authorize_url) {
  auto p = ctx.api().profile(name, std::chrono::seconds(10));
  if (!p || p->provider != "mcp") return;
  const std::string server_site = site_of(p->mcp_server);
  const std::string auth_site = site_of(authorize_url);
  if (server_site.empty() || auth_site.empty() || server_site == auth_site) return;
  say(ctx.io.err,
      fmt::format(
          "Note: the MCP server {} sends you to sign in at {}, a different site. Continue only if "
          "you expect that site to grant access to this server.\n",
          server_site, auth_site));
}

// Starts the browser on `url`; false (after saying why) when that did not work.
bool open_browser(const Ctx& ctx, LoginWait& w, const std::optional<std::string>& opener,
                  const std::string& url) {
  if (!opener) return false;
  auto p = BackgroundProcess::start(*opener, url);
  if (!p) {
    say(ctx.io.err, fmt::format("tokenctl: {}\n", p.error().message));
    return false;
  }
  w.browser.emplace(std::move(*p));
  w.opener = *opener;
  return true;
}

void show_device_code(const Ctx& ctx, LoginWait& w, const std::optional<std::string>& opener,
                      const client::LoginStart& a) {
  say(ctx.io.err,
      fmt::format("To sign in, open {} and enter the code {}\n", a.verification_uri, a.user_code));
  const std::string& complete = a.verification_uri_complete;
  if (!complete.empty())
    say(ctx.io.err, fmt::format("  (or open {}, which has the code filled in)\n", complete));
  open_browser(ctx, w, opener, complete.empty() ? a.verification_uri : complete);
}

void show_authorize_url(const Ctx& ctx, LoginWait& w, const std::optional<std::string>& opener,
                        bool no_browser, const client::LoginStart& a) {
  const std::string& url = a.authorize_url;
  hint_foreign_authorization_server(ctx, w.name, url);
  if (open_browser(ctx, w, opener, url)) {
    say(ctx.io.err,
        fmt::format("Opening your browser to sign in to {}... If it does not open, visit:\n  {}\n",
                    w.name, url));
  } else {
    if (!no_browser && !opener) {
      say(ctx.io.err,
          "(No browser to open here: DISPLAY and WAYLAND_DISPLAY are not set; BROWSER picks "
          "one.)\n");
    }
    say(ctx.io.err,
        fmt::format("To sign in to {}, open this URL in a browser:\n  {}\n", w.name, url));
  }
  // A paste finishes the flow when the browser is elsewhere, or when tokend
  // cannot catch the redirect itself.
  w.read_paste = no_browser || !a.listening || !w.browser;
}

}  // namespace

int cmd_login(Ctx& ctx, const Args& args) {
  po::options_description o("tokenctl login PROFILE [--device] [--no-browser] [--timeout S]");
  o.add_options()("device",
                  "device authorization grant (RFC 8628): enter a code shown here on any device")(
      "no-browser",
      "do not open a browser: print the URL and read back the redirect URL or code you paste")(
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
  auto started = ctx.api().start_login(w.name, device);
  if (!started) return report(ctx, started.error());
  InterruptWatch interrupt;  // from here on Ctrl-C cancels the flow
  w.deadline = std::chrono::steady_clock::now() + std::chrono::seconds(w.timeout_s);

  const auto opener = no_browser ? std::nullopt : url_opener(process_env());
  // Which of the MCP server's authorization servers this login uses.
  if (!started->authorization_server_note.empty())
    say(ctx.io.err, started->authorization_server_note + "\n");
  if (device) {
    show_device_code(ctx, w, opener, *started);
  } else {
    show_authorize_url(ctx, w, opener, no_browser, *started);
  }
  say(ctx.io.err, "Waiting for the login to finish (Ctrl-C cancels)...\n");
  if (w.read_paste) say(ctx.io.err, std::string(k_paste_prompt));
  return wait_for_login(ctx, w, interrupt);
}

}  // namespace tokend::ctl
