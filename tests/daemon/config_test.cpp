#include "daemon/config.hpp"

#include <catch2/catch_test_macros.hpp>
#include <map>

#include "daemon/budget.hpp"
#include "support/env.hpp"
#include "support/temp_dir.hpp"

using namespace tokend;
using tokend::test::env_of;
using tokend::test::TempDir;

namespace {

Result<daemon::ParsedArgs> parse(std::vector<const char*> args, const EnvLookup& env) {
  args.insert(args.begin(), "tokend");
  return daemon::parse_args(static_cast<int>(args.size()), args.data(), env);
}

}  // namespace

TEST_CASE("flag > env > config file > default", "[daemon][config]") {
  TempDir t;
  test::write_file_bytes(t / "tokend.conf",
                         "# comment\nlog-level = debug\ndb = /file/t.db\nsocket = /file/s.sock\n");
  const auto env = env_of({{"HOME", t.path().string()},
                           {"TOKEND_CONFIG", (t / "tokend.conf").string()},
                           {"TOKEND_SOCKET", "/env/s.sock"}});
  auto r = parse({}, env);
  REQUIRE(r);
  CHECK(r->config.log.level == spdlog::level::debug);  // file
  CHECK(r->config.paths.database == "/file/t.db");     // file
  CHECK(r->config.paths.socket == "/env/s.sock");      // env beats file
  r = parse({"--socket", "/flag/s.sock", "--log-level", "error"}, env);
  REQUIRE(r);
  CHECK(r->config.paths.socket == "/flag/s.sock");
  CHECK(r->config.log.level == spdlog::level::err);
}

TEST_CASE("bad arguments and config files are usage errors that say what is wrong",
          "[daemon][config]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  auto r = parse({"--bogus"}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("bogus") != std::string::npos);
  r = parse({"--log-level", "loud"}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("loud") != std::string::npos);
  r = parse({"--config", (t / "missing.conf").string().c_str()}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("does not exist") != std::string::npos);
  test::write_file_bytes(t / "bad.conf", "nonsense-key = 1\n");
  r = parse({"--config", (t / "bad.conf").string().c_str()}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("bad.conf") != std::string::npos);
  CHECK(r.error().message.find("nonsense-key") != std::string::npos);
}

TEST_CASE("--help and --version", "[daemon][config]") {
  const auto env = env_of({{"HOME", "/nonexistent"}});
  auto r = parse({"--help"}, env);
  REQUIRE(r);
  CHECK(r->action == daemon::ParsedArgs::Action::help);
  CHECK(r->help_text.find("--key-file") != std::string::npos);
  CHECK(r->help_text.find("TOKEND_DB") != std::string::npos);
  CHECK(parse({"--version"}, env)->action == daemon::ParsedArgs::Action::version);
}

namespace {

std::filesystem::path secret_at(const TempDir& t, const std::string& name,
                                const std::string& secret) {
  const auto p = t / name;
  test::write_file_bytes(p, secret + "\n", 0600);
  return p;
}

}  // namespace

TEST_CASE("server mode: database, key, trusted proxy and services from the config file",
          "[daemon][config][server]") {
  TempDir t;
  const auto mcp = secret_at(t, "mcp.secret", std::string(64, 'a'));
  const auto bot = secret_at(t, "bot.secret", std::string(40, 'b'));
  test::write_file_bytes(t / "server.conf",
                         "database-url-file = /etc/tokend/db\n"
                         "kek-file = /etc/tokend/kek\n"
                         "trusted-proxy-uid = 0, 33\n"
                         "user-header = X-Auth-User\n"
                         "user-rate-limit = 120\n"
                         "service-rate-limit = 900\n"
                         "[service.mcp]\n"
                         "secret-file = " +
                             mcp.string() +
                             "\n"
                             "act-for = *@example.com, bob\n"
                             "rate-limit = 30\n"
                             "[service.bot]\n"
                             "secret-file = " +
                             bot.string() + "\nact-for = *\n");
  const auto env = env_of({{"HOME", t.path().string()}});
  auto r = parse({"--server", "--config", (t / "server.conf").string().c_str()}, env);
  REQUIRE(r);
  const auto& srv = r->config.server;
  CHECK(srv.enabled);
  CHECK(srv.database_url_file == "/etc/tokend/db");
  CHECK(srv.kek.key_file == "/etc/tokend/kek");
  CHECK(srv.identity.user_header == "X-Auth-User");
  CHECK(srv.identity.trusted_proxy_uids == std::set<uid_t>{0, 33});
  CHECK(srv.user_rate_limit == 120);
  CHECK(srv.service_rate_limit == 900);
  REQUIRE(srv.identity.services.size() == 2);
  const auto& first = srv.identity.services[0];  // sections sorted by name
  CHECK(first.name == "bot");
  CHECK(first.may_act_for("anyone"));
  CHECK_FALSE(first.rate_limit);  // service-rate-limit's
  const auto& second = srv.identity.services[1];
  CHECK(second.name == "mcp");
  CHECK(second.may_act_for("alice@example.com"));
  CHECK(second.may_act_for("bob"));
  CHECK_FALSE(second.may_act_for("carol@example.org"));
  CHECK(second.secret_digest == daemon::secret_digest(std::string(64, 'a')));
  CHECK(second.rate_limit == std::optional<std::size_t>(30));
  CHECK(daemon::service_rate_limit(srv.identity, "mcp", srv.service_rate_limit) == 30);
  CHECK(daemon::service_rate_limit(srv.identity, "bot", srv.service_rate_limit) == 900);
}

TEST_CASE("server mode: every wrong setting is a config error that names it",
          "[daemon][config][server]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  const auto good = secret_at(t, "good.secret", std::string(64, 'a'));
  const auto short_secret = secret_at(t, "short.secret", "tooshort");
  const auto loose = t / "loose.secret";
  test::write_file_bytes(loose, std::string(64, 'c'), 0644);
  struct Case {
    std::vector<std::string> args;
    std::string file;
    std::string expected;  // in the message
  };
  const std::string svc = "[service.mcp]\nsecret-file = " + good.string() + "\nact-for = *\n";
  const Case cases[] = {
      {{"--server"}, "trusted-proxy-uid = 0\n", "server mode needs database-url-file"},
      {{"--server"},
       "database-url-file = /x\ntrusted-proxy-uid = 0\nuser-rate-limit = lots\n",
       "user-rate-limit must be a whole number from 0 to"},
      {{"--server"},
       "database-url-file = /x\ntrusted-proxy-uid = 0\nservice-rate-limit = -1\n",
       "service-rate-limit must be a whole number from 0 to"},
      {{"--server"},
       "database-url-file = /x\n" + svc + "rate-limit = 5/s\n",
       "[service.mcp] rate-limit must be a whole number from 0 to"},
      {{}, "service-rate-limit = 5\n", "service-rate-limit is a server-mode setting"},
      {{"--server"}, "database-url-file = /x\n", "trusted-proxy-uid"},
      {{}, "database-url-file = /x\n", "database-url-file is a server-mode setting"},
      {{}, svc, "[service.mcp] is a server-mode setting"},
      {{"--server"}, "database-url-file = /x\ndb = /y\n" + svc, "db is not used in server mode"},
      {{"--server"},
       "database-url-file = /x\ntrusted-proxy-uid = nosuchuser_zz\n",
       "trusted-proxy-uid: no user named 'nosuchuser_zz'"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nact-for = *\n",
       "[service.mcp] needs secret-file"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nsecret-file = " + good.string() + "\n",
       "[service.mcp] needs act-for"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nsecret-file = " + short_secret.string() +
           "\nact-for = *\n",
       "its secret is 8 bytes; use at least 32"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nsecret-file = " + loose.string() + "\nact-for = *\n",
       "[service.mcp] secret-file"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nsecret-file = " + good.string() +
           "\nact-for = a*b\n",
       "'*' may only stand alone"},
      {{"--server"},
       "database-url-file = /x\n[service.mcp]\nsecret-file = " + good.string() +
           "\nact-for = *\ncolour = blue\n",
       "[service.mcp] has no setting 'colour'"},
      {{"--server"},
       "database-url-file = /x\n" + svc + "[service.other]\nsecret-file = " + good.string() +
           "\nact-for = *\n",
       "have the same secret"},
      {{"--server"},
       "database-url-file = /x\nuser-header = Authorization\n" + svc,
       "user-header may not be Authorization"},
      {{"--new-kek-file", "/k"}, "", "belong to tokend rotate-key"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.file);
    test::write_file_bytes(t / "c.conf", c.file);
    std::vector<const char*> args;
    for (const auto& a : c.args) args.push_back(a.c_str());
    const std::string conf = (t / "c.conf").string();
    args.push_back("--config");
    args.push_back(conf.c_str());
    auto r = parse(args, env);
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find(c.expected) != std::string::npos);
    CHECK(r.error().message.find(std::string(64, 'a')) == std::string::npos);
  }
}

TEST_CASE("rotate-key: the new key's file is required; the current key from the usual settings",
          "[daemon][config][server]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  auto r = parse({"rotate-key", "--database-url-file", "/db", "--new-kek-file", "/new.kek",
                  "--new-kek-id", "k2"},
                 env);
  REQUIRE(r);
  CHECK(r->action == daemon::ParsedArgs::Action::rotate_key);
  CHECK(r->config.server.database_url_file == "/db");
  CHECK(r->new_kek.key_file == "/new.kek");
  CHECK(r->new_kek.key_id == "k2");
  r = parse({"rotate-key", "--database-url-file", "/db"}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("rotate-key needs --new-kek-file") != std::string::npos);
  r = parse({"rotate-key", "--new-kek-file", "/new.kek"}, env);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("needs database-url-file") != std::string::npos);
}

TEST_CASE("server mode: public-url and the connect page's provider templates",
          "[daemon][config][server][connect]") {
  TempDir t;
  const auto secret = secret_at(t, "jira.secret", "cs-MARKER-template-secret\n");
  test::write_file_bytes(t / "server.conf",
                         "database-url-file = /x\n"
                         "trusted-proxy-uid = 0\n"
                         "public-url = https://tokend.example.com/tokend/\n"
                         "[provider.jira]\n"
                         "display-name = Jira Cloud\n"
                         "provider = atlassian\n"
                         "client-id = abc\n"
                         "client-secret-file = " +
                             secret.string() +
                             "\n"
                             "scopes = read:jira-work, offline_access\n"
                             "[provider.gh]\n"
                             "provider = generic\n"
                             "client-id = public-app\n"
                             "authorize-url = https://idp.example/authorize\n"
                             "token-url = https://idp.example/token\n");
  const auto env = env_of({{"HOME", t.path().string()}});
  auto r = parse({"--server", "--config", (t / "server.conf").string().c_str()}, env);
  REQUIRE(r);
  const auto& c = r->config.server.connect;
  CHECK(c.public_url == "https://tokend.example.com/tokend");
  CHECK(c.redirect_uri() == "https://tokend.example.com/tokend/connect/callback");
  REQUIRE(c.providers.size() == 2);
  const auto* jira = c.find("jira");
  REQUIRE(jira != nullptr);
  CHECK(jira->display_name == "Jira Cloud");
  CHECK(jira->client_secret.reveal() == "cs-MARKER-template-secret");
  CHECK(jira->body.at("provider") == "atlassian");
  CHECK(jira->body.at("scopes") == json::Json({"read:jira-work", "offline_access"}));
  CHECK(jira->body.at("redirect_uri") == c.redirect_uri());
  CHECK_FALSE(jira->body.contains("client_secret"));  // kept apart, as a Secret
  const auto* gh = c.find("gh");
  REQUIRE(gh != nullptr);
  CHECK(gh->display_name == "gh");
  CHECK(gh->client_secret.empty());
  CHECK(c.find("nope") == nullptr);
}

TEST_CASE("server mode: a wrong provider template or public-url is a config error naming it",
          "[daemon][config][server][connect]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  const auto loose = t / "loose.secret";
  test::write_file_bytes(loose, "cs-MARKER-loose", 0644);
  const std::string base = "database-url-file = /x\ntrusted-proxy-uid = 0\n";
  const std::string url = "public-url = https://tokend.example.com\n";
  const std::string gen =
      "provider = generic\nclient-id = a\nauthorize-url = https://i/a\ntoken-url = https://i/t\n";
  struct Case {
    std::vector<std::string> args;
    std::string file;
    std::string expected;
  };
  const Case cases[] = {
      {{"--server"}, base + "[provider.jira]\n" + gen, "[provider.jira] needs public-url"},
      {{}, "[provider.jira]\n" + gen, "[provider.jira] is a server-mode setting"},
      {{}, "public-url = https://x\n", "public-url is a server-mode setting"},
      {{"--server"}, base + "public-url = http://tokend.example.com\n", "is not https"},
      {{"--server"}, base + "public-url = https://tokend.example.com/?x=1\n", "has a query"},
      {{"--server"}, base + "public-url = tokend.example.com\n", "public-url 'tokend.example.com'"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "redirect-uri = https://x/cb\n",
       "fixes to https://tokend.example.com/connect/callback"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "client-secret = s3cret\n",
       "secrets stay out of the config file"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "colour = blue\n",
       "[provider.jira] has no setting 'colour'"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "client-secret-file = " + loose.string() + "\n",
       "[provider.jira] client-secret-file"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "kind = pat\n",
       "kind must be oauth2"},
      {{"--server"},
       base + url + "[provider.jira]\n" + gen + "token-url = not a url\n",
       "[provider.jira] sets 'token-url' twice"},
      {{"--server"}, base + url + "[provider.bad name]\n" + gen, "[provider.bad name]"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.file);
    test::write_file_bytes(t / "c.conf", c.file);
    std::vector<const char*> args;
    for (const auto& a : c.args) args.push_back(a.c_str());
    const std::string conf = (t / "c.conf").string();
    args.push_back("--config");
    args.push_back(conf.c_str());
    auto r = parse(args, env);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::config);
    CHECK(r.error().message.find(c.expected) != std::string::npos);
    CHECK(r.error().message.find("cs-MARKER") == std::string::npos);
  }
}

TEST_CASE("server mode: TLS listeners, their certificate, and services by certificate",
          "[daemon][config][server]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  test::write_file_bytes(t / "server.conf",
                         "database-url-file = /x\n"
                         "listen = 0.0.0.0:8443\n"
                         "listen = [::1]:9443, 127.0.0.1:10443\n"
                         "tls-cert-file = /etc/tokend/tls.pem\n"
                         "tls-key-file = /etc/tokend/tls.key\n"
                         "tls-client-ca-file = /etc/tokend/clients.pem\n"
                         "[service.gate]\n"
                         "cert-subject = spiffe://example.org/gate\n"
                         "act-for = *@example.com\n");
  const std::string conf = (t / "server.conf").string();
  auto r = parse({"--server", "--config", conf.c_str()}, env);
  REQUIRE(r);
  const auto& srv = r->config.server;
  REQUIRE(srv.listen.size() == 3);
  CHECK(srv.listen[0].host == "0.0.0.0");
  CHECK(srv.listen[0].port == 8443);
  CHECK(srv.listen[1].host == "::1");
  CHECK(srv.listen[1].port == 9443);
  CHECK(srv.listen[2].port == 10443);
  CHECK(srv.tls.cert_file == "/etc/tokend/tls.pem");
  CHECK(srv.tls.key_file == "/etc/tokend/tls.key");
  CHECK(srv.tls.client_ca_file == "/etc/tokend/clients.pem");
  REQUIRE(srv.identity.services.size() == 1);
  CHECK(srv.identity.services[0].cert_subject == "spiffe://example.org/gate");
  CHECK_FALSE(srv.identity.services[0].has_secret);

  // Flags replace the file's listeners; the environment lists them comma-separated.
  auto flags = parse(
      {"--server", "--config", conf.c_str(), "--listen", "127.0.0.2:1", "--listen", "127.0.0.3:2"},
      env);
  REQUIRE(flags);
  REQUIRE(flags->config.server.listen.size() == 2);
  CHECK(flags->config.server.listen[1].host == "127.0.0.3");
  auto with_oidc =
      parse({"--server", "--config", conf.c_str(), "--public-url", "https://tokend.example.org/",
             "--oidc-issuer", "https://idp.example.com", "--oidc-client-id", "tokend",
             "--oidc-client-secret-file", "/s", "--oidc-user-claim", "email", "--session-lifetime",
             "90m", "--oidc-post-logout-redirect-uri", "https://tokend.example.org/bye"},
            env);
  REQUIRE(with_oidc);
  const auto& oidc = with_oidc->config.server.oidc;
  CHECK(oidc.enabled());
  CHECK(oidc.session_lifetime == std::chrono::minutes(90));
  CHECK(oidc.post_logout_redirect_uri == "https://tokend.example.org/bye");
  CHECK(oidc.public_url == "https://tokend.example.org");
  CHECK(oidc.issuer == "https://idp.example.com");
  CHECK(oidc.client_id == "tokend");
  CHECK(oidc.user_claim == "email");
  auto from_env =
      parse({"--server", "--config", conf.c_str()},
            env_of({{"HOME", t.path().string()}, {"TOKEND_LISTEN", "127.0.0.4:4, [::]:5"}}));
  REQUIRE(from_env);
  REQUIRE(from_env->config.server.listen.size() == 2);
  CHECK(from_env->config.server.listen[1].host == "::");
}

TEST_CASE("server mode: wrong TLS settings are config errors that name them",
          "[daemon][config][server]") {
  TempDir t;
  const auto env = env_of({{"HOME", t.path().string()}});
  const std::string base = "database-url-file = /x\ntrusted-proxy-uid = 0\n";
  const std::string tls = "tls-cert-file = /c\ntls-key-file = /k\n";
  struct Case {
    std::vector<std::string> args;
    std::string file;
    std::string expected;
  };
  const Case cases[] = {
      {{}, "listen = 127.0.0.1:8443\n", "listen is a server-mode setting"},
      {{}, tls, "tls-cert-file is a server-mode setting"},
      {{"--server"}, base + "listen = 127.0.0.1:8443\n", "listen needs tls-cert-file"},
      {{"--server"}, base + tls, "add listen = HOST:PORT"},
      {{"--server"}, base + tls + "listen = localhost:8443\n", "listen 'localhost:8443'"},
      {{"--server"}, base + tls + "listen = 127.0.0.1\n", "listen '127.0.0.1'"},
      {{"--server"}, base + tls + "listen = 127.0.0.1:0\n", "listen '127.0.0.1:0'"},
      {{"--server"}, base + tls + "listen = 127.0.0.1:70000\n", "listen '127.0.0.1:70000'"},
      {{"--server"}, base + tls + "listen = ::1:8443\n", "listen '::1:8443'"},
      {{"--server"}, base + tls + "listen = [::1]8443\n", "listen '[::1]8443'"},
      {{"--server"},
       base + tls + "listen = 127.0.0.1:8443\n[service.gate]\ncert-subject = g\nact-for = *\n",
       "[service.gate] cert-subject needs tls-client-ca-file"},
      {{"--server"},
       base + tls +
           "listen = 127.0.0.1:8443\ntls-client-ca-file = /ca\n[service.a]\ncert-subject = "
           "g\nact-for = *\n[service.b]\ncert-subject = g\nact-for = *\n",
       "same cert-subject"},
      {{"--server"},
       base + "oidc-issuer = https://idp.example.com\n",
       "OIDC sign-in needs oidc-issuer, oidc-client-id and oidc-client-secret-file"},
      {{"--server"},
       base + "oidc-issuer = https://idp.example.com\noidc-client-id = t\n"
              "oidc-client-secret-file = /s\n",
       "OIDC sign-in needs listen"},
      {{"--server"},
       base + tls + "listen = 127.0.0.1:8443\npublic-url = http://tokend.example.org\n",
       "public-url 'http://tokend.example.org'"},
      {{"--server"}, base + "oidc-user-claim = name\n", "oidc-user-claim must be sub or email"},
      {{"--server"},
       base + "session-lifetime = 4s\n",
       "session-lifetime '4s' must be a duration from 5s to 30d (e.g. 8h, the default)"},
      {{"--server"}, base + "session-lifetime = 31d\n", "session-lifetime '31d' must be"},
      {{"--server"}, base + "session-lifetime = soon\n", "session-lifetime 'soon' must be"},
      {{}, "session-lifetime = 1h\n", "session-lifetime is a server-mode setting"},
      {{"--server"},
       base + "oidc-post-logout-redirect-uri = http://t.example/\n",
       "oidc-post-logout-redirect-uri"},
      {{"--server"},
       base + tls +
           "listen = 127.0.0.1:8443\npublic-url = https://t.example\noidc-issuer = "
           "http://idp.example.com\noidc-client-id = t\noidc-client-secret-file = /s\n",
       "oidc-issuer"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.file);
    test::write_file_bytes(t / "c.conf", c.file);
    std::vector<const char*> args;
    for (const auto& a : c.args) args.push_back(a.c_str());
    const std::string conf = (t / "c.conf").string();
    args.push_back("--config");
    args.push_back(conf.c_str());
    auto r = parse(args, env);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::config);
    CHECK(r.error().message.find(c.expected) != std::string::npos);
  }
}
