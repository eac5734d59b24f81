#include "gateway/mirror.hpp"

#include <fmt/format.h>

#include "core/encoding.hpp"
#include "net/url.hpp"
#include "proxy/route.hpp"

namespace tokend::gateway {

namespace {

// A URL's path, decoded, as a mirror base: "" for the root, else "/a/b".
Result<std::pair<std::string, std::string>> origin_and_path(std::string_view url,
                                                            std::string_view what) {
  auto u = net::parse_url(url, what);
  if (!u) return std::unexpected(u.error());
  auto path = percent_decode(u->path, false);
  if (!path)
    return fail(Errc::config, fmt::format("the {} has a malformed escape in its path", what));
  while (!path->empty() && path->back() == '/') path->pop_back();
  return std::pair{net::origin_key(url), std::move(*path)};
}

bool is_atlassian_cloud_oauth(const store::Profile& p) {
  return p.kind == store::CredentialKind::oauth2 && p.provider == "atlassian";
}

bool reaches_site(const store::Profile& p) {
  return p.kind != store::CredentialKind::oauth2 || p.provider == "atlassian-dc";
}

// `path` under `base` segment-wise: the remainder ("" or "/x/y"), else nullopt.
std::optional<std::string_view> under(std::string_view path, std::string_view base) {
  if (!path.starts_with(base)) return std::nullopt;
  const std::string_view rest = path.substr(base.size());
  if (!rest.empty() && rest.front() != '/') return std::nullopt;
  return rest;
}

}  // namespace

Result<MirrorLayout> mirror_layout(const store::Profile& p) {
  MirrorLayout layout;
  if (is_atlassian_cloud_oauth(p)) {
    const std::string& cloud = p.config.cloud_id;
    if (cloud.empty() || cloud.find('/') != std::string::npos) {
      return fail(Errc::config,
                  fmt::format("profile '{}' has no Atlassian cloud id yet; run tokenctl login {} "
                              "(or tokenctl test {})",
                              p.name, p.name, p.name));
    }
    for (const char* product : {"jira", "confluence"})
      layout.products[product] = fmt::format("/ex/{}/{}", product, cloud);
    layout.urls = layout.products;
    layout.urls["confluence"] += "/wiki";
    return layout;
  }
  if (reaches_site(p)) {
    // The site's origin is the endpoint's; a product elsewhere gets a prefix.
    const std::string& site = p.config.site;
    std::string main_origin;
    if (!site.empty()) {
      auto s = origin_and_path(site, "profile's site");
      if (!s) return std::unexpected(s.error());
      main_origin = s->first;
      layout.base = s->second;
    }
    for (const char* product : {"jira", "confluence"}) {
      auto base = proxy::site_base(p, product);
      if (!base) return std::unexpected(base.error());
      auto b = origin_and_path(*base, fmt::format("profile's {} base", product));
      if (!b) return std::unexpected(b.error());
      if (main_origin.empty()) {
        main_origin = b->first;
        layout.base = b->second;
      }
      layout.products[product] =
          b->first == main_origin ? b->second : fmt::format("/{}{}", product, b->second);
    }
    layout.urls = layout.products;
    return layout;
  }
  const std::string& api_base = p.config.api_base;
  if (api_base.empty()) {
    return fail(
        Errc::config,
        fmt::format("profile '{}' has no api_base to forward to; set it with tokenctl add {} "
                    "--api-base URL",
                    p.name, p.name));
  }
  auto b = origin_and_path(api_base, "profile's api_base");
  if (!b) return std::unexpected(b.error());
  layout.base = b->second;
  return layout;
}

Result<std::string> mirrored_rest(const store::Profile& p, std::string_view path) {
  auto layout = mirror_layout(p);
  if (!layout) return std::unexpected(layout.error());
  // The product whose base is the longest prefix of the path.
  const std::string* best_product = nullptr;
  std::string_view best_rest;
  std::size_t best_length = 0;
  for (const auto& [product, base] : layout->products) {
    auto rest = under(path, base);
    if (!rest || (best_product != nullptr && base.size() < best_length)) continue;
    best_product = &product;
    best_rest = *rest;
    best_length = base.size();
  }
  if (best_product != nullptr) {
    return best_rest.empty() ? *best_product : *best_product + std::string(best_rest);
  }
  if (layout->products.empty()) {
    if (auto rest = under(path, layout->base); rest && !rest->empty())
      return std::string(rest->substr(1));
  }
  std::string served;
  if (layout->products.empty()) {
    served = (layout->base.empty() ? "" : layout->base) + "/...";
  } else {
    for (const auto& [product, base] : layout->products)
      served += (served.empty() ? "" : ", ") + base + "/...";
  }
  return fail(Errc::not_found,
              fmt::format("this endpoint reaches profile '{}' at {} only", p.name, served));
}

}  // namespace tokend::gateway
