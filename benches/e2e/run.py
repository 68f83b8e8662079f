#!/usr/bin/env python3
"""End-to-end harness: rafael side by side with the upstream directly, nginx, haproxy, a minimal
pingora proxy and a minimal hyper-util proxy, on every path a sidecar serves.

Scenarios (`--scenarios`, comma-separated, default all, in this order):

    h1           HTTP/1.1, wrk -t1 -c32, closed loop: req/s, p50/p99, CPU per request
    rate         constant rate (5k and 20k req/s), coordinated-omission corrected (bench-load):
                 p50 and p99 added over direct
    h2           HTTP/2 downstream, cleartext prior knowledge, h2load -c32 -m10
    h2-upstream  HTTP/1.1 downstream (wrk), HTTP/2 (h2c) upstream
    tls          TLS termination, ECDSA P-256 and RSA 2048: keep-alive, and a handshake per request
    memory       peak RSS at 32 connections, and RSS after a 1,000-connection burst
    reload       rafael's reload time with 10, 100, 1,000 routes over 100 endpoints

Layout on a 2-core machine: the load generator and the upstream on cpu 0, the proxy under test
alone on cpu 1. Every measurement starts fresh processes, rounds are interleaved, and medians are
reported. The proxy's CPU time per request comes from /proc/PID/stat (utime + stime of all its
processes).

    python3 benches/e2e/run.py                 # every scenario, 3 rounds of 10 s, every peer
    python3 benches/e2e/run.py --scenarios h1 --rounds 1 --duration 5 --only direct,rafael,nginx
    python3 benches/e2e/run.py --write benches/results/e2e-$(date +%F).md

See benches/README.md.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import ssl
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
SCENARIOS = ["h1", "rate", "h2", "h2-upstream", "tls", "memory", "reload"]
# The peers each scenario runs (before --only filters them).
SCENARIO_PEERS = {
    "h1": PEERS,
    "rate": ["direct", "rafael", "rafael-policies", "nginx", "haproxy"],
    "h2": ["direct", "rafael", "nginx", "haproxy"],
    "h2-upstream": ["direct", "rafael", "nginx", "haproxy"],
    "tls": ["rafael", "nginx", "haproxy"],
    "memory": ["rafael", "nginx", "haproxy"],
    "reload": ["rafael"],
}
# What cannot be measured, and why, written into the results instead of a figure.
NOT_POSSIBLE = {
    ("h2-upstream", "nginx"): (
        "nginx cannot proxy to a plain HTTP/2 upstream: `proxy_http_version` stops at 1.1, and "
        "`grpc_pass` speaks h2c only to gRPC services (it forwards gRPC framing and trailers; "
        "our upstream is a plain HTTP server), so no nginx figure is given rather than a faked one"
    ),
}
NOFILE = 65536


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def apt_install(packages):
    print(f"installing {' '.join(packages)} from Debian's packages", file=sys.stderr)
    try:
        sh(["apt-get", "install", "-y", "-q"] + packages, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError:
        # A machine whose package lists were never fetched finds nothing: fetch them once.
        sh(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL)
        sh(["apt-get", "install", "-y", "-q"] + packages, stdout=subprocess.DEVNULL)


def ensure_tools(scenarios, peers):
    needed = {"wrk": "wrk", "taskset": "util-linux"}
    everyone = {p for s in scenarios for p in peers[s]}
    if "nginx" in everyone:
        needed["nginx"] = "nginx-light"
    if "haproxy" in everyone:
        needed["haproxy"] = "haproxy"
    if "h2" in scenarios:
        needed["h2load"] = "nghttp2-client"
    if "tls" in scenarios:
        needed["openssl"] = "openssl"
    missing = [pkg for tool, pkg in needed.items() if not shutil.which(tool)]
    if missing:
        apt_install(missing)


def build(scenarios, peers):
    sh(["cargo", "build", "--release", "-q", "-p", "rafael-control", "-p", "rafael-benches"], cwd=ROOT)
    if "h1" in scenarios and "pingora" in peers["h1"] and not os.path.exists(PINGORA_BIN):
        if not shutil.which("cmake"):
            apt_install(["cmake"])
        sh(["cargo", "build", "--release", "-q"], cwd=PINGORA_DIR)


def raise_nofile():
    """Every process the harness starts inherits this: wrk -c1000 and the proxies it drives need
    more than the usual 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(NOFILE, soft), max(NOFILE, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count):
    """`count` distinct free ports (each socket held until all are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_ready(url, limit=20.0):
    deadline = time.time() + limit
    context = ssl._create_unverified_context() if url.startswith("https") else None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def wait_listening(port, limit=20.0):
    """For listeners that speak only HTTP/2 (an HTTP/1.1 probe gets no answer there)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_ticks(pid):
    """utime + stime of `pid` and its children processes (nginx workers)."""
    return sum(cpu_split(pid))


def cpu_split(pid):
    """(utime, stime) of `pid` and its children processes, in clock ticks."""
    user = system = 0
    pids = [pid] + children(pid)
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except FileNotFoundError:
            pass
    return user, system


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def memory_kb(pid, field):
    """`field` (VmHWM, VmRSS) of `pid` and its children, summed: nginx's master and worker."""
    total = 0
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


class Peer:
    """A proxy under test (or `direct`: none), configured for one scenario.

    `listen` is what clients speak to it: "h1", "h2c" (HTTP/2 prior knowledge, no TLS) or "tls"
    (HTTP/1.1 over TLS, with `cert` = (cert.pem, key.pem, cert+key.pem)); `upstream_protocol` is
    what it speaks to the upstream: "h1" or "h2" (h2c)."""

    def __init__(self, name, upstream_port, workdir, listen="h1", upstream_protocol="h1", cert=None):
        self.name = name
        self.upstream = f"127.0.0.1:{upstream_port}"
        self.workdir = workdir
        self.port = upstream_port if name == "direct" else free_port()
        self.admin = free_port()
        self.listen = listen
        self.upstream_protocol = upstream_protocol
        self.cert = cert
        self.process = None

    @property
    def url(self):
        scheme = "https" if self.listen == "tls" else "http"
        return f"{scheme}://127.0.0.1:{self.port}/"

    def start(self):
        if self.name == "direct":
            return
        cmd = self.command()
        self.process = subprocess.Popen(
            ["taskset", "-c", PROXY_CPU] + cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.workdir, f"{self.name}.log"), "w"),
        )
        if self.listen == "h2c":
            wait_listening(self.port)
        else:
            wait_ready(self.url)

    def command(self):
        if self.name in ("rafael", "rafael-policies"):
            config = os.path.join(self.workdir, f"{self.name}.toml")
            policies = RAFAEL_POLICIES if self.name == "rafael-policies" else ""
            listener = ""
            if self.listen == "tls":
                listener = f'tls = {{ cert = "{self.cert[0]}", key = "{self.cert[1]}" }}\n'
            with open(config, "w") as f:
                f.write(RAFAEL_CONFIG.format(
                    port=self.port, admin=self.admin, upstream=self.upstream,
                    store=os.path.join(self.workdir, f"{self.name}-{self.port}.db"),
                    protocol="auto" if self.listen == "h2c" else "http1", listener=listener,
                    upstream_protocol="http2" if self.upstream_protocol == "h2" else "http1",
                ) + policies)
            return [os.path.join(TARGET, "rafael"), "run", "--config", config]
        if self.name == "nginx":
            config = os.path.join(self.workdir, "nginx.conf")
            listen, server = "", ""
            if self.listen == "h2c":
                listen = " http2"  # nginx 1.22: `http2` on `listen` (1.25.1 added `http2 on;`)
                # nginx ends an HTTP/2 connection after `keepalive_requests` (1,000) requests and
                # h2load does not reconnect: 32 connections would stop after 32,000 requests.
                # rafael and haproxy have no such limit.
                server = "keepalive_requests 1000000000;\n        "
            elif self.listen == "tls":
                listen = " ssl"
                # nginx 1.22 leaves TLS 1.3 off unless told (1.23.4 turned it on by default).
                server = (f"ssl_certificate {self.cert[0]};\n        ssl_certificate_key {self.cert[1]};\n"
                          "        ssl_protocols TLSv1.2 TLSv1.3;\n        ")
            if self.upstream_protocol != "h1":
                raise ValueError("nginx has no plain HTTP/2 upstream")
            with open(config, "w") as f:
                f.write(NGINX_CONFIG.format(port=self.port, upstream=self.upstream, dir=self.workdir,
                                            listen=listen, server=server))
            return ["nginx", "-c", config]
        if self.name == "haproxy":
            config = os.path.join(self.workdir, "haproxy.cfg")
            bind = {"h1": "", "h2c": " proto h2", "tls": f" ssl crt {self.cert[2]}" if self.cert else ""}
            with open(config, "w") as f:
                f.write(HAPROXY_CONFIG.format(port=self.port, upstream=self.upstream, bind=bind[self.listen],
                                              server=" proto h2" if self.upstream_protocol == "h2" else ""))
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

    def ticks(self):
        return cpu_ticks(self.process.pid) if self.process else None

    def split(self):
        return cpu_split(self.process.pid) if self.process else (0, 0)


def wrk(url, duration, connections, extra=(), popen=False):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
           *extra, url]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return parse_wrk(out)


def parse_wrk(out):
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


def measure(peer, warmup, duration, load, started=None):
    """A fresh `peer` under `load(url, seconds)` (a client run whose result counts `requests`):
    warm-up, then the measured window with the proxy's CPU per request (None for `direct`).
    `started(peer)` runs once the peer is up, before the warm-up."""
    peer.start()
    try:
        if started:
            started(peer)
        load(peer.url, warmup)
        before = peer.split()
        result = load(peer.url, duration)
        after = peer.split()

        def per_request(ticks):
            return ticks / CLK_TCK / max(result["requests"], 1) * 1e6 if peer.process else None

        result["cpu_us_per_req"] = per_request(sum(after) - sum(before))
        # User space is the proxy's own code; system time is the kernel's work on its sockets.
        result["user_us_per_req"] = per_request(after[0] - before[0])
        result["sys_us_per_req"] = per_request(after[1] - before[1])
        return result
    finally:
        peer.stop()


def wrk_load(connections, extra=()):
    """`measure`'s load: wrk with `connections` connections."""
    return lambda url, seconds: wrk(url, seconds, connections, extra)


def bench_load(url, rate, duration, connections):
    run = subprocess.run(
        ["taskset", "-c", LOAD_CPU, os.path.join(TARGET, "bench-load"), url, str(rate), str(duration),
         str(connections)],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        # bench-load gives up when the proxy falls more than 65,536 requests behind: the rate is
        # beyond what it sustains here, and its latency would only grow with the run's length.
        log(f"bench-load at {rate}/s: {run.stderr.strip()}")
        return {"requests": 0, "errors": 0, "p50": None, "p99": None, "p999": None, "offered": rate * duration,
                "behind": True}
    out = run.stdout
    fields = dict(pair.split("=") for pair in out.split())
    return {
        "requests": int(fields["requests"]),
        "errors": int(fields["errors"]),
        "p50": int(fields["p50_us"]) / 1000,
        "p99": int(fields["p99_us"]) / 1000,
        "p999": int(fields["p999_us"]) / 1000,
        "offered": rate * duration,
        "behind": False,
    }


def h2load(url, duration, connections, streams):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-D{duration}", url],
        check=True, capture_output=True, text=True,
    ).stdout
    finished = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    request_time = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", out)
    if not finished or not counts:
        raise RuntimeError(f"h2load output not understood:\n{out}")
    return {
        "rps": float(finished.group(1)),
        "requests": int(counts.group(2)),
        "ok": int(codes.group(1)) if codes else 0,
        "failed": int(counts.group(4)) + int(counts.group(5)) + int(counts.group(6)),
        "mean": to_ms(request_time.group(3)) if request_time else None,
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def log(text):
    print(text, file=sys.stderr, flush=True)


RAFAEL_CONFIG = """
[admin]
bind = "127.0.0.1:{admin}"
[store]
path = "{store}"
[runtime]
watch_config = false
[[listeners]]
name = "in"
bind = "127.0.0.1:{port}"
protocol = "{protocol}"
{listener}[[upstreams]]
name = "app"
endpoints = ["{upstream}"]
protocol = "{upstream_protocol}"
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
        listen 127.0.0.1:{port}{listen};
        {server}location / {{
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
    bind 127.0.0.1:{port}{bind}
    default_backend app
backend app
    server s1 {upstream}{server}
"""


class Context:
    def __init__(self, args, peers, workdir, upstream_h1, upstream_h2c):
        self.args = args
        self.peers = peers
        self.workdir = workdir
        self.upstream_h1 = upstream_h1
        self.upstream_h2c = upstream_h2c
        self.raw = {}


def interleave(ctx, scenario, cases, run_one, describe):
    """Runs every case once per round, rounds interleaved; results by case."""
    results = {case: [] for case in cases}
    for round_ in range(ctx.args.rounds):
        for case in cases:
            result = run_one(case)
            results[case].append(result)
            log(f"{scenario} round {round_ + 1} {describe(case, result)}")
    ctx.raw[scenario] = {" ".join(map(str, c)) if isinstance(c, tuple) else c: r for c, r in results.items()}
    return results


def line_wrk(name, r):
    return (f"{name:24} {r['rps']:>10.0f} req/s  p50 {fmt(r['p50'], '.3f')} ms  p99 {fmt(r['p99'], '.3f')} ms"
            f"  cpu {fmt(r['cpu_us_per_req'], '.2f')} us/req  non-2xx {r['errors']} {r['socket_errors']}")


def not_possible(scenario, peers):
    return [f"- `{p}`: {NOT_POSSIBLE[(scenario, p)]}." for p in peers if (scenario, p) in NOT_POSSIBLE]


# === h1: the original scenario ===

def scenario_h1(ctx):
    args, peers = ctx.args, ctx.peers["h1"]
    results = interleave(
        ctx, "h1", peers,
        lambda name: measure(Peer(name, ctx.upstream_h1, ctx.workdir), args.warmup, args.duration,
                             wrk_load(args.connections)),
        line_wrk,
    )
    summary = {
        name: {key: median([r[key] for r in runs])
               for key in ("rps", "p50", "p99", "cpu_us_per_req", "user_us_per_req", "sys_us_per_req")}
        for name, runs in results.items()
    }
    direct = summary.get("direct", {}).get("rps")
    nginx = summary.get("nginx", {})
    rafael = summary.get("rafael", {}).get("rps")
    lines = [
        f"| peer | req/s | p50 ms | p99 ms | CPU us/req | user / system us/req | vs direct | vs rafael req/s | "
        f"vs nginx req/s | vs nginx CPU/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
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
            f"{fmt(s['cpu_us_per_req'], '.2f')} | {fmt(s['user_us_per_req'], '.1f')} / "
            f"{fmt(s['sys_us_per_req'], '.1f')} | {fmt(vs_direct, '.2f')} | {fmt(vs_rafael, '.2f')} | "
            f"{fmt(vs_nginx, '.2f')} | {fmt(cpu_vs, '.2f')} |"
        )
    intro = (f"wrk -t1 -c{args.connections}, closed loop, 13-byte responses, upstream keep-alive; "
             f"medians of {args.rounds} interleaved rounds.")
    return "HTTP/1.1, closed loop (`h1`)", intro, lines, []


# === rate: constant rate, coordinated omission corrected ===

def scenario_rate(ctx):
    args, peers = ctx.args, ctx.peers["rate"]
    rates = [int(r) for r in args.rates.split(",")]
    cases = [(rate, name) for rate in rates for name in peers]

    def run_one(case):
        rate, name = case
        result = measure(Peer(name, ctx.upstream_h1, ctx.workdir), args.warmup, args.duration,
                         lambda url, seconds: bench_load(url, rate, seconds, args.connections))
        if result["behind"]:
            result["cpu_us_per_req"] = None
        return result

    results = interleave(ctx, "rate", cases, run_one, lambda c, r: (
        f"{c[0]:>6}/s {c[1]:16} answered {r['requests']}/{r['offered']}  p50 {fmt(r['p50'], '.3f')} ms  "
        f"p99 {fmt(r['p99'], '.3f')} ms  p99.9 {fmt(r['p999'], '.3f')} ms  cpu {fmt(r['cpu_us_per_req'], '.2f')} "
        f"us/req  errors {r['errors']}" + ("  FELL BEHIND (more than 65,536 requests late)" if r["behind"] else "")))
    summary = {c: {k: median([r[k] for r in runs]) for k in ("p50", "p99", "p999", "cpu_us_per_req")}
               for c, runs in results.items()}
    answered = {c: min(r["requests"] / r["offered"] for r in runs) for c, runs in results.items()}
    behind = {c: sum(r["behind"] for r in runs) for c, runs in results.items()}
    errors = {c: sum(r["errors"] for r in runs) for c, runs in results.items()}
    lines = [
        "| rate req/s | peer | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU us/req | answered | errors | "
        "rounds it fell behind |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, name in cases:
        s = summary[(rate, name)]
        d = summary.get((rate, "direct"))
        added50 = s["p50"] - d["p50"] if d and d["p50"] is not None and s["p50"] is not None and name != "direct" else None
        added99 = s["p99"] - d["p99"] if d and d["p99"] is not None and s["p99"] is not None and name != "direct" else None
        lines.append(
            f"| {rate} | {name} | {fmt(s['p50'], '.3f')} | {fmt(s['p99'], '.3f')} | {fmt(added50, '.3f')} | "
            f"{fmt(added99, '.3f')} | {fmt(s['cpu_us_per_req'], '.2f')} | {answered[(rate, name)]:.3f} | "
            f"{errors[(rate, name)]} | {behind[(rate, name)]} of {len(results[(rate, name)])} |"
        )
    intro = (f"`bench-load URL RATE {args.duration} {args.connections}` (benches/src/bin/bench-load.rs): an open "
             f"loop at a constant rate over {args.connections} keep-alive connections; a request's latency runs "
             "from when it was due, so a proxy that falls behind is charged for the wait (coordinated omission "
             "corrected). Added = the peer's median minus direct's at the same rate, medians over the rounds it "
             "kept up (bench-load gives up on a proxy more than 65,536 requests late, counted in the last column: "
             "the rate is beyond what it sustains there). `answered` is the lowest "
             "share of the offered requests answered 2xx in any round. CPU per request is higher than in `h1`: "
             "at a constant rate the proxy wakes for fewer requests at a time.")
    return "Constant rate, coordinated-omission corrected (`rate`)", intro, lines, []


# === h2: HTTP/2 downstream ===

def scenario_h2(ctx):
    args, peers = ctx.args, ctx.peers["h2"]

    def run_one(name):
        # direct: h2load straight at the upstream, which then serves h2c itself.
        peer = Peer(name, ctx.upstream_h2c if name == "direct" else ctx.upstream_h1, ctx.workdir, listen="h2c")
        return measure(peer, args.warmup, args.duration,
                       lambda url, seconds: h2load(url, seconds, args.connections, args.h2_streams))

    results = interleave(ctx, "h2", peers, run_one, lambda name, r: (
        f"{name:16} {r['rps']:>10.0f} req/s  mean {fmt(r['mean'], '.3f')} ms  cpu {fmt(r['cpu_us_per_req'], '.2f')}"
        f" us/req  2xx {r['ok']}/{r['requests']}  failed {r['failed']}"))
    summary = {n: {k: median([r[k] for r in runs]) for k in ("rps", "mean", "cpu_us_per_req")}
               for n, runs in results.items()}
    bad = {n: sum(r["failed"] + max(0, r["requests"] - r["ok"]) for r in runs) for n, runs in results.items()}
    nginx = summary.get("nginx", {})
    direct = summary.get("direct", {})
    lines = ["| peer | req/s | mean latency ms | CPU us/req | vs direct req/s | vs nginx req/s | vs nginx CPU/req | "
             "failed or non-2xx |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in peers:
        s = summary[name]
        lines.append(
            f"| {name} | {s['rps']:.0f} | {fmt(s['mean'], '.3f')} | {fmt(s['cpu_us_per_req'], '.2f')} | "
            f"{fmt(ratio(s['rps'], direct.get('rps')), '.2f')} | {fmt(ratio(s['rps'], nginx.get('rps')), '.2f')} | "
            f"{fmt(ratio(s['cpu_us_per_req'], nginx.get('cpu_us_per_req')), '.2f')} | {bad[name]} |"
        )
    intro = (f"`h2load -t1 -c{args.connections} -m{args.h2_streams} -D{args.duration}`, cleartext HTTP/2 with "
             "prior knowledge; the proxies speak HTTP/1.1 with keep-alive to the upstream. rafael: listener "
             "`protocol = \"auto\"`; nginx 1.22: `listen ... http2` (cleartext h2 prior knowledge) and "
             "`keepalive_requests 1000000000` (its default of 1,000 requests per connection would end h2load's "
             "connections, which it does not reopen); haproxy: "
             "`bind ... proto h2`. `direct` is h2load at the upstream serving h2c itself. h2load gives no "
             "percentiles, only the mean time per request.")
    return "HTTP/2 downstream (`h2`)", intro, lines, []


# === h2-upstream: HTTP/1.1 downstream, h2c upstream ===

def scenario_h2_upstream(ctx):
    args, peers = ctx.args, ctx.peers["h2-upstream"]
    cases = []
    for name in peers:
        if ("h2-upstream", name) in NOT_POSSIBLE:
            continue
        cases.append((name, "h2"))
        if name != "direct":
            cases.append((name, "h1"))  # the same proxy to the same upstream over HTTP/1.1

    def run_one(case):
        name, protocol = case
        peer = Peer(name, ctx.upstream_h2c, ctx.workdir, upstream_protocol=protocol)
        return measure(peer, args.warmup, args.duration, wrk_load(args.connections))

    results = interleave(ctx, "h2-upstream", cases, run_one,
                         lambda c, r: line_wrk(f"{c[0]} ({c[1]} upstream)", r))
    summary = {c: {k: median([r[k] for r in runs]) for k in ("rps", "p50", "p99", "cpu_us_per_req")}
               for c, runs in results.items()}
    errors = {c: sum(r["errors"] for r in runs) for c, runs in results.items()}
    direct = summary.get(("direct", "h2"), {})
    lines = ["| peer | upstream | req/s | p50 ms | p99 ms | CPU us/req | vs direct req/s | CPU vs same peer over h1 | "
             "non-2xx |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        name, protocol = case
        s = summary[case]
        h1 = summary.get((name, "h1"), {})
        upstream = "-" if name == "direct" else ("h2c" if protocol == "h2" else "HTTP/1.1")
        lines.append(
            f"| {name} | {upstream} | {s['rps']:.0f} | {fmt(s['p50'], '.3f')} | {fmt(s['p99'], '.3f')} | "
            f"{fmt(s['cpu_us_per_req'], '.2f')} | {fmt(ratio(s['rps'], direct.get('rps')), '.2f')} | "
            f"{fmt(ratio(s['cpu_us_per_req'], h1.get('cpu_us_per_req')) if protocol == 'h2' else None, '.2f')} | "
            f"{errors[case]} |")
    for name in peers:
        if ("h2-upstream", name) in NOT_POSSIBLE:
            lines.append(f"| {name} | h2c | n/a | n/a | n/a | n/a | n/a | n/a | n/a |")
    intro = (f"wrk -t1 -c{args.connections} over HTTP/1.1 to the proxy; the proxy to the upstream over cleartext "
             "HTTP/2 (prior knowledge): rafael with the upstream's `protocol = \"http2\"`, haproxy with "
             "`server ... proto h2` (`http-reuse always`). Each proxy also runs to the same upstream process "
             "over HTTP/1.1, for the cost of the protocol alone. `direct` is wrk at that upstream (HTTP/1.1).")
    return "HTTP/2 (h2c) upstream (`h2-upstream`)", intro, lines, not_possible("h2-upstream", peers)


# === tls: termination ===

def make_certs(workdir):
    certs = {}
    for kind, newkey in (("ecdsa-p256", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                         ("rsa-2048", ["-newkey", "rsa:2048"])):
        cert, key = os.path.join(workdir, f"{kind}.crt"), os.path.join(workdir, f"{kind}.key")
        sh(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", key, "-out", cert, "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        combined = os.path.join(workdir, f"{kind}.pem")  # haproxy wants certificate and key in one file
        with open(combined, "w") as out:
            for part in (cert, key):
                with open(part) as f:
                    out.write(f.read())
        certs[kind] = (cert, key, combined)
    return certs


def negotiated(port):
    """What `openssl s_client` negotiates with the listener: protocol, cipher suite, key exchange."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"],
                         input="", capture_output=True, text=True, timeout=10).stderr
    found = dict(re.findall(r"^(Protocol version|Ciphersuite|Server Temp Key|Peer signature type): (.*)$", out, re.M))
    return ", ".join(found.get(k, "?") for k in ("Protocol version", "Ciphersuite", "Server Temp Key"))


def scenario_tls(ctx):
    args, peers = ctx.args, ctx.peers["tls"]
    certs = make_certs(ctx.workdir)
    modes = {"keep-alive": (), "handshake": ("-H", "Connection: close")}
    cases = [(cert, mode, name) for cert in certs for mode in modes for name in peers]
    sessions = {}

    def run_one(case):
        cert, mode, name = case
        peer = Peer(name, ctx.upstream_h1, ctx.workdir, listen="tls", cert=certs[cert])

        def started(peer):
            if (cert, name) not in sessions:
                sessions[(cert, name)] = negotiated(peer.port)

        return measure(peer, args.warmup, args.duration, wrk_load(args.connections, modes[mode]), started)

    results = interleave(ctx, "tls", cases, run_one, lambda c, r: line_wrk(f"{c[0]} {c[1]} {c[2]}", r))
    summary = {c: {k: median([r[k] for r in runs]) for k in ("rps", "p50", "p99", "cpu_us_per_req")}
               for c, runs in results.items()}
    errors = {c: sum(r["errors"] for r in runs) for c, runs in results.items()}
    socket_errors = {c: "; ".join(sorted({r["socket_errors"] for r in runs if r["socket_errors"]}))
                     for c, runs in results.items()}
    lines = ["| certificate | connections | peer | req/s | p50 ms | p99 ms | CPU us/req | vs nginx CPU/req | "
             "errors |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for cert, mode, name in cases:
        s = summary[(cert, mode, name)]
        nginx = summary.get((cert, mode, "nginx"), {})
        label = "keep-alive" if mode == "keep-alive" else "new per request (req/s = handshakes/s)"
        errs = str(errors[(cert, mode, name)]) + (f", {socket_errors[(cert, mode, name)]}"
                                                  if socket_errors[(cert, mode, name)] else "")
        lines.append(
            f"| {cert} | {label} | {name} | {s['rps']:.0f} | {fmt(s['p50'], '.3f')} | {fmt(s['p99'], '.3f')} | "
            f"{fmt(s['cpu_us_per_req'], '.2f')} | {fmt(ratio(s['cpu_us_per_req'], nginx.get('cpu_us_per_req')), '.2f')}"
            f" | {errs} |")
    notes = ["Negotiated with `openssl s_client` (protocol, cipher suite, key exchange):"]
    notes += [f"- {name}, {cert}: {sessions.get((cert, name), '?')}" for cert in certs for name in peers]
    intro = (f"TLS termination, HTTP/1.1 over TLS, certificates made at run time by openssl (self-signed, "
             f"ECDSA P-256 and RSA 2048). wrk -t1 -c{args.connections} over https: keep-alive, and with "
             "`Connection: close` so every request is a new connection and a full handshake (wrk resumes no "
             "session), where req/s is handshakes per second and CPU per request is CPU per handshake. The "
             "proxies speak plain HTTP/1.1 with keep-alive to the upstream. rafael: listener `tls = { cert, key }`; "
             "nginx: `listen ... ssl` with `ssl_protocols TLSv1.2 TLSv1.3` (1.22 leaves 1.3 off by default); "
             "haproxy: `bind ... ssl crt`.")
    return "TLS termination (`tls`)", intro, lines, notes


# === memory ===

def scrape(admin_port):
    """rafael's /metrics text, or None."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=60) as response:
            return response.read().decode()
    except Exception:
        return None


def metric(admin_port, name, text=None):
    text = text if text is not None else scrape(admin_port)
    if text is None:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name):
            total = (total or 0) + float(line.rsplit(" ", 1)[1])
    return total


def scenario_memory(ctx):
    args, peers = ctx.args, ctx.peers["memory"]

    def run_one(name):
        peer = Peer(name, ctx.upstream_h1, ctx.workdir)
        peer.start()
        try:
            pid = peer.process.pid
            idle = memory_kb(pid, "VmRSS")
            load = wrk(peer.url, args.duration, args.connections)
            peak32 = memory_kb(pid, "VmHWM")
            burst = wrk(peer.url, args.burst_seconds, args.burst_connections, popen=True)
            time.sleep(args.burst_seconds / 2)
            admitted = metric(peer.admin, "rafael_connections_active") if name.startswith("rafael") else None
            out, err = burst.communicate()
            if burst.returncode != 0:
                raise RuntimeError(f"wrk -c{args.burst_connections} failed: {err}")
            burst_result = parse_wrk(out)
            time.sleep(2)  # the burst's connections closed; what stays resident
            codes = None
            if name.startswith("rafael"):
                text = scrape(peer.admin) or ""
                codes = {m.group(1): float(m.group(2)) for m in
                         re.finditer(r'^rafael_requests_total\{[^}]*code="(\d+)"[^}]*\} (\S+)$', text, re.M)}
            return {
                "codes": codes,
                "idle_kb": idle, "peak32_kb": peak32, "peak_burst_kb": memory_kb(pid, "VmHWM"),
                "after_burst_kb": memory_kb(pid, "VmRSS"), "rps32": load["rps"], "burst_rps": burst_result["rps"],
                "burst_errors": burst_result["errors"], "burst_socket_errors": burst_result["socket_errors"],
                "admitted": admitted,
            }
        finally:
            peer.stop()

    results = interleave(ctx, "memory", peers, run_one, lambda name, r: (
        f"{name:10} idle {r['idle_kb'] / 1024:.1f} MB  peak@{args.connections} {r['peak32_kb'] / 1024:.1f} MB  "
        f"peak@{args.burst_connections} {r['peak_burst_kb'] / 1024:.1f} MB  after burst {r['after_burst_kb'] / 1024:.1f}"
        f" MB  burst {r['burst_rps']:.0f} req/s non-2xx {r['burst_errors']} {r['burst_socket_errors']}"
        f"  connections seen {fmt(r['admitted'], '.0f')}  codes {r['codes'] or '-'}"))
    keys = ("idle_kb", "peak32_kb", "peak_burst_kb", "after_burst_kb", "burst_rps", "admitted")
    summary = {n: {k: median([r[k] for r in runs]) for k in keys} for n, runs in results.items()}
    mb = lambda kb: None if kb is None else kb / 1024
    lines = [f"| peer | RSS idle MB | peak RSS at {args.connections} conns MB | peak RSS in the "
             f"{args.burst_connections}-conn burst MB | RSS after the burst MB | burst req/s | burst errors |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in peers:
        s = summary[name]
        errs = "; ".join(sorted({f"{r['burst_errors']} non-2xx {r['burst_socket_errors']}".strip()
                                 for r in results[name]}))
        lines.append(f"| {name} | {mb(s['idle_kb']):.1f} | {mb(s['peak32_kb']):.1f} | {mb(s['peak_burst_kb']):.1f} | "
                     f"{mb(s['after_burst_kb']):.1f} | {s['burst_rps']:.0f} | {errs} |")
    notes = []
    rafael, nginx = summary.get("rafael"), summary.get("nginx")
    if rafael:
        verdict = "met" if rafael["peak32_kb"] <= 16 * 1024 else "NOT met"
        notes.append(f"- Target rafael peak RSS at {args.connections} connections <= 16 MB: "
                     f"{mb(rafael['peak32_kb']):.1f} MB, {verdict}.")
        for r in results["rafael"]:
            odd = {code: n for code, n in (r["codes"] or {}).items() if code != "200"}
            if odd:
                notes.append(f"- rafael answered, over the whole run of one round (both phases): "
                             f"{', '.join(f'{n:.0f} x {code}' for code, n in sorted(odd.items()))}.")
        if rafael["admitted"] is not None:
            notes.append(f"- rafael's `rafael_connections_active` halfway through the burst: {rafael['admitted']:.0f} "
                         f"(of {args.burst_connections}; the listener's `max_connections` defaults to 10,000).")
    if rafael and nginx:
        limit = 1.5 * nginx["after_burst_kb"]
        verdict = "met" if rafael["after_burst_kb"] <= limit else "NOT met"
        notes.append(f"- Target rafael RSS after the burst <= 1.5x nginx's (master + worker, {mb(nginx['after_burst_kb']):.1f}"
                     f" MB, so <= {mb(limit):.1f} MB): {mb(rafael['after_burst_kb']):.1f} MB, {verdict}.")
    intro = (f"Fresh processes; wrk -t1 -c{args.connections} for {args.duration} s, then `VmHWM` (peak RSS); then "
             f"wrk -t1 -c{args.burst_connections} for {args.burst_seconds} s, `VmHWM` again, and `VmRSS` 2 s after "
             "the burst ended. nginx's figures are master + worker summed (their shared pages count twice, as "
             "RSS does); haproxy and rafael are one process. The harness raises `RLIMIT_NOFILE` to 65,536 (or the "
             "hard limit, if lower) for wrk and the proxies.")
    return "Memory (`memory`)", intro, lines, notes


# === reload ===

RELOAD_HEAD = """
[admin]
bind = "127.0.0.1:{admin}"
[store]
path = "{store}"
[runtime]
watch_config = false
[[listeners]]
name = "in"
bind = "127.0.0.1:{port}"
protocol = "http1"
[[upstreams]]
name = "app"
endpoints = [{endpoints}]
"""


def reload_config(port, admin, store, endpoints, routes, policies, marker):
    parts = [RELOAD_HEAD.format(port=port, admin=admin, store=store,
                                endpoints=", ".join(f'"{e}"' for e in endpoints))]
    for i in range(routes):
        parts.append(f'[[routes]]\nname = "r{i}"\nlistener = "in"\nupstream = "app"\n'
                     f'match = {{ path_prefix = "/r{i}/" }}\n')
        if policies:
            parts.append(policies + "\n")
    # The marker: the one route this version has and the previous did not.
    parts.append(f'[[routes]]\nname = "marker-{marker}"\nlistener = "in"\nupstream = "app"\n'
                 f'match = {{ path_prefix = "/marker-{marker}" }}\n')
    return "".join(parts)


class Poller:
    """Keep-alive HTTP/1.1 GETs from the harness (pinned to the load CPU)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def status(self, path):
        for _ in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self.conn = None
        return None


def scenario_reload(ctx):
    args = ctx.args
    if "rafael" not in ctx.peers["reload"]:
        return None
    sizes = [int(n) for n in args.reload_routes.split(",")]
    genomes = {"none": "", "every policy": RAFAEL_POLICIES}
    endpoints = [f"127.0.0.1:{p}" for p in free_ports(args.reload_endpoints)]
    upstream = subprocess.Popen(["taskset", "-c", LOAD_CPU, os.path.join(TARGET, "bench-upstream"), *endpoints],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for endpoint in endpoints:
        wait_ready(f"http://{endpoint}/")
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    cases = [(n, g) for g in genomes for n in sizes]

    def run_one(case):
        routes, genome = case
        port, admin = free_port(), free_port()
        store = os.path.join(ctx.workdir, f"reload-{port}.db")
        path = os.path.join(ctx.workdir, f"reload-{routes}.toml")
        with open(path, "w") as f:
            f.write(reload_config(port, admin, store, endpoints, routes, genomes[genome], 0))
        size = os.path.getsize(path)
        started = time.perf_counter()
        process = subprocess.Popen(["taskset", "-c", PROXY_CPU, os.path.join(TARGET, "rafael"), "run", "--config",
                                    path], stdout=subprocess.DEVNULL,
                                   stderr=open(os.path.join(ctx.workdir, f"reload-{routes}.log"), "w"))
        try:
            poller = Poller(port)
            deadline = time.time() + 120
            while poller.status("/marker-0") != 200:
                if time.time() > deadline or process.poll() is not None:
                    raise RuntimeError(f"rafael with {routes} routes did not start; see {ctx.workdir}")
                time.sleep(0.005)
            startup = time.perf_counter() - started
            poller.status(f"/r{routes - 1}/")  # a route in both versions answers 200
            times, stalls = [], []
            for k in range(1, args.reloads + 1):
                with open(path + ".new", "w") as f:
                    f.write(reload_config(port, admin, store, endpoints, routes, genomes[genome], k))
                os.replace(path + ".new", path)
                sent = time.perf_counter()
                os.kill(process.pid, signal.SIGHUP)
                longest = 0.0
                while True:
                    asked = time.perf_counter()
                    code = poller.status(f"/marker-{k}")
                    now = time.perf_counter()
                    longest = max(longest, now - asked)
                    if code == 200:
                        break
                    if now - sent > 60:
                        raise RuntimeError(f"reload {k} of {routes} routes never served")
                times.append(now - sent)
                stalls.append(longest)
                time.sleep(0.2)
            asked = time.perf_counter()
            text = scrape(admin)
            scrape_s = time.perf_counter() - asked
            reloads = metric(admin, 'rafael_config_reloads_total{result="success"}', text)
            failed = metric(admin, 'rafael_config_reloads_total{result="error"}', text)
            rss = memory_kb(process.pid, "VmRSS")
            return {"startup": startup, "reload": median(times), "reloads": times, "stall": max(stalls),
                    "counted": reloads, "failed": failed, "rss_kb": rss, "bytes": size,
                    "scrape": scrape_s, "scrape_kb": len(text or "") / 1024}
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    try:
        results = interleave(ctx, "reload", cases, run_one, lambda c, r: (
            f"{c[0]:>5} routes, policies {c[1]:13} start {r['startup'] * 1000:.0f} ms  reload "
            f"{' '.join(f'{t * 1000:.1f}' for t in r['reloads'])} ms  longest request during a reload "
            f"{r['stall'] * 1000:.1f} ms  counted {fmt(r['counted'], '.0f')} ok {fmt(r['failed'], '.0f')} error  "
            f"RSS {r['rss_kb'] / 1024:.1f} MB  /metrics {r['scrape_kb']:.0f} KB in {r['scrape'] * 1000:.0f} ms"))
    finally:
        os.sched_setaffinity(0, affinity)
        upstream.terminate()
        upstream.wait()
    summary = {c: {k: median([r[k] for r in runs]) for k in ("startup", "reload", "stall", "rss_kb", "bytes", "scrape", "scrape_kb")}
               for c, runs in results.items()}
    counted = {c: (sum(r["counted"] or 0 for r in runs), sum(r["failed"] or 0 for r in runs))
               for c, runs in results.items()}
    lines = ["| routes | genome on every route | config KB | start to serving ms | reload ms (SIGHUP to serving) | "
             "reload us per route | growth vs previous size | longest request during a reload ms | RSS MB | "
             "/metrics KB | /metrics scrape ms | reloads counted ok / error |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for routes, genome in cases:
        s = summary[(routes, genome)]
        index = sizes.index(routes)
        growth = None
        if index > 0:
            prev = summary[(sizes[index - 1], genome)]
            growth = f"{s['reload'] / prev['reload']:.1f}x for {routes / sizes[index - 1]:.0f}x routes"
        lines.append(
            f"| {routes} | {genome} | {s['bytes'] / 1024:.0f} | {s['startup'] * 1000:.0f} | {s['reload'] * 1000:.1f} | "
            f"{s['reload'] * 1e6 / routes:.0f} | {growth or '-'} | {s['stall'] * 1000:.1f} | {s['rss_kb'] / 1024:.1f} | "
            f"{s['scrape_kb']:.0f} | {s['scrape'] * 1000:.0f} | "
            f"{counted[(routes, genome)][0]:.0f} / {counted[(routes, genome)][1]:.0f} |")
    intro = (f"rafael alone (no peer reloads the same way). One upstream with {args.reload_endpoints} endpoints "
             f"(one bench-upstream process listening on {args.reload_endpoints} ports), N routes "
             "(`path_prefix = \"/rI/\"`) to it, and a marker route that only the new version has. Reload = "
             "SIGHUP (rafael reloads on SIGHUP, and on file changes when `watch_config`; it has no reload-duration "
             f"metric) to the first 200 from the new marker route, polled over one keep-alive connection from "
             f"the load CPU; median of {args.reloads} reloads per process, then of rounds. The longest single "
             "poll during a reload shows whether the reload holds up the data plane (rafael pinned to one CPU "
             "runs one thread). Genome `every policy` is benches/e2e/rafael-policies.toml on every route (a "
             "breaker per route and endpoint).")
    return "Config reload (`reload`)", intro, lines, []


SCENARIO_FUNCS = {
    "h1": scenario_h1, "rate": scenario_rate, "h2": scenario_h2, "h2-upstream": scenario_h2_upstream,
    "tls": scenario_tls, "memory": scenario_memory, "reload": scenario_reload,
}


def command_line(args):
    parts = ["python3 benches/e2e/run.py", f"--scenarios {args.scenarios}", f"--rounds {args.rounds}",
             f"--duration {args.duration}", f"--warmup {args.warmup}", f"--connections {args.connections}",
             f"--only {args.only}"]
    scenarios = args.scenarios.split(",")
    if "rate" in scenarios:
        parts.append(f"--rates {args.rates}")
    if "h2" in scenarios:
        parts.append(f"--h2-streams {args.h2_streams}")
    if "memory" in scenarios:
        parts.append(f"--burst-connections {args.burst_connections} --burst-seconds {args.burst_seconds}")
    if "reload" in scenarios:
        parts.append(f"--reload-routes {args.reload_routes} --reload-endpoints {args.reload_endpoints} "
                     f"--reloads {args.reloads}")
    if args.write:
        parts.append(f"--write {os.path.relpath(os.path.abspath(args.write), ROOT)}")
    return " ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated peers (each scenario runs "
                        "those of its peers listed here)")
    parser.add_argument("--rates", default="5000,20000", help="rate scenario: requests per second")
    parser.add_argument("--h2-streams", type=int, default=10, help="h2 scenario: streams per connection")
    parser.add_argument("--burst-connections", type=int, default=1000)
    parser.add_argument("--burst-seconds", type=int, default=5)
    parser.add_argument("--reload-routes", default="10,100,1000")
    parser.add_argument("--reload-endpoints", type=int, default=100)
    parser.add_argument("--reloads", type=int, default=5, help="reloads per rafael process")
    parser.add_argument("--write", help="also write the markdown results to this file")
    args = parser.parse_args()
    only = [p for p in args.only.split(",") if p]
    for p in only:
        if p not in PEERS:
            parser.error(f"unknown peer {p}; known: {', '.join(PEERS)}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            parser.error(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    scenarios = [s for s in SCENARIOS if s in scenarios]
    if os.cpu_count() < 2:
        parser.error("needs 2 CPUs: load on cpu 0, proxy on cpu 1")
    peers = {s: [p for p in SCENARIO_PEERS[s] if p in only] for s in scenarios}

    raise_nofile()
    ensure_tools(scenarios, peers)
    build(scenarios, peers)
    workdir = tempfile.mkdtemp(prefix="rafael-e2e-")
    # Two upstream processes on the load CPU: HTTP/1.1 only (hyper's HTTP/1.1 server, as the h1
    # figures always had), and HTTP/1.1 + h2c on one port for the HTTP/2 scenarios.
    upstream_h1, upstream_h2c = free_port(), free_port()
    upstreams = [
        subprocess.Popen(["taskset", "-c", LOAD_CPU, os.path.join(TARGET, "bench-upstream"), *flag, f"127.0.0.1:{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port, flag in ((upstream_h1, []), (upstream_h2c, ["--h2c"]))
    ]
    ctx = Context(args, peers, workdir, upstream_h1, upstream_h2c)
    sections = []
    try:
        wait_ready(f"http://127.0.0.1:{upstream_h1}/")
        wait_ready(f"http://127.0.0.1:{upstream_h2c}/")
        for scenario in scenarios:
            if not peers[scenario]:
                continue
            section = SCENARIO_FUNCS[scenario](ctx)
            if section is None:
                continue
            title, intro, lines, notes = section
            print(f"\n## {title}\n\n" + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else ""), flush=True)
            sections.append(section)
    finally:
        for upstream in upstreams:
            upstream.terminate()
            upstream.wait()

    if args.write:
        header = (
            f"# End-to-end results, {datetime.date.today().isoformat()}\n\n"
            f"Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}.\n"
            f"Command: `{command_line(args)}`\n"
            f"Build: rafael {git_describe()}.\n"
            f"Load generator and upstream on cpu 0, proxy on cpu 1; 13-byte responses; fresh processes for "
            f"every measurement; {args.duration} s measured after {args.warmup} s of warm-up; medians of "
            f"{args.rounds} interleaved rounds. CPU per request: the proxy's utime + stime (all its threads "
            f"and processes) over the measured window, from /proc/PID/stat.\n"
        )
        body = "".join(
            f"\n## {title}\n\n{intro}\n\n" + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
            for title, intro, lines, notes in sections
        )
        with open(args.write, "w") as f:
            f.write(header + body)
        raw_dir = os.path.join(os.path.dirname(os.path.abspath(args.write)), "raw")
        os.makedirs(raw_dir, exist_ok=True)
        with open(os.path.join(raw_dir, os.path.basename(args.write).rsplit(".", 1)[0] + ".json"), "w") as f:
            json.dump(ctx.raw, f, indent=1)


def git_describe():
    try:
        return subprocess.run(["git", "-C", ROOT, "log", "-1", "--format=%h (%cs)"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
