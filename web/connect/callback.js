// The end of a sign-in in the popup: tell the connect page (same origin
// only) and close. Without an opener the page stays, readable.
'use strict';
(function () {
  const el = document.getElementById('result');
  if (!el) return;
  const message = {
    type: 'tokend-connect',
    profile: el.dataset.profile || '',
    ok: el.dataset.ok === 'true',
    reason: el.dataset.reason || '',
    message: el.dataset.message || '',
  };
  if (window.opener && !window.opener.closed) {
    try {
      window.opener.postMessage(message, window.location.origin);
    } catch (e) {
      return;
    }
    window.close();
  }
})();
