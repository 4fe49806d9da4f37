#!/usr/bin/env bash
# How fast a release plan rolls back a failing candidate, with live traffic: cutover (1 worker)
# in front of a healthy blue and a green that answers 500 to a share FAIL of its requests, a
# plan at weight 10 with `rollback_if error_regression` and `rollback_if error_rate > 2%`, and
# `cutover-bench load` at RATE requests/s. Each run starts the release and measures, from the
# access log and the audit log: the time from green's first 500 to the `auto_rollback` record,
# and the share of all requests in that window that failed. Writes BENCHMARKS.md's
# rollback-speed section.
#
#   Benchmarks/rollback-speed.sh                 # RUNS=10 RATE=200, FAIL 5 % and 50 %
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-10}
RATE=${RATE:-200}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

swift build -c release --product cutover >&2
swift build -c release --product cutover-bench >&2
BIN=$ROOT/.build/release
WORK=$(mktemp -d /tmp/cutover-rollback.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

RESULTS=$WORK/results.txt
: > "$RESULTS"
for fail in 0.05 0.5; do
    for run in $(seq "$RUNS"); do
        UP_BLUE=$(free_port); UP_GREEN=$(free_port); PORT=$(free_port)
        "$BIN/cutover-bench" upstream --port "$UP_BLUE" --color blue >/dev/null & BLUE_PID=$!
        "$BIN/cutover-bench" upstream --port "$UP_GREEN" --color green --fail-rate "$fail" >/dev/null & GREEN_PID=$!
        PIDS+=($BLUE_PID $GREEN_PID)
        rm -rf "$WORK/run"; mkdir -p "$WORK/run"
        cat > "$WORK/run/cutover.conf" <<EOF
listen 127.0.0.1:$PORT
workers 1
admin_socket cutover.sock
state_file cutover.state
audit_log audit.log
access_log access.log
health {
    interval 100ms
    rise 1
    ready_after 0s
}
app bench {
    host *
    health_path /api/system/status
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
plan canary {
    step weight 10 hold 1h
    step weight 100 hold 1h
    rollback_if error_regression
    rollback_if error_rate > 2%
}
EOF
        "$BIN/cutover" run -c "$WORK/run/cutover.conf" 2>"$WORK/run/cutover.log" & CUTOVER_PID=$!
        PIDS+=($CUTOVER_PID)
        for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
        "$BIN/cutover-bench" load "http://127.0.0.1:$PORT/" -c 10 -d 60s --rate "$RATE" >/dev/null 2>&1 & LOAD_PID=$!
        PIDS+=($LOAD_PID)
        sleep 2  # traffic on blue first: the stable color's figures exist when the plan starts
        "$BIN/cutover" release start canary --force -s "$WORK/run/cutover.sock" >/dev/null
        for _ in $(seq 300); do
            grep -q '"event":"auto_rollback"' "$WORK/run/audit.log" 2>/dev/null && break
            sleep 0.1
        done
        sleep 1
        kill "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true
        kill "$CUTOVER_PID"; wait "$CUTOVER_PID" 2>/dev/null || true
        kill "$BLUE_PID" "$GREEN_PID"; wait "$BLUE_PID" "$GREEN_PID" 2>/dev/null || true
        python3 - "$WORK/run" "$fail" "$run" >> "$RESULTS" <<'PY'
import json, sys
from datetime import datetime
folder, fail, run = sys.argv[1], sys.argv[2], sys.argv[3]
def when(text): return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
audit = [json.loads(line) for line in open(folder + "/audit.log")]
started = next(when(r["time"]) for r in audit if r["event"] == "release_started")
rolled = [when(r["time"]) for r in audit if r["event"] == "auto_rollback"]
lines = [json.loads(line) for line in open(folder + "/access.log") if '"type":"request"' in line]
requests = [(when(l["time"]), l["color"], l["status"]) for l in lines]
if not rolled:
    print(fail, run, "none", "none", "none"); sys.exit()
rolled = rolled[0]
bad = sorted(t for t, color, status in requests if color == "green" and status >= 500)
first = bad[0] if bad else rolled
window = [r for r in requests if started <= r[0] <= rolled]
failed = sum(1 for r in window if r[2] >= 500)
print(fail, run, f"{rolled - first:.3f}", f"{failed / max(1, len(window)):.5f}", len(window))
PY
        echo "fail $fail run $run: $(tail -1 "$RESULTS")" >&2
    done
done

python3 - "$RESULTS" "$OUT" "$RUNS" "$RATE" <<'PY'
import statistics, sys
path, out, runs, rate = sys.argv[1:5]
rows = [line.split() for line in open(path)]
table = ["| candidate failing | runs rolled back | first bad answer → auto_rollback: median (max) | failed share of all requests in that window: median (max) |",
         "|---|---:|---:|---:|"]
for fail in ("0.05", "0.5"):
    done = [r for r in rows if r[0] == fail and r[2] != "none"]
    delays = [float(r[2]) for r in done]
    shares = [float(r[3]) for r in done]
    total = sum(1 for r in rows if r[0] == fail)
    if not done:
        table.append(f"| {float(fail) * 100:g} % | 0 of {total} | — | — |"); continue
    table.append(f"| {float(fail) * 100:g} % | {len(done)} of {total} | {statistics.median(delays):.2f} s ({max(delays):.2f} s) | "
                 f"{statistics.median(shares) * 100:.2f} % ({max(shares) * 100:.2f} %) |")
section = f"""<!-- rollback-speed:begin -->
## How fast a release rolls back

Generated by `Benchmarks/rollback-speed.sh` (its last run): one cutover worker, `cutover-bench load`
at {rate} requests/s, a plan at weight 10 with `rollback_if error_regression` and
`rollback_if error_rate > 2%` (false alarm 0.2 % per test), green answering 500 to a share of its
requests from the start; {runs} runs per share. Times come from the access log (green's first
500) and the audit log (the `auto_rollback` record, written before the rollback takes effect).
Targets: ≤ 2 s at 5 % (≤ 1 s at 50 %), with ≤ 1 % of all requests failed in that window.

{chr(10).join(table)}
<!-- rollback-speed:end -->
"""
sys.path.insert(0, "Benchmarks")
from report_section import replace_section
replace_section(out, "rollback-speed", section)
print("\n".join(table))
PY
echo "wrote $OUT" >&2
