#!/usr/bin/env node
// A call through tokend's proxy from Node, over the Unix socket: the token
// never reaches this process.
//
//   node proxy_node.js [PROFILE] [PATH]     (default: jira jira/rest/api/3/myself)
'use strict';
const http = require('http');
const os = require('os');
const path = require('path');

// Where tokend listens (the rule tokend and tokenctl use): TOKEND_SOCKET, else
// $TMPDIR/tokend/tokend.sock on macOS, else $XDG_RUNTIME_DIR/tokend/tokend.sock,
// else /tmp/tokend-$UID/tokend.sock.
function tokendSocket() {
  const env = process.env;
  if (env.TOKEND_SOCKET) return env.TOKEND_SOCKET;
  if (process.platform === 'darwin' && env.TMPDIR && path.isAbsolute(env.TMPDIR)) {
    return path.join(env.TMPDIR, 'tokend', 'tokend.sock');
  }
  if (env.XDG_RUNTIME_DIR && path.isAbsolute(env.XDG_RUNTIME_DIR)) {
    return path.join(env.XDG_RUNTIME_DIR, 'tokend', 'tokend.sock');
  }
  return `/tmp/tokend-${os.userInfo().uid}/tokend.sock`;
}

// One call; resolves with {status, headers, body}.
function proxy(method, profile, apiPath, body) {
  return new Promise((resolve, reject) => {
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const req = http.request({
      socketPath: tokendSocket(),
      method,
      path: `/v1/proxy/${profile}/${apiPath}`,   // e.g. /v1/proxy/jira/jira/rest/api/3/myself
      headers,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);  // ENOENT / ECONNREFUSED: tokend is not running
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

async function main() {
  const profile = process.argv[2] || 'jira';
  const apiPath = process.argv[3] || 'jira/rest/api/3/myself';
  const res = await proxy('GET', profile, apiPath);
  if (res.status >= 400) {
    // tokend's own errors are {"error": {"code", "message"}}; the upstream's pass through as they are.
    console.error(`HTTP ${res.status}: ${res.body}`);
    process.exit(1);
  }
  const me = JSON.parse(res.body);
  console.log(`Logged in to Jira as ${me.displayName}`);
}

main().catch((e) => { console.error(`tokend: ${e.message}`); process.exit(3); });
