// The login manager: flows per profile, their lifetime, status and events.
#include "flow.hpp"

namespace tokend::login {

std::string_view to_string(FlowState state) noexcept {
  switch (state) {
    case FlowState::pending:
      return "pending";
    case FlowState::succeeded:
      return "succeeded";
    case FlowState::failed:
      return "failed";
    case FlowState::cancelled:
      return "cancelled";
    case FlowState::expired:
      return "expired";
  }
  return "unknown";
}

LoginManager::LoginManager(tokens::TokenService& tokens, const Clock& clock,
                           tokens::EventBus& events, tokens::TimerPort& timer,
                           net::HttpTransport& http, CallbackPort* callbacks, LoginOptions options)
    : m_tokens(tokens),
      m_clock(clock),
      m_events(events),
      m_timer(timer),
      m_http(http),
      m_callbacks(callbacks),
      m_options(std::move(options)) {
  if (!m_options.random) m_options.random = [](std::size_t n) { return oauth::random_urlsafe(n); };
}

LoginManager::~LoginManager() {
  shutdown();
}

void LoginManager::shutdown() {
  if (m_shut_down) return;
  m_shut_down = true;
  *m_alive = false;
  m_timer.disarm();
  m_requests.cancel_all();
  for (auto& [name, f] : m_flows) {
    if (f->state == FlowState::pending)
      fail_flow(*f, FlowState::cancelled, "shutdown", "tokend is shutting down");
  }
}

LoginManager::Flow* LoginManager::find(const std::string& profile, std::uint64_t id) {
  auto it = m_flows.find(profile);
  if (it == m_flows.end() || it->second->id != id) return nullptr;
  return it->second.get();
}

// --- HTTP helpers ------------------------------------------------------------

void LoginManager::fetch_json(const std::string& url,
                              std::function<void(Result<Json>, const net::HttpResponse*)> done,
                              net::HttpHeaders headers) {
  net::HttpRequest r;
  r.method = "GET";
  r.url = url;
  r.timeout = m_options.http_timeout;
  r.headers = std::move(headers);
  r.headers.emplace_back("Accept", "application/json");
  m_requests.start(std::move(r), [url, done = std::move(done)](Result<net::HttpResponse> res) {
    if (!res) {
      done(fail(Errc::transient,
                fmt::format("{} could not be reached: {}", url, res.error().message)),
           nullptr);
      return;
    }
    if (res->status != 200) {
      done(fail(res->status >= 500 ? Errc::transient : Errc::protocol,
                fmt::format("{} answered {}", url, res->status)),
           &*res);
      return;
    }
    auto j = json::parse(res->body.reveal(), url);
    if (!j) {
      done(fail(Errc::protocol, fmt::format("{} did not answer JSON", url)), &*res);
      return;
    }
    done(std::move(*j), &*res);
  });
}

// A request on behalf of a flow: `then` runs only while the flow is still
// the profile's current one and pending (ending a flow cancels its request).
void LoginManager::send_for(Flow& f, net::HttpRequest request, FlowResponse then) {
  auto alive = m_alive;
  f.http_pending = true;
  f.http_id =
      m_http.start(std::move(request), [this, alive, name = f.profile, id = f.id,
                                        then = std::move(then)](Result<net::HttpResponse> res) {
        if (!*alive) return;
        Flow* fp = find(name, id);
        if (fp == nullptr || fp->state != FlowState::pending) return;
        fp->http_pending = false;
        then(*fp, std::move(res));
      });
}

void LoginManager::start(const std::string& name, LoginRequest request, JsonCallback done) {
  if (m_shut_down) {
    done(fail(Errc::unavailable, "tokend is shutting down"));
    return;
  }
  // A new start replaces a pending flow (its listener frees the port first).
  if (auto it = m_flows.find(name);
      it != m_flows.end() && it->second->state == FlowState::pending) {
    fail_flow(*it->second, FlowState::cancelled, "replaced",
              "a newer login for this profile replaced it");
  }
  auto flow = std::make_unique<Flow>();
  Flow& f = *flow;
  f.id = m_next_flow++;
  f.profile = name;
  f.device = request.device;
  f.deadline = m_clock.mono_now() + m_options.flow_timeout;
  f.started_at_ms = to_unix_ms(m_clock.wall_now());
  f.expires_at_ms = f.started_at_ms + m_options.flow_timeout.count();
  const std::uint64_t id = f.id;
  const bool listen = request.listen;
  m_flows.insert_or_assign(name, std::move(flow));
  if (m_flow_store != nullptr && request.device) {
    // One flow per profile: a code flow another replica keeps for it ends
    // (that replica cancels its own on this start's event).
    if (auto r = m_flow_store->take_login_flow(name, nullptr); !r)
      spdlog::warn("profile {}: removing the login kept for it: {}", name, r.error().message);
  }
  resolve(name, [this, name, id, listen, done = std::move(done)](Result<store::Profile> p) {
    Flow* fp = find(name, id);
    if (fp == nullptr || fp->state != FlowState::pending) {
      done(fail(Errc::conflict, fmt::format("the login for '{}' was cancelled", name)));
      return;
    }
    Flow& fl = *fp;
    if (!p) {
      // Nothing to report as a flow: the start itself failed.
      m_flows.erase(name);
      done(std::unexpected(p.error()));
      return;
    }
    fl.resolved = std::move(*p);
    auto endpoint = oauth::token_endpoint_of(fl.resolved);
    if (!endpoint) {
      m_flows.erase(name);
      done(fail(Errc::invalid_argument, endpoint.error().message));
      return;
    }
    fl.endpoint = std::move(*endpoint);
    if (fl.endpoint.client_id.empty()) {
      m_flows.erase(name);
      done(fail(
          Errc::invalid_argument,
          fmt::format("profile '{}' has no client_id; set it with tokenctl add {} --client-id ID",
                      name, name)));
      return;
    }
    fl.extra["listen"] = listen;
    if (fl.device) {
      begin_device(fl, done);
    } else {
      begin_code(fl, done);
    }
  });
}

void LoginManager::succeed(Flow& f) {
  f.state = FlowState::succeeded;
  f.phase = Flow::Phase::done;
  Json data = {{"flow", f.device ? "device" : "code"}};
  data.update(origin_of(f));
  if (f.token_expires_at_ms) data["expires_at"] = *f.token_expires_at_ms / 1000;
  if (f.extra.contains("cloud_id")) data["cloud_id"] = f.extra["cloud_id"];
  spdlog::info("profile {}: login succeeded ({} flow)", f.profile, f.device ? "device" : "code");
  m_events.publish(tokens::EventKind::login_succeeded, f.profile, to_unix_ms(m_clock.wall_now()),
                   data);
  if (f.browser_reply) {
    f.browser_reply({200, page("Signed in", "tokend signed in profile " + f.profile +
                                                ". You can close this tab.")});
    f.browser_reply = nullptr;
  }
  end_flow(f);
}

void LoginManager::fail_flow(Flow& f, FlowState state, std::string reason, std::string message) {
  if (f.state != FlowState::pending) return;
  f.state = state;
  f.reason = std::move(reason);
  f.message = std::move(message);
  f.phase = Flow::Phase::done;
  if (f.http_pending) {
    m_http.cancel(f.http_id);
    f.http_pending = false;
  }
  spdlog::warn("profile {}: login {}: {}", f.profile, to_string(f.state), f.message);
  const tokens::EventKind event = f.state == FlowState::cancelled
                                      ? tokens::EventKind::login_cancelled
                                      : tokens::EventKind::login_failed;
  Json data = {{"flow", f.device ? "device" : "code"}, {"reason", f.reason}, {"error", f.message}};
  data.update(origin_of(f));
  m_events.publish(event, f.profile, to_unix_ms(m_clock.wall_now()), data);
  if (f.browser_reply) {
    f.browser_reply({400, page("Sign-in failed", f.message)});
    f.browser_reply = nullptr;
  }
  end_flow(f);
}

Json LoginManager::origin_of(const Flow& f) const {
  if (f.origin_replica.empty()) return Json::object();
  return {{"replica", f.origin_replica}, {"flow_id", f.origin_id}};
}

void LoginManager::end_flow(Flow& f) {
  f.listener.reset();  // the port is closed as soon as the flow ends
  // A shared flow that ended here unclaimed leaves the store. Not at
  // shutdown: another replica may still complete it.
  if (f.shared && !f.claimed && !f.elsewhere && !m_shut_down && m_flow_store != nullptr) {
    if (auto r = m_flow_store->drop_login_flow(f.profile, f.state_value); !r)
      spdlog::warn("profile {}: removing the ended login from the store: {}", f.profile,
                   r.error().message);
  }
  f.device_code = Secret();
  f.state_value = Secret();
  f.pkce.reset();
  f.next_poll.reset();
  if (f.start_done) {
    auto start = std::move(f.start_done);
    f.start_done = nullptr;
    start(fail(Errc::conflict, "the login ended before it started: " + f.message));
  }
  auto completions = std::move(f.completions);
  f.completions.clear();
  const Json s = status(f.profile);
  for (auto& c : completions) c(s);
  if (!m_shut_down) rearm();
}

Result<> LoginManager::cancel(const std::string& name) {
  auto it = m_flows.find(name);
  if ((it == m_flows.end() || it->second->state != FlowState::pending) && m_flow_store != nullptr) {
    // A flow another replica started and keeps in the store: taken from it
    // (so nobody redeems it), and that replica ends its own on the event.
    auto taken = m_flow_store->take_login_flow(name, nullptr);
    if (!taken) return std::unexpected(taken.error());
    if (*taken) {
      Json data = {{"flow", "code"},
                   {"reason", "cancelled"},
                   {"error", "the login was cancelled"},
                   {"replica", (*taken)->replica},
                   {"flow_id", static_cast<std::uint64_t>((*taken)->flow_id)}};
      spdlog::warn("profile {}: login cancelled (started on replica {})", name, (*taken)->replica);
      m_events.publish(tokens::EventKind::login_cancelled, name, to_unix_ms(m_clock.wall_now()),
                       data);
      return {};
    }
  }
  if (it == m_flows.end() || it->second->state != FlowState::pending) {
    return fail(Errc::conflict, fmt::format("no login is pending for '{}'", name));
  }
  fail_flow(*it->second, FlowState::cancelled, "cancelled", "the login was cancelled");
  return {};
}

void LoginManager::remote_event(tokens::EventKind kind, const std::string& profile,
                                const Json& data) {
  if (m_flow_store == nullptr || m_shut_down) return;
  auto it = m_flows.find(profile);
  if (it == m_flows.end()) return;
  Flow& f = *it->second;
  if (f.state != FlowState::pending || !f.shared || f.claimed) return;
  using tokens::EventKind;
  if (kind == EventKind::login_started) {
    // A start on another replica replaced this flow in the store (unless
    // another replica claimed it first: then that one's outcome ends it).
    if (f.elsewhere) return;
    auto held = m_flow_store->has_login_flow(profile, f.state_value);
    if (held && !*held) {
      end_from_remote(f, FlowState::cancelled,
                      {{"reason", "replaced"},
                       {"error",
                        "a newer login for this profile, started on another replica, "
                        "replaced it"}});
    }
    return;
  }
  if (kind != EventKind::login_succeeded && kind != EventKind::login_failed &&
      kind != EventKind::login_cancelled)
    return;
  // Only the outcome of this very flow, completed on another replica.
  if (!data.is_object() || json::string_or(data, "replica") != m_options.replica_id ||
      !data.contains("flow_id") || !data["flow_id"].is_number_integer() ||
      data["flow_id"].get<std::uint64_t>() != f.id)
    return;
  const FlowState state = kind == EventKind::login_succeeded ? FlowState::succeeded
                          : kind == EventKind::login_failed  ? FlowState::failed
                                                             : FlowState::cancelled;
  end_from_remote(f, state, data);
}

void LoginManager::resync() {
  if (m_flow_store == nullptr || m_shut_down) return;
  std::vector<std::pair<std::string, std::uint64_t>> shared;
  for (const auto& [name, f] : m_flows) {
    if (f->state == FlowState::pending && f->shared && !f->claimed && !f->device)
      shared.emplace_back(name, f->id);
  }
  for (const auto& [name, id] : shared) {
    Flow* fp = find(name, id);
    if (fp == nullptr || fp->state != FlowState::pending) continue;
    Flow& f = *fp;
    if (!f.elsewhere) {
      auto held = m_flow_store->has_login_flow(name, f.state_value);
      if (!held || *held) continue;  // still waiting (or unknown: the next event tells)
    }
    auto cred = m_tokens.credential_of(name);
    if (cred && cred->obtained_at_ms && *cred->obtained_at_ms >= f.started_at_ms) {
      Json data = Json::object();
      if (cred->expires_at_ms) data["expires_at"] = *cred->expires_at_ms / 1000;
      end_from_remote(f, FlowState::succeeded, data);
    } else {
      f.elsewhere = true;
    }
  }
}

void LoginManager::end_from_remote(Flow& f, FlowState state, const Json& data) {
  f.state = state;
  f.phase = Flow::Phase::done;
  f.elsewhere = true;  // nothing of it is left in the store to remove
  if (state == FlowState::succeeded) {
    if (auto e = data.find("expires_at"); e != data.end() && e->is_number_integer())
      f.token_expires_at_ms = e->get<std::int64_t>() * 1000;
    if (auto c = data.find("cloud_id"); c != data.end() && c->is_string()) f.extra["cloud_id"] = *c;
    spdlog::info("profile {}: login succeeded on another replica", f.profile);
  } else {
    f.reason = oauth::printable_excerpt(json::string_or(data, "reason"), 64);
    f.message = oauth::printable_excerpt(json::string_or(data, "error"), 2000);
    spdlog::info("profile {}: login {} on another replica: {}", f.profile, to_string(state),
                 f.message);
  }
  if (f.browser_reply) {
    f.browser_reply(
        state == FlowState::succeeded
            ? CallbackReply{200, page("Signed in", "tokend signed in profile " + f.profile +
                                                       ". You can close this tab.")}
            : CallbackReply{400, page("Sign-in failed", f.message)});
    f.browser_reply = nullptr;
  }
  end_flow(f);
}

bool LoginManager::pending(const std::string& profile) const {
  auto it = m_flows.find(profile);
  return it != m_flows.end() && it->second->state == FlowState::pending;
}

Json LoginManager::status(const std::string& name) const {
  auto it = m_flows.find(name);
  if (it == m_flows.end()) return {{"profile", name}, {"state", "none"}};
  const Flow& f = *it->second;
  Json j = {{"profile", name},
            {"id", f.id},
            {"flow", f.device ? "device" : "code"},
            {"state", to_string(f.state)}};
  const std::int64_t now = to_unix_ms(m_clock.wall_now());
  if (f.state == FlowState::pending) {
    j["expires_at"] = f.expires_at_ms / 1000;
    j["expires_in"] = std::max<std::int64_t>(0, (f.expires_at_ms - now) / 1000);
    if (f.phase == Flow::Phase::resolving) {
      j["phase"] = "starting";  // discovery or registration still running
    } else if (f.elsewhere) {
      // Another replica took its code; its outcome comes with its event.
      j["phase"] = "completing_elsewhere";
    } else if (f.device) {
      j["user_code"] = f.user_code;
      j["verification_uri"] = f.verification_uri;
      if (!f.verification_uri_complete.empty())
        j["verification_uri_complete"] = f.verification_uri_complete;
      j["interval"] = f.interval.count() / 1000;
    } else {
      j["authorize_url"] = f.authorize_url;
      j["redirect_uri"] = f.redirect_uri;
      j["listening"] = f.listener != nullptr;
    }
  } else if (f.state == FlowState::succeeded) {
    if (f.token_expires_at_ms) j["expires_at"] = *f.token_expires_at_ms / 1000;
  } else {
    j["error"] = {{"code", "login_failed"}, {"reason", f.reason}, {"message", f.message}};
  }
  if (!f.warning.empty()) j["warning"] = f.warning;
  // MCP: the authorization server chosen, and the others it could have been.
  const auto& found = f.resolved.config.discovered;
  if (found && !found->authorization_server.empty()) {
    const std::string& as = found->authorization_server;
    j["authorization_server"] = as;
    const auto& all = found->authorization_servers;
    if (all.size() > 1) {
      j["authorization_servers"] = all;
      j["authorization_server_note"] =
          fmt::format("The MCP server names {} authorization servers ({}); using {}{}.", all.size(),
                      join(all, ", "), as,
                      f.resolved.config.authorization_server.empty()
                          ? fmt::format(" (the first); choose another with tokenctl add {} ... "
                                        "--authorization-server URL",
                                        name)
                          : " (the profile's choice)");
    }
  }
  for (const char* k : {"sites", "cloud_id", "cloud_url"}) {
    if (f.extra.contains(k)) j[k] = f.extra[k];
  }
  return j;
}

// --- timers --------------------------------------------------------------------

void LoginManager::rearm() {
  if (m_shut_down) return;
  std::optional<MonoTime> earliest;
  for (const auto& [_, f] : m_flows) {
    if (f->state != FlowState::pending) continue;
    auto consider = [&](MonoTime t) {
      if (!earliest || t < *earliest) earliest = t;
    };
    consider(f->deadline);
    if (f->next_poll) consider(*f->next_poll);
  }
  if (!earliest) {
    m_timer.disarm();
    return;
  }
  m_timer.arm(*earliest, [this] { on_tick(); });
}

void LoginManager::on_tick() {
  const MonoTime now = m_clock.mono_now();
  std::vector<std::pair<std::string, std::uint64_t>> expired;
  std::vector<std::pair<std::string, std::uint64_t>> polls;
  for (const auto& [name, f] : m_flows) {
    if (f->state != FlowState::pending) continue;
    if (f->deadline <= now) {
      expired.emplace_back(name, f->id);
    } else if (f->next_poll && *f->next_poll <= now && !f->http_pending) {
      polls.emplace_back(name, f->id);
    }
  }
  for (const auto& [name, id] : expired) {
    if (Flow* f = find(name, id)) {
      fail_flow(*f, FlowState::expired, "expired",
                fmt::format("the login was not completed in time; nothing was stored — run "
                            "tokenctl login {} again",
                            name));
    }
  }
  for (const auto& [name, id] : polls) {
    if (Flow* f = find(name, id); f != nullptr && f->state == FlowState::pending) poll_device(*f);
  }
  rearm();
}

// --- logout and test ------------------------------------------------------------

}  // namespace tokend::login
