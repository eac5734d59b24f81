// parse_url, origin_key and is_loopback_host at their edges.
#include "net/url.hpp"

#include <catch2/catch_test_macros.hpp>
#include <string>

using namespace tokend;

TEST_CASE("parse_url: the parts of http and https URLs", "[net][url]") {
  struct Case {
    const char* url;
    const char* scheme;
    const char* host;
    std::uint16_t port;
    bool explicit_port;
    const char* path;
    const char* query;
    const char* origin;
  };
  const Case cases[] = {
      {"https://example.com", "https", "example.com", 443, false, "/", "", "https://example.com"},
      {"HTTP://Example.COM/", "http", "Example.COM", 80, false, "/", "", "http://Example.COM"},
      {"http://h:8080/a/b?x=1&y=%20", "http", "h", 8080, true, "/a/b", "x=1&y=%20",
       "http://h:8080"},
      {"https://h:443/p", "https", "h", 443, true, "/p", "", "https://h:443"},
      {"http://[::1]:9/cb", "http", "[::1]", 9, true, "/cb", "", "http://[::1]:9"},
      {"http://127.0.0.1:65535", "http", "127.0.0.1", 65535, true, "/", "",
       "http://127.0.0.1:65535"},
      {"https://h/a%2Fb#frag", "https", "h", 443, false, "/a%2Fb", "", "https://h"},
  };
  for (const auto& c : cases) {
    INFO(c.url);
    auto u = net::parse_url(c.url, "the URL");
    REQUIRE(u);
    CHECK(u->scheme == c.scheme);
    CHECK(u->host == c.host);
    CHECK(u->port == c.port);
    CHECK(u->explicit_port == c.explicit_port);
    CHECK(u->path == c.path);
    CHECK(u->query == c.query);
    CHECK(u->origin() == c.origin);
  }
}

TEST_CASE("parse_url: refusals name what was parsed and why", "[net][url]") {
  struct Case {
    std::string url;
    const char* says;
  };
  const Case cases[] = {
      {"ftp://example.com/", "must be an http or https URL"},
      {"file:///etc/passwd", "must be an http or https URL"},
      {"https://user:secret@example.com/", "must not contain credentials"},
      {"https://user@example.com/", "must not contain credentials"},
      {"http://h:0/", "invalid port"},
      {"not a url", "redirect URI"},
      {"", "redirect URI"},
      {"http://h:99999/", "redirect URI"},
      {"https://example.com/" + std::string(8200, 'a'), "is too long"},
  };
  for (const auto& c : cases) {
    INFO(c.url.substr(0, 60));
    auto u = net::parse_url(c.url, "redirect URI");
    REQUIRE_FALSE(u);
    CHECK(u.error().code == Errc::invalid_argument);
    CHECK(u.error().message.find(c.says) != std::string::npos);
    CHECK(u.error().message.find("redirect URI") != std::string::npos);
    CHECK(u.error().message.find("secret") == std::string::npos);
  }
}

TEST_CASE("origin_key: one key per site, whatever the spelling", "[net][url]") {
  CHECK(net::origin_key("https://Acme.atlassian.net/") == "https://acme.atlassian.net:443");
  CHECK(net::origin_key("https://acme.atlassian.net:443/wiki?x") ==
        "https://acme.atlassian.net:443");
  CHECK(net::origin_key("HTTPS://ACME.atlassian.net") ==
        net::origin_key("https://acme.atlassian.net:443"));
  CHECK(net::origin_key("http://acme.atlassian.net") == "http://acme.atlassian.net:80");
  CHECK(net::origin_key("http://acme.atlassian.net") !=
        net::origin_key("https://acme.atlassian.net"));
  CHECK(net::origin_key("https://acme.atlassian.net:8443") !=
        net::origin_key("https://acme.atlassian.net"));
  CHECK(net::origin_key("https://[::1]:8/x") == "https://[::1]:8");
  // Unparsable: returned as given, so it only equals itself.
  CHECK(net::origin_key("not a url") == "not a url");
  CHECK(net::origin_key("ftp://acme.atlassian.net") == "ftp://acme.atlassian.net");
}

TEST_CASE("is_loopback_host: addresses parsed, not matched as text", "[net][url]") {
  const char* loopback[] = {"127.0.0.1", "127.255.255.254", "127.1.2.3",         "localhost",
                            "LocalHost", "[::1]",           "[0:0:0:0:0:0:0:1]", "[0000::0001]"};
  for (const char* host : loopback) {
    INFO(host);
    CHECK(net::is_loopback_host(host));
  }
  const std::string too_long = "127.0.0.1" + std::string(60, '0');
  const char* not_loopback[] = {"127.0.0.1.",
                                "127.evil.example",
                                "localhost.",
                                "localhost.evil.example",
                                "::1",
                                "[::2]",
                                "[::ffff:127.0.0.1]",
                                "[::1",
                                "128.0.0.1",
                                "0.0.0.0",
                                "0x7f.0.0.1",
                                "127.1",
                                "",
                                "[]",
                                too_long.c_str(),
                                "10.0.0.1"};
  for (const char* host : not_loopback) {
    INFO(host);
    CHECK_FALSE(net::is_loopback_host(host));
  }
}
