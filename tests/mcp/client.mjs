// An MCP client on the official MCP TypeScript SDK (v2) that runs a stdio
// MCP server the way every MCP client does: `tokenctl mcp PROFILE` here.
//
//   node client.mjs COMMAND [ARG...]
//
// Connects (MCP_NEGOTIATION: legacy or auto, passed to the SDK), lists the
// tools, calls echo, and prints one JSON line:
// {"ok": true, "tools": [...], "echo": "...", "version": "..."} or
// {"ok": false, "error": "..."}. Exit 0 either way once it has printed.
import { webcrypto } from 'node:crypto';

import { Client } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';

// Debian 12's Node.js 18 has no global Web Crypto (Node 20 has it).
if (!globalThis.crypto) globalThis.crypto = webcrypto;

const [command, ...args] = process.argv.slice(2);
const transport = new StdioClientTransport({ command, args, env: process.env, stderr: 'inherit' });
// MCP_NEGOTIATION=auto: probe with server/discover (2026-07-28), else the
// 2025 initialize handshake.
const mode = process.env.MCP_NEGOTIATION || 'legacy';
const client = new Client({ name: 'tokend-sdk-client-test', version: '1.0.0' }, { versionNegotiation: { mode } });
try {
  await client.connect(transport);
  const tools = await client.listTools();
  const echo = await client.callTool({ name: 'echo', arguments: { text: 'through tokend' } });
  const region = await client.callTool({ name: 'region', arguments: { region: 'eu-1', query: 'q' } });
  process.stdout.write(`${JSON.stringify({
    ok: true,
    tools: tools.tools.map((t) => t.name).sort(),
    echo: echo.content[0].text,
    region: region.content[0].text,
    version: client.getNegotiatedProtocolVersion ? client.getNegotiatedProtocolVersion() : null,
  })}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ ok: false, error: String(e && e.stack || e) })}\n`);
} finally {
  await client.close().catch(() => {});
}
