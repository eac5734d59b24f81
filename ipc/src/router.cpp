#include "ipc/router.hpp"

#include <algorithm>

namespace tokend::ipc {

namespace {

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
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
  return out;
}

bool is_param(const std::string& seg) {
  return seg.size() > 2 && seg.front() == '{' && seg.back() == '}';
}
bool is_rest(const std::string& seg) {
  return seg.size() > 5 && seg.ends_with("...}");
}

}  // namespace

void Router::add(std::string method, std::string pattern, Handler handler, bool large_body) {
  Route r{std::move(method), std::move(pattern), {}, std::move(handler), large_body};
  r.segments = split_path(r.pattern);
  m_routes.push_back(std::move(r));
  std::sort(m_routes.begin(), m_routes.end(), [](const Route& a, const Route& b) {
    return std::tie(a.pattern, a.method) < std::tie(b.pattern, b.method);
  });
}

Router::Match Router::match(std::string_view method, std::string_view path) const {
  Match result;
  // A path with a trailing slash or empty segment is not ours to guess at.
  const auto segments = split_path(path);
  for (const auto& route : m_routes) {
    std::map<std::string, std::string, std::less<>> params;
    bool ok = true;
    std::size_t i = 0;
    for (; i < route.segments.size(); ++i) {
      const auto& pat = route.segments[i];
      if (is_rest(pat)) {
        std::string rest;
        for (std::size_t j = i; j < segments.size(); ++j) {
          if (!rest.empty()) rest += '/';
          rest += segments[j];
        }
        params[pat.substr(1, pat.size() - 5)] = rest;
        i = segments.size();
        break;
      }
      if (i >= segments.size()) {
        ok = false;
        break;
      }
      if (is_param(pat)) {
        params[pat.substr(1, pat.size() - 2)] = segments[i];
      } else if (pat != segments[i]) {
        ok = false;
        break;
      }
    }
    if (!ok || i != segments.size()) continue;
    if (route.method != method) {
      result.allowed.push_back(route.method);
      continue;
    }
    result.handler = &route.handler;
    result.large_body = route.large_body;
    result.params = std::move(params);
    result.allowed.clear();
    return result;
  }
  return result;
}

}  // namespace tokend::ipc
