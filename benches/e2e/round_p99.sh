#!/usr/bin/env bash
# The data plane's p99 while evolution rounds run back to back, against its p99 without them
# (issue 9: within +10%). rafael and its rounds share cpu 1; the load, the upstream and the admin
# client are on cpu 0. Five interleaved pairs of 10 s runs at a constant rate; prints each p99
# and the medians. The admin API is asked the same questions in both halves of a pair.
#
#   benches/e2e/round_p99.sh             # 5,000 requests a second
#   RATE=15000 benches/e2e/round_p99.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in curl; do
    command -v $tool >/dev/null || apt-get install -y -q $tool >/dev/null
done
cargo build --release -q -p rafael-control -p rafael-benches
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
upstream_port=18190 proxy_port=18191 admin_port=18192
taskset -c 0 target/release/bench-upstream 127.0.0.1:$upstream_port &
cat > "$work/rafael.toml" <<TOML
[admin]
bind = "127.0.0.1:$admin_port"
[runtime]
watch_config = false
[[listeners]]
name = "in"
bind = "127.0.0.1:$proxy_port"
protocol = "http1"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:$upstream_port"]
[[routes]]
name = "all"
listener = "in"
upstream = "app"
[routes.policy]
timeout = "2s"
retry = { max_attempts = 2 }
circuit_breaker = {}
[evolution]
min_requests = 1000
# Thousands of requests a second against an upstream that answers in microseconds is not a
# model a round trusts; this measures what a round costs the data plane, so rounds run on
# whatever model they fit.
max_model_error = 10.0
# Small rounds (still longer than one measurement: a round only has the idle cycles), and the
# script waits for the last one to end before it measures without.
population = 8
generations = 3
seeds = 2
duration = "10s"
scenarios = ["observed", "nominal", "latency:high"]
TOML
taskset -c 1 target/release/rafael run --config "$work/rafael.toml" > "$work/log" 2>&1 &
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null && break
    sleep 0.1
done
url="http://127.0.0.1:$proxy_port/"
taskset -c 0 target/release/bench-load "$url" "${RATE:-5000}" 5 32 >/dev/null # telemetry for the model, and warm-up

# p99 in microseconds at a constant RATE (default 5,000 requests a second, an open loop from
# bench-load on cpu 0). wrk's closed loop would saturate cpu 1: a round then gets no idle cycle
# to run on, and the tail measured is the queue's.
p99() {
    taskset -c 0 target/release/bench-load "$url" "${RATE:-5000}" 10 32 | tee -a "$work/load" |
        sed -nE 's/.* p99_us=([0-9]+).*/\1/p'
}

# The admin client, in both halves of every pair: one Python process on cpu 0 with one keep-alive
# connection, asking for the route's newest round twice a second. With `--rounds` it also starts
# a round whenever none is running. A new curl process per poll would cost more CPU than a round
# (fork, exec, TLS library start-up: about 10 ms on cpu 0, beside wrk and the upstream) and
# would be measured instead of it; with the same admin traffic on both sides, the one difference
# is the rounds.
admin() {
    taskset -c 0 python3 - "$admin_port" "$work/rounds" "$@" <<'PY' &
import http.client, json, sys, time
port, log, start = int(sys.argv[1]), sys.argv[2], "--rounds" in sys.argv[3:]
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path):
    conn.request(method, path)
    answer = conn.getresponse()
    return answer.status, json.loads(answer.read() or b"null")
current = None
while True:
    _, listed = call("GET", "/v1/evolution/rounds?route=all&limit=1")
    newest = (listed.get("rounds") or [None])[0]
    if newest and newest["id"] == current and newest["state"] != "running":
        with open(log, "a") as out:
            print(current, newest.get("result") or newest["state"], file=out)
        current = None
    if start and current is None:
        status, body = call("POST", "/v1/evolution/all/run")
        if status == 202:
            current = body["id"]
            with open(log, "a") as out:
                print(current, "started", file=out)
    time.sleep(0.5)
PY
}

without=() with=()
for i in 1 2 3 4 5; do
    admin; poller=$!
    without+=("$(p99)")
    kill "$poller"; wait "$poller" 2>/dev/null || true
    admin --rounds; poller=$!
    with+=("$(p99)")
    kill "$poller"; wait "$poller" 2>/dev/null || true
    # Let the last round end before the next measurement without rounds.
    while curl -s "http://127.0.0.1:$admin_port/v1/evolution/rounds?route=all&limit=1" | grep -q '"state":"running"'; do
        sleep 0.5
    done
    echo "pair $i: p99 without rounds ${without[-1]} us, with ${with[-1]} us"
done
median() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
a=$(median "${without[@]}") b=$(median "${with[@]}")
echo "median p99: without rounds $a us, with rounds $b us, ratio $(awk "BEGIN { printf \"%.3f\", $b / $a }")"
touch "$work/rounds"
# Every round started, and how each one that ended while measuring ended.
awk '{print $2}' "$work/rounds" | sort | uniq -c
