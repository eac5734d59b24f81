// GET /v1/metrics: Prometheus text (docs/API.md lists the series).
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "api/api.hpp"

namespace tokend::api {

namespace {

std::string escape_label(std::string_view v) {
  std::string out;
  for (const char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

void append_socket_metrics(std::string& out, const ipc::ServerStats& s) {
  auto single = [&](std::string_view name, std::string_view type, std::string_view help,
                    std::uint64_t value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
  };
  single("tokend_http_connections_open", "gauge", "Open API connections.", s.open_connections);
  single("tokend_http_connections_total", "counter", "API connections accepted.",
         s.connections_accepted);
  single("tokend_http_connections_refused_total", "counter",
         "Connections refused over the connection limit.", s.connections_refused);
  single("tokend_http_peers_denied_total", "counter", "Connections from users not allowed.",
         s.peers_denied);
  single("tokend_http_requests_total", "counter", "API requests.", s.requests);
  out +=
      "# HELP tokend_http_responses_total API responses by status.\n"
      "# TYPE tokend_http_responses_total counter\n";
  for (const auto& [code, n] : s.responses_by_status) {
    out += fmt::format("tokend_http_responses_total{{code=\"{}\"}} {}\n", code, n);
  }
}

void append_tls_metrics(std::string& out, const ipc::ServerStats& s) {
  out += fmt::format(
      "# HELP tokend_tls_handshakes_ok_total TLS handshakes completed, by client certificate.\n"
      "# TYPE tokend_tls_handshakes_ok_total counter\n"
      "tokend_tls_handshakes_ok_total{{client_cert=\"none\"}} {}\n"
      "tokend_tls_handshakes_ok_total{{client_cert=\"verified\"}} {}\n"
      "# HELP tokend_tls_handshakes_failed_total TLS handshakes failed, by reason.\n"
      "# TYPE tokend_tls_handshakes_failed_total counter\n"
      "tokend_tls_handshakes_failed_total{{reason=\"client_cert\"}} {}\n"
      "tokend_tls_handshakes_failed_total{{reason=\"protocol\"}} {}\n"
      "tokend_tls_handshakes_failed_total{{reason=\"timeout\"}} {}\n"
      "tokend_tls_handshakes_failed_total{{reason=\"closed\"}} {}\n"
      "# HELP tokend_tls_plaintext_refused_total Plain HTTP sent to a TLS port, refused.\n"
      "# TYPE tokend_tls_plaintext_refused_total counter\n"
      "tokend_tls_plaintext_refused_total {}\n"
      "# HELP tokend_tls_connections_open TLS connections open, handshake done.\n"
      "# TYPE tokend_tls_connections_open gauge\n"
      "tokend_tls_connections_open {}\n",
      s.tls_handshakes_ok - s.tls_handshakes_ok_client_cert, s.tls_handshakes_ok_client_cert,
      s.tls_failed_client_cert, s.tls_failed_protocol, s.tls_failed_timeout, s.tls_failed_closed,
      s.tls_plaintext_refused, s.tls_connections_open);
}

void Api::get_metrics(const std::shared_ptr<ipc::Exchange>& ex) {
  const auto now = to_unix_ms(m_clock.wall_now());
  std::string out;
  auto metric = [&](std::string_view name, std::string_view type, std::string_view help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  // A metric with one sample and no labels.
  auto single = [&](std::string_view name, std::string_view type, std::string_view help,
                    const auto& value) {
    metric(name, type, help);
    out += fmt::format("{} {}\n", name, value);
  };
  metric("tokend_build_info", "gauge", "Version of the running tokend.");
  out += fmt::format("tokend_build_info{{version=\"{}\"}} 1\n", escape_label(m_options.version));
  single("tokend_uptime_seconds", "gauge", "Seconds since tokend started.",
         std::chrono::duration_cast<std::chrono::seconds>(m_clock.mono_now() - m_started).count());
  const auto views = m_tokens.list();
  single("tokend_profiles", "gauge", "Number of profiles.", views.size());
  metric("tokend_token_expiry_seconds", "gauge",
         "Seconds until the profile's access token expires.");
  for (const auto& v : views) {
    if (v.expires_at_ms) {
      out += fmt::format("tokend_token_expiry_seconds{{profile=\"{}\"}} {}\n", escape_label(v.name),
                         (*v.expires_at_ms - now) / 1000);
    }
  }
  metric("tokend_profile_state", "gauge", "1 for the state each profile is in.");
  for (const auto& v : views) {
    out += fmt::format("tokend_profile_state{{profile=\"{}\",state=\"{}\"}} 1\n",
                       escape_label(v.name), store::to_string(v.state));
  }
  metric("tokend_token_requests_total", "counter", "Token requests by profile and result.");
  for (const auto& [profile, results] : m_token_requests) {
    for (const auto& [result, n] : results) {
      out += fmt::format("tokend_token_requests_total{{profile=\"{}\",result=\"{}\"}} {}\n",
                         escape_label(profile), result, n);
    }
  }
  const auto& es = m_tokens.stats();
  metric("tokend_refreshes_total", "counter", "Refreshes by outcome.");
  out += fmt::format("tokend_refreshes_total{{result=\"ok\"}} {}\n", es.refreshes_ok);
  out += fmt::format("tokend_refreshes_total{{result=\"failed\"}} {}\n", es.refreshes_failed);
  single("tokend_refreshes_in_flight", "gauge", "Refreshes in flight now.", es.in_flight);
  single("tokend_refreshes_in_flight_peak", "gauge",
         "Most refreshes in flight at once since start.", es.peak_in_flight);
  single("tokend_store_failures_total", "counter",
         "Credential state writes or read-backs the store refused.", es.store_failures);
  single("tokend_event_streams", "gauge", "Open /v1/events streams.", event_stream_count());
  if (m_proxy != nullptr) {
    const auto& ps = m_proxy->stats();
    metric("tokend_proxy_requests_total", "counter",
           "Proxied calls by profile and upstream status (0: no answer).");
    for (const auto& [profile, statuses] : ps.by_profile_status) {
      for (const auto& [status, n] : statuses) {
        out += fmt::format("tokend_proxy_requests_total{{profile=\"{}\",status=\"{}\"}} {}\n",
                           escape_label(profile), status, n);
      }
    }
    metric("tokend_proxy_latency_seconds", "histogram",
           "Time from a proxied call to its answer's head, as tokend saw it.");
    for (std::size_t i = 0; i < ps.bucket_bounds.size(); ++i) {
      out += fmt::format("tokend_proxy_latency_seconds_bucket{{le=\"{}\"}} {}\n",
                         ps.bucket_bounds[i], ps.bucket_counts[i]);
    }
    out += fmt::format("tokend_proxy_latency_seconds_bucket{{le=\"+Inf\"}} {}\n", ps.count);
    out += fmt::format("tokend_proxy_latency_seconds_sum {}\n", ps.sum_s);
    out += fmt::format("tokend_proxy_latency_seconds_count {}\n", ps.count);
    single("tokend_proxy_open_streams", "gauge",
           "Proxied answers still streaming to their callers.", ps.open_streams);
  }
  const auto& eps = m_endpoints->stats();
  single("tokend_endpoints_open", "gauge",
         "Stand-in endpoints open now (tokenctl exec --endpoint).", eps.open);
  single("tokend_endpoints_opened_total", "counter", "Stand-in endpoints opened since start.",
         eps.opened);
  metric("tokend_endpoint_requests_total", "counter", "Requests to stand-in endpoints by result.");
  for (const auto& [result, n] : eps.requests) {
    out += fmt::format("tokend_endpoint_requests_total{{result=\"{}\"}} {}\n", result, n);
  }
  single("tokend_waiting_requests", "gauge",
         "Token and login requests waiting for a login to finish.", waiting_count());
  if (m_server != nullptr) append_socket_metrics(out, m_server->stats());
  ipc::Response r;
  r.headers.emplace_back("Content-Type", "text/plain; version=0.0.4");
  r.body = std::move(out);
  ex->respond(std::move(r));
}

}  // namespace tokend::api
