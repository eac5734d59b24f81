#!/usr/bin/env python3
"""Helpers for bench/token_bench.sh and bench/cli_bench.sh (standard library only).

  benchutil.py start-tokend --log FILE [--deadline S] -- TOKEND [ARGS...]
      Launches tokend (environment as given, stdout+stderr to FILE), polls its
      socket every 1 ms with GET /v1/health until a 2xx answer, and prints
      "PID READY_MS" (READY_MS: monotonic ms from launch to that answer). The
      daemon keeps running. Exits 1 with a clear message if tokend exits or
      does not answer before the deadline (the daemon is then killed).
  benchutil.py wait-http SOCKET PATH [--deadline S]
      Polls until SOCKET answers GET PATH with 2xx; exits 1 at the deadline.
  benchutil.py row --tool h2load|loadgen --target T --connections C OUTFILE [H2LOAD_LOG]
      One JSON result line from h2load's output (percentiles from its
      --log-file when given) or from `loadgen --json` output.
  benchutil.py report RESULTS.jsonl [--json FILE] [--meta JSON]
      Prints the comparison table and the tokend/nginx ratios; optionally
      writes everything as one JSON document.
"""
import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time


def http_get_status(sock_path, path, timeout=1.0):
    """Status code of GET path on a Unix socket, or None if nothing answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: tokend\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None
    finally:
        s.close()


def socket_from_args(argv):
    for i, a in enumerate(argv):
        if a == "--socket" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--socket="):
            return a.split("=", 1)[1]
    return None


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def cmd_start_tokend(args):
    argv = args.command
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.exit("benchutil: start-tokend needs a command")
    sock = socket_from_args(argv)
    if not sock:
        sys.exit("benchutil: start-tokend needs the tokend command to have --socket PATH")
    log = open(args.log, "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = t0 + args.deadline
    last = None
    while True:
        if os.path.exists(sock):
            last = http_get_status(sock, "/v1/health")
            if last is not None and 200 <= last < 300:
                ready_ms = (time.monotonic() - t0) * 1000.0
                print(f"{proc.pid} {ready_ms:.2f}")
                return
        rc = proc.poll()
        if rc is not None:
            sys.stderr.write(
                f"benchutil: tokend exited with status {rc} before answering GET /v1/health "
                f"on {sock}; last lines of {args.log}:\n{tail(args.log)}")
            sys.exit(1)
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            seen = "no socket file" if not os.path.exists(sock) else (
                "nothing answered" if last is None else f"last status {last}")
            sys.stderr.write(
                f"benchutil: tokend did not answer GET /v1/health on {sock} within "
                f"{args.deadline:g} s ({seen}); killed it. Last lines of {args.log}:\n"
                f"{tail(args.log)}")
            sys.exit(1)
        time.sleep(0.001)


def cmd_wait_http(args):
    deadline = time.monotonic() + args.deadline
    last = None
    while time.monotonic() < deadline:
        last = http_get_status(args.socket, args.path)
        if last is not None and 200 <= last < 300:
            return
        time.sleep(0.005)
    sys.exit(f"benchutil: {args.socket} did not answer GET {args.path} with 2xx within "
             f"{args.deadline:g} s (last status: {last})")


UNITS_US = {"us": 1.0, "ms": 1000.0, "s": 1e6}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * UNITS_US[m.group(2)] if m else None


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def parse_h2load(args):
    out = open(args.output, errors="replace").read()
    res = {}
    m = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    if not m:
        sys.exit(f"benchutil: no 'finished in' line in h2load output:\n{out[-2000:]}")
    res["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        done, ok, failed, errored, timeout = (int(m.group(i)) for i in (3, 4, 5, 6, 7))
        res["requests"] = done
        res["errors"] = failed + errored + timeout
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        res["non_2xx"] = sum(int(m.group(i)) for i in (2, 3, 4))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if m:
        res["min_us"], res["max_us"], res["mean_us"] = (to_us(m.group(i)) for i in (1, 2, 3))
    if args.log:
        lat = []
        with open(args.log) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
        lat.sort()
        res["p50_us"] = percentile(lat, 50)
        res["p99_us"] = percentile(lat, 99)
        res["p99_9_us"] = percentile(lat, 99.9)
    return res


def parse_loadgen(args):
    text = open(args.output, errors="replace").read().strip()
    try:
        j = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        sys.exit(f"benchutil: loadgen printed no JSON:\n{text[-2000:]}")
    lat = j["latency_us"]
    return {"rps": j["rps"], "requests": j["requests"], "errors": j["errors"],
            "non_2xx": j["non_2xx"], "mean_us": lat["mean"], "p50_us": lat["p50"],
            "p99_us": lat["p99"], "p99_9_us": lat["p99_9"], "max_us": lat["max"]}


def cmd_row(args):
    res = parse_h2load(args) if args.tool == "h2load" else parse_loadgen(args)
    row = {"target": args.target, "tool": args.tool, "connections": args.connections,
           "round": args.round}
    row.update(res)
    print(json.dumps(row))


def fmt_num(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def print_table(headers, table, left_columns):
    """Rows of text cells under their headers and a rule, the first `left_columns`
    columns left-aligned (names), the others right-aligned (numbers)."""
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left_columns else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in table:
        print(line(row))


def cmd_report(args):
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    headers = ["target", "tool", "conns", "req/s", "mean us", "p50 us", "p99 us", "p99.9 us",
               "non-2xx", "errors"]
    table = []
    for r in rows:
        table.append([r["target"], r["tool"], str(r["connections"]), fmt_num(r.get("rps")),
                      fmt_num(r.get("mean_us"), 1), fmt_num(r.get("p50_us"), 1),
                      fmt_num(r.get("p99_us"), 1), fmt_num(r.get("p99_9_us"), 1),
                      fmt_num(r.get("non_2xx")), fmt_num(r.get("errors"))])
    print_table(headers, table, left_columns=2)

    # Each ratio is taken within one round (tokend and nginx run one after
    # the other); over several rounds, the median ratio and the range.
    ratios = []
    by_key = {(r["target"], r["tool"], r["connections"], r.get("round", 1)): r for r in rows}
    per_config = {}
    for (target, tool, conns, rnd), r in by_key.items():
        n = by_key.get(("nginx", tool, conns, rnd))
        if target == "tokend" and n and n.get("rps"):
            per_config.setdefault((tool, conns), []).append(
                ((r.get("rps") or 0) / n["rps"], r.get("rps"), n["rps"]))
    for (tool, conns), runs in sorted(per_config.items()):
        runs.sort()
        median = runs[len(runs) // 2][0] if len(runs) % 2 else \
            (runs[len(runs) // 2 - 1][0] + runs[len(runs) // 2][0]) / 2
        ratios.append({"tool": tool, "connections": conns, "rounds": len(runs),
                       "ratio": median, "min": runs[0][0], "max": runs[-1][0],
                       "tokend_rps": sorted(x[1] or 0 for x in runs)[len(runs) // 2],
                       "nginx_rps": sorted(x[2] for x in runs)[len(runs) // 2]})
    if ratios:
        several = any(q["rounds"] > 1 for q in ratios)
        print("\ntokend / nginx req/s" + (" (median over rounds, range)" if several else ""))
        for q in ratios:
            extra = f"  [{q['min']:.2f}-{q['max']:.2f}, {q['rounds']} rounds]" if several else ""
            print(f"  {q['tool']:<8} c={q['connections']:<3} {q['ratio']:.2f}  "
                  f"({fmt_num(q['tokend_rps'])} / {fmt_num(q['nginx_rps'])}){extra}")
    if args.json:
        doc = {"meta": json.loads(args.meta) if args.meta else {}, "results": rows,
               "ratios": ratios}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"\nresults written to {args.json}")


def main():
    p = argparse.ArgumentParser(prog="benchutil.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start-tokend")
    s.add_argument("--log", required=True)
    s.add_argument("--deadline", type=float, default=10.0)
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_start_tokend)
    s = sub.add_parser("wait-http")
    s.add_argument("socket")
    s.add_argument("path")
    s.add_argument("--deadline", type=float, default=10.0)
    s.set_defaults(fn=cmd_wait_http)
    s = sub.add_parser("row")
    s.add_argument("--tool", choices=("h2load", "loadgen"), required=True)
    s.add_argument("--target", required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--round", type=int, default=1, help="which round of a repeated run")
    s.add_argument("output")
    s.add_argument("log", nargs="?")
    s.set_defaults(fn=cmd_row)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("--json")
    s.add_argument("--meta")
    s.set_defaults(fn=cmd_report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
