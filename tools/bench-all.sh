#!/usr/bin/env bash
# Every figure of BENCHMARKS.md in one session, one after another, on this machine:
# the engine in-process, group commit, recovery, tallyd against redis-server, then one
# connection's latency per CPU split (tools/bench-latency.sh).
# Results (JSON lines and plots) go to the directory given as $1 (default bench-results/).
# Traffic goes to 127.0.0.1 only. Needs redis-server and redis-benchmark for the comparison
# (Debian: redis-server, redis-tools); it installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results}
mkdir -p "$out"
scratch=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-bench.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

cargo build --release -p tally-bench -p tallyd
bench=./target/release/tally-bench
note() { echo "== $* (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/log.txt"; }
run() { note "$*"; "$@" | tee -a "$out/results.jsonl"; }

uname -a >"$out/machine.txt"; nproc >>"$out/machine.txt"; free -g >>"$out/machine.txt"
date -u >>"$out/machine.txt"

run $bench engine --counters 10000000 --ops 50000000 --key-bytes 16 --json
run $bench engine --counters 10000000 --ops 200000000 --key-bytes 16 --hot-key --json
run $bench journal --dir "$scratch" --seconds 2 --waiters 64,1024,4096 --wait-us 0 --json
for cores in 1 2; do
    run $bench recovery --counters 10000000 --journal-ops 10000000 --cores $cores --json --dir "$scratch"
done
run $bench recovery --counters 10000000 --journal-ops 10000000 --cores 2 --key-bytes 18 --json --dir "$scratch"
if [ "${TALLY_BENCH_LARGE:-0}" = 1 ]; then
    run $bench engine --counters 100000000 --ops 50000000 --key-bytes 16 --json
fi
if command -v redis-server >/dev/null; then
    note "compare"
    $bench compare --redis-server "$(command -v redis-server)" --tallyd ./target/release/tallyd \
        --seconds 5 --plot-dir "$out/plots" | tee -a "$out/compare.txt"
fi
note "one connection's latency per CPU split"
tools/bench-latency.sh 1 | tee -a "$out/latency.txt"
