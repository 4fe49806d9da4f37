#!/usr/bin/env bash
# What progressive routing costs per request: one cutover worker each for
#   plain  — every request to the stable color (no sticky rule),
#   spread — weight 50 without a sticky rule (exact interleaved shares),
#   split  — `sticky cookie` at weight 50, every request carrying a cookie (Cookie scan + hash),
#   mirror — plain plus `mirror 5` (5 % of requests copied to green and compared),
#   mirror-dead / mirror-hung / mirror-slow — the same copies to a candidate that refuses
#            connections, accepts and never answers, or answers after 200 ms: the clients'
#            success and p99 must stay those of plain routing,
# loaded in rotating order (plain spread split mirror, spread split mirror plain, …) by
# `cutover-bench load` at a fixed RATE (open loop, below saturation, so that every configuration
# does the same work per second and batching is alike) for DURATION seconds each; the proxy's CPU
# µs per request (utime + stime from /proc) and the clients' p50/p99, medians and per-round
# ratios against plain. The proxies run on CPU 0, the load generator and the upstreams on the
# other CPUs (taskset), so that the proxy's figures are not its neighbours' scheduling noise. Writes them into BENCHMARKS.md between the routing-cost
# markers. Targets: split ≤ 1.05× and mirror ≤ 1.10× the CPU per request of plain.
#
#   Benchmarks/routing-cost.sh                     # ROUNDS=7 DURATION=6
#   ROUNDS=2 DURATION=3 OUT=/tmp/b.md Benchmarks/routing-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
RATE=${RATE:-15000}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

. Benchmarks/common.sh
bench_setup routing
CPUS=$(nproc)
PROXY_CPU="taskset -c 0"
LOAD_CPU="taskset -c 1-$((CPUS - 1))"
[ "$CPUS" -lt 2 ] && { PROXY_CPU=""; LOAD_CPU=""; }
UP_BLUE=$(free_port)
UP_GREEN=$(free_port)
UP_HUNG=$(free_port)
UP_SLOW=$(free_port)
UP_DEAD=$(free_port)  # nothing listens there: connections are refused
$LOAD_CPU "$BIN/cutover-bench" upstream --port "$UP_BLUE" --color blue >/dev/null & PIDS+=($!)
$LOAD_CPU "$BIN/cutover-bench" upstream --port "$UP_GREEN" --color green >/dev/null & PIDS+=($!)
$LOAD_CPU "$BIN/cutover-bench" upstream --port "$UP_SLOW" --color green --delay 200 >/dev/null & PIDS+=($!)
# Accepts and reads, never answers.
$LOAD_CPU python3 -c '
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True:
    c, _ = s.accept(); held.append(c)
' "$UP_HUNG" & PIDS+=($!)

NAMES="plain spread split mirror mirror-dead mirror-hung mirror-slow"
declare -A PORT PID
for name in $NAMES; do
    PORT[$name]=$(free_port)
    extra=""
    green=$UP_GREEN
    [ "$name" = split ] && extra="sticky cookie cutover_id"
    [ "$name" = mirror ] && extra="mirror 5"
    [ "$name" = mirror-dead ] && { extra="mirror 5"; green=$UP_DEAD; }
    [ "$name" = mirror-hung ] && { extra="mirror 5"; green=$UP_HUNG; }
    [ "$name" = mirror-slow ] && { extra="mirror 5"; green=$UP_SLOW; }
    cat > "$WORK/$name.conf" <<EOF
listen 127.0.0.1:${PORT[$name]}
workers 1
admin_socket $WORK/$name.sock
access_log off
health {
    interval 1s
}
app bench {
    host *
    $extra
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$green
}
EOF
    $PROXY_CPU "$BIN/cutover" run -c "$WORK/$name.conf" 2>"$WORK/$name.log" & PID[$name]=$!
    PIDS+=(${PID[$name]})
done
sleep 1
for name in spread split; do
    "$BIN/cutover" weight green 50 --force --reason "routing-cost bench" -s "$WORK/$name.sock" >&2
done
COOKIE="Cookie: theme=dark; cutover_id=0123456789abcdef0123456789abcdef"
for name in $NAMES; do
    $LOAD_CPU "$BIN/cutover-bench" load "http://127.0.0.1:${PORT[$name]}/" -c "$CONNS" -d 1s --rate "$RATE" -H "$COOKIE" >/dev/null
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
RESULTS=$WORK/results.txt
: > "$RESULTS"
read -r -a ALL <<< "$NAMES"
for round in $(seq "$ROUNDS"); do
    # Rotate the order every round: each configuration takes every position in turn.
    shift_by=$(( (round - 1) % ${#ALL[@]} ))
    order=("${ALL[@]:$shift_by}" "${ALL[@]:0:$shift_by}")
    for name in "${order[@]}"; do
        before=$(cpu_ticks "${PID[$name]}")
        $LOAD_CPU "$BIN/cutover-bench" load "http://127.0.0.1:${PORT[$name]}/" -c "$CONNS" -d "${DURATION}s" --rate "$RATE" \
            -H "$COOKIE" --json > "$WORK/load.json"
        after=$(cpu_ticks "${PID[$name]}")
        read -r requests p50 p99 errors < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["requests"], r["latency_us"]["p50"], r["latency_us"]["p99"], sum(r["errors"].values()) + r["non_2xx"])' "$WORK/load.json")
        echo "$round $name $requests $before $after $errors $p50 $p99" >> "$RESULTS"
        echo "round $round $name: $requests requests, $(( after - before )) ticks, p99 $p99 µs" >&2
    done
done
"$BIN/cutover" stats total --json -s "$WORK/mirror.sock" > "$WORK/mirror-stats.json"

# Heap allocations per request in steady state, each configuration in a fresh process under the
# malloc_count shim: the split must add none; mirroring allocates per copy (its exchange object
# and comparison), so about 5 % of requests pay a few.
cc -O2 -shared -fPIC -o "$WORK/malloc_count.so" Benchmarks/malloc-count/malloc_count.c -ldl -lpthread
: > "$WORK/alloc.txt"
for name in plain split mirror; do
    for pid in "${PID[$name]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    LD_PRELOAD="$WORK/malloc_count.so" MALLOC_COUNT_FILE="$WORK/mallocs-$name" $PROXY_CPU "$BIN/cutover" run -c "$WORK/$name.conf" \
        2>>"$WORK/$name.log" & PID[$name]=$!
    PIDS+=(${PID[$name]})
    sleep 1
    [ "$name" = split ] && "$BIN/cutover" weight green 50 --force -s "$WORK/split.sock" >/dev/null
    $LOAD_CPU "$BIN/cutover-bench" load "http://127.0.0.1:${PORT[$name]}/" -c "$CONNS" -d 2s --rate "$RATE" -H "$COOKIE" >/dev/null
    sleep 0.3
    before=$(cat "$WORK/mallocs-$name")
    $LOAD_CPU "$BIN/cutover-bench" load "http://127.0.0.1:${PORT[$name]}/" -c "$CONNS" -d "${DURATION}s" --rate "$RATE" \
        -H "$COOKIE" --json > "$WORK/alloc-load.json"
    sleep 0.3
    after=$(cat "$WORK/mallocs-$name")
    requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$WORK/alloc-load.json")
    echo "$name $before $after $requests" >> "$WORK/alloc.txt"
    echo "allocations $name: $(( after - before )) over $requests requests" >&2
done

python3 - "$RESULTS" "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$TICKS" "$WORK/mirror-stats.json" "$RATE" "$WORK/alloc.txt" <<'PY'
import json, statistics, sys
path, out, rounds, duration, conns, ticks, mirror_stats, rate, alloc_path = sys.argv[1:10]
allocations = {}
for line in open(alloc_path):
    name, before, after, requests = line.split()
    allocations[name] = (int(after) - int(before)) / max(1, int(requests))
duration, ticks = float(duration), int(ticks)
rows = {}
for line in open(path):
    rnd, name, requests, before, after, errors, p50, p99 = line.split()
    rows.setdefault(name, {})[int(rnd)] = (int(requests), (int(after) - int(before)) / ticks * 1e6 / int(requests), int(errors),
                                           int(p50), int(p99))
def cpu(name): return [rows[name][r][1] for r in sorted(rows[name])]
def rps(name): return [rows[name][r][0] / duration for r in sorted(rows[name])]
def lat(name, i): return statistics.median(rows[name][r][i] for r in rows[name])
shadow = (json.load(open(mirror_stats)).get("shadow") or [{}])[0]
table = ["| configuration | requests/s (median) | CPU µs per request (median) | CPU ratio to plain (median of per-round ratios) | p50 / p99 µs (medians) | errors | heap allocations per request |",
         "|---|---:|---:|---:|---:|---:|---:|"]
for name, label in (("plain", "plain: stable color only"), ("spread", "spread: weight 50, no sticky rule"),
                    ("split", "split: sticky cookie, weight 50"), ("mirror", "mirror 5 % with the shadow diff"),
                    ("mirror-dead", "mirror 5 % to a candidate refusing connections"),
                    ("mirror-hung", "mirror 5 % to a candidate that never answers"),
                    ("mirror-slow", "mirror 5 % to a candidate answering after 200 ms")):
    ratios = [c / p for c, p in zip(cpu(name), cpu("plain"))]
    table.append(f"| {label} | {statistics.median(rps(name)):,.0f} | {statistics.median(cpu(name)):.2f} | "
                 f"{statistics.median(ratios):.3f}× (rounds: {', '.join(f'{r:.3f}' for r in ratios)}) | "
                 f"{lat(name, 3):.0f} / {lat(name, 4):.0f} | {sum(rows[name][r][2] for r in rows[name])} | "
                 + (f"{allocations[name]:.4f}" if name in allocations else "—") + " |")
section = f"""<!-- routing-cost:begin -->
## What progressive routing costs

Generated by `Benchmarks/routing-cost.sh` (its last run): one cutover worker per configuration
on CPU 0 (the load generator and the upstreams on the other CPUs), `cutover-bench load` at
{int(rate):,} requests/s open loop over {conns} connections for {duration:g} s per configuration
and round, {rounds} rounds in rotating order, every request carrying
`Cookie: theme=dark; cutover_id=…`. CPU is the proxy's utime + stime per request.
`spread` separates what a 50/50 split costs (two upstream pools) from what the sticky cookie
costs (the Cookie scan and the hash). Targets: the sticky split at most 1.05×, 5 % mirroring at
most 1.10× the CPU per request of plain routing; with a dead, hung or slow candidate, no client
error and the clients' p99 as with plain routing (within the rounds' noise).

{chr(10).join(table)}

The mirror run copied {shadow.get('mirrored', 0):,} requests and compared {shadow.get('compared', 0):,}
(dropped {shadow.get('dropped', 0)}, candidate failures {shadow.get('candidate_failed', 0)}, diff rate {shadow.get('diff_rate', 0)}: the
bench's upstreams answer their own color's name, so every compared body differs — the diff is expected to say 1.0).
<!-- routing-cost:end -->
"""
sys.path.insert(0, "Benchmarks")
from report_section import replace_section
replace_section(out, "routing-cost", section)
print("\n".join(table))
PY
echo "wrote $OUT" >&2
