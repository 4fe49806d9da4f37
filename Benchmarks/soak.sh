#!/usr/bin/env bash
# The soak: keep-alive load through cutover for MINUTES (default 30) with a switch every 10 s,
# sampling the process's resident memory and open descriptors every 30 s. Passes when, after
# the first two minutes of warm-up, RSS grows by less than 5 %, descriptors stay flat, no
# request fails and the audit log verifies. Writes its section of BENCHMARKS.md (between the
# soak markers) and prints the samples.
#
#   Benchmarks/soak.sh [MINUTES]          OUT=/tmp/x.md to write elsewhere; CONNS=50
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MINUTES=${1:-30}
CONNS=${CONNS:-50}
OUT=${OUT:-$ROOT/BENCHMARKS.md}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-30}
SWITCH_SECONDS=${SWITCH_SECONDS:-10}

. Benchmarks/common.sh
bench_setup soak

UP_BLUE=$(free_port)
UP_GREEN=$(free_port)
PORT=$(free_port)
"$BIN/cutover-bench" upstream --port "$UP_BLUE" --color blue >/dev/null & PIDS+=($!)
"$BIN/cutover-bench" upstream --port "$UP_GREEN" --color green >/dev/null & PIDS+=($!)
cat > "$WORK/cutover.conf" <<EOF
listen 127.0.0.1:$PORT
workers 2
admin_socket $WORK/cutover.sock
state_file $WORK/cutover.state
audit_log $WORK/audit.log
access_log off
health {
    interval 500ms
    ready_after 1s
}
app soak {
    host *
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
EOF
"$BIN/cutover" run -c "$WORK/cutover.conf" 2>"$WORK/cutover.log" & CUTOVER_PID=$!
PIDS+=($CUTOVER_PID)
for _ in $(seq 1 50); do [ -S "$WORK/cutover.sock" ] && break; sleep 0.1; done
sleep 1.5

DURATION=$((MINUTES * 60))
"$BIN/cutover-bench" load "http://127.0.0.1:$PORT/" -c "$CONNS" -t 2 -d "${DURATION}s" --json > "$WORK/load.json" &
LOAD_PID=$!

sample() {  # seconds rss_kib fds
    local rss fds
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$CUTOVER_PID/status")
    fds=$(ls "/proc/$CUTOVER_PID/fd" | wc -l)
    echo "$1 $rss $fds" >> "$WORK/samples.txt"
    echo "soak: ${1}s rss ${rss} KiB fds ${fds}" >&2
}
: > "$WORK/samples.txt"
START=$(date +%s)
NEXT_SAMPLE=0
NEXT_SWITCH=$SWITCH_SECONDS
COLOR=green
SWITCHES=0
SWITCH_FAILURES=0
while kill -0 "$LOAD_PID" 2>/dev/null; do
    ELAPSED=$(( $(date +%s) - START ))
    if [ "$ELAPSED" -ge "$NEXT_SAMPLE" ]; then
        sample "$ELAPSED"
        NEXT_SAMPLE=$((NEXT_SAMPLE + SAMPLE_SECONDS))
    fi
    if [ "$ELAPSED" -ge "$NEXT_SWITCH" ] && [ "$ELAPSED" -lt "$DURATION" ]; then
        if "$BIN/cutover" switch "$COLOR" --force --reason soak -s "$WORK/cutover.sock" >/dev/null; then
            SWITCHES=$((SWITCHES + 1))
        else
            SWITCH_FAILURES=$((SWITCH_FAILURES + 1))
        fi
        [ "$COLOR" = green ] && COLOR=blue || COLOR=green
        NEXT_SWITCH=$((NEXT_SWITCH + SWITCH_SECONDS))
    fi
    sleep 1
done
wait "$LOAD_PID" || true
sample "$(( $(date +%s) - START ))"
kill "$CUTOVER_PID"
wait "$CUTOVER_PID" 2>/dev/null || true

# The audit log: one record per switch, its chain intact.
AUDIT=$("$BIN/cutover" audit verify -c "$WORK/cutover.conf" 2>&1) && AUDIT_OK=yes || AUDIT_OK=no

python3 - "$WORK" "$OUT" "$MINUTES" "$CONNS" "$SWITCHES" "$SWITCH_FAILURES" "$AUDIT_OK" "$AUDIT" <<'PY'
import json, os, sys
work, out, minutes, conns, switches, switch_failures, audit_ok, audit = sys.argv[1:9]
samples = [tuple(int(x) for x in line.split()) for line in open(os.path.join(work, "samples.txt"))]
load = json.load(open(os.path.join(work, "load.json")))
failed = sum(load["errors"].values()) + load["non_2xx"]
warm = [s for s in samples if s[0] >= 120] or samples
rss_growth = (warm[-1][1] - warm[0][1]) / warm[0][1] * 100
# The last sample is taken after the load ended (no client connections): not part of the band.
fds = [s[2] for s in warm[:-1]] if len(warm) > 2 else [s[2] for s in warm]
verdict = {
    "RSS growth after warm-up < 5 %": rss_growth < 5,
    # Descriptors swing with each switch (the old color's upstream connections close as their
    # requests end), so a sample lands anywhere in that swing; a leak would lift the floor.
    # Flat: the lowest sample of the last third is no higher than the lowest of the first third.
    "descriptors flat (floor of the last third ≤ floor of the first third)": min(fds[-max(1, len(fds) // 3):]) <= min(fds[:max(1, len(fds) // 3)]),
    "0 failed requests": failed == 0,
    "every switch command succeeded": int(switch_failures) == 0,
    "audit log verifies": audit_ok == "yes",
}
lines = ["<!-- soak:begin -->", "## Soak", "",
         f"`Benchmarks/soak.sh {minutes}`: keep-alive load (`cutover-bench load -c {conns} -t 2`, closed loop) through cutover",
         f"(2 workers) for {minutes} minutes with a forced switch every 10 s, the process's RSS and open descriptors",
         "sampled every 30 s. Warm-up: the first two minutes.", "",
         f"- requests: {load['requests']:,} ({load['rps']:,.0f}/s), failed: {failed}, colors: "
         + ", ".join(f"{k} {v:,}" for k, v in sorted(load["colors"].items())),
         f"- switches: {switches} ({switch_failures} failed); audit: {audit.strip()}",
         f"- RSS after warm-up: {warm[0][1]:,} KiB → {warm[-1][1]:,} KiB ({rss_growth:+.2f} %); descriptors under load {min(fds)}–{max(fds)} "
         f"(floor {min(fds[:max(1, len(fds) // 3)])} in the first third after warm-up, {min(fds[-max(1, len(fds) // 3):])} in the last third; {samples[-1][2]} after the load ended)",
         f"- latency p50 {load['latency_us']['p50'] / 1000:.2f} ms, p99 {load['latency_us']['p99'] / 1000:.2f} ms, max {load['latency_us']['max'] / 1000:.2f} ms",
         "", "| check | result |", "|---|---|"]
lines += [f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in verdict.items()]
lines += ["", "| seconds | RSS (KiB) | descriptors |", "|---|---|---|"]
lines += [f"| {s[0]} | {s[1]:,} | {s[2]} |" for s in samples]
lines += ["<!-- soak:end -->"]
section = "\n".join(lines)
try:
    text = open(out).read()
except FileNotFoundError:
    text = ""
begin, end = text.find("<!-- soak:begin -->"), text.find("<!-- soak:end -->")
if begin >= 0 and end >= 0:
    text = text[:begin] + section + text[end + len("<!-- soak:end -->"):]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(out, "w").write(text)
print(section)
sys.exit(0 if all(verdict.values()) else 1)
PY
