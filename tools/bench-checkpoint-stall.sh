#!/usr/bin/env bash
# What periodic checkpoints do to request latency: tallyd (relaxed, 2 cores) is filled
# with KEYS counters, then one connection sends unpipelined increments at a fixed rate
# (open loop, so a stalled core shows as queued latency instead of hiding) for SECONDS,
# once with a checkpoint round every 10 s and once with periodic checkpoints off; one
# line per run with p50/p99/p99.9/max, and the rounds' `longest_copy_ms` (the core's
# only pause for a round). TALLYD picks the server binary (to compare builds).
# Traffic goes to 127.0.0.1 only.
# PORT sets the main port (default 7471; the two cores take the next two).
# Usage: tools/bench-checkpoint-stall.sh [KEYS] [SECONDS] [ROUNDS]
#        (defaults 10000000, 25, 1; needs about 1 GB of memory per 10M keys)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tools/wait-for-tallyd.sh
source tools/wait-for-tallyd.sh
keys=${1:-10000000}
seconds=${2:-25}
rounds=${3:-1}
bin=./target/release
tallyd=${TALLYD:-$bin/tallyd}
port=${PORT:-7471}
scratch=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-ckpt.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

start() { # tallyd options...
    if [ -n "$server" ]; then kill "$server"; wait "$server" || true; fi
    "$tallyd" --data-dir "$scratch/data" --listen "127.0.0.1:$port" --cores 2 --durability relaxed "$@" \
        >"$scratch/tallyd.log" 2>&1 &
    server=$!
    wait_for_tallyd "$scratch/tallyd.log" "$server"
}

start --checkpoint-interval-s 0
# Every key once (--fill), then a token measured run: all KEYS counters exist.
"$bin/tally-bench" server --addr "127.0.0.1:$port" --keys "$keys" --fill --ops 1000 --json >/dev/null
for round in $(seq "$rounds"); do
    for interval in 10 0; do
        start --checkpoint-interval-s "$interval"
        "$bin/tally-bench" server --addr "127.0.0.1:$port" --connections 1 --pipeline 1 \
            --keys "$keys" --duration "$seconds" --rate 2000 --json |
            python3 -c '
import json, sys
d = json.load(sys.stdin)
print("round %s, checkpoint every %ss: p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us"
      % (sys.argv[1], sys.argv[2] if sys.argv[2] != "0" else " (off) ", d["p50_us"], d["p99_us"],
         d["p999_us"], d["max_us"]))' "$round" "$interval"
        grep -o 'partitions_written=[0-9]*\|longest_copy_ms=[0-9.]*' "$scratch/tallyd.log" |
            paste -sd' ' | sed 's/^/    rounds: /' || true
    done
done
