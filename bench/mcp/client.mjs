// bench/mcp_bench.py's MCP client: the official MCP TypeScript SDK client
// (v2, legacy 2025 handshake) talking to one server either directly
// (Streamable HTTP with a static bearer token) or through a stdio bridge it
// spawns (tokenctl mcp, or mcp-remote). It measures and prints one JSON
// object on stdout; it asserts nothing about timings.
//
//   MCP_BENCH_CONFIG='{"mode": "http"|"stdio", ...}' node client.mjs
//
// Config: url and token_file (http: the token is read from the file and sent
// as Authorization: Bearer, never printed), or command, args, env and
// stderr_file (stdio); watch ({name: pid}: processes whose CPU time over the
// timed calls is reported) and clk_tck; calls, warmup (echo tools/calls), notifications
// (stamp tools/calls), starts (fresh connections timed from spawn to the
// first tools/list answered).
import { closeSync, openSync, readFileSync } from 'node:fs';

import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { StdioClientTransport } from '@modelcontextprotocol/client/stdio';

const cfg = JSON.parse(process.env.MCP_BENCH_CONFIG || '{}');
const token = cfg.token_file ? readFileSync(cfg.token_file, 'utf8').trim() : '';
const stderrFd = cfg.stderr_file ? openSync(cfg.stderr_file, 'a') : 'ignore';

function transport() {
  if (cfg.mode === 'http') {
    return new StreamableHTTPClientTransport(new URL(cfg.url), {
      requestInit: { headers: { Authorization: `Bearer ${token}` } },
    });
  }
  return new StdioClientTransport({ command: cfg.command, args: cfg.args, env: cfg.env, stderr: stderrFd });
}

const nowMs = () => performance.timeOrigin + performance.now();

// VmHWM/VmRSS (KiB) and user+system CPU (ms) of a process, from /proc.
const clkTck = cfg.clk_tck || 100;
function procStats(pid) {
  if (!pid) return null;
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name) => Number((status.match(new RegExp(`^${name}:\\s+(\\d+)`, 'm')) || [])[1]);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);  // utime + stime (fields 14, 15)
  return { pid, vm_hwm_kib: kib('VmHWM'), vm_rss_kib: kib('VmRSS'), cpu_ms: (ticks * 1000) / clkTck };
}

async function connect() {
  const t = transport();
  const client = new Client({ name: 'tokend-mcp-bench', version: '1.0.0' });
  const delays = [];
  client.setNotificationHandler('notifications/message', (n) => {
    const sent = n.params && n.params.data && n.params.data.sentMs;
    if (typeof sent === 'number') delays.push((nowMs() - sent) * 1000);
  });
  await client.connect(t);
  return { client, t, delays };
}

async function echo(client, i) {
  const r = await client.callTool({ name: 'echo', arguments: { text: `bench ${i}` } });
  if (r.isError || !r.content || r.content[0].text !== `bench ${i}`) {
    throw new Error(`echo ${i} came back wrong: ${JSON.stringify(r).slice(0, 200)}`);
  }
}

async function main() {
  const out = { mode: cfg.mode, latencies_us: [], notify_delays_us: [], start_ms: [] };

  // Start: spawn (or, for http, nothing to spawn) to the first tools/list answered.
  for (let i = 0; i < (cfg.starts || 0); i++) {
    const t0 = performance.now();
    const { client } = await connect();
    const { tools } = await client.listTools();
    out.start_ms.push(performance.now() - t0);
    if (!tools.some((tool) => tool.name === 'echo')) throw new Error('tools/list lacks echo');
    await client.close();
  }

  const { client, t, delays } = await connect();
  await client.listTools();
  const pid = cfg.mode === 'stdio' ? t.pid : null;
  for (let i = 0; i < (cfg.warmup || 0); i++) await echo(client, i);
  const watch = Object.entries(cfg.watch || {});
  const watched0 = watch.map(([, p]) => procStats(p).cpu_ms);
  const before = procStats(pid);
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < (cfg.calls || 0); i++) {
    const t0 = process.hrtime.bigint();
    await echo(client, i);
    out.latencies_us.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  const cpu = process.cpuUsage(cpu0);
  out.client_cpu_ms_calls = (cpu.user + cpu.system) / 1000;
  const after = procStats(pid);
  out.watched_cpu_ms_calls = Object.fromEntries(watch.map(([name, p], i) => [name, procStats(p).cpu_ms - watched0[i]]));
  if (after) {
    out.bridge = { ...after, cpu_ms_calls: after.cpu_ms - before.cpu_ms };
  }
  for (let i = 0; i < (cfg.notifications || 0); i++) {
    const n = delays.length;
    const r = await client.callTool({ name: 'stamp', arguments: {} });
    if (r.isError) throw new Error(`stamp failed: ${JSON.stringify(r).slice(0, 200)}`);
    // The notification precedes the result on the same stream.
    if (delays.length !== n + 1) throw new Error(`stamp ${i}: ${delays.length - n} notifications before its result`);
  }
  out.notify_delays_us = delays;
  await client.close();
  if (typeof stderrFd === 'number') closeSync(stderrFd);
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main().catch((e) => {
  process.stderr.write(`mcp bench client: ${e.stack || e}\n`);
  process.exit(1);
});
