// tokenctl api: a call through tokend's proxy (ANY /v1/proxy/{name}/{rest}),
// like `gh api`. Bodies stream both ways. Exit codes: 0 for an answer below
// 400; 1 for 400 and above (4 when tokend says reauth_required), for a
// cut-off answer or an unreadable --data source; 2 usage; 3 tokend not
// reachable (or the connection lost before an answer started).
#include "ctl/api.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "commands/common.hpp"
#include "core/fd.hpp"

namespace tokend::ctl {

namespace {

po::options_description api_options() {
  po::options_description o(
      "tokenctl api PROFILE METHOD PATH [--data @FILE|-|STRING] [-H \"Name: value\"]... "
      "[--include]\n"
      "Sends METHOD to tokend's proxy for PROFILE (PATH e.g. jira/rest/api/3/myself; a leading / "
      "and a\n"
      "query string are fine) and prints the answer's body. tokend adds the profile's credential "
      "and\n"
      "drops an Authorization or Cookie header given here. For an answer of 400 or more the status "
      "goes\n"
      "to stderr and the exit code is 1 (4 when a new login is needed); tokend's own errors print\n"
      "their message instead of the body");
  o.add_options()(
      "data,d", po::value<std::string>(),
      "request body: @FILE (streamed from the file), - (streamed from standard input) or the text "
      "itself; Content-Type application/json unless -H sets one")(
      "header,H", po::value<std::vector<std::string>>(),
      "a request header, \"Name: value\" (repeatable)")(
      "include,i", "print the status line and headers before the body")(
      "timeout", po::value<std::string>(),
      "give up after this many seconds without progress (default 120; 0: never)");
  return o;
}

// The -H arguments; sets `has_content_type` when one of them is Content-Type.
client::Headers request_headers(const Ctx& ctx, const po::variables_map& vm,
                                bool& has_content_type) {
  client::Headers headers;
  if (vm.count("header") == 0) return headers;
  for (const auto& h : vm["header"].as<std::vector<std::string>>()) {
    auto parsed = parse_header_arg(h);
    if (!parsed) throw UsageError{parsed.error().message};
    if (is_framing_header(parsed->first)) {
      throw UsageError{fmt::format("-H {}: tokenctl handles this header itself", parsed->first)};
    }
    if (is_replaced_header(parsed->first)) {
      say(ctx.io.err,
          fmt::format(
              "tokenctl: note: tokend drops the {} header; the profile's credential is used\n",
              parsed->first));
    }
    has_content_type = has_content_type || ::strcasecmp(parsed->first.c_str(), "Content-Type") == 0;
    headers.push_back(std::move(*parsed));
  }
  return headers;
}

// The --data source, opened before anything is sent: a missing file is a
// usage error and tokend never sees half a request.
std::optional<client::BodyReader> request_body(const Ctx& ctx, const std::optional<DataArg>& data,
                                               Fd& file) {
  if (!data) return std::nullopt;
  switch (data->kind) {
    case DataArg::Kind::literal:
      return client::BodyReader::from_string(data->value);
    case DataArg::Kind::stdin_stream:
      return client::BodyReader::from_fd(::fileno(ctx.io.in), "standard input");
    case DataArg::Kind::file:
      break;
  }
  if (data->value.empty()) throw UsageError{"--data @FILE needs a file name after the @"};
  file.reset(::open(data->value.c_str(), O_RDONLY | O_CLOEXEC));
  if (!file.valid())
    throw UsageError{fmt::format("cannot open {}: {}", data->value, errno_text(errno))};
  struct stat st{};
  if (::fstat(file.get(), &st) == 0 && S_ISDIR(st.st_mode))
    throw UsageError{data->value + " is a directory"};
  return client::BodyReader::from_fd(file.get(), data->value);
}

// Streams the answer to stdout. One of 400 or more is held back (up to
// k_error_peek bytes) to see whether tokend itself wrote it.
class AnswerWriter {
 public:
  static constexpr std::size_t k_error_peek = 64 * 1024;
  AnswerWriter(std::FILE* out, bool include) : m_out(out), m_include(include) {}

  bool on_head(const client::ResponseHead& h) {
    head = h;
    holding = h.status >= 400;
    return !m_include || write(render_response_head(h));
  }
  bool on_data(std::string_view d) {
    if (!holding) return write(d);
    held.append(d);
    if (held.size() <= k_error_peek) return true;
    holding = false;
    const bool ok = write(held);
    held.clear();
    return ok;
  }
  bool write(std::string_view d) {
    if (write_errno != 0) return false;
    if (std::fwrite(d.data(), 1, d.size(), m_out) != d.size() || std::fflush(m_out) != 0) {
      write_errno = errno != 0 ? errno : EIO;
      return false;
    }
    return true;
  }

  client::ResponseHead head;
  bool holding = false;
  std::string held;
  int write_errno = 0;

 private:
  std::FILE* m_out;
  bool m_include;
};

// The exit code for a whole answer of 400 or more, after saying so.
int error_answer(const Ctx& ctx, AnswerWriter& w, bool include) {
  const auto own = w.holding ? parse_tokend_error(w.held) : std::nullopt;
  if (include || !own) w.write(w.held);
  if (own) {
    std::string message = fmt::format("HTTP {}: {}", w.head.status, own->message);
    if (!own->command.empty() && own->message.find(own->command) == std::string::npos) {
      message += fmt::format(" (run: {})", own->command);
    }
    return error(ctx, message, own->code == "reauth_required" ? k_reauth : k_error);
  }
  return error(ctx, fmt::format("HTTP {}{}{}", w.head.status, w.head.reason.empty() ? "" : " ",
                                w.head.reason));
}

}  // namespace

int cmd_api(Ctx& ctx, const Args& args) {
  auto vm = parse(args, api_options(), {"profile", "method", "path"});
  const std::string name = need(vm, "profile", "PROFILE");
  auto method = normalize_method(need(vm, "method", "METHOD"));
  if (!method) throw UsageError{method.error().message};
  auto target = proxy_target(name, need(vm, "path", "PATH"));
  if (!target) throw UsageError{target.error().message};
  const bool include = vm.count("include") != 0;
  const auto timeout = std::chrono::seconds(seconds(vm, "timeout", 86'400).value_or(120));

  bool has_content_type = false;
  client::Headers headers = request_headers(ctx, vm, has_content_type);
  const auto data = parse_data_arg(opt(vm, "data"));
  if (data && !has_content_type) headers.emplace_back("Content-Type", "application/json");
  Fd file;
  std::optional<client::BodyReader> body = request_body(ctx, data, file);

  auto client = ctx.api().connect();
  if (!client) return report(ctx, client.error());

  AnswerWriter w(ctx.io.out, include);
  auto r = client->exchange(
      *method, *target, headers, body ? &*body : nullptr,
      [&](const client::ResponseHead& h) { return w.on_head(h); },
      [&](std::string_view d) { return w.on_data(d); }, timeout);
  if (w.write_errno != 0)
    return error(ctx, "writing the answer to standard output: " + errno_text(w.write_errno));
  if (!r) {
    const Error& e = r.error();
    if (w.head.status != 0) {
      w.write(w.held);
      return error(ctx,
                   fmt::format("the answer (HTTP {}) was cut off: {}", w.head.status, e.message));
    }
    if (e.code == Errc::unavailable) {
      return error(ctx, fmt::format("{}; {}", e.message, k_start_hint), k_unreachable);
    }
    return error(ctx, e.message, e.code == Errc::invalid_argument ? k_usage : k_error);
  }
  if (w.head.status < 400) return k_ok;
  return error_answer(ctx, w, include);
}

}  // namespace tokend::ctl
