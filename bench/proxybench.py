#!/usr/bin/env python3
"""Helpers for bench/proxy_bench.sh (standard library only).

  proxybench.py free-port
      Prints a TCP port on 127.0.0.1 that was free a moment ago.
  proxybench.py run --mode direct|proxied --connections C --warmup W --duration D
                    --output FILE [--log FILE] [--pid NAME=PID]... -- H2LOAD ARGS...
      Runs h2load (stdout+stderr to FILE) and prints one JSON result line:
      h2load's figures (percentiles from --log FILE when given), the CPU each
      named process and h2load used during the measured window (percent of one
      core, from /proc/PID/stat), the whole machine's busy CPU over the same
      window (/proc/stat) and what nobody of ours used ("other", i.e. load that
      was not part of the benchmark), the negotiated TLS protocol, cipher and
      application protocol that h2load printed, and the bytes per response.
  proxybench.py report RESULTS.jsonl [--json FILE] [--meta JSON]
      Prints the direct/proxied table, the proxied/direct req/s ratio and the
      added p50 latency per connection count (with the aims: ratio >= 0.8,
      added p50 <= 150 us at c=1), and optionally writes everything as JSON.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchutil  # noqa: E402  (parse_h2load, fmt_num, print_table)

RATIO_AIM = 0.8
ADDED_P50_AIM_US = 150.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cmd_free_port(_args):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def proc_cpu_ticks(pid):
    """utime+stime of PID in clock ticks, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces; everything after the last ')' is fixed.
    fields = data[data.rfind(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)


def machine_ticks():
    """(busy, total) jiffies summed over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already inside user/nice
    return total - idle, total


def snapshot(pids):
    return {"t": time.monotonic(), "machine": machine_ticks(),
            "procs": {name: proc_cpu_ticks(pid) for name, pid in pids.items()}}


def cmd_run(args):
    argv = args.command
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        sys.exit("proxybench: run needs the h2load command")
    pids = {}
    for spec in args.pid:
        name, _, pid = spec.partition("=")
        pids[name] = int(pid)

    out = open(args.output, "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    pids["client"] = proc.pid
    # CPU is sampled inside the measured window: h2load connects (a few ms),
    # warms up for W s, then measures for D s. Start a little after the
    # warm-up and stop a little before the end so that neither connection
    # set-up nor shutdown is counted.
    t0 = time.monotonic()
    start_at = t0 + args.warmup + min(0.2, 0.05 * args.duration) + 0.05
    stop_at = t0 + args.warmup + args.duration * 0.95
    samples = {}

    def sampler():
        for key, when in (("a", start_at), ("b", stop_at)):
            while True:
                left = when - time.monotonic()
                if left <= 0 or proc.poll() is not None:
                    break
                time.sleep(min(left, 0.05))
            if proc.poll() is not None:
                return
            samples[key] = snapshot(pids)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    rc = proc.wait()
    th.join()
    out.close()
    if rc != 0:
        sys.stderr.write(open(args.output, errors="replace").read()[-3000:])
        sys.exit(f"proxybench: h2load ({args.mode}, c={args.connections}) exited with {rc}")

    ns = argparse.Namespace(output=args.output, log=args.log)
    row = {"mode": args.mode, "tool": "h2load", "connections": args.connections}
    row.update(benchutil.parse_h2load(ns))

    text = open(args.output, errors="replace").read()
    for key, pat in (("tls_protocol", r"TLS Protocol: (\S+)"), ("cipher", r"Cipher: (\S+)"),
                     ("application_protocol", r"Application protocol: (\S+)")):
        m = re.search(pat, text)
        row[key] = m.group(1) if m else None
    # traffic: 213.75KB (218875) total, 56.78KB (58140) headers (space savings 0.00%), 189.26KB (193800) data
    m = re.search(r"traffic: \S+ \((\d+)\) total, \S+ \((\d+)\) headers \(space savings [^)]*\), "
                  r"\S+ \((\d+)\) data", text)
    if m and row.get("requests"):
        # As h2load counts them (HTTP/1.1: everything received, per response).
        row["h2load_bytes_per_response"] = round(int(m.group(1)) / row["requests"], 1)

    a, b = samples.get("a"), samples.get("b")
    if a and b and b["t"] > a["t"]:
        window = b["t"] - a["t"]
        cpu = {}
        ours = 0.0
        for name in pids:
            x, y = a["procs"].get(name), b["procs"].get(name)
            if x is None or y is None:
                continue
            pct = (y - x) / CLK_TCK / window * 100.0
            cpu[name] = round(pct, 1)
            ours += pct
        busy = (b["machine"][0] - a["machine"][0]) / CLK_TCK / window * 100.0
        cpu["machine"] = round(busy, 1)
        cpu["other"] = round(max(0.0, busy - ours), 1)
        row["cpu_pct"] = cpu
        row["cpu_window_s"] = round(window, 3)
        if row.get("rps"):
            per = {}
            for name in ("tokend", "nginx", "client"):
                if name in cpu:
                    per[name] = round(cpu[name] / 100.0 / row["rps"] * 1e6, 1)
            row["cpu_us_per_request"] = per
    print(json.dumps(row))


def fmt(v, digits=0):
    return benchutil.fmt_num(v, digits)


def cmd_report(args):
    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    headers = ["mode", "conns", "req/s", "mean us", "p50 us", "p99 us", "p99.9 us", "non-2xx",
               "errors", "cpu% client", "tokend", "nginx", "other"]
    table = []
    for r in rows:
        cpu = r.get("cpu_pct") or {}
        table.append([r["mode"], str(r["connections"]), fmt(r.get("rps")), fmt(r.get("mean_us"), 1),
                      fmt(r.get("p50_us"), 1), fmt(r.get("p99_us"), 1), fmt(r.get("p99_9_us"), 1),
                      fmt(r.get("non_2xx")), fmt(r.get("errors")),
                      fmt(cpu.get("client")), fmt(cpu.get("tokend")) if r["mode"] == "proxied" else "-",
                      fmt(cpu.get("nginx")), fmt(cpu.get("other"))])
    benchutil.print_table(headers, table, left_columns=1)

    comparisons = []
    by_key = {(r["mode"], r["connections"]): r for r in rows}
    for conns in sorted({r["connections"] for r in rows}):
        d, p = by_key.get(("direct", conns)), by_key.get(("proxied", conns))
        if not d or not p:
            continue
        c = {"connections": conns, "direct_rps": d.get("rps"), "proxied_rps": p.get("rps"),
             "ratio": (p["rps"] / d["rps"]) if d.get("rps") and p.get("rps") is not None else None,
             "direct_p50_us": d.get("p50_us"), "proxied_p50_us": p.get("p50_us"),
             "added_p50_us": (p["p50_us"] - d["p50_us"])
             if d.get("p50_us") is not None and p.get("p50_us") is not None else None,
             "added_mean_us": (p["mean_us"] - d["mean_us"])
             if d.get("mean_us") is not None and p.get("mean_us") is not None else None,
             "tokend_cpu_us_per_request": (p.get("cpu_us_per_request") or {}).get("tokend"),
             "clean": not any((r.get("non_2xx") or 0) or (r.get("errors") or 0) for r in (d, p))}
        c["ratio_ok"] = c["ratio"] is not None and c["ratio"] >= RATIO_AIM
        if conns == 1:
            c["added_p50_ok"] = (None if c["added_p50_us"] is None
                                 else c["added_p50_us"] <= ADDED_P50_AIM_US)
        comparisons.append(c)

    if comparisons:
        print("\nproxied vs direct")
        for c in comparisons:
            ratio = f"{c['ratio']:.2f}" if c["ratio"] is not None else "-"
            aim = "" if c["ratio"] is None else ("  (aim >= 0.80: met)" if c["ratio_ok"]
                                                 else "  (aim >= 0.80: NOT met)")
            print(f"  c={c['connections']:<3} req/s ratio {ratio}  "
                  f"({fmt(c['proxied_rps'])} / {fmt(c['direct_rps'])}){aim}")
            added = fmt(c["added_p50_us"], 1)
            extra = ""
            if "added_p50_ok" in c and c["added_p50_us"] is None:
                extra = "  (no p50 without h2load's log: the mean is h2load's own)"
            elif "added_p50_ok" in c:
                extra = "  (aim <= 150 us: " + ("met)" if c["added_p50_ok"] else "NOT met)")
            print(f"        added p50 {added} us  ({fmt(c['proxied_p50_us'], 1)} - "
                  f"{fmt(c['direct_p50_us'], 1)}); added mean {fmt(c['added_mean_us'], 1)} us{extra}")
            if c["tokend_cpu_us_per_request"] is not None:
                print(f"        tokend CPU per proxied request {fmt(c['tokend_cpu_us_per_request'], 1)} us")
            if not c["clean"]:
                print("        WARNING: non-2xx responses or errors: this comparison is worthless")
    busy = [r["cpu_pct"]["other"] for r in rows if r.get("cpu_pct")]
    if busy and max(busy) > 10:
        print(f"\nWARNING: up to {max(busy):.0f}% of a core was used by other processes during "
              f"the runs; the figures are not reliable (close other work and run again)")
    if args.json:
        doc = {"meta": json.loads(args.meta) if args.meta else {}, "results": rows,
               "comparisons": comparisons,
               "aims": {"ratio_min": RATIO_AIM, "added_p50_us_max_at_c1": ADDED_P50_AIM_US}}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"\nresults written to {args.json}")


def main():
    p = argparse.ArgumentParser(prog="proxybench.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("free-port")
    s.set_defaults(fn=cmd_free_port)
    s = sub.add_parser("run")
    s.add_argument("--mode", choices=("direct", "proxied"), required=True)
    s.add_argument("--connections", type=int, required=True)
    s.add_argument("--warmup", type=float, required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--output", required=True)
    s.add_argument("--log")
    s.add_argument("--pid", action="append", default=[])
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_run)
    s = sub.add_parser("report")
    s.add_argument("results")
    s.add_argument("--json")
    s.add_argument("--meta")
    s.set_defaults(fn=cmd_report)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
