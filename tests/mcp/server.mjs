// An MCP server built on the official MCP TypeScript SDK (v2), protected the
// way the MCP authorization spec says: RFC 9728 metadata naming the test's
// authorization server, a 401 challenge pointing at it, and every bearer
// token checked by RFC 7662 introspection at that server (its audience must
// be this server: RFC 8707).
//
//   MCP_MODE=session    2025-11-25 Streamable HTTP: sessions (Mcp-Session-Id),
//                       the GET stream, DELETE at the end
//   MCP_MODE=stateless  2026-07-28: no sessions; request metadata headers
//   MCP_ISSUER          the authorization server (introspection at
//                       ISSUER/oauth/introspect)
//   MCP_STATIC_TOKEN    accept this one token instead (the benchmark)
//
// Listens on 127.0.0.1, ephemeral port; prints {"ready": true, "url": ...}.
// Then one JSON line per event the tests look at (session created/deleted).
//
// Tools: echo {text}; notify {count, gate} sends a log notification, waits
// until the test opens the gate (POST /control/gates/NAME), sends the rest
// and returns; region {region, query} has an x-mcp-header parameter; stamp
// sends one notification whose data is {sentMs} (its send time) and returns.
// Control: GET /control/log (requests seen: method, headers, MCP method),
// POST /control/sessions/forget (sessions vanish, as after a restart),
// POST /control/list-changed (a notification on every session's GET stream).
import { randomUUID, webcrypto } from 'node:crypto';
import http from 'node:http';

import { NodeStreamableHTTPServerTransport, toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, McpServer } from '@modelcontextprotocol/server';
import * as z from 'zod/v4';

// Debian 12's Node.js 18 has no global Web Crypto, which the SDK's session
// transport uses (Node 20, the SDK's stated minimum, has it).
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const mode = process.env.MCP_MODE || 'session';
const issuer = process.env.MCP_ISSUER || '';
const staticToken = process.env.MCP_STATIC_TOKEN || '';

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

const gates = new Map();  // name -> {open, waiters}
function gate(name) {
  if (!gates.has(name)) gates.set(name, { open: false, waiters: [] });
  return gates.get(name);
}
function openGate(name) {
  const g = gate(name);
  g.open = true;
  for (const w of g.waiters.splice(0)) w();
}
function passGate(name) {
  const g = gate(name);
  return g.open ? Promise.resolve() : new Promise((resolve) => g.waiters.push(resolve));
}

function buildServer() {
  const server = new McpServer({ name: 'tokend-test-server', version: '1.0.0' }, { capabilities: { logging: {} } });
  server.registerTool('echo', { description: 'Echoes its text', inputSchema: z.object({ text: z.string() }) },
    async ({ text }) => ({ content: [{ type: 'text', text }] }));
  server.registerTool('notify', {
    description: 'Sends count log notifications, the first before waiting for a gate',
    inputSchema: z.object({ count: z.number().int(), gate: z.string() }),
  }, async ({ count, gate: name }, ctx) => {
    for (let i = 1; i <= count; i++) {
      await ctx.mcpReq.notify({ method: 'notifications/message', params: { level: 'info', data: `step ${i}` } });
      if (i === 1) await passGate(name);
    }
    return { content: [{ type: 'text', text: `done after ${count}` }] };
  });
  server.registerTool('stamp', {
    description: 'Sends one log notification carrying the time it was sent, then returns (bench/mcp_bench.py)',
    inputSchema: z.object({}),
  }, async (_args, ctx) => {
    // performance.timeOrigin + performance.now(): ms since the epoch at
    // sub-ms resolution, comparable with the same sum in another process.
    const sentMs = performance.timeOrigin + performance.now();
    await ctx.mcpReq.notify({ method: 'notifications/message', params: { level: 'info', data: { sentMs } } });
    return { content: [{ type: 'text', text: 'stamped' }] };
  });
  server.registerTool('region', {
    description: 'A query routed by region (x-mcp-header)',
    inputSchema: z.object({ region: z.string().meta({ 'x-mcp-header': 'Region' }), query: z.string() }),
  }, async ({ region, query }) => ({ content: [{ type: 'text', text: `${region}: ${query}` }] }));
  return server;
}

const log = [];
let resource = '';
let prmUrl = '';

async function authorized(req) {
  const h = req.headers.authorization || '';
  if (!h.startsWith('Bearer ')) return false;
  const token = h.slice(7);
  if (staticToken) return token === staticToken;
  const r = await fetch(`${issuer}/oauth/introspect`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }).toString(),
  });
  if (r.status !== 200) return false;
  const info = await r.json();
  const aud = Array.isArray(info.aud) ? info.aud : [info.aud];
  return info.active === true && aud.includes(resource);
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (c) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

const sessions = new Map();  // id -> {transport, server}
const modern = mode === 'stateless' ? toNodeHandler(createMcpHandler(() => buildServer(), { legacy: 'reject' })) : null;

async function handleMcp(req, res, body) {
  if (mode === 'stateless') return modern(req, res, body);
  const id = req.headers['mcp-session-id'];
  if (id) {
    const s = sessions.get(id);
    if (!s) return json(res, 404, { jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } });
    return s.transport.handleRequest(req, res, body);
  }
  if (req.method !== 'POST' || !body || body.method !== 'initialize') {
    return json(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32000, message: 'No session: initialize first' } });
  }
  const server = buildServer();
  const transport = new NodeStreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    onsessioninitialized: (sid) => {
      sessions.set(sid, { transport, server });
      emit({ event: 'session_created', session: sid });
    },
    onsessionclosed: (sid) => {
      sessions.delete(sid);
      emit({ event: 'session_deleted', session: sid });
    },
  });
  await server.connect(transport);
  return transport.handleRequest(req, res, body);
}

const httpServer = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, resource);
    if (url.pathname === '/.well-known/oauth-protected-resource/mcp' && req.method === 'GET') {
      return json(res, 200, {
        resource, authorization_servers: [issuer], scopes_supported: ['openid', 'offline_access'],
        bearer_methods_supported: ['header'], resource_name: 'tokend test MCP server (official SDK)',
      });
    }
    if (url.pathname === '/control/log') return json(res, 200, log);
    if (url.pathname.startsWith('/control/gates/') && req.method === 'POST') {
      openGate(decodeURIComponent(url.pathname.slice('/control/gates/'.length)));
      return json(res, 200, { ok: true });
    }
    if (url.pathname === '/control/sessions/forget' && req.method === 'POST') {
      const n = sessions.size;
      sessions.clear();
      return json(res, 200, { forgotten: n });
    }
    if (url.pathname === '/control/list-changed' && req.method === 'POST') {
      for (const s of sessions.values()) await s.server.sendToolListChanged();
      return json(res, 200, { sessions: sessions.size });
    }
    if (url.pathname !== '/mcp') return json(res, 404, { error: 'not_found' });
    const raw = req.method === 'POST' ? await readBody(req) : '';
    let body;
    try {
      body = raw ? JSON.parse(raw) : undefined;
    } catch {
      body = undefined;
    }
    const ok = await authorized(req);
    log.push({
      method: req.method, ok, mcp: body && !Array.isArray(body) ? body.method || null : null,
      headers: Object.fromEntries(Object.entries(req.headers).filter(([k]) => k !== 'authorization')),
    });
    if (!ok) {
      return json(res, 401, { error: 'invalid_token' }, {
        'WWW-Authenticate': `Bearer error="invalid_token", resource_metadata="${prmUrl}"`,
      });
    }
    return await handleMcp(req, res, body);
  } catch (e) {
    process.stderr.write(`server error: ${e.stack || e}\n`);
    if (!res.headersSent) json(res, 500, { error: 'internal' });
    else res.end();
  }
});

httpServer.listen(0, '127.0.0.1', () => {
  const { port } = httpServer.address();
  resource = `http://127.0.0.1:${port}/mcp`;
  prmUrl = `http://127.0.0.1:${port}/.well-known/oauth-protected-resource/mcp`;
  emit({ ready: true, url: resource, mode });
});

process.on('SIGTERM', () => {
  httpServer.close();
  process.exit(0);
});
