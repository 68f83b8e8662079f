#!/usr/bin/env bash
# The data plane's p99 while evolution rounds run back to back, against its p99 without them
# (issue 9: within +10%). rafael and its rounds share cpu 1; wrk and the upstream are on cpu 0.
# Five interleaved pairs of 10 s wrk runs (8 connections); prints each p99 and the medians.
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

# Runs rounds back to back until killed (a round still running answers 409: wait for it).
rounds() {
    while true; do
        answer=$(curl -s -X POST "http://127.0.0.1:$admin_port/v1/evolution/all/run")
        id=$(echo "$answer" | sed -nE 's/^\{"id":([0-9]+).*/\1/p')
        if [ -z "$id" ]; then sleep 0.5; continue; fi
        while curl -s "http://127.0.0.1:$admin_port/v1/evolution/rounds/$id" | grep -q '"state":"running"'; do
            sleep 1
        done
        echo "$id $(curl -s "http://127.0.0.1:$admin_port/v1/evolution/rounds/$id" | sed -nE 's/.*"result":"([a-z_]+)".*/\1/p')" >> "$work/rounds"
    done
}

without=() with=()
for i in 1 2 3 4 5; do
    without+=("$(p99)")
    # The loop's curl processes stay on cpu 0 with the load: on cpu 1 they would be the
    # interference measured, not the rounds.
    taskset -c 0 bash -c "$(declare -f rounds); admin_port=$admin_port work=$work rounds" & loop=$!
    with+=("$(p99)")
    kill $loop 2>/dev/null; wait $loop 2>/dev/null || true
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
echo "rounds completed while measuring: $(wc -l < "$work/rounds")"
awk '{print $2}' "$work/rounds" | sort | uniq -c
