#!/usr/bin/env bash
# Exact instructions per operation on tallyd's side of a load: runs TALLYD under
# callgrind (one core, so nothing crosses the mesh), creates the keys with a warm-up,
# zeroes the counts, drives a measured load of OPS operations, dumps, and prints the
# instructions of all of tallyd's threads divided by OPS. Wall time on this VM moves
# 2-4x within minutes; this count does not, so it is how to A/B a change to the
# server's path (the engine has its own count, `cargo bench --bench engine_instructions`).
# The count includes the kernel's share of nothing (callgrind sees user space only).
#
# Usage: tools/bench-server-instructions.sh TALLYD [OPS] ["TALLYD OPTIONS"] ["LOAD OPTIONS"]
# e.g.   tools/bench-server-instructions.sh target/release/tallyd 200000 \
#            "--durability relaxed" "--connections 1 --pipeline 64"
# PROTOCOL=resp drives the Redis door instead of the native protocol. KEEP=FILE keeps
# the measured dump (for callgrind_annotate). PORT sets the main port (default 7441; the
# one core takes PORT + 1, the Redis door PORT + 8). Needs valgrind. Traffic goes to
# 127.0.0.1 only.
set -euo pipefail
# shellcheck source=tools/wait-for-tallyd.sh
source "$(dirname "$0")/wait-for-tallyd.sh"
tallyd=$1
ops=${2:-200000}
server_options=${3:---durability relaxed}
load_options=${4:---connections 1 --pipeline 64}
bench=${TALLY_BENCH:-$(dirname "$0")/../target/release/tally-bench}
port=${PORT:-7441}
resp_port=$((port + 8))
load_addr=127.0.0.1:$port
if [ "${PROTOCOL:-native}" = resp ]; then
    load_addr="127.0.0.1:$resp_port --protocol resp"
fi
scratch=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-instr.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# shellcheck disable=SC2086 # the options are word lists on purpose
valgrind --tool=callgrind --callgrind-out-file="$scratch/callgrind.out" \
    "$tallyd" --data-dir "$scratch/data" --listen "127.0.0.1:$port" \
    --resp-listen "127.0.0.1:$resp_port" --cores 1 \
    $server_options >"$scratch/tallyd.log" 2>&1 &
server=$!
wait_for_tallyd "$scratch/tallyd.log" "$server"
# shellcheck disable=SC2086
"$bench" server --addr $load_addr $load_options --ops "$ops" --json >/dev/null
callgrind_control -z "$server" >/dev/null 2>&1
# shellcheck disable=SC2086
"$bench" server --addr $load_addr $load_options --ops "$ops" --json >"$scratch/load.json"
callgrind_control -d "$server" >/dev/null 2>&1
if [ -n "${KEEP:-}" ]; then cat "$scratch"/callgrind.out.* >"$KEEP"; fi
total=$(cat "$scratch"/callgrind.out.* | awk '/^summary:/ { sum += $2 } END { print sum + 0 }')
python3 - "$scratch/load.json" "$total" "$ops" <<'EOF'
import json, sys
run = json.load(open(sys.argv[1]))
total, ops = int(sys.argv[2]), int(sys.argv[3])
print(f"{total / ops:.1f} instructions per operation ({total} for {ops} operations, "
      f"{run['requests']} requests, {run['ops_failed']} failed)")
EOF
