#include "commands/common.hpp"

#include <fmt/format.h>

#include <charconv>
#include <ctime>
#include <sstream>

#include "core/names.hpp"

namespace tokend::ctl {

void say(std::FILE* f, const std::string& s) {
  std::fputs(s.c_str(), f);
  std::fflush(f);
}

int error(const Ctx& ctx, const std::string& message, int code) {
  say(ctx.io.err, "tokenctl: " + message + "\n");
  return code;
}

std::string failure_message(const client::ApiError& e) {
  if (e.stage == client::ApiError::Stage::connect && e.error.code == Errc::unavailable) {
    return fmt::format("{}; {}", e.error.message, k_start_hint);
  }
  return e.error.message;
}

int failure_exit(const client::ApiError& e) {
  if (e.stage == client::ApiError::Stage::answer) return e.reauth() ? k_reauth : k_error;
  return e.error.code == Errc::unavailable ? k_unreachable : k_error;
}

int report(const Ctx& ctx, const client::ApiError& e) {
  return error(ctx, failure_message(e), failure_exit(e));
}

int report_connect(const Ctx& ctx, const Error& e) {
  return report(ctx, client::ApiError{client::ApiError::Stage::connect, e, 0});
}

std::int64_t now_s() {
  return static_cast<std::int64_t>(std::time(nullptr));
}

po::variables_map parse(const std::vector<std::string>& args, const po::options_description& opts,
                        const std::vector<std::string>& positional, bool allow_extra) {
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

// (Boost's unsigned parsing wraps "-5", hence from_chars.)
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

std::optional<std::string> optional_profile(const po::variables_map& vm) {
  auto name = opt(vm, "profile");
  if (name) {
    if (auto ok = validate_profile_name(*name); !ok) throw UsageError{ok.error().message};
  }
  return name;
}

}  // namespace tokend::ctl
