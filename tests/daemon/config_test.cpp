#include "daemon/config.hpp"

#include <catch2/catch_test_macros.hpp>
#include <map>

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
