// The device authorization grant (RFC 8628): the device code, then polling.
#include "flow.hpp"

namespace tokend::login {

void LoginManager::begin_device(Flow& f, JsonCallback done) {
  const std::string name = f.profile;
  const oauth::ProviderEndpoints ep = oauth::endpoints_of(f.resolved);
  if (ep.device_url.empty()) {
    m_flows.erase(name);
    done(fail(
        Errc::invalid_argument,
        fmt::format(
            "the provider of '{}' offers no device authorization endpoint; use tokenctl login {} "
            "(or --no-browser to paste the redirect)",
            name, name)));
    return;
  }
  oauth::TokenEndpoint device = f.endpoint;
  device.token_url = ep.device_url;
  device.json_body = false;
  f.asked_scopes = scopes_for(f.resolved);
  const std::string scope = join(f.asked_scopes, " ");
  oauth::TokenParams params;
  if (!scope.empty()) params.emplace_back("scope", scope);
  // If the flow ends before the provider answers (cancelled, replaced,
  // shutdown), end_flow answers the start.
  f.start_done = std::move(done);
  send_for(
      f, oauth::make_token_request(device, params, m_options.http_timeout),
      [this, name, url = ep.device_url](Flow& fl, Result<net::HttpResponse> res) {
        auto answer = std::move(fl.start_done);
        fl.start_done = nullptr;
        auto fail_start = [&](Errc code, std::string message) {
          m_flows.erase(name);
          answer(fail(code, std::move(message)));
        };
        if (!res) {
          fail_start(Errc::transient,
                     fmt::format("the device authorization endpoint {} could not be reached: {}",
                                 url, res.error().message));
          return;
        }
        if (res->status != 200) {
          const auto err = oauth::oauth_error_of(*res);
          fail_start(res->status >= 500 ? Errc::transient : Errc::protocol,
                     fmt::format("the device authorization endpoint answered {}{}{}", res->status,
                                 err.error.empty() ? "" : ": " + err.error,
                                 err.description.empty() ? "" : " (" + err.description + ")"));
          return;
        }
        auto j = json::parse(res->body.reveal(), "the device authorization answer");
        if (!j || !j->is_object()) {
          fail_start(Errc::protocol,
                     "the device authorization endpoint did not answer a JSON object");
          return;
        }
        const std::string device_code = json::string_or(*j, "device_code");
        fl.user_code = oauth::printable_excerpt(json::string_or(*j, "user_code"), 64);
        fl.verification_uri = json::string_or(*j, "verification_uri");
        if (fl.verification_uri.empty())
          fl.verification_uri = json::string_or(*j, "verification_url");  // pre-RFC spelling
        fl.verification_uri_complete = json::string_or(*j, "verification_uri_complete");
        if (device_code.empty() || fl.user_code.empty() || fl.verification_uri.empty()) {
          fail_start(
              Errc::protocol,
              "the device authorization answer lacks device_code, user_code or verification_uri");
          return;
        }
        // Shown to a person and opened in a browser: only https (or loopback).
        if (!oauth::check_endpoint_url("verification_uri", fl.verification_uri)) {
          fail_start(Errc::protocol,
                     "the device authorization answer has an unusable verification_uri");
          return;
        }
        if (!fl.verification_uri_complete.empty() &&
            !oauth::check_endpoint_url("verification_uri_complete", fl.verification_uri_complete)) {
          fl.verification_uri_complete.clear();
        }
        fl.device_code = Secret(device_code);
        Millis lifetime = m_options.flow_timeout;
        if (auto e = j->find("expires_in");
            e != j->end() && e->is_number_integer() && e->get<std::int64_t>() > 0) {
          lifetime = std::min(Millis(e->get<std::int64_t>() * 1000), k_max_device_lifetime);
        }
        if (auto i = j->find("interval");
            i != j->end() && i->is_number_integer() && i->get<std::int64_t>() > 0) {
          fl.interval = Millis(std::min<std::int64_t>(i->get<std::int64_t>(), 60) * 1000);
        }
        fl.deadline = m_clock.mono_now() + lifetime;
        fl.expires_at_ms = to_unix_ms(m_clock.wall_now()) + lifetime.count();
        fl.next_poll = m_clock.mono_now() + fl.interval;
        fl.phase = Flow::Phase::awaiting;
        m_events.publish(tokens::EventKind::login_started, name, to_unix_ms(m_clock.wall_now()),
                         {{"flow", "device"}});
        rearm();
        answer(status(name));
      });
}

// --- the code flow's second half ------------------------------------------------

void LoginManager::poll_device(Flow& f) {
  f.next_poll.reset();
  oauth::TokenParams params = {{"grant_type", k_device_grant},
                               {"device_code", f.device_code.reveal()}};
  const WallTime sent_at = m_clock.wall_now();
  send_for(f, oauth::make_token_request(f.endpoint, params, m_options.http_timeout),
           [this, name = f.profile, sent_at, lifetime = f.endpoint.default_lifetime](
               Flow& fl, Result<net::HttpResponse> res) {
             if (res && res->status == 200) {
               auto tokens = oauth::interpret_token_response(res, sent_at, lifetime);
               if (!tokens) {
                 fail_flow(fl, FlowState::failed, "token_endpoint",
                           "the device grant's answer is unusable: " + tokens.error().message);
                 return;
               }
               fl.phase = Flow::Phase::exchanging;
               on_tokens(fl, *tokens);
               return;
             }
             const auto err = res ? oauth::oauth_error_of(*res) : oauth::OAuthError{};
             if (err.error == "authorization_pending") {
               fl.next_poll = m_clock.mono_now() + fl.interval;
             } else if (err.error == "slow_down") {
               fl.interval += k_slow_down_step;
               fl.next_poll = m_clock.mono_now() + fl.interval;
               spdlog::debug("profile {}: device flow asked to slow down; polling every {} s", name,
                             fl.interval.count() / 1000);
             } else if (err.error == "expired_token") {
               fail_flow(fl, FlowState::expired, "expired_token",
                         fmt::format("the device code expired before it was approved; run tokenctl "
                                     "login {} --device again",
                                     name));
               return;
             } else if (err.error == "access_denied") {
               fail_flow(fl, FlowState::failed, "access_denied",
                         "the sign-in was denied at the provider (access_denied)");
               return;
             } else if (!res || res->status >= 500 || res->status == 429) {
               // Transient: keep polling, a little slower.
               fl.next_poll = m_clock.mono_now() + fl.interval * 2;
             } else {
               fail_flow(fl, FlowState::failed, err.error.empty() ? "token_endpoint" : err.error,
                         fmt::format("the token endpoint refused the device grant ({}{})",
                                     err.error.empty() ? std::to_string(res->status) : err.error,
                                     err.description.empty() ? "" : ": " + err.description));
               return;
             }
             rearm();
           });
}

// --- finishing -------------------------------------------------------------------

}  // namespace tokend::login
