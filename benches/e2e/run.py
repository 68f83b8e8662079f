#!/usr/bin/env python3
"""End-to-end throughput harness: rafael against the upstream directly, nginx, haproxy, a
minimal pingora proxy and a minimal hyper-util proxy, all with upstream keep-alive.

Layout on a 2-core machine: wrk and the upstream on cpu 0, the proxy under test alone on cpu 1.
Every scenario starts fresh processes, rounds are interleaved, and medians are reported. The
proxy's CPU time per request comes from /proc/PID/stat (utime + stime of all its processes).

    python3 benches/e2e/run.py                 # 3 rounds of 10 s, every peer
    python3 benches/e2e/run.py --rounds 1 --duration 5 --only direct,rafael,nginx
    python3 benches/e2e/run.py --write benches/results/e2e.md   # also write a markdown table

See benches/README.md.
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.path.join(ROOT, "target", "release")
PINGORA_DIR = os.path.join(ROOT, "benches", "pingora-proxy")
PINGORA_BIN = os.path.join(PINGORA_DIR, "target", "release", "pingora-bench-proxy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_CPU, PROXY_CPU = "0", "1"
PEERS = ["direct", "rafael", "rafael-policies", "nginx", "haproxy", "pingora", "hyper-proxy"]


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools(peers):
    needed = {"wrk": "wrk"}
    if "nginx" in peers:
        needed["nginx"] = "nginx-light"
    if "haproxy" in peers:
        needed["haproxy"] = "haproxy"
    missing = [pkg for tool, pkg in needed.items() if not shutil.which(tool)]
    if missing:
        print(f"installing {' '.join(missing)} from Debian's packages", file=sys.stderr)
        sh(["apt-get", "install", "-y", "-q"] + missing, stdout=subprocess.DEVNULL)


def build(peers):
    sh(["cargo", "build", "--release", "-q", "-p", "rafael-control", "-p", "rafael-benches"], cwd=ROOT)
    if "pingora" in peers and not os.path.exists(PINGORA_BIN):
        if not shutil.which("cmake"):
            sh(["apt-get", "install", "-y", "-q", "cmake"], stdout=subprocess.DEVNULL)
        sh(["cargo", "build", "--release", "-q"], cwd=PINGORA_DIR)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, limit=20.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def cpu_ticks(pid):
    """utime + stime of `pid` and its children processes (nginx workers)."""
    total = 0
    pids = [pid] + children(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except FileNotFoundError:
            pass
    return total


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


class Peer:
    def __init__(self, name, upstream_port, workdir):
        self.name = name
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.workdir = workdir
        self.port = upstream_port if name == "direct" else free_port()
        self.process = None

    def start(self):
        if self.name == "direct":
            return
        cmd = self.command()
        self.process = subprocess.Popen(
            ["taskset", "-c", PROXY_CPU] + cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.workdir, f"{self.name}.log"), "w"),
        )
        wait_ready(f"http://127.0.0.1:{self.port}/")

    def command(self):
        if self.name in ("rafael", "rafael-policies"):
            config = os.path.join(self.workdir, f"{self.name}.toml")
            policies = RAFAEL_POLICIES if self.name == "rafael-policies" else ""
            with open(config, "w") as f:
                f.write(RAFAEL_CONFIG.format(port=self.port, admin=free_port(), upstream=self.upstream) + policies)
            return [os.path.join(TARGET, "rafael"), "run", "--config", config]
        if self.name == "nginx":
            config = os.path.join(self.workdir, "nginx.conf")
            with open(config, "w") as f:
                f.write(NGINX_CONFIG.format(port=self.port, upstream=self.upstream, dir=self.workdir))
            return ["nginx", "-c", config]
        if self.name == "haproxy":
            config = os.path.join(self.workdir, "haproxy.cfg")
            with open(config, "w") as f:
                f.write(HAPROXY_CONFIG.format(port=self.port, upstream=self.upstream))
            return ["haproxy", "-db", "-f", config]
        if self.name == "pingora":
            return [PINGORA_BIN, f"127.0.0.1:{self.port}", self.upstream]
        if self.name == "hyper-proxy":
            return [os.path.join(TARGET, "hyper-proxy"), f"127.0.0.1:{self.port}", self.upstream]
        raise ValueError(self.name)

    def stop(self):
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def wrk(port, duration, connections):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}/"],
        check=True, capture_output=True, text=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    latency = {m.group(1): to_ms(m.group(2)) for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M)}
    return {
        "rps": rps,
        "requests": total,
        "p50": latency.get("50"),
        "p99": latency.get("99"),
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure(peer, duration, connections, warmup):
    peer.start()
    try:
        wrk(peer.port, warmup, connections)
        before = cpu_ticks(peer.process.pid) if peer.process else None
        result = wrk(peer.port, duration, connections)
        if peer.process:
            ticks = cpu_ticks(peer.process.pid) - before
            result["cpu_us_per_req"] = ticks / CLK_TCK / max(result["requests"], 1) * 1e6
        else:
            result["cpu_us_per_req"] = None
        return result
    finally:
        peer.stop()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


RAFAEL_CONFIG = """
[admin]
bind = "127.0.0.1:{admin}"
[runtime]
watch_config = false
[[listeners]]
name = "in"
bind = "127.0.0.1:{port}"
protocol = "http1"
[[upstreams]]
name = "app"
endpoints = ["{upstream}"]
[[routes]]
name = "all"
listener = "in"
upstream = "app"
"""

# Every policy on, none of them binding on a healthy upstream: what the stack itself costs.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rafael-policies.toml")) as f:
    RAFAEL_POLICIES = f.read()

NGINX_CONFIG = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    upstream app {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""

HAPROXY_CONFIG = """
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend inbound
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server s1 {upstream}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per scenario")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument("--write", help="also write a markdown results table to this file")
    args = parser.parse_args()
    peers = [p for p in args.only.split(",") if p]
    for p in peers:
        if p not in PEERS:
            parser.error(f"unknown peer {p}; known: {', '.join(PEERS)}")
    if os.cpu_count() < 2:
        parser.error("needs 2 CPUs: load on cpu 0, proxy on cpu 1")

    ensure_tools(peers)
    build(peers)
    workdir = tempfile.mkdtemp(prefix="rafael-e2e-")
    upstream_port = free_port()
    upstream = subprocess.Popen(
        ["taskset", "-c", LOAD_CPU, os.path.join(TARGET, "bench-upstream"), f"127.0.0.1:{upstream_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    results = {p: [] for p in peers}
    try:
        wait_ready(f"http://127.0.0.1:{upstream_port}/")
        for round_ in range(args.rounds):
            for name in peers:
                result = measure(Peer(name, upstream_port, workdir), args.duration, args.connections, args.warmup)
                results[name].append(result)
                print(f"round {round_ + 1} {name:12} {result['rps']:>10.0f} req/s  p50 {fmt(result['p50'], '.3f')} ms"
                      f"  p99 {fmt(result['p99'], '.3f')} ms  cpu {fmt(result['cpu_us_per_req'], '.2f')} us/req"
                      f"  non-2xx {result['errors']} {result['socket_errors']}", file=sys.stderr)
    finally:
        upstream.terminate()
        upstream.wait()

    summary = {
        name: {key: median([r[key] for r in runs]) for key in ("rps", "p50", "p99", "cpu_us_per_req")}
        for name, runs in results.items()
    }
    direct = summary.get("direct", {}).get("rps")
    nginx = summary.get("nginx", {})
    rafael = summary.get("rafael", {}).get("rps")
    lines = [
        f"| peer | req/s | p50 ms | p99 ms | CPU us/req | vs direct | vs rafael req/s | vs nginx req/s | vs nginx CPU/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in peers:
        s = summary[name]
        vs_direct = s["rps"] / direct if direct else None
        vs_nginx = s["rps"] / nginx["rps"] if nginx.get("rps") else None
        cpu_vs = (s["cpu_us_per_req"] / nginx["cpu_us_per_req"]
                  if s["cpu_us_per_req"] and nginx.get("cpu_us_per_req") else None)
        vs_rafael = s["rps"] / rafael if rafael else None
        lines.append(
            f"| {name} | {s['rps']:.0f} | {fmt(s['p50'], '.3f')} | {fmt(s['p99'], '.3f')} | "
            f"{fmt(s['cpu_us_per_req'], '.2f')} | {fmt(vs_direct, '.2f')} | {fmt(vs_rafael, '.2f')} | "
            f"{fmt(vs_nginx, '.2f')} | {fmt(cpu_vs, '.2f')} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.write:
        header = (
            f"# End-to-end results, {datetime.date.today().isoformat()}\n\n"
            f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.\n"
            f"Command: `python3 benches/e2e/run.py --rounds {args.rounds} --duration {args.duration} "
            f"--connections {args.connections} --only {','.join(peers)}`\n"
            f"wrk -t1 -c{args.connections}, 13-byte responses, upstream keep-alive; wrk and upstream on cpu 0, "
            f"proxy on cpu 1; medians of {args.rounds} interleaved rounds.\n\n"
        )
        with open(args.write, "w") as f:
            f.write(header + table + "\n")


if __name__ == "__main__":
    main()
