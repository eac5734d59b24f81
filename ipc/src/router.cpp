#include "ipc/router.hpp"

#include <algorithm>
#include <boost/container/small_vector.hpp>

#include "codec.hpp"

namespace tokend::ipc {

namespace {

// A path's non-empty segments: "/v1//a/" and "/v1/a" both give {v1, a}.
template <class Out>
void split_path(std::string_view path, Out& out) {
  std::size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    const auto next = path.find('/', i);
    out.emplace_back(path.substr(i, next - i));
    if (next == std::string_view::npos) break;
    i = next;
  }
}

// An exchange seen through another router: its own path parameters and
// peer, everything else the exchange it wraps.
class DispatchedExchange final : public Exchange {
 public:
  DispatchedExchange(std::shared_ptr<Exchange> inner, Router::Params params, Peer peer)
      : m_inner(std::move(inner)), m_params(std::move(params)), m_peer(std::move(peer)) {}
  [[nodiscard]] const Request& request() const override { return m_inner->request(); }
  [[nodiscard]] const Peer& peer() const override { return m_peer; }
  [[nodiscard]] std::string_view param(std::string_view name) const override {
    for (const auto& [k, v] : m_params) {
      if (k == name) return v;
    }
    return {};
  }
  void respond(Response response) override { m_inner->respond(std::move(response)); }
  std::shared_ptr<Stream> start_stream(int status, Headers headers,
                                       StreamFraming framing) override {
    return m_inner->start_stream(status, std::move(headers), framing);
  }
  [[nodiscard]] bool pending() const override { return m_inner->pending(); }
  void on_abandon(std::function<void()> cb) override { m_inner->on_abandon(std::move(cb)); }

 private:
  std::shared_ptr<Exchange> m_inner;
  Router::Params m_params;
  Peer m_peer;
};

}  // namespace

std::string_view Router::Match::param(std::string_view name) const {
  for (const auto& [k, v] : params) {
    if (k == name) return v;
  }
  return {};
}

void Router::add(std::string method, std::string pattern, Handler handler, bool large_body) {
  Route r{std::move(method), std::move(pattern), {}, std::move(handler), large_body};
  std::vector<std::string_view> parts;
  split_path(r.pattern, parts);
  for (const auto part : parts) {
    Segment seg;
    if (part.size() > 5 && part.front() == '{' && part.ends_with("...}")) {
      seg = {Segment::Kind::rest, std::string(part.substr(1, part.size() - 5))};
    } else if (part.size() > 2 && part.front() == '{' && part.back() == '}') {
      seg = {Segment::Kind::param, std::string(part.substr(1, part.size() - 2))};
    } else {
      seg = {Segment::Kind::literal, std::string(part)};
    }
    r.segments.push_back(std::move(seg));
  }
  r.rest = !r.segments.empty() && r.segments.back().kind == Segment::Kind::rest;
  r.fixed = r.segments.size() - (r.rest ? 1 : 0);
  m_routes.push_back(std::move(r));
  std::sort(m_routes.begin(), m_routes.end(), [](const Route& a, const Route& b) {
    return std::tie(a.pattern, a.method) < std::tie(b.pattern, b.method);
  });
  for (std::size_t n = 0; n < k_indexed; ++n) {
    m_by_count[n].clear();
    for (const Route& route : m_routes) {
      if (route.rest ? route.fixed <= n : route.fixed == n) m_by_count[n].push_back(&route);
    }
  }
}

// Whether the path's segments fit the route. The segment count rules out
// most routes before any text is compared; literals are compared from the
// last, where routes under the same prefix differ ("/v1/profiles/{name}/token"
// against ".../refresh"). Every request on the socket comes through here.
bool Router::fits(const Route& route, std::span<const std::string_view> segments) {
  if (route.rest ? segments.size() < route.fixed : segments.size() != route.fixed) return false;
  for (std::size_t i = route.fixed; i-- > 0;) {
    const Segment& seg = route.segments[i];
    if (seg.kind == Segment::Kind::literal && seg.text != segments[i]) return false;
  }
  return true;  // a final {rest...} takes whatever is left, even nothing
}

Router::Match Router::match(std::string_view method, std::string_view path) const {
  Match result;
  // A path with a trailing slash or empty segment is not ours to guess at.
  boost::container::small_vector<std::string_view, 16> segments;
  split_path(path, segments);
  // True when the route takes the request (its handler is the result).
  const auto take = [&](const Route& route) {
    if (!fits(route, {segments.data(), segments.size()})) return false;
    if (route.method != method) {
      result.allowed.push_back(route.method);
      return false;
    }
    std::size_t i = 0;
    for (const auto& seg : route.segments) {
      if (seg.kind == Segment::Kind::rest) {
        std::string rest;
        for (std::size_t j = i; j < segments.size(); ++j) {
          if (!rest.empty()) rest += '/';
          rest += segments[j];
        }
        result.params.emplace_back(seg.text, std::move(rest));
        break;
      }
      if (seg.kind == Segment::Kind::param) result.params.emplace_back(seg.text, segments[i]);
      ++i;
    }
    result.handler = &route.handler;
    result.large_body = route.large_body;
    result.allowed.clear();
    return true;
  };
  if (segments.size() < k_indexed) {
    for (const Route* route : m_by_count[segments.size()]) {
      if (take(*route)) break;
    }
  } else {
    for (const Route& route : m_routes) {
      if (take(route)) break;
    }
  }
  return result;
}

void Router::dispatch(const std::shared_ptr<Exchange>& ex, Peer peer) const {
  const Request& req = ex->request();
  auto m = match(req.method, req.path);
  if (m.handler == nullptr) return ex->respond(codec::no_route_answer(req.method, m.allowed));
  (*m.handler)(std::make_shared<DispatchedExchange>(ex, std::move(m.params), std::move(peer)));
}

}  // namespace tokend::ipc
