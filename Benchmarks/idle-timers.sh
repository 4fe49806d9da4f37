#!/usr/bin/env bash
# Does what the busy clients pay depend on how many idle keep-alive connections the loop holds?
# One cutover worker; in alternating rounds it holds FEW (50) or MANY (50,000, or as many as the
# descriptor limit allows) idle keep-alive connections, each of which made one request, while
# `cutover-bench load` sends RATE requests/s open loop over 50 connections. Reports the proxy's
# CPU µs per request and the clients' p50/p99 (coordinated omission corrected) for both, and
# writes them into BENCHMARKS.md between the idle-timers markers.
#
#   Benchmarks/idle-timers.sh                      # ROUNDS=5 DURATION=8 RATE=15000 IDLE=50000
#   ROUNDS=2 DURATION=4 OUT=/tmp/b.md Benchmarks/idle-timers.sh
#
# Every load targets 127.0.0.1; idle connections come from 127.0.0.2–127.0.0.9 so that more
# than one address's worth of ephemeral ports is available.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
RATE=${RATE:-15000}
FEW=${FEW:-50}
IDLE=${IDLE:-50000}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

swift build -c release --product cutover >&2
swift build -c release --product cutover-bench >&2
BIN=$ROOT/.build/release
WORK=$(mktemp -d /tmp/cutover-idle.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
}
trap cleanup EXIT

# Descriptors: the proxy keeps half of its limit for upstream connections, so the idle count
# is clamped to what the hard limit of this machine allows (and said so in the report).
ulimit -n "$(ulimit -Hn)"
LIMIT=$(ulimit -n)
MAX_IDLE=$(( (LIMIT - 64) / 2 - FEW - 200 ))
if [ "$IDLE" -gt "$MAX_IDLE" ]; then
    echo "descriptor limit $LIMIT: holding $MAX_IDLE idle connections instead of $IDLE" >&2
    IDLE=$MAX_IDLE
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP_BLUE=$(free_port)
UP_GREEN=$(free_port)
PORT=$(free_port)
"$BIN/cutover-bench" upstream --port "$UP_BLUE" --color blue >/dev/null & PIDS+=($!)
"$BIN/cutover-bench" upstream --port "$UP_GREEN" --color green >/dev/null & PIDS+=($!)
cat > "$WORK/cutover.conf" <<EOF
listen 127.0.0.1:$PORT
workers 1
access_log off
limits {
    max_connections 100000
}
timeouts {
    client_idle 30m
}
app bench {
    host *
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
EOF
"$BIN/cutover" run -c "$WORK/cutover.conf" 2>"$WORK/cutover.log" & CUTOVER_PID=$!
PIDS+=($CUTOVER_PID)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$CUTOVER_PID/stat"; }
TICKS=$(getconf CLK_TCK)

# Opens N keep-alive connections, one request each, prints "ready", holds them until stdin closes.
cat > "$WORK/hold_idle.py" <<'PY'
import resource, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.0.{2 + i % 8}", 0))
    s.sendall(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")
    socks.append(s)
for s in socks:
    data = b""
    while b"blue" not in data:
        chunk = s.recv(4096)
        if not chunk: sys.exit("an idle connection was closed by the proxy")
        data += chunk
print("ready", flush=True)
sys.stdin.read()
PY

RESULTS=$WORK/results.txt
: > "$RESULTS"
for round in $(seq "$ROUNDS"); do
    order="$FEW $IDLE"
    [ $((round % 2)) -eq 0 ] && order="$IDLE $FEW"
    for idle in $order; do
        coproc HOLDER { python3 "$WORK/hold_idle.py" "$PORT" "$idle"; }
        holder_out=${HOLDER[0]}
        holder_in=${HOLDER[1]}
        holder_pid=$HOLDER_PID
        read -r line <&"$holder_out"
        [ "$line" = "ready" ] || { echo "idle holder failed" >&2; exit 1; }
        sleep 1
        before=$(cpu_ticks)
        "$BIN/cutover-bench" load "http://127.0.0.1:$PORT/" -c 50 -d "${DURATION}s" --rate "$RATE" --json > "$WORK/load.json"
        after=$(cpu_ticks)
        # The holder must still be there: its connections were idle for the whole run.
        kill -0 "$holder_pid" 2>/dev/null || { echo "the idle connections were lost during the run" >&2; exit 1; }
        eval "exec ${holder_in}>&-"
        wait "$holder_pid" 2>/dev/null || true
        python3 - "$WORK/load.json" "$idle" "$before" "$after" "$TICKS" >> "$RESULTS" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
idle, before, after, ticks = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cpu_us = (after - before) / ticks * 1e6 / max(1, report["requests"])
errors = sum(report["errors"].values()) + report["non_2xx"]
print(idle, report["requests"], report["rps"], f"{cpu_us:.2f}", report["latency_us"]["p50"], report["latency_us"]["p99"], errors)
PY
        echo "round $round idle $idle: $(tail -1 "$RESULTS")" >&2
        sleep 1
    done
done

python3 - "$RESULTS" "$OUT" "$FEW" "$IDLE" "$ROUNDS" "$DURATION" "$RATE" "$LIMIT" <<'PY'
import statistics, sys
path, out, few, many, rounds, duration, rate, limit = sys.argv[1:9]
few, many = int(few), int(many)
rows = [line.split() for line in open(path)]
def col(idle, index): return [float(r[index]) for r in rows if int(r[0]) == idle]
def med(idle, index): return statistics.median(col(idle, index))
ratios_cpu = [m / f for f, m in zip(col(few, 3), col(many, 3))]
ratios_p99 = [m / f for f, m in zip(col(few, 5), col(many, 5))]
section = f"""<!-- idle-timers:begin -->
## Idle connections and the busy clients

Generated by `Benchmarks/idle-timers.sh` (its last run). One cutover worker holds {few} or {many:,} idle
keep-alive connections (each made one request, then waits; alternating rounds), while
`cutover-bench load -c 50 --rate {rate}` sends requests open loop for {duration} s per round, {rounds} rounds each.
Deadlines live in a timer wheel: a loop visits only the buckets that come due, so connections that
wait cost nothing per request.

| idle connections | CPU µs/request (median) | client p50 µs | client p99 µs | errors |
|---|---|---|---|---|
| {few} | {med(few, 3):.2f} | {med(few, 4):.0f} | {med(few, 5):.0f} | {sum(col(few, 6)):.0f} |
| {many:,} | {med(many, 3):.2f} | {med(many, 4):.0f} | {med(many, 5):.0f} | {sum(col(many, 6)):.0f} |

Per round ({many:,} against {few}): CPU {", ".join(f"{r:.2f}×" for r in ratios_cpu)} (median {statistics.median(ratios_cpu):.2f}×);
p99 {", ".join(f"{r:.2f}×" for r in ratios_p99)} (median {statistics.median(ratios_p99):.2f}×).
"""
if many < 50000:
    section += f"""
The descriptor limit of the machine this ran on is {limit} (hard `ulimit -n`, which the benchmark cannot raise
without CAP_SYS_RESOURCE); the proxy keeps half of it for upstream connections, so {many:,} idle
connections is the most it could hold. Run it where the hard limit is above 100,000 for the full 50,000.
"""
section += "<!-- idle-timers:end -->\n"
try:
    text = open(out).read()
except FileNotFoundError:
    text = ""
begin, end = text.find("<!-- idle-timers:begin -->"), text.find("<!-- idle-timers:end -->")
if begin >= 0 and end >= 0:
    text = text[:begin] + section + text[end + len("<!-- idle-timers:end -->\n"):]
else:
    text = text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(section)
PY
