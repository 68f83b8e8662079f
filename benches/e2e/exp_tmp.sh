#!/usr/bin/env bash
# The data plane's p99 while evolution rounds run back to back, against its p99 without them
# (issue 9: within +10%). rafael and its rounds share cpu 1; wrk and the upstream are on cpu 0.
# Five interleaved pairs of 10 s wrk runs (8 connections); prints each p99 and the medians.
# The admin API is asked the same questions in both halves of a pair, by one keep-alive client.
#
#   benches/e2e/round_p99.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in wrk curl; do
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
# wrk's closed loop at tens of thousands of requests a second, against an upstream that
# answers in microseconds, is not a model a round trusts; this measures the cost of a round's
# CPU on the data plane, so rounds run on whatever model they fit.
max_model_error = 10.0
# Rounds of a few seconds, so that one never spills from a measurement with rounds into the
# next one without.
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
taskset -c 0 wrk -t1 -c8 -d5s "$url" >/dev/null # telemetry for the model, and warm-up

# p99 in microseconds from wrk's latency distribution.
p99() {
    taskset -c 0 wrk -t1 -c8 -d10s --latency "$url" | awk '$1 == "99%" {
        v = $2; if (v ~ /us$/) { sub(/us/, "", v); print v } else if (v ~ /ms$/) { sub(/ms/, "", v); print v * 1000 } else { sub(/s/, "", v); print v * 1000000 } }'
}


poll() { taskset -c 0 python3 - "$admin_port" "$1" <<'PY' &
import http.client, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", port)
worst = 0
while True:
    t = time.monotonic()
    conn.request("GET", path); r = conn.getresponse(); r.read()
    worst = max(worst, time.monotonic() - t)
    print(f"{path} {1000*(time.monotonic()-t):.2f} ms worst {1000*worst:.2f}", file=sys.stderr, flush=True) if r.status != 200 or time.monotonic()-t > 0.005 else None
    time.sleep(0.5)
PY
}

for mode in none sleeper /readyz none sleeper /readyz; do
  if [ $mode = none ]; then echo "$mode $(p99)";
  elif [ $mode = sleeper ]; then taskset -c 0 python3 -c "
import time
while True: time.sleep(0.5)" & b=$!; echo "$mode $(p99)"; kill $b;
  else poll $mode 2>/dev/null; b=$!; echo "$mode $(p99)"; kill $b; fi
done
