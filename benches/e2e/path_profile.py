#!/usr/bin/env python3
"""Where a proxy's added latency goes at a constant rate, and what a TLS handshake costs the
machine: counts per request that a profile of time alone does not show.

For each peer, at a constant rate (`bench-load`, as run.py's `rate` scenario) or with a full
handshake per request (`wrk -H "Connection: close"` over TLS, as run.py's `tls` scenario):

- per request: the proxy's wake-ups (voluntary context switches), its system calls by name
  (`perf stat` on the kernel's syscall tracepoints, over a window of the run) and the reads among
  them that found nothing (EAGAIN), and the TCP segments the machine sent (`nstat` TcpOutSegs, so
  both legs and both directions);
- per request: CPU time of the proxy (cpu 1), of the load generator and of the upstream (both on
  cpu 0), and how busy each CPU was (/proc/stat), so a run limited by cpu 0 shows as such.

The latency and CPU figures come from a window without perf attached; the system call counts
from a second window with it. Usage:

    python3 benches/e2e/path_profile.py rate --rate 5000 --only direct,rafael,nginx,haproxy
    python3 benches/e2e/path_profile.py tls --only rafael,nginx,haproxy

It uses run.py's peers and builds (run run.py once first, or let this build: it calls the same
`ensure_tools` and `build`).
"""

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (run.py: peers, configs, builds)


def cpu_times():
    """Busy, total and stolen jiffies of cpu 0 and cpu 1, from /proc/stat (stolen: the
    hypervisor ran something else while this CPU wanted to run)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m and m.group(1) in ("0", "1"):
                values = [int(v) for v in m.group(2).split()]
                idle = values[3] + values[4]  # idle + iowait
                out[m.group(1)] = (sum(values[:8]) - idle, sum(values[:8]), values[7])
    return out


def nstat_segments():
    out = subprocess.run(["nstat", "-az", "TcpOutSegs"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"TcpOutSegs\s+(\d+)", out)
    return int(m.group(1)) if m else 0


def time_wait(port):
    """Sockets in TIME-WAIT on `port`'s connections: (on the server's side, on the client's).
    The side that closes first keeps them, and a client that does must find a free port past
    them on every connect."""
    out = subprocess.run(["ss", "-Htan", "state", "time-wait"], capture_output=True, text=True).stdout
    server = client = 0
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            local, remote = fields[-2], fields[-1]
            server += local.endswith(f":{port}")
            client += remote.endswith(f":{port}")
    return server, client


def voluntary_switches(pid):
    """Voluntary context switches over every thread of `pid`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                m = re.search(r"voluntary_ctxt_switches:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except FileNotFoundError:
            pass
    return total


def proxy_pids(peer):
    """The processes doing the proxy's work (nginx: master and worker)."""
    if not peer.process:
        return []
    return [peer.process.pid] + run.children(peer.process.pid)


SYSCALLS = ["read", "recvfrom", "recvmsg", "readv", "write", "sendto", "sendmsg", "writev", "epoll_wait",
            "epoll_pwait", "epoll_ctl", "getsockopt", "setsockopt", "clock_gettime", "futex", "accept4",
            "connect", "close", "ioctl", "madvise", "mmap", "munmap", "brk", "sched_yield"]
# Reads that found nothing to read (EAGAIN): a proxy that reads until the socket is empty pays
# one of these per readiness event.
EAGAIN = ["read", "recvfrom", "recvmsg"]


def syscall_counts(pids, seconds):
    """System calls by name over `seconds`, every thread of `pids`, counted by the kernel's
    syscall tracepoints (`perf stat`: no ptrace, so the proxy runs at its usual speed), and the
    reads that failed with EAGAIN."""
    args = ["perf", "stat", "-x,", "-p", ",".join(map(str, pids))]
    for name in SYSCALLS:
        args += ["-e", f"syscalls:sys_enter_{name}"]
    for name in EAGAIN:
        args += ["-e", f"syscalls:sys_exit_{name}", "--filter", "ret == -11"]
    args += ["--", "sleep", str(seconds)]
    out = subprocess.run(args, capture_output=True, text=True).stderr
    calls, eagain = {}, {}
    for line in out.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or not fields[0].strip().isdigit():
            continue
        m = re.match(r"syscalls:sys_(enter|exit)_(\w+)", fields[2])
        if m:
            (calls if m.group(1) == "enter" else eagain)[m.group(2)] = int(fields[0])
    return calls, eagain


class Load:
    """A load running in the background for `seconds`; `.finish()` returns its counts."""

    def __init__(self, kind, url, seconds, args):
        self.kind = kind
        if kind == "rate":
            cmd = ["taskset", "-c", run.LOAD_CPU, os.path.join(run.TARGET, "bench-load"), url, str(args.rate),
                   str(seconds), str(args.connections)]
        else:
            cmd = ["taskset", "-c", run.LOAD_CPU, "wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s",
                   "--latency", "-H", "Connection: close", url]
        self.before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self):
        out, err = self.process.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        user, system = after.ru_utime - self.before.ru_utime, after.ru_stime - self.before.ru_stime
        if self.kind == "rate":
            fields = dict(pair.split("=") for pair in out.split())
            result = {"requests": int(fields["requests"]), "p50": int(fields["p50_us"]) / 1000,
                      "p99": int(fields["p99_us"]) / 1000}
        else:
            result = run.parse_wrk(out)
        result["client_cpu_s"] = (user, system)
        return result


def window(peer, upstream_pid, kind, seconds, args, trace):
    """One measured window: counts and CPU per request, with perf attached when `trace`."""
    pids = proxy_pids(peer)
    cpus, segments = cpu_times(), nstat_segments()
    proxy_ticks = peer.ticks() or 0  # the proxy and its children (nginx's worker)
    upstream_ticks = run.cpu_ticks(upstream_pid)
    switches = sum(voluntary_switches(p) for p in pids)
    load = Load(kind, peer.url, seconds, args)
    counts = syscall_counts(pids, seconds - 2) if trace and pids else ({}, {})
    result = load.finish()
    requests = max(result["requests"], 1)
    cpus_after = cpu_times()
    result["segments"] = (nstat_segments() - segments) / requests
    result["wakeups"] = (sum(voluntary_switches(p) for p in pids) - switches) / requests
    result["proxy_us"] = ((peer.ticks() or 0) - proxy_ticks) / run.CLK_TCK / requests * 1e6
    result["upstream_us"] = (run.cpu_ticks(upstream_pid) - upstream_ticks) / run.CLK_TCK / requests * 1e6
    result["client_user_us"] = result["client_cpu_s"][0] / requests * 1e6
    result["client_sys_us"] = result["client_cpu_s"][1] / requests * 1e6
    result["client_us"] = result["client_user_us"] + result["client_sys_us"]
    result["time_wait"] = time_wait(peer.port)
    for cpu in ("0", "1"):
        busy = cpus_after[cpu][0] - cpus[cpu][0]
        total = cpus_after[cpu][1] - cpus[cpu][1]
        result[f"cpu{cpu}_busy"] = busy / max(total, 1)
        result[f"cpu{cpu}_steal"] = (cpus_after[cpu][2] - cpus[cpu][2]) / max(total, 1)
    if trace:
        # Counted over the last seconds - 2 of the window: at a constant rate that is
        # rate x (seconds - 2) requests; a closed loop runs at about its average meanwhile.
        traced = seconds - 2
        in_window = args.rate * traced if kind == "rate" else requests * traced / seconds
        calls, eagain = counts
        result["syscalls"] = {name: n / in_window for name, n in calls.items() if n}
        result["eagain"] = {name: n / in_window for name, n in eagain.items() if n}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["rate", "tls"])
    parser.add_argument("--only", default="direct,rafael,nginx,haproxy")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--cert", default="ecdsa-p256", choices=["ecdsa-p256", "rsa-2048"])
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    if args.kind == "tls":
        names = [n for n in names if n in ("rafael", "rafael-policies", "nginx", "haproxy")]
    run.raise_nofile()
    scenario = "rate" if args.kind == "rate" else "tls"
    run.ensure_tools([scenario], {scenario: names})
    run.build([scenario], {scenario: names})
    workdir = tempfile.mkdtemp(prefix="rafael-path-")
    certs = run.make_certs(workdir) if args.kind == "tls" else {}
    port = run.free_port()
    upstream = subprocess.Popen(["taskset", "-c", run.LOAD_CPU, os.path.join(run.TARGET, "bench-upstream"),
                                 f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        run.wait_ready(f"http://127.0.0.1:{port}/")
        for name in names:
            if args.kind == "tls":
                peer = run.Peer(name, port, workdir, listen="tls", cert=certs[args.cert])
            else:
                peer = run.Peer(name, port, workdir)
            peer.start()
            try:
                Load(args.kind, peer.url, args.warmup, args).finish()
                timed = window(peer, upstream.pid, args.kind, args.seconds, args, trace=False)
                traced = window(peer, upstream.pid, args.kind, args.seconds, args, trace=True)
            finally:
                peer.stop()
            rows.append((name, timed, traced))
            run.log(f"{name}: {timed} / {traced.get('syscalls')}")
    finally:
        upstream.terminate()
        upstream.wait()

    what = f"bench-load at {args.rate}/s" if args.kind == "rate" else f"wrk Connection: close over TLS ({args.cert})"
    print(f"\n{what}, {args.connections} connections, {args.seconds} s windows. Per request:\n")
    print("| peer | req/s | p50 ms | p99 ms | proxy CPU us | client CPU us (user + system) | upstream CPU us | "
          "cpu 0 busy | cpu 1 busy | stolen (cpu 0, 1) | proxy wake-ups | TCP segments sent | TIME-WAIT at the end "
          "(server side, client side) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, t, _ in rows:
        rps = t.get("rps", t["requests"] / args.seconds)
        print(f"| {name} | {rps:.0f} | {t['p50']:.3f} | {t['p99']:.3f} | {t['proxy_us']:.1f} | "
              f"{t['client_us']:.1f} ({t['client_user_us']:.1f} + {t['client_sys_us']:.1f}) | {t['upstream_us']:.1f} | {t['cpu0_busy']:.0%} | {t['cpu1_busy']:.0%} | "
              f"{t['cpu0_steal']:.0%}, {t['cpu1_steal']:.0%} | {t['wakeups']:.2f} | "
              f"{t['segments']:.2f} | {t['time_wait'][0]}, {t['time_wait'][1]} |")
    print("\nProxy system calls per request (perf stat, syscall tracepoints; reads that found nothing, EAGAIN, "
          "in brackets):\n")
    for name, _, traced in rows:
        calls = traced.get("syscalls", {})
        if not calls:
            continue
        parts = [f"{call} {n:.2f}" + (f" ({traced['eagain'][call]:.2f} EAGAIN)" if call in traced["eagain"] else "")
                 for call, n in sorted(calls.items(), key=lambda kv: -kv[1]) if n >= 0.01]
        print(f"- {name}: {sum(calls.values()):.2f} in all: " + ", ".join(parts))


if __name__ == "__main__":
    main()
