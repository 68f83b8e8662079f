#!/usr/bin/env bash
# User-space instructions per request of a proxy, counted by callgrind: unlike req/s and CPU
# time, this does not move with the load on a shared machine, so small changes can be compared.
#
#   benches/e2e/instructions.sh rafael      # target/release/rafael, one listener, one route
#   benches/e2e/instructions.sh rafael-policies   # the same route with every policy on
#   benches/e2e/instructions.sh rafael-canary     # rafael with a 10% canary running on the route
#   benches/e2e/instructions.sh rafael-canary-off # the same config, no canary started (its baseline)
#   benches/e2e/instructions.sh nginx       # Debian's nginx, 1 worker, upstream keep-alive
#
# The proxy runs under valgrind on cpu 1 (so rafael picks its one-CPU scheduler, as in the
# end-to-end harness), wrk -c8 drives it for 5 s, and the start-up cost, measured in a run with
# no load, is subtracted. Kernel work (the larger part of a proxy's CPU) is not counted.
set -euo pipefail
cd "$(dirname "$0")/../.."
peer=${1:?usage: instructions.sh rafael|rafael-policies|rafael-canary|rafael-canary-off|nginx}
for tool in valgrind wrk curl; do
    command -v $tool >/dev/null || apt-get install -y -q $tool >/dev/null
done
cargo build --release -q -p rafael-control -p rafael-benches
work=$(mktemp -d)
# nginx workers drop to an unprivileged user and must write their callgrind reports here.
chmod 0777 "$work"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
upstream_port=18180 proxy_port=18181 admin_port=18182
taskset -c 0 target/release/bench-upstream 127.0.0.1:$upstream_port &
case $peer in
rafael|rafael-policies|rafael-canary|rafael-canary-off)
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
TOML
    if [ "$peer" = rafael-policies ]; then
        cat benches/e2e/rafael-policies.toml >> "$work/rafael.toml"
    fi
    if [ "$peer" = rafael-canary ] || [ "$peer" = rafael-canary-off ]; then
        # A canary that runs for the whole measurement: approved by rafael as soon as it is
        # proposed, judged after a day, on a genome that differs only in its timeout.
        cat >> "$work/rafael.toml" <<TOML
[routes.policy]
timeout = "30s"
[guardian]
approval = "auto"
canary = { percent = 10, duration = "1day", min_requests = 1000000 }
watch = { duration = "0s" }
TOML
    fi
    cmd=(target/release/rafael run --config "$work/rafael.toml") ;;
nginx)
    cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server 127.0.0.1:$upstream_port; keepalive 64; }
    server {
        listen 127.0.0.1:$proxy_port;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CONF
    cmd=(nginx -c "$work/nginx.conf") ;;
*) echo "unknown peer $peer" >&2; exit 2 ;;
esac

# Prints "requests instructions" for one run with `seconds` of load (0: start-up only).
measure() {
    local seconds=$1 requests=0
    : > "$work/log"; : > "$work/nginx-error.log"
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "${cmd[@]}" \
        > "$work/log" 2>&1 &
    local pid=$!
    # Wait for the listener (valgrind starts slowly).
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/$proxy_port) 2>/dev/null && break
        sleep 0.1
    done
    if [ "$peer" = rafael-canary ]; then
        # In the idle run too, so its cost is subtracted with the start-up's.
        curl -sf -o /dev/null -X POST -H 'content-type: application/json' \
            -d '{"route": "all", "genome": {"timeout": "31s"}}' \
            http://127.0.0.1:$admin_port/v1/proposals
    fi
    if [ "$seconds" != 0 ]; then
        requests=$(taskset -c 0 wrk -t1 -c8 -d${seconds}s http://127.0.0.1:$proxy_port/ \
            | awk '/requests in/ {print $1}')
    fi
    kill -INT $pid; wait $pid 2>/dev/null || true
    rm -f "$work"/rafael.db*
    # nginx's worker outlives its master by a moment; wait for its report.
    if [ "$peer" = nginx ]; then
        for _ in $(seq 100); do
            grep -q 'refs:' "$work/nginx-error.log" 2>/dev/null && break
            sleep 0.1
        done
    fi
    # nginx's worker reports into its error log; rafael into its own.
    local total
    total=$(cat "$work/log" "$work/nginx-error.log" | grep -oE 'refs: +[0-9,]+' \
        | tr -d ', ' | cut -d: -f2 | paste -sd+ | bc)
    echo "$requests $total"
}
read -r _ idle < <(measure 0)
read -r requests loaded < <(measure 5)
# KEEP=DIR keeps the loaded run's callgrind files, for callgrind_annotate.
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg.* "$KEEP"/; fi
echo "$peer: $(( (loaded - idle) / requests )) instructions per request ($requests requests)"
