# Sourced by the bench scripts: wait_for_tallyd LOG PID waits until the tallyd with
# process id PID, logging to LOG, says "listening on" (up to 30 s), and exits the
# script with the log on standard error if it exits or never says it.
wait_for_tallyd() {
    local log=$1 pid=$2
    for _ in $(seq 300); do
        grep -q "listening on" "$log" && return
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "tallyd did not start:" >&2
    cat "$log" >&2
    exit 1
}
