// The checks every stand-in endpoint request passes: Host, cross-site
// requests, the stand-in as Bearer or Basic password; and their answers.
#include "gateway/endpoint.hpp"

#include <catch2/catch_test_macros.hpp>

#include "core/encoding.hpp"

using namespace tokend;
using namespace tokend::ipc;
using namespace tokend::gateway;

namespace {

constexpr std::uint16_t k_port = 40123;
const Secret k_standin("s3cr3t-stand-in-value");

Request request(Headers headers) {
  Request r;
  r.method = "GET";
  r.target = r.path = "/rest/api/3/myself";
  r.headers = std::move(headers);
  return r;
}

std::string basic(std::string_view user, std::string_view password) {
  return "Basic " + base64_encode(std::string(user) + ":" + std::string(password));
}

}  // namespace

TEST_CASE("endpoint requests: what passes and what is refused", "[ipc][endpoint]") {
  const std::string host = "127.0.0.1:40123";
  const std::string bearer = "Bearer s3cr3t-stand-in-value";
  struct Case {
    const char* what;
    Headers headers;
    std::optional<Refusal> want;
  };
  const Case cases[] = {
      {"bearer", {{"Host", host}, {"Authorization", bearer}}, std::nullopt},
      {"bearer, scheme in any case",
       {{"host", host}, {"authorization", "bEaReR s3cr3t-stand-in-value"}},
       std::nullopt},
      {"basic password, any user",
       {{"Host", host}, {"Authorization", basic("me@example.test", k_standin.reveal())}},
       std::nullopt},
      {"basic, empty user",
       {{"Host", host}, {"Authorization", basic("", k_standin.reveal())}},
       std::nullopt},
      {"localhost", {{"Host", "LocalHost:40123"}, {"Authorization", bearer}}, std::nullopt},
      {"own origin",
       {{"Host", host}, {"Origin", "http://127.0.0.1:40123"}, {"Authorization", bearer}},
       std::nullopt},
      {"same-origin fetch",
       {{"Host", host}, {"Sec-Fetch-Site", "same-origin"}, {"Authorization", bearer}},
       std::nullopt},
      {"user-typed",
       {{"Host", host}, {"Sec-Fetch-Site", "none"}, {"Authorization", bearer}},
       std::nullopt},
      {"no credential", {{"Host", host}}, Refusal::unauthorized},
      {"wrong bearer",
       {{"Host", host}, {"Authorization", "Bearer s3cr3t-stand-in-valuf"}},
       Refusal::unauthorized},
      {"prefix of the stand-in",
       {{"Host", host}, {"Authorization", "Bearer s3cr3t"}},
       Refusal::unauthorized},
      {"stand-in as the basic user",
       {{"Host", host}, {"Authorization", basic(k_standin.reveal(), "x")}},
       Refusal::unauthorized},
      {"basic without colon",
       {{"Host", host}, {"Authorization", "Basic " + base64_encode(k_standin.reveal())}},
       Refusal::unauthorized},
      {"basic, bad base64",
       {{"Host", host}, {"Authorization", "Basic !!!"}},
       Refusal::unauthorized},
      {"other scheme",
       {{"Host", host}, {"Authorization", "Token s3cr3t-stand-in-value"}},
       Refusal::unauthorized},
      {"a second, wrong Authorization",
       {{"Host", host}, {"Authorization", bearer}, {"Authorization", "Bearer x"}},
       Refusal::unauthorized},
      {"no host", {{"Authorization", bearer}}, Refusal::wrong_host},
      {"rebinding",
       {{"Host", "evil.example:40123"}, {"Authorization", bearer}},
       Refusal::wrong_host},
      {"no port", {{"Host", "127.0.0.1"}, {"Authorization", bearer}}, Refusal::wrong_host},
      {"other port", {{"Host", "127.0.0.1:40124"}, {"Authorization", bearer}}, Refusal::wrong_host},
      {"ipv6", {{"Host", "[::1]:40123"}, {"Authorization", bearer}}, Refusal::wrong_host},
      {"two hosts",
       {{"Host", host}, {"Host", "evil.example"}, {"Authorization", bearer}},
       Refusal::wrong_host},
      {"other origin",
       {{"Host", host}, {"Origin", "https://evil.example"}, {"Authorization", bearer}},
       Refusal::cross_site},
      {"https own origin",
       {{"Host", host}, {"Origin", "https://127.0.0.1:40123"}, {"Authorization", bearer}},
       Refusal::cross_site},
      {"null origin",
       {{"Host", host}, {"Origin", "null"}, {"Authorization", bearer}},
       Refusal::cross_site},
      {"cross-site",
       {{"Host", host}, {"Sec-Fetch-Site", "cross-site"}, {"Authorization", bearer}},
       Refusal::cross_site},
      {"same-site",
       {{"Host", host}, {"Sec-Fetch-Site", "same-site"}, {"Authorization", bearer}},
       Refusal::cross_site},
      // Host is judged first, then the site, then the credential.
      {"rebinding without credential", {{"Host", "evil.example:40123"}}, Refusal::wrong_host},
      {"cross-site without credential",
       {{"Host", host}, {"Origin", "https://evil.example"}},
       Refusal::cross_site},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    CHECK(check_standin_request(request(c.headers), k_port, k_standin) == c.want);
  }
}

TEST_CASE("endpoint refusals: statuses, codes and the challenge", "[ipc][endpoint]") {
  const auto unauthorized = refusal_response(Refusal::unauthorized, k_port);
  CHECK(unauthorized.status == 401);
  int challenges = 0;
  for (const auto& [k, v] : unauthorized.headers) {
    if (k == "WWW-Authenticate") ++challenges;
  }
  CHECK(challenges == 2);
  CHECK(unauthorized.body.find("\"unauthorized\"") != std::string::npos);
  const auto host = refusal_response(Refusal::wrong_host, k_port);
  CHECK(host.status == 421);
  CHECK(host.close);
  CHECK(host.body.find("127.0.0.1:40123") != std::string::npos);
  CHECK(refusal_response(Refusal::cross_site, k_port).status == 403);
  for (const auto r : {Refusal::unauthorized, Refusal::wrong_host, Refusal::cross_site}) {
    CHECK(refusal_response(r, k_port).body.find(k_standin.reveal()) == std::string::npos);
  }
}
