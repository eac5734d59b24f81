// The browser half of connect_browser_test.py: Debian's headless Chromium,
// driven by playwright-core, through nginx (real TLS, the test CA trusted by
// its SPKI hash only) to tokend's connect page. Reads its settings from the
// JSON file named by argv[2]; prints one "step: ..." line per step and a
// final "result: {...}" line; exits non-zero with the reason on any failure.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const log = (...a) => console.log(...a);
const fail = (msg) => {
  throw new Error(msg);
};
const expect = (cond, msg) => {
  if (!cond) fail(msg);
};

// The fake provider's control API (its certificate is the test CA's:
// NODE_EXTRA_CA_CERTS names it).
async function control(method, what, body) {
  const r = await fetch(`${cfg.fake}/_control/${what}`, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!r.ok) fail(`fake control ${method} ${what}: HTTP ${r.status} ${await r.text()}`);
  return r.json();
}

const result = { steps: [], screenshots: [] };
let n = 0;
async function shot(page, name) {
  n += 1;
  const file = path.join(cfg.artifacts, `${String(n).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
}
function step(name) {
  log(`step: ${name}`);
  result.steps.push(name);
}

const row = (name, state) => `tr[data-provider="${name}"]` + (state ? `[data-state="${state}"]` : '');

const browser = await chromium.launch({
  executablePath: cfg.chromium,
  headless: true,
  timeout: 15000,
  // Trust exactly the test certificate (by its public key), nothing else.
  args: [`--ignore-certificate-errors-spki-list=${cfg.spki}`],
});
try {
  const context = await browser.newContext({ viewport: { width: 960, height: 540 }, locale: 'en-GB', timezoneId: 'UTC' });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') log(`console error: ${m.text()}`);
  });

  step('open the page: every provider needs a login');
  const response = await page.goto(cfg.page);
  expect(response.status() === 200, `GET ${cfg.page}: ${response.status()}`);
  const h = response.headers();
  expect(/frame-ancestors 'none'/.test(h['content-security-policy'] || ''), `no frame-ancestors in the CSP: ${h['content-security-policy']}`);
  expect(/script-src 'self'/.test(h['content-security-policy'] || ''), 'the CSP allows scripts from elsewhere');
  expect(h['x-frame-options'] === 'DENY', `X-Frame-Options: ${h['x-frame-options']}`);
  expect(h['cache-control'] === 'no-store', `Cache-Control: ${h['cache-control']}`);
  await page.waitForSelector(row('jira', 'needs-login'));
  await page.waitForSelector(row('wiki', 'needs-login'));
  await page.waitForSelector('#live[data-live="live"]');
  const user = await page.textContent('#user');
  expect(user === cfg.user, `the page says it is ${user}, not ${cfg.user}`);
  // Set once: a reload would lose it, so its survival shows the page updated live.
  await page.evaluate(() => {
    window.tokendTestMarker = 'still-here';
  });
  await shot(page, 'needs-login');

  step('connect, the provider refuses (access_denied): the error shows on the page');
  await control('POST', 'config', { consent: 'deny' });
  let [popup] = await Promise.all([page.waitForEvent('popup'), page.click(`${row('jira')} button.connect`)]);
  await popup.waitForEvent('close');
  const denied = await page.waitForSelector(`${row('jira', 'needs-login')} .error`);
  const deniedText = await denied.textContent();
  expect(/access_denied/.test(deniedText), `the error shown is "${deniedText}"`);
  await shot(page, 'access-denied');
  result.denied_text = deniedText;
  await control('POST', 'config', { consent: 'approve' });

  step('connect, the provider rejects the code (invalid_grant): the error shows on the page');
  await control('POST', 'faults', { mode: 'invalid_grant_standard', target: 'token', count: 1 });
  [popup] = await Promise.all([page.waitForEvent('popup'), page.click(`${row('wiki')} button.connect`)]);
  await popup.waitForEvent('close');
  const rejected = await page.waitForSelector(`${row('wiki', 'needs-login')} .error`);
  result.invalid_grant_text = await rejected.textContent();
  expect(/invalid_grant/.test(result.invalid_grant_text), `the error shown is "${result.invalid_grant_text}"`);
  expect(!/tokenctl/.test(result.invalid_grant_text), `the page tells a browser user to run tokenctl: "${result.invalid_grant_text}"`);
  await shot(page, 'invalid-grant');

  step('connect while the provider is down (503 at the token endpoint): the error shows');
  await control('POST', 'faults', { mode: 'unavailable_503', target: 'token', count: 10 });
  [popup] = await Promise.all([page.waitForEvent('popup'), page.click(`${row('wiki')} button.connect`)]);
  await popup.waitForEvent('close');
  await page.waitForFunction(
    (sel) => /503|unavailable/i.test(document.querySelector(sel)?.textContent || ''),
    `${row('wiki', 'needs-login')} .error`,
  );
  result.provider_down_text = await page.textContent(`${row('wiki')} .error`);
  await control('DELETE', 'faults');
  await shot(page, 'provider-down');

  step('connect: popup, consent, popup closes, the row turns connected without a reload');
  [popup] = await Promise.all([page.waitForEvent('popup'), page.click(`${row('jira')} button.connect`)]);
  const seen = [];
  popup.on('framenavigated', (f) => {
    if (f === popup.mainFrame()) seen.push(new URL(f.url()).origin + new URL(f.url()).pathname);
  });
  await popup.waitForEvent('close');
  await page.waitForSelector(`${row('jira', 'connected')} .expires`);
  const expiresAt = Number(await page.getAttribute(`${row('jira')} .expires`, 'data-expires-at'));
  const now = Date.now() / 1000;
  expect(expiresAt > now + 3000 && expiresAt < now + 3700, `expires_at ${expiresAt} is not about an hour away`);
  expect((await page.locator(`${row('jira')} .error`).count()) === 0, 'the old error is still shown');
  expect(await page.evaluate(() => window.tokendTestMarker) === 'still-here', 'the page was reloaded');
  await page.waitForSelector(row('wiki', 'needs-login'));
  result.popup_went_through = seen;
  await shot(page, 'connected');

  step('disconnect: revoked at the provider, the row needs a login again');
  const before = (await control('GET', 'stats')).revoked_grants || 0;
  await page.click(`${row('jira')} button.disconnect`);
  await page.waitForSelector(row('jira', 'needs-login'));
  const after = (await control('GET', 'stats')).revoked_grants || 0;
  expect(after === before + 1, `the fake saw ${after - before} revocations, not 1`);
  result.revoked = after - before;
  await shot(page, 'disconnected');

  step("another user's state at the callback completes nothing");
  const other = await context.newPage();
  const r2 = await other.goto(cfg.foreign_callback);
  expect(r2.status() === 400, `the callback with another user's state answered ${r2.status()}`);
  const res = await other.waitForSelector('#result[data-ok="false"][data-reason="not_pending"]');
  result.foreign_text = (await res.textContent()).trim();
  await shot(other, 'foreign-state');
  await other.close();
  await page.waitForSelector(row('jira', 'needs-login'));

  expect(problems.length === 0, problems.join('; '));
  log(`result: ${JSON.stringify(result)}`);
} finally {
  await browser.close();
}
