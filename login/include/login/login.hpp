// Login flows: authorization code with PKCE through the loopback
// listener or a pasted redirect, the device authorization grant (RFC 8628),
// discovery (RFC 8414 / OIDC, RFC 9728 for MCP servers) with dynamic client
// registration (RFC 7591), the atlassian preset's accessible resources,
// logout with revocation (RFC 7009), and the token test.
//
// At most one flow per profile; starting another cancels the older one. A
// finished flow's outcome stays readable until the next start. Nothing is
// stored unless the flow succeeds (discovered metadata and a registered
// client excepted: those are kept so they are not repeated).
//
// Server mode (share_flows): a pending code flow is kept in a
// store::LoginFlowStore too, so that whichever replica gets its redirect (or
// the pasted one) can claim it, once, and redeem the code; the replica that
// started it learns the outcome from that replica's event (remote_event).
//
// Single-threaded: call from the loop thread only.
#pragma once

#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/json.hpp"
#include "login/callback_port.hpp"
#include "login/tracked_requests.hpp"
#include "net/http_client.hpp"
#include "store/login_flows.hpp"
#include "tokens/events.hpp"
#include "tokens/timer_port.hpp"
#include "tokens/token_service.hpp"

namespace tokend::login {

// Where a login flow is; the names (to_string) are the "state" of
// GET /v1/profiles/{name}/login.
enum class FlowState { pending, succeeded, failed, cancelled, expired };
std::string_view to_string(FlowState state) noexcept;

struct Redirect;  // an authorization response's parameters (login.cpp)

struct LoginOptions {
  Millis flow_timeout{600'000};  // how long a started flow waits for the user
  Millis http_timeout{30'000};
  // Entropy for state values and PKCE verifiers (tests pin it).
  std::function<Result<Secret>(std::size_t bytes)> random;
  // Server mode: this replica's id, kept with the flows it starts and named
  // in the events of a flow completed on another replica.
  std::string replica_id;
};

struct LoginRequest {
  bool device = false;
  bool listen = true;
};

// Errors carry Errc::invalid_argument / conflict / protocol / transient;
// a failed flow reports Errc::login_failed-like details through status().
class LoginManager {
 public:
  using JsonCallback = std::function<void(Result<json::Json>)>;

  LoginManager(tokens::TokenService& tokens, const Clock& clock, tokens::EventBus& events,
               tokens::TimerPort& timer, net::HttpTransport& http, CallbackPort* callbacks,
               LoginOptions options);
  ~LoginManager();
  LoginManager(const LoginManager&) = delete;
  LoginManager& operator=(const LoginManager&) = delete;

  // Starts a flow; answers (after discovery/registration) with the flow's
  // status: authorize URL or device code.
  void start(const std::string& profile, LoginRequest request, JsonCallback done);
  // The current or last flow of the profile ({"state":"none"} when none).
  [[nodiscard]] json::Json status(const std::string& profile) const;
  [[nodiscard]] bool pending(const std::string& profile) const;
  // The profile whose pending code flow waits for a redirect carrying this
  // `state` (compared in constant time with each flow's); nullopt when no
  // flow of this manager does. Server mode's fixed https redirect URI
  // (/connect/callback) finds the caller's own flow with it.
  [[nodiscard]] std::optional<std::string> awaiting_state(std::string_view state) const;
  // awaiting_state, and then (with share_flows) the store's flows of this
  // user: one another replica started is claimed (taken from the store, so
  // no other replica can redeem it) and becomes this manager's flow,
  // awaiting its code. The connect page's callback uses this.
  [[nodiscard]] std::optional<std::string> claim_state(std::string_view state);
  // Server mode: pending code flows are kept in `flows` (one user's) while
  // they wait, and completions of flows this manager does not hold are
  // claimed from it. Without it (the single-user daemon) flows live only
  // here. Call before the first start.
  void share_flows(store::LoginFlowStore* flows) { m_flow_store = flows; }
  // Another replica's event of this user (server mode): a login it
  // finished that started here ends this manager's flow the same way; a
  // login started there that replaced this manager's pending one cancels it.
  // Publishes nothing (the event itself is published by the caller).
  void remote_event(tokens::EventKind kind, const std::string& profile, const json::Json& data);
  // After the replicas' channel was down (events lost): each pending flow
  // this manager started whose row is gone from the store is judged from the
  // credential: tokens obtained since the flow started end it as succeeded;
  // otherwise it waits as "completing elsewhere" until an event or expiry.
  void resync();
  // Finishes a pending code flow with a pasted redirect URL or bare code;
  // answers after the exchange.
  void complete(const std::string& profile, const json::Json& body, JsonCallback done);
  // With share_flows, a flow of the profile kept by another replica is
  // cancelled too (taken from the store; that replica ends it on the event).
  Result<> cancel(const std::string& profile);
  // Revokes where possible and forgets the tokens.
  void logout(const std::string& profile, JsonCallback done);
  // Calls userinfo / accessible-resources / myself with the token.
  void test(const std::string& profile, JsonCallback done);
  // Cancels every flow and request (waiters get unavailable).
  void shutdown();

  struct Flow;

 private:
  void begin_code(Flow& f, JsonCallback done);
  void begin_device(Flow& f, JsonCallback done);
  void on_callback(const std::string& profile, std::uint64_t flow_id, const CallbackRequest& req,
                   std::function<void(CallbackReply)> reply);
  void accept_code(Flow& f, Redirect r, JsonCallback done);
  // A flow another replica started, claimed from the store; nullptr (and a
  // warning) when its profile cannot be used any more.
  Flow* adopt(store::PendingLogin pending, std::optional<std::string> state);
  // Answers a completion of a flow that stays as it is (the claim failed).
  void refuse_completion(Flow& f, const Error& e);
  // Ends a flow with another replica's outcome, publishing nothing.
  void end_from_remote(Flow& f, FlowState state, const json::Json& data);
  [[nodiscard]] json::Json origin_of(const Flow& f) const;
  void exchange(Flow& f, std::string code);
  void poll_device(Flow& f);
  void on_tokens(Flow& f, const store::TokenSet& tokens);
  void pick_cloud(Flow& f);
  void succeed(Flow& f);
  void fail_flow(Flow& f, FlowState state, std::string reason, std::string message);
  void end_flow(Flow& f);
  void rearm();
  void on_tick();
  Flow* find(const std::string& profile, std::uint64_t id);
  using FlowResponse = std::function<void(Flow&, Result<net::HttpResponse>)>;
  void send_for(Flow& f, net::HttpRequest request, FlowResponse then);

  // Resolves what a flow needs (discovery, registration) then calls next.
  void resolve(const std::string& profile, const std::function<void(Result<store::Profile>)>& next);
  // What the resolver writes into the stored profile: only settings it owns.
  enum class Resolved {
    discovery,          // config.discovered
    document_client,    // client_id, client_registered(_for), token_endpoint_auth, the secret
    registered_client,  // those, redirect_uri and client_id_metadata_document
  };
  // `replaces_client_id`: the stored client id this login deliberately
  // replaces (a registration giving way to a metadata document); any other
  // change of it meanwhile is a conflict.
  Result<> store_resolved(const store::Profile& found, Resolved what,
                          const std::string* replaces_client_id = nullptr);
  void check_metadata_document(const std::shared_ptr<store::Profile>& profile,
                               const std::function<void(Result<store::Profile>)>& next);
  void fetch_json(const std::string& url,
                  std::function<void(Result<json::Json>, const net::HttpResponse*)> done,
                  net::HttpHeaders headers = {});
  // URLs tried in order until one answers JSON (resolve.cpp).
  struct UrlTrial {
    std::vector<std::string> urls;
    std::size_t next = 0;
    std::vector<std::string> tried;
  };
  // nullopt: every URL was skipped.
  using TrialDone =
      std::function<void(std::optional<Result<json::Json>>, const std::vector<std::string>& tried)>;
  void fetch_first_json(std::shared_ptr<UrlTrial> trial, std::vector<int> skip, TrialDone done);

  tokens::TokenService& m_tokens;
  const Clock& m_clock;
  tokens::EventBus& m_events;
  tokens::TimerPort& m_timer;
  net::HttpTransport& m_http;
  CallbackPort* m_callbacks;
  LoginOptions m_options;
  store::LoginFlowStore* m_flow_store = nullptr;
  std::map<std::string, std::unique_ptr<Flow>, std::less<>> m_flows;
  std::uint64_t m_next_flow = 1;
  bool m_shut_down = false;
  // The manager's own HTTP requests, cancelled at shutdown.
  TrackedRequests m_requests{m_http};
  std::shared_ptr<bool> m_alive = std::make_shared<bool>(true);
};

}  // namespace tokend::login
