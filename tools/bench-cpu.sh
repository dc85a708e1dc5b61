#!/usr/bin/env bash
# What one server load costs in CPU: starts TALLYD on a fresh data directory on
# 127.0.0.1:$PORT (default 7411; its cores take the ports after it, and the RESP door
# the port after the last possible core, PORT + nproc + 1), drives it for 8 s with `tally-bench server`, and
# measures, over 4 s in the middle of the run, tallyd's and the load generator's CPU
# (`perf stat -e task-clock -p`) per acknowledged operation, and over the whole run the
# guest's busy and stolen CPU time from /proc/stat (steal: the host not running a vCPU,
# on this VM its CPU quota). For A/B comparisons, run it alternately on two builds.
#
# Usage: tools/bench-cpu.sh TALLYD "TALLYD OPTIONS" "TALLY-BENCH SERVER OPTIONS" [TALLY_BENCH]
# e.g.   tools/bench-cpu.sh target/release/tallyd "--durability relaxed" \
#            "--connections 4 --pipeline 64"
# Needs perf and python3. Prints one line. Traffic goes to 127.0.0.1 only.
set -euo pipefail
# shellcheck source=tools/wait-for-tallyd.sh
source "$(dirname "$0")/wait-for-tallyd.sh"
tallyd=$1
server_options=$2
load_options=$3
bench=${4:-$(dirname "$0")/../target/release/tally-bench}
port=${PORT:-7411}
resp_port=$((port + $(nproc) + 1))
scratch=$(mktemp -d -p "${TMPDIR:-/tmp}" tally-cpu.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ]; then kill -INT "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

cpu_ticks() { # busy and steal ticks of all CPUs
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $9 }' /proc/stat
}

# shellcheck disable=SC2086 # the options are word lists on purpose
"$tallyd" --data-dir "$scratch/data" --listen "127.0.0.1:$port" --resp-listen "127.0.0.1:$resp_port" \
    $server_options >"$scratch/tallyd.log" 2>&1 &
server=$!
wait_for_tallyd "$scratch/tallyd.log" "$server"
read -r busy_before steal_before < <(cpu_ticks)
# shellcheck disable=SC2086
"$bench" server --addr "127.0.0.1:$port" $load_options --duration 8 --json >"$scratch/load.json" &
load=$!
sleep 2
perf stat -x, -e task-clock -p "$server" -o "$scratch/server.txt" sleep 4 &
perf stat -x, -e task-clock -p "$load" -o "$scratch/load.txt" sleep 4
wait "$load"
read -r busy_after steal_after < <(cpu_ticks)
python3 - "$scratch" "$((busy_after - busy_before))" "$((steal_after - steal_before))" <<'EOF'
import json, sys
scratch, busy, steal = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
run = json.load(open(f"{scratch}/load.json"))
def cpu_ms(name):
    line = next(l for l in open(f"{scratch}/{name}.txt") if "task-clock" in l)
    return float(line.split(",")[0])
ops = run["ops_per_sec"]
print(f"ops/s {ops:9.0f}  p50 {run['p50_us']:7.0f} us  p99 {run['p99_us']:7.0f} us  "
      f"tallyd {cpu_ms('server') * 1000 / (ops * 4):.3f} us/op  "
      f"load generator {cpu_ms('load') * 1000 / (ops * 4):.3f} us/op  "
      f"guest busy {busy / 100:.2f} s, steal {steal / 100:.2f} s")
EOF
