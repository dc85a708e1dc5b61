#!/usr/bin/env bash
# One unpipelined connection's round trip (issue 4's p99 goal), in the configurations
# BENCHMARKS.md compares: tallyd on one spinning core with the client pinned to another
# CPU (raw frames, then the tally-client crate), the same client unpinned, and tallyd's
# defaults. Each row is a 10 s closed loop of relaxed increments over 100,000 keys, all
# created by a warm-up after tallyd starts; it prints one line per run and writes
# nothing else. Traffic goes to 127.0.0.1 only.
# Usage: tools/bench-latency.sh [ROUNDS]  (default 3; needs 2 CPUs or more)
# PORT sets the first server's main port (default 7420; the second uses PORT + 10 and
# its cores the nproc ports after that).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
scratch=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-latency.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

cargo build --release -p tally-bench -p tallyd -p tally
bin=./target/release
client_cpu=$(($(nproc) - 1))

start() { # port, tallyd options...
    local port=$1
    shift
    if [ -n "$server" ]; then kill "$server"; wait "$server" || true; fi
    rm -rf "$scratch/data"
    "$bin/tallyd" --data-dir "$scratch/data" --listen "127.0.0.1:$port" --durability relaxed "$@" \
        >"$scratch/tallyd.log" 2>&1 &
    server=$!
    for _ in $(seq 50); do
        if "$bin/tally" --addr "127.0.0.1:$port" ping >/dev/null 2>&1; then
            # Creates every key (inserts, table growth, the journal's first segments),
            # then warms the path, so that the runs measure increments of existing counters.
            "$bin/tally-bench" server --addr "127.0.0.1:$port" --connections 2 --pipeline 16 \
                --keys 100000 --fill --ops 1000000 --durability relaxed --json >/dev/null
            return
        fi
        sleep 0.1
    done
    echo "tallyd did not start:" >&2
    cat "$scratch/tallyd.log" >&2
    exit 1
}

run() { # label, command prefix (may be empty), tally-bench options...
    local label=$1 prefix=$2
    shift 2
    printf '%-58s ' "$label"
    $prefix "$bin/tally-bench" server --connections 1 --pipeline 1 --batch 1 --keys 100000 \
        --duration 10 --durability relaxed --json "$@" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(f"{k}={d[k]:.1f}" for k in ["ops_per_sec","p50_us","p99_us","p999_us"]))'
}

port=${PORT:-7420}
start "$port" --cores 1 --spin-us 200
for _ in $(seq "$rounds"); do
    run "cores 1, spin 200 | client on cpu $client_cpu, spin 75" "taskset -c $client_cpu" --addr "127.0.0.1:$port" --spin-us 75
    run "cores 1, spin 200 | client on cpu $client_cpu, tally-client" "taskset -c $client_cpu" --addr "127.0.0.1:$port" --via-client
    run "cores 1, spin 200 | client unpinned, spin 75" "" --addr "127.0.0.1:$port" --spin-us 75
done
start "$((port + 10))"
for _ in $(seq "$rounds"); do
    run "defaults | client unpinned, spin 0" "" --addr "127.0.0.1:$((port + 10))"
    run "defaults | client unpinned, spin 75" "" --addr "127.0.0.1:$((port + 10))" --spin-us 75
done
