#include "tokens/events.hpp"

#include <catch2/catch_test_macros.hpp>
#include <set>
#include <string_view>

using namespace tokend::tokens;

TEST_CASE("event kinds have one name each, and the names read back", "[events]") {
  std::set<std::string_view> names;
  for (int i = 0; i <= static_cast<int>(EventKind::logged_out); ++i) {
    const auto kind = static_cast<EventKind>(i);
    const auto name = to_string(kind);
    CHECK(name != "unknown");
    CHECK(names.insert(name).second);
    CHECK(event_kind_of(name) == kind);
  }
  CHECK(names.size() == 15);
  CHECK_FALSE(event_kind_of("refreshed "));
  CHECK_FALSE(event_kind_of(""));
}
