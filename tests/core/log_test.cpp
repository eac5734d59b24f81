#include "core/log.hpp"

#include <spdlog/sinks/ostream_sink.h>

#include <catch2/catch_test_macros.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/secret.hpp"

namespace {

struct Captured {
  std::ostringstream out;
  explicit Captured(tokend::log::Format format,
                    spdlog::level::level_enum level = spdlog::level::trace) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
    tokend::log::setup_with_sink({level, format}, sink);
  }
  ~Captured() { tokend::log::setup({}); }
};

}  // namespace

TEST_CASE("A Secret logged through spdlog shows up redacted in the sink", "[core][log]") {
  Captured cap(tokend::log::Format::text);
  const tokend::Secret token("at-MARKER-1234567890");
  spdlog::info("refreshed, token {}", token);
  spdlog::default_logger()->flush();
  const std::string text = cap.out.str();
  CHECK(text.find("MARKER") == std::string::npos);
  CHECK(text.find(std::string(tokend::Secret::k_redacted)) != std::string::npos);
  CHECK(text.find("refreshed, token") != std::string::npos);
}

TEST_CASE("The redaction guard masks credential-shaped text in log lines", "[core][log]") {
  struct Case {
    std::string line;
    std::string leaked;
  };
  const Case cases[] = {
      {"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGci"},
      {"header authorization=Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpw"},
      {"POST body grant_type=refresh_token&refresh_token=rt-SECRET-99&client_id=x", "rt-SECRET-99"},
      {"url https://x/cb?code=CODE-SECRET&state=abc", "CODE-SECRET"},
      {"client_secret=cs-SECRET&x=1", "cs-SECRET"},
      {R"(body {"access_token":"at-SECRET","expires_in":3600})", "at-SECRET"},
      {R"(body {"refresh_token" : "rt-SECRET2"})", "rt-SECRET2"},
      {"sent bearer abcdefghijklmnop to upstream", "abcdefghijklmnop"},
  };
  for (const auto& c : cases) {
    const std::string out = tokend::log::redact(c.line);
    INFO(c.line << " -> " << out);
    CHECK(out.find(c.leaked) == std::string::npos);
    CHECK(out.find(std::string(tokend::Secret::k_redacted)) != std::string::npos);
  }
  // Ordinary text passes untouched.
  CHECK(tokend::log::redact("profile jira refreshed, expires in 3600 s") ==
        "profile jira refreshed, expires in 3600 s");
}

TEST_CASE("JSON log format emits one valid object per line, redacted", "[core][log]") {
  Captured cap(tokend::log::Format::json);
  spdlog::warn("upstream said {}", R"({"access_token":"at-LEAK"} and "quotes" \ backslash)");
  spdlog::default_logger()->flush();
  const std::string line = cap.out.str();
  REQUIRE(!line.empty());
  const auto j = nlohmann::json::parse(line.substr(0, line.find('\n')));
  CHECK(j.at("level") == "warning");
  CHECK(j.at("msg").get<std::string>().find("at-LEAK") == std::string::npos);
  CHECK(j.contains("time"));
}

TEST_CASE("Log level below the threshold is dropped", "[core][log]") {
  Captured cap(tokend::log::Format::text, spdlog::level::warn);
  spdlog::info("should-not-appear");
  spdlog::error("should-appear");
  spdlog::default_logger()->flush();
  CHECK(cap.out.str().find("should-not-appear") == std::string::npos);
  CHECK(cap.out.str().find("should-appear") != std::string::npos);
}

TEST_CASE("Log options: flag beats env, bad values are clear errors", "[core][log]") {
  CHECK(*tokend::log::parse_level("debug") == spdlog::level::debug);
  auto bad = tokend::log::parse_level("loud");
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message.find("loud") != std::string::npos);
  CHECK(bad.error().message.find("trace, debug") != std::string::npos);
  CHECK_FALSE(tokend::log::parse_format("xml"));
  ::setenv("TOKEND_LOG_LEVEL", "error", 1);
  CHECK(tokend::log::resolve_options(std::nullopt, std::nullopt)->level == spdlog::level::err);
  CHECK(tokend::log::resolve_options("trace", std::nullopt)->level == spdlog::level::trace);
  ::unsetenv("TOKEND_LOG_LEVEL");
}
