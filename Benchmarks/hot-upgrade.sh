#!/usr/bin/env bash
# Hot upgrades under load: keep-alive clients and clients opening a connection per request run
# through cutover while it upgrades itself UPGRADES times (`cutover upgrade`, the same binary),
# one every few seconds. Counts what the clients saw: refused, reset and failed requests (goal:
# 0 of each), and writes its section of BENCHMARKS.md (between the hot-upgrade markers).
#
#   Benchmarks/hot-upgrade.sh [UPGRADES]      OUT=/tmp/x.md to write elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
UPGRADES=${1:-5}
INTERVAL=${INTERVAL:-4}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

. Benchmarks/common.sh
bench_setup upgrade

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
    interval 200ms
    ready_after 0s
}
app bench {
    host *
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
EOF
"$BIN/cutover" run -c "$WORK/cutover.conf" 2>"$WORK/cutover.log" &
for _ in $(seq 1 50); do [ -S "$WORK/cutover.sock" ] && break; sleep 0.1; done
sleep 1

DURATION=$(( (UPGRADES + 1) * INTERVAL ))
"$BIN/cutover-bench" load "http://127.0.0.1:$PORT/" -c 50 -t 2 -d "${DURATION}s" --json > "$WORK/keepalive.json" &
KEEPALIVE=$!
"$BIN/cutover-bench" load "http://127.0.0.1:$PORT/" -c 8 -t 1 -d "${DURATION}s" --new-conn --json > "$WORK/newconn.json" &
NEWCONN=$!
: > "$WORK/upgrades.txt"
for i in $(seq 1 "$UPGRADES"); do
    sleep "$INTERVAL"
    started=$(date +%s%N)
    "$BIN/cutover" upgrade -s "$WORK/cutover.sock" >> "$WORK/upgrades.txt" 2>&1 || echo "upgrade $i failed" >> "$WORK/upgrades.txt"
    echo "$(( ($(date +%s%N) - started) / 1000000 ))" >> "$WORK/upgrade-ms.txt"
    echo "upgrade $i: $(tail -1 "$WORK/upgrades.txt")" >&2
done
wait "$KEEPALIVE" "$NEWCONN" || true
"$BIN/cutover" audit verify -c "$WORK/cutover.conf" > "$WORK/audit.txt" 2>&1 || true
# The last process: the one answering on the admin socket now.
LAST=$("$BIN/cutover" history 1 --json -s "$WORK/cutover.sock" 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin)["records"][-1]; print(r.get("details",{}).get("new_pid",""))' || true)
[ -n "$LAST" ] && kill "$LAST" 2>/dev/null || true
pkill -f "cutover run -c $WORK/cutover.conf" 2>/dev/null || true

python3 - "$WORK" "$OUT" "$UPGRADES" "$INTERVAL" <<'PY'
import json, os, statistics, sys
work, out, upgrades, interval = sys.argv[1:5]
keepalive = json.load(open(os.path.join(work, "keepalive.json")))
newconn = json.load(open(os.path.join(work, "newconn.json")))
lines_up = open(os.path.join(work, "upgrades.txt")).read().strip().splitlines()
ok = sum(1 for l in lines_up if l.startswith("upgraded:"))
ms = [int(x) for x in open(os.path.join(work, "upgrade-ms.txt")).read().split()]
audit = open(os.path.join(work, "audit.txt")).read().strip()
def errors(report, kind):
    return sum(v for k, v in report["errors"].items() if kind in k)
rows = []
for name, r in (("keep-alive, 50 connections", keepalive), ("a new connection per request, 8 clients", newconn)):
    refused = errors(r, "connect")
    reset = errors(r, "reset")
    other = sum(r["errors"].values()) - refused - reset
    rows.append(f"| {name} | {r['requests']:,} | {refused} | {reset} | {other + r['non_2xx']} | {r['latency_us']['p99'] / 1000:.2f} ms | {r['latency_us']['max'] / 1000:.2f} ms |")
section = "\n".join([
    "<!-- hot-upgrade:begin -->", "## Hot upgrade", "",
    f"`Benchmarks/hot-upgrade.sh {upgrades}`: cutover (2 workers) upgrades itself {upgrades} times, every {interval} s (`cutover upgrade`,",
    "the same binary: the new process inherits the listening sockets and the admin socket, reports ready, the old one",
    "stops accepting and drains), while two `cutover-bench load` clients run through it.", "",
    f"- upgrades: {ok} of {upgrades} succeeded; `cutover upgrade` took {statistics.median(ms)} ms (median; {min(ms)}–{max(ms)} ms), the new process's start with its health checks included",
    f"- audit: {audit}", "",
    "| load | requests | refused | reset | failed | p99 | max |", "|---|---|---|---|---|---|---|",
    *rows,
    "<!-- hot-upgrade:end -->"])
try:
    text = open(out).read()
except FileNotFoundError:
    text = ""
begin, end = text.find("<!-- hot-upgrade:begin -->"), text.find("<!-- hot-upgrade:end -->")
if begin >= 0 and end >= 0:
    text = text[:begin] + section + text[end + len("<!-- hot-upgrade:end -->"):]
else:
    text = text.rstrip("\n") + "\n\n" + section + "\n"
open(out, "w").write(text)
print(section)
PY
