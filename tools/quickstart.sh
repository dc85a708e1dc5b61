#!/usr/bin/env bash
# Tally in one command: build, start tallyd with the default data directory
# (./tally-data) on the default address (127.0.0.1:7878), count with the `tally` CLI,
# then stop the server gracefully (SIGTERM), or leave it running with --keep.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
[ "${1:-}" = "--keep" ] && keep=true

cargo build --release -p tallyd -p tally
# Where cargo put them: CARGO_TARGET_DIR if set (a shared build directory), else ./target.
bin=${CARGO_TARGET_DIR:-./target}/release
tallyd=$bin/tallyd
tally=$bin/tally

log=$(mktemp -t tallyd.XXXXXX.log)
"$tallyd" --data-dir ./tally-data >"$log" 2>&1 &
pid=$!
stop() { kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; }
$keep || trap stop EXIT

for _ in $(seq 1 300); do
    grep -q "listening on" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "tallyd did not start" >&2; exit 1; }
    sleep 0.1
done
grep -m1 "tallyd listening on" "$log"

echo "\$ tally incr page:home";          "$tally" incr page:home
echo "\$ tally incr page:home 41";       "$tally" incr page:home 41
echo "\$ tally get page:home";           "$tally" get page:home
echo "\$ tally bounds likes:post1 --floor 0"; "$tally" bounds likes:post1 --floor 0
echo "\$ tally decr likes:post1   # refused: likes never go negative"
"$tally" decr likes:post1 || true
printf 'incr api:user42 1\nincr api:user42 1\nget api:user42\n' >/tmp/tally-batch.txt
echo "\$ tally batch < ops.txt";          "$tally" batch </tmp/tally-batch.txt
echo "\$ tally --json get page:home";    "$tally" --json get page:home

if $keep; then
    echo "tallyd keeps running (pid $pid, log $log); stop it with: kill -TERM $pid"
else
    echo "stopping tallyd (SIGTERM); the counts stay in ./tally-data"
fi
