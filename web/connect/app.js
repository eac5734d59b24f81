// The connect page: each provider the server offers, with the signed-in
// user's state for it, kept live from /v1/events. Every URL is relative, so
// the page works under any prefix the reverse proxy mounts it at.
'use strict';
(function () {
  const tbody = document.querySelector('#providers tbody');
  const notice = document.getElementById('notice');
  const live = document.getElementById('live');
  // Errors of the last sign-in per provider (from the popup or the events).
  const loginErrors = new Map();
  const busy = new Set();
  let providers = [];
  let profiles = new Map();

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin' };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, 'unreachable', 'tokend cannot be reached: ' + e.message);
    }
    let json = null;
    try {
      json = await res.json();
    } catch (e) {
      json = null;
    }
    if (!res.ok) {
      const err = (json && json.error) || {};
      throw new ApiError(res.status, err.code || 'error', err.message || ('HTTP ' + res.status));
    }
    return json;
  }

  // tokend's login messages end with what to run in a terminal; here the
  // button is what to press.
  function forPage(message) {
    return String(message || '').replace(/\s*[—-]+\s*run tokenctl login \S+ again\.?$/, '');
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function stateOf(p) {
    if (!p) return { key: 'needs-login', label: 'needs login' };
    if (p.state === 'login_pending') return { key: 'connecting', label: 'connecting…' };
    if (p.has_token && ['valid', 'refreshing', 'backoff'].includes(p.state)) {
      return { key: 'connected', label: 'connected' };
    }
    return { key: 'needs-login', label: 'needs login' };
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function render() {
    document.getElementById('empty').hidden = providers.length > 0;
    tbody.replaceChildren();
    for (const t of providers) {
      const p = profiles.get(t.name);
      const st = stateOf(p);
      const tr = el('tr', { 'data-provider': t.name, 'data-state': st.key });
      const name = el('td', { class: 'name' });
      name.append(el('strong', {}, t.display_name || t.name));
      if (t.description) name.append(el('small', {}, t.description));
      tr.append(name);
      const state = el('td', {});
      state.append(el('span', { class: 'state', 'data-state': st.key }, st.label));
      tr.append(state);
      const details = el('td', { class: 'details' });
      if (st.key === 'connected' && p.expires_at) {
        const at = new Date(p.expires_at * 1000);
        const exp = el('span', { class: 'expires', 'data-expires-at': String(p.expires_at) },
          'expires at ' + at.toLocaleString());
        details.append(exp);
      }
      const err = loginErrors.get(t.name) || (p && p.last_error) || '';
      if (err) details.append(el('span', { class: 'error', role: 'status' }, err));
      tr.append(details);
      const actions = el('td', { class: 'actions' });
      const connected = st.key === 'connected';
      const button = el('button', { type: 'button', class: connected ? 'disconnect' : 'connect' },
        connected ? 'Disconnect' : 'Connect');
      button.disabled = busy.has(t.name);
      button.addEventListener('click', () => (connected ? disconnect(t.name) : connect(t.name)));
      actions.append(button);
      tr.append(actions);
      tbody.append(tr);
    }
  }

  async function refresh() {
    try {
      const [offered, list] = await Promise.all([call('GET', 'connect/providers'), call('GET', 'v1/profiles')]);
      document.getElementById('user').textContent = offered.user;
      providers = offered.providers;
      profiles = new Map(list.profiles.map((p) => [p.name, p]));
      render();
    } catch (e) {
      showNotice(e.message);
    }
  }

  let pending = null;
  function refreshSoon() {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      refresh();
    }, 50);
  }

  // The popup is opened in the click itself (popup blockers allow that),
  // then sent to the provider once tokend has started the sign-in.
  async function connect(name) {
    showNotice('');
    loginErrors.delete(name);
    const popup = window.open('', 'tokend-connect', 'popup,width=600,height=720');
    if (!popup) {
      loginErrors.set(name, 'The browser blocked the sign-in window: allow pop-ups for this page and press Connect again.');
      render();
      return;
    }
    busy.add(name);
    render();
    try {
      await call('POST', 'connect/providers/' + encodeURIComponent(name));
      const flow = await call('POST', 'v1/profiles/' + encodeURIComponent(name) + '/login', { listen: false });
      if (!flow.authorize_url || !/^https:\/\//.test(flow.authorize_url)) {
        throw new ApiError(0, 'no_authorize_url', 'tokend did not give an https sign-in address for this provider');
      }
      popup.location.href = flow.authorize_url;
    } catch (e) {
      popup.close();
      loginErrors.set(name, 'Could not start the sign-in: ' + e.message);
    } finally {
      busy.delete(name);
      refresh();
    }
  }

  async function disconnect(name) {
    showNotice('');
    busy.add(name);
    render();
    try {
      await call('POST', 'v1/profiles/' + encodeURIComponent(name) + '/logout', {});
      loginErrors.delete(name);
    } catch (e) {
      loginErrors.set(name, 'Could not disconnect: ' + e.message);
    } finally {
      busy.delete(name);
      refresh();
    }
  }

  // The popup's last page (callback.js) reports here; only this origin's.
  window.addEventListener('message', (ev) => {
    if (ev.origin !== window.location.origin) return;
    const d = ev.data;
    if (!d || d.type !== 'tokend-connect' || typeof d.profile !== 'string') return;
    if (d.ok) loginErrors.delete(d.profile);
    else if (d.profile) loginErrors.set(d.profile, forPage(d.message || d.reason || 'the sign-in failed'));
    else showNotice(d.message || 'the sign-in failed');
    refreshSoon();
  });

  // Live: any change to a profile or a sign-in redraws the page.
  const kinds = ['profile_added', 'profile_updated', 'profile_removed', 'refreshed', 'refresh_failed',
    'reauth_required', 'consent_required', 'login_started', 'login_succeeded', 'login_failed',
    'login_cancelled', 'logged_out'];
  const events = new EventSource('v1/events');
  events.onopen = () => {
    live.dataset.live = 'live';
    live.textContent = 'live';
    refreshSoon();
  };
  events.onerror = () => {
    live.dataset.live = 'reconnecting';
    live.textContent = 'reconnecting…';
  };
  for (const kind of kinds) {
    events.addEventListener(kind, (ev) => {
      let data = {};
      try {
        data = JSON.parse(ev.data);
      } catch (e) {
        data = {};
      }
      const name = data.profile;
      if (kind === 'login_failed' && name) {
        const why = data.error || data.reason || 'the sign-in failed';
        loginErrors.set(name, forPage(why));
      } else if (kind === 'login_succeeded' && name) {
        loginErrors.delete(name);
      }
      refreshSoon();
    });
  }
  refresh();
})();
