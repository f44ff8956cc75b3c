#!/usr/bin/env bash
# Throughput, added latency and memory per 1,000 buckets of the proxy, on
# this machine (not part of CI).
#
# Needs `oha` (`cargo install oha --locked`) and python3. Builds the proxy
# and the simulated Discord (examples/sim_server.rs: no global limit, a
# bucket so large that nothing waits) in release mode, then:
#
# The proxy runs with --global-limit 0 (the proactive global limit of 50
# per second per token would be all it measured); everything else is as
# by default.
#
# 1. Throughput and latency: oha against the simulator directly and
#    through the proxy, interleaved, RUNS times each, DURATION each, with
#    CONNECTIONS connections, GET /api/v10/users/@me with a bot token.
#    Prints the median and the range of requests per second, p50 and p99;
#    added latency = proxy p50 - direct p50 (and the same for p99).
# 2. Memory: the proxy's VmRSS before and after BUCKET_REQUESTS requests
#    to random channels (each channel its own bucket, the major
#    parameter), the buckets it holds right after (from /health),
#    and the difference per 1,000 buckets.
#
# Usage: proxy/scripts/bench.sh   (RUNS=3 DURATION=10s CONNECTIONS=32)
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS="${RUNS:-3}"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
BUCKET_REQUESTS="${BUCKET_REQUESTS:-10000}"
OHA="${OHA:-oha}"
TARGET="${CARGO_TARGET_DIR:-target}"

command -v "$OHA" >/dev/null || { echo "oha is missing: cargo install oha --locked" >&2; exit 1; }
cargo build --release -q -p tower-rest-ratelimit-proxy --bin discord-ratelimit-proxy --example sim_server

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$TARGET/release/examples/sim_server" >"$work/sim.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/sim.out" && break; sleep 0.1; done
sim="$(awk '/listening on/ {print $3}' "$work/sim.out")"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
metrics_port="$(free_port)"
"$TARGET/release/discord-ratelimit-proxy" --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$metrics_port" --upstream "http://$sim" \
  --global-limit 0 --log warn 2>"$work/proxy.err" &
proxy_pid=$!
pids+=($proxy_pid)
python3 - "$metrics_port" <<'PY'
import sys, time, urllib.request
for _ in range(200):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health")
        break
    except OSError:
        time.sleep(0.05)
PY
proxy="127.0.0.1:$port"
echo "simulator at $sim, proxy at $proxy; $RUNS runs of $DURATION, $CONNECTIONS connections, $(nproc) cores"

run() { # name url
  "$OHA" --no-tui --output-format json -z "$DURATION" -c "$CONNECTIONS" \
    -H "Authorization: Bot bench-token" "$2" >"$work/$1.$3.json"
}
# Warm up both (connections, the proxy's bucket).
"$OHA" --no-tui -n 200 -c 8 -H "Authorization: Bot bench-token" "http://$proxy/api/v10/users/@me" >/dev/null
for i in $(seq "$RUNS"); do
  run direct "http://$sim/api/v10/users/@me" "$i"
  run proxy "http://$proxy/api/v10/users/@me" "$i"
done

python3 - "$work" "$RUNS" <<'PY'
import json, statistics, sys
work, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    out = []
    for i in range(1, runs + 1):
        d = json.load(open(f"{work}/{name}.{i}.json"))
        s, p = d["summary"], d["latencyPercentiles"]
        codes = d.get("statusCodeDistribution", {})
        out.append((s["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, codes))
    return out
res = {n: load(n) for n in ("direct", "proxy")}
def fmt(vals, unit):
    return f"{statistics.median(vals):.{0 if unit == 'req/s' else 3}f} {unit} ({min(vals):.{0 if unit == 'req/s' else 3}f}-{max(vals):.{0 if unit == 'req/s' else 3}f})"
for name, rows in res.items():
    print(f"{name:7} req/s {fmt([r[0] for r in rows], 'req/s')}, p50 {fmt([r[1] for r in rows], 'ms')}, p99 {fmt([r[2] for r in rows], 'ms')}, status codes {[r[3] for r in rows]}")
d, p = res["direct"], res["proxy"]
print(f"added latency (medians): p50 {statistics.median([r[1] for r in p]) - statistics.median([r[1] for r in d]):.3f} ms, "
      f"p99 {statistics.median([r[2] for r in p]) - statistics.median([r[2] for r in d]):.3f} ms")
print(f"proxy throughput / direct (medians): {statistics.median([r[0] for r in p]) / statistics.median([r[0] for r in d]):.2f}")
PY

rss() { awk '/VmRSS/ {print $2}' "/proc/$proxy_pid/status"; }
health() { python3 -c 'import json,sys,urllib.request; print(json.load(urllib.request.urlopen("http://127.0.0.1:'"$metrics_port"'/health"))["buckets"])'; }
before_rss="$(rss)"; before_buckets="$(health)"
"$OHA" --no-tui -n "$BUCKET_REQUESTS" -c 50 -H "Authorization: Bot bench-token" \
  --rand-regex-url "http://$proxy/api/v10/channels/[1-9][0-9]{9}/messages" >/dev/null
after_rss="$(rss)"; after_buckets="$(health)"
python3 - "$before_rss" "$after_rss" "$before_buckets" "$after_buckets" <<'PY'
import sys
b, a, bb, ab = map(int, sys.argv[1:])
n = ab - bb
print(f"memory: VmRSS {b} KiB -> {a} KiB with {n} more buckets: {(a - b) / n * 1000:.0f} KiB per 1,000 buckets")
PY
