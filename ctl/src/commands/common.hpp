// What every tokenctl command shares: its context, option parsing that
// throws UsageError or HelpRequest, output, and turning a failed call to
// tokend into a message and an exit code. Internal to ctl/src.
#pragma once

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "client/api.hpp"
#include "core/error.hpp"
#include "ctl/app.hpp"

namespace tokend::ctl {

namespace po = boost::program_options;

inline constexpr std::string_view k_start_hint =
    "start it with: systemctl --user start tokend (or run tokend in a terminal)";

struct Ctx {
  Io io;
  std::filesystem::path socket;
  bool colour = false;
  [[nodiscard]] client::ApiClient api() const { return client::ApiClient(socket); }
};

// Thrown while reading a command's arguments: exit 2 with the message and
// the command's synopsis.
struct UsageError {
  std::string message;
};

// Thrown by parse() for COMMAND --help: carries the command's option list.
struct HelpRequest {
  std::string options;
};

void say(std::FILE* f, const std::string& s);
// "tokenctl: MESSAGE" on stderr; returns `code`.
int error(const Ctx& ctx, const std::string& message, int code = k_error);

// What tokenctl says and exits with when a call to tokend failed: not
// reachable (3, with the command that starts it when nothing listens), a
// socket it refuses to trust (1: starting tokend would not fix that),
// re-authentication required (4), any other error answer (1).
std::string failure_message(const client::ApiError& e);
int failure_exit(const client::ApiError& e);
// Says failure_message() and returns failure_exit().
int report(const Ctx& ctx, const client::ApiError& e);
// For a connection made directly with client::Client::connect().
int report_connect(const Ctx& ctx, const Error& e);

std::int64_t now_s();

// Parses a command's options; positional arguments in order of `positional`.
po::variables_map parse(const std::vector<std::string>& args, const po::options_description& opts,
                        const std::vector<std::string>& positional, bool allow_extra = false);
// A required value (a "profile" is checked to be a valid profile name).
std::string need(const po::variables_map& vm, const char* name, std::string_view what);
std::optional<std::string> opt(const po::variables_map& vm, const char* name);
// A whole number of seconds in [0, max].
std::optional<unsigned> seconds(const po::variables_map& vm, const char* name, unsigned max);
// An optional PROFILE argument, checked to be a valid profile name.
std::optional<std::string> optional_profile(const po::variables_map& vm);

// The commands, one file each under commands/ (or one per small group).
using Args = std::vector<std::string>;
int cmd_status(Ctx& ctx, const Args& args);
int cmd_list(Ctx& ctx, const Args& args);
int cmd_token(Ctx& ctx, const Args& args);
int cmd_headers(Ctx& ctx, const Args& args);
int cmd_exec(Ctx& ctx, const Args& args);
int cmd_mcp(Ctx& ctx, const Args& args);
int cmd_api(Ctx& ctx, const Args& args);
int cmd_add(Ctx& ctx, const Args& args);
int cmd_import(Ctx& ctx, const Args& args);
int cmd_login(Ctx& ctx, const Args& args);
int cmd_logout(Ctx& ctx, const Args& args);
int cmd_test(Ctx& ctx, const Args& args);
int cmd_renew(Ctx& ctx, const Args& args);
int cmd_remove(Ctx& ctx, const Args& args);
int cmd_monitor(Ctx& ctx, const Args& args);
int cmd_ping(Ctx& ctx, const Args& args);
int cmd_version(Ctx& ctx, const Args& args);
int cmd_completion(Ctx& ctx, const Args& args);

// token.cpp: the --min-valid and --wait options of `vm` (either may be
// absent from the command) as a token request; without --min-valid,
// `default_min_valid` (if any) is sent.
client::TokenRequest token_request(const po::variables_map& vm,
                                   std::string_view default_min_valid = {});

}  // namespace tokend::ctl
