// loadgen: closed-loop HTTP/1.1 load generator for a Unix socket.
//
//   loadgen --socket PATH --path /v1/profiles/NAME/token
//           [--connections N] [--duration S] [--warmup S]
//           [--header 'K: V']... [--json]
//
// N keep-alive connections each send `GET PATH HTTP/1.1` back to back, one
// request in flight per connection, for warmup + duration seconds. Only the
// responses that complete inside the measured window (after the warmup) are
// counted; each one's latency is taken from the moment its request was
// written to the moment its last byte was parsed.
//
// Design: one thread, one epoll loop, non-blocking sockets. The server under
// test shares this machine's 2 cores, so the generator must cost as little CPU
// and as few context switches as possible: one thread per connection would put
// 64 runnable threads next to the server at 64 connections, and the scheduler
// churn would show up as server latency. One epoll loop uses at most one core,
// picks up every ready connection per epoll_wait and never switches between
// its own threads; h2load (which we compare against) works the same way with
// its default of one thread. Requests are serialised once, up front (Beast's
// serializer); responses go through Beast's response_parser fed with put() on
// plain buffers.
//
// Exit codes: 0 the run completed (non-2xx and errors are reported, not
// fatal), 1 the run could not be done (cannot connect, nothing answered, or
// the server went away mid-run), 2 usage.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <boost/beast/http.hpp>
#include <boost/program_options.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace http = boost::beast::http;
namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

namespace {

struct Options {
  std::string socket;
  std::string path;
  unsigned connections = 1;
  double duration_s = 10;
  double warmup_s = 1;
  std::vector<std::string> headers;
  bool json = false;
};

[[noreturn]] void die(const std::string& message, int code = 1) {
  std::cerr << "loadgen: " << message << '\n';
  std::exit(code);
}

std::string errno_text(int e) {
  return std::strerror(e);
}

// Parses the command line; exits on --help or a usage error.
Options parse_options(int argc, char** argv) {
  Options o;
  po::options_description desc("Options");
  desc.add_options()("help,h", "show this help and exit")(
      "socket,s", po::value<std::string>(&o.socket)->required(), "Unix socket of the server")(
      "path,p", po::value<std::string>(&o.path)->required(),
      "request target, e.g. /v1/profiles/bench/token")(
      "connections,c", po::value<unsigned>(&o.connections)->default_value(1),
      "keep-alive connections, one request in flight on each")(
      "duration,d", po::value<double>(&o.duration_s)->default_value(10), "measured seconds")(
      "warmup,w", po::value<double>(&o.warmup_s)->default_value(1),
      "seconds of load before measuring")(
      "header,H", po::value<std::vector<std::string>>(&o.headers)->composing(),
      "extra request header 'Name: value' (repeatable)")("json", po::bool_switch(&o.json),
                                                         "print one JSON object");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    if (vm.count("help") != 0) {
      std::cout << "Usage: loadgen --socket PATH --path TARGET [options]\n\n"
                << "Closed-loop HTTP/1.1 load over a Unix socket: N keep-alive connections,\n"
                << "one GET in flight on each, for warmup + duration seconds; prints req/s\n"
                << "and latency percentiles.\n\n"
                << desc;
      std::exit(0);
    }
    po::notify(vm);
  } catch (const po::error& e) {
    die(std::string(e.what()) + " (see loadgen --help)", 2);
  }
  if (o.path.empty() || o.path.front() != '/') die("--path must start with '/'", 2);
  if (o.connections < 1 || o.connections > 10000) die("--connections must be 1..10000", 2);
  if (!(o.duration_s > 0) || o.duration_s > 3600) die("--duration must be in (0, 3600]", 2);
  if (!(o.warmup_s >= 0) || o.warmup_s > 3600) die("--warmup must be in [0, 3600]", 2);
  if (o.socket.size() >= sizeof(sockaddr_un{}.sun_path))
    die("socket path too long for a Unix socket: " + o.socket, 2);
  return o;
}

// The request, serialised once with Beast.
std::string build_request(const Options& o) {
  http::request<http::empty_body> req{http::verb::get, o.path, 11};
  req.set(http::field::host, "localhost");
  req.set(http::field::user_agent, "tokend-loadgen");
  for (const auto& h : o.headers) {
    const auto colon = h.find(':');
    if (colon == std::string::npos || colon == 0)
      die("--header must look like 'Name: value': " + h, 2);
    std::string value = h.substr(colon + 1);
    const auto first = value.find_first_not_of(" \t");
    value = first == std::string::npos ? std::string() : value.substr(first);
    req.set(h.substr(0, colon), value);
  }
  req.keep_alive(true);
  req.prepare_payload();
  std::ostringstream out;
  out << req;
  return out.str();
}

// Connects a blocking Unix socket (bounded by a 2 s send timeout, which also
// bounds connect() on AF_UNIX), then makes it non-blocking.
int connect_unix(const std::string& path, int& err) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = errno;
    return -1;
  }
  timeval tv{2, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    err = errno;
    ::close(fd);
    return -1;
  }
  const int flags = ::fcntl(fd, F_GETFL, 0);
  ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  return fd;
}

struct Conn {
  int fd = -1;
  std::size_t written = 0;      // bytes of the request written so far
  bool awaiting = false;        // a request is in flight
  Clock::time_point sent_at{};  // when the request was first written
  std::string inbuf;            // bytes received and not yet consumed by the parser
  std::uint32_t events = 0;     // what the epoll set watches for fd
  std::optional<http::response_parser<http::string_body>> parser;
};

struct Results {
  std::vector<std::int64_t> latencies_ns;  // measured window only
  std::uint64_t non_2xx = 0;
  std::uint64_t errors = 0;  // connection, I/O and parse errors
  std::uint64_t reconnects = 0;
  bool stopped_early = false;  // every connection was lost before the end
  std::map<unsigned, std::uint64_t> statuses;
};

class Loop {
 public:
  Loop(const Options& o, std::string request) : opt_(o), request_(std::move(request)) {}

  Results run() {
    epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ < 0) die("epoll_create1: " + errno_text(errno));
    // Conn holds a Beast parser, which cannot move: size the vector once.
    std::vector<Conn>(opt_.connections).swap(conns_);
    for (std::size_t i = 0; i < conns_.size(); ++i) {
      int err = 0;
      if (!open(i, err)) die(connect_message(err));
    }
    // Preallocate for a generous rate so recording never reallocates in
    // practice (it still grows if a server is faster than that).
    const double guess = std::min(opt_.duration_s * 400000.0, 64e6);
    res_.latencies_ns.reserve(static_cast<std::size_t>(guess));

    start_ = Clock::now();
    measure_from_ = start_ + to_duration(opt_.warmup_s);
    end_ = measure_from_ + to_duration(opt_.duration_s);
    for (std::size_t i = 0; i < conns_.size(); ++i) send(i);

    std::vector<epoll_event> events(conns_.size());
    for (;;) {
      const auto now = Clock::now();
      if (now >= end_) break;
      const auto left_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(end_ - now).count() + 1;
      const int n = ::epoll_wait(epfd_, events.data(), static_cast<int>(events.size()),
                                 static_cast<int>(std::min<long long>(left_ms, 1000)));
      if (n < 0) {
        if (errno == EINTR) continue;
        die("epoll_wait: " + errno_text(errno));
      }
      for (int k = 0; k < n; ++k) {
        const auto& ev = events[static_cast<std::size_t>(k)];
        const std::size_t i = ev.data.u32;
        if (conns_[i].fd < 0) continue;
        if ((ev.events & EPOLLOUT) != 0 && conns_[i].written < request_.size()) {
          write_some(i);
          if (conns_[i].fd < 0) continue;
        }
        if ((ev.events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) read_some(i);
      }
      restart_pending();
      if (dead_ == conns_.size()) {  // the server is gone: nothing left to measure
        res_.stopped_early = true;
        break;
      }
    }
    const auto stop = std::min(Clock::now(), end_);
    measured_s_ = std::max(0.0, std::chrono::duration<double>(stop - measure_from_).count());
    for (auto& c : conns_)
      if (c.fd >= 0) ::close(c.fd);
    ::close(epfd_);
    return std::move(res_);
  }

  double measured_seconds() const { return measured_s_; }

 private:
  static Clock::duration to_duration(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  }

  std::string connect_message(int err) const {
    struct stat st{};
    if (::stat(opt_.socket.c_str(), &st) != 0)
      return "socket " + opt_.socket + " does not exist (" + errno_text(errno) +
             "); is the server running?";
    if (!S_ISSOCK(st.st_mode)) return opt_.socket + " is not a socket";
    if (err == ECONNREFUSED)
      return "nothing is listening on " + opt_.socket + " (connection refused)";
    return "cannot connect to " + opt_.socket + ": " + errno_text(err);
  }

  bool open(std::size_t i, int& err) {
    Conn& c = conns_[i];
    c.fd = connect_unix(opt_.socket, err);
    if (c.fd < 0) return false;
    c.written = 0;
    c.awaiting = false;
    c.inbuf.clear();
    c.events = EPOLLIN;
    epoll_event ev{};
    ev.events = c.events;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    if (::epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) die("epoll_ctl: " + errno_text(errno));
    return true;
  }

  // Drops a broken connection; it is reopened after the current batch of
  // events (never from inside the handler, so a server that accepts and
  // closes at once cannot drive this into unbounded recursion). The
  // in-flight request, if any, is lost and counted as an error by the caller.
  void reconnect(std::size_t i) {
    Conn& c = conns_[i];
    ::close(c.fd);  // also removes it from the epoll set
    c.fd = -1;
    c.awaiting = false;
    restart_.push_back(i);
  }

  void restart_pending() {
    std::vector<std::size_t> todo;
    todo.swap(restart_);
    for (const auto i : todo) {
      if (Clock::now() >= end_) return;
      int err = 0;
      if (!open(i, err)) {
        // Cannot reconnect: the server went away. Count it and give up on
        // this connection for the rest of the run rather than spin.
        ++res_.errors;
        ++dead_;
        if (!warned_) {
          std::cerr << "loadgen: " << connect_message(err) << '\n';
          warned_ = true;
        }
        continue;
      }
      ++res_.reconnects;
      send(i);
    }
  }

  void fail(std::size_t i) {
    ++res_.errors;
    reconnect(i);
  }

  void send(std::size_t i) {
    Conn& c = conns_[i];
    c.written = 0;
    c.awaiting = true;
    c.parser.emplace();
    c.parser->eager(true);
    c.parser->body_limit(16 * 1024 * 1024);
    c.sent_at = Clock::now();
    write_some(i);
  }

  void write_some(std::size_t i) {
    Conn& c = conns_[i];
    while (c.written < request_.size()) {
      const ssize_t n =
          ::send(c.fd, request_.data() + c.written, request_.size() - c.written, MSG_NOSIGNAL);
      if (n > 0) {
        c.written += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        set_events(c, EPOLLIN | EPOLLOUT);
        return;
      }
      fail(i);
      return;
    }
    set_events(c, EPOLLIN);
  }

  // Changes the watched events only when they differ: in the common case (the
  // whole request fits the socket buffer) no epoll_ctl happens per request.
  void set_events(Conn& c, std::uint32_t events) {
    if (c.events == events) return;
    c.events = events;
    epoll_event ev{};
    ev.events = events;
    ev.data.u32 = static_cast<std::uint32_t>(&c - conns_.data());
    ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void read_some(std::size_t i) {
    Conn& c = conns_[i];
    char buf[16384];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
      if (n > 0) {
        c.inbuf.append(buf, static_cast<std::size_t>(n));
        if (!c.awaiting) {  // bytes nobody asked for
          fail(i);
          return;
        }
        if (!consume(i)) return;  // connection was replaced or closed
        if (static_cast<std::size_t>(n) < sizeof buf) return;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      // EOF or error. EOF with no request in flight is the server closing an
      // idle keep-alive connection; anything else loses a request.
      if (n == 0 && !c.awaiting) {
        reconnect(i);
        return;
      }
      fail(i);
      return;
    }
  }

  // Feeds buffered bytes to the parser; on a complete response records it and
  // sends the next request. Returns false when the connection was replaced.
  bool consume(std::size_t i) {
    Conn& c = conns_[i];
    boost::beast::error_code ec;
    std::size_t used = 0;
    while (used < c.inbuf.size() && !c.parser->is_done()) {
      const std::size_t n =
          c.parser->put(boost::asio::buffer(c.inbuf.data() + used, c.inbuf.size() - used), ec);
      used += n;
      if (ec == http::error::need_more) {
        ec = {};
        break;
      }
      if (ec) {
        fail(i);
        return false;
      }
      if (n == 0) break;
    }
    c.inbuf.erase(0, used);
    if (!c.parser->is_done()) return true;

    const auto done_at = Clock::now();
    const auto& msg = c.parser->get();
    const unsigned status = msg.result_int();
    const bool keep = msg.keep_alive() && !c.parser->need_eof();
    c.awaiting = false;
    if (done_at >= measure_from_ && done_at <= end_) {
      res_.latencies_ns.push_back(
          std::chrono::duration_cast<std::chrono::nanoseconds>(done_at - c.sent_at).count());
      ++res_.statuses[status];
      if (status < 200 || status > 299) ++res_.non_2xx;
    }
    if (!c.inbuf.empty()) {  // more bytes than one response
      fail(i);
      return false;
    }
    if (!keep) {
      reconnect(i);
      return false;
    }
    send(i);
    return c.fd >= 0;
  }

  const Options& opt_;
  const std::string request_;
  int epfd_ = -1;
  std::vector<Conn> conns_;
  Results res_;
  Clock::time_point start_{}, measure_from_{}, end_{};
  std::vector<std::size_t> restart_;  // connections to reopen after this batch
  std::size_t dead_ = 0;              // connections that could not be reopened
  double measured_s_ = 0;
  bool warned_ = false;
};

// Nearest-rank percentile of sorted values.
std::int64_t percentile(const std::vector<std::int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(p / 100.0 * static_cast<double>(sorted.size()));
  const auto idx = static_cast<std::size_t>(std::max(1.0, rank)) - 1;
  return sorted[std::min(idx, sorted.size() - 1)];
}

double us(std::int64_t ns) {
  return static_cast<double>(ns) / 1000.0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse_options(argc, argv);
  Loop loop(opt, build_request(opt));
  Results r = loop.run();
  const double seconds = loop.measured_seconds();

  auto& lat = r.latencies_ns;
  std::sort(lat.begin(), lat.end());
  const auto count = lat.size();
  double mean_ns = 0;
  for (const auto v : lat) mean_ns += static_cast<double>(v);
  if (count > 0) mean_ns /= static_cast<double>(count);
  const double rps = seconds > 0 ? static_cast<double>(count) / seconds : 0;

  if (opt.json) {
    nlohmann::json j;
    j["socket"] = opt.socket;
    j["path"] = opt.path;
    j["connections"] = opt.connections;
    j["duration_s"] = seconds;
    j["warmup_s"] = opt.warmup_s;
    j["requests"] = count;
    j["rps"] = rps;
    j["latency_us"] = {
        {"mean", mean_ns / 1000.0},           {"p50", us(percentile(lat, 50))},
        {"p90", us(percentile(lat, 90))},     {"p99", us(percentile(lat, 99))},
        {"p99_9", us(percentile(lat, 99.9))}, {"max", us(count > 0 ? lat.back() : 0)}};
    j["non_2xx"] = r.non_2xx;
    j["errors"] = r.errors;
    j["reconnects"] = r.reconnects;
    j["stopped_early"] = r.stopped_early;
    nlohmann::json statuses = nlohmann::json::object();
    for (const auto& [status, n] : r.statuses) statuses[std::to_string(status)] = n;
    j["statuses"] = statuses;
    std::cout << j.dump() << '\n';
  } else {
    std::printf("target       unix:%s %s\n", opt.socket.c_str(), opt.path.c_str());
    std::printf("connections  %u, measured %.2f s after %.2f s warm-up\n", opt.connections, seconds,
                opt.warmup_s);
    std::printf("requests     %zu  (%.1f req/s)\n", count, rps);
    std::printf("latency us   p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
                us(percentile(lat, 50)), us(percentile(lat, 90)), us(percentile(lat, 99)),
                us(percentile(lat, 99.9)), us(count > 0 ? lat.back() : 0), mean_ns / 1000.0);
    std::printf("non-2xx      %llu", static_cast<unsigned long long>(r.non_2xx));
    for (const auto& [status, n] : r.statuses)
      if (status < 200 || status > 299)
        std::printf("  [%u: %llu]", status, static_cast<unsigned long long>(n));
    std::printf("\nerrors       %llu  (reconnects %llu)\n",
                static_cast<unsigned long long>(r.errors),
                static_cast<unsigned long long>(r.reconnects));
  }
  if (r.stopped_early)
    std::cerr << "loadgen: every connection was lost and could not be reopened; the run stopped "
                 "early\n";
  return count == 0 || r.stopped_early ? 1 : 0;
}
