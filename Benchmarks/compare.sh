#!/usr/bin/env bash
# cutover against nginx and HAProxy on this machine, in the same run; regenerates BENCHMARKS.md.
#
#   Benchmarks/compare.sh                  # full run (about 10 minutes: 9 alternating rounds of 6 s)
#   ROUNDS=1 DURATION=2 Benchmarks/compare.sh   # a quick look (figures are noisier)
#
# Installs nginx-light, haproxy, wrk and linux-perf with apt-get when they are missing. Every
# load targets 127.0.0.1. All three proxies forward to the same upstream (cutover-bench
# upstream, one process per color), with keep-alive to the upstream configured for each and
# access logs off; they run with 1 worker, then 2, in alternating order (A B C, B C A, C A B …).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. Benchmarks/common.sh  # launch_proxies, stop_proxies (its bench_setup is not used here)
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-6}
CONNS=${CONNS:-50}
IDLE=${IDLE:-5000}
SWITCHES=${SWITCHES:-100}
LATENCY_RATE=${LATENCY_RATE:-5000}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

need=()
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v cc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian starts the packaged services; they must not take CPU or ports during the run.
service nginx stop >/dev/null 2>&1 || true
service haproxy stop >/dev/null 2>&1 || true

swift build -c release --product cutover >&2
swift build -c release --product cutover-bench >&2
BIN=$ROOT/.build/release
WORK=$(mktemp -d /tmp/cutover-compare.XXXXXX)
cc -O2 -shared -fPIC -o "$WORK/malloc_count.so" Benchmarks/malloc-count/malloc_count.c -ldl -lpthread

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "${CUTOVER_PID:-}" ] && kill "$CUTOVER_PID" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    [ -f "$WORK/haproxy.pid" ] && kill "$(cat "$WORK/haproxy.pid")" 2>/dev/null || true
    sleep 0.3
}
trap cleanup EXIT

UP_BLUE=19091
UP_GREEN=19092
PORT_CUTOVER=19081
PORT_NGINX=19082
PORT_HAPROXY=19083

"$BIN/cutover-bench" upstream --port $UP_BLUE --color blue >/dev/null & PIDS+=($!)
"$BIN/cutover-bench" upstream --port $UP_GREEN --color green >/dev/null & PIDS+=($!)
sleep 0.5

write_configs() {  # $1 = workers
    local workers=$1
    cat > "$WORK/cutover.conf" <<EOF
listen 127.0.0.1:$PORT_CUTOVER
workers $workers
admin_socket $WORK/cutover.sock
state_file $WORK/cutover.state
access_log off
health {
    interval 1s
    ready_after 1s
}
limits {
    max_connections 20000
}
app bench {
    host *
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
EOF
    cat > "$WORK/nginx.conf.template" <<EOF
worker_processes $workers;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
worker_rlimit_nofile 16000;
events { worker_connections 8000; }
http {
    access_log off;
    upstream blue  { server 127.0.0.1:$UP_BLUE;  keepalive 128; keepalive_requests 1000000; }
    upstream green { server 127.0.0.1:$UP_GREEN; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$PORT_NGINX reuseport;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://COLOR;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    sed "s/COLOR/blue/" "$WORK/nginx.conf.template" > "$WORK/nginx.conf"
    echo "active blue" > "$WORK/colors.map"
    cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread $workers
    maxconn 8000
    pidfile $WORK/haproxy.pid
    stats socket $WORK/haproxy.sock mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$PORT_HAPROXY
    use_backend %[str(active),map($WORK/colors.map,blue)]
backend blue
    server b 127.0.0.1:$UP_BLUE
backend green
    server g 127.0.0.1:$UP_GREEN
EOF
}

start_proxies() {
    rm -f "$WORK/cutover.state"
    launch_proxies
}

pids_of() {
    case $1 in
        cutover) echo "$CUTOVER_PID" ;;
        nginx) echo "$NGINX_PIDS" ;;
        haproxy) echo "$HAPROXY_PID" ;;
    esac
}
port_of() {
    case $1 in
        cutover) echo $PORT_CUTOVER ;;
        nginx) echo $PORT_NGINX ;;
        haproxy) echo $PORT_HAPROXY ;;
    esac
}
cpu_ticks() {  # utime+stime of every pid given, in clock ticks
    local total=0
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo $total
}

# One measured run: wrk for DURATION seconds, CPU ticks and syscalls of the proxy meanwhile.
# Prints: rps requests cpu_us_per_req syscalls_per_req user_us_per_req
measure() {
    local name=$1 port pids before after perfout requests rps
    port=$(port_of "$name")
    pids=$(pids_of "$name")
    local pidlist
    pidlist=$(echo $pids | tr ' ' ',')
    local ubefore sbefore uafter safter
    ubefore=0; sbefore=0
    for pid in $pids; do
        ubefore=$((ubefore + $(awk '{print $14}' "/proc/$pid/stat")))
        sbefore=$((sbefore + $(awk '{print $15}' "/proc/$pid/stat")))
    done
    perf stat -x, -e raw_syscalls:sys_enter -p "$pidlist" -o "$WORK/perf.out" -- sleep "$DURATION" &
    local perfpid=$!
    wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" > "$WORK/wrk.out"
    wait $perfpid || true
    uafter=0; safter=0
    for pid in $pids; do
        uafter=$((uafter + $(awk '{print $14}' "/proc/$pid/stat")))
        safter=$((safter + $(awk '{print $15}' "/proc/$pid/stat")))
    done
    requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
    local syscalls
    syscalls=$(awk -F, '/raw_syscalls/ {print $1}' "$WORK/perf.out")
    python3 - "$requests" "$ubefore" "$sbefore" "$uafter" "$safter" "${syscalls:-0}" "$DURATION" <<'PY'
import os, sys
requests, ub, sb, ua, sa, syscalls, duration = sys.argv[1:]
requests = int(requests); tick = 1e6 / os.sysconf("SC_CLK_TCK")
user = (int(ua) - int(ub)) * tick / requests
total = (int(ua) - int(ub) + int(sa) - int(sb)) * tick / requests
sc = int(syscalls) / requests if syscalls.isdigit() else float("nan")
print(f"{requests / float(duration):.0f} {requests} {total:.2f} {sc:.2f} {user:.2f}")
PY
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
ORDERS=("cutover nginx haproxy" "nginx haproxy cutover" "haproxy cutover nginx")
for workers in 1 2; do
    write_configs $workers
    start_proxies
    # Warm up every proxy (connections to the upstream, page faults) before measuring.
    for name in cutover nginx haproxy; do wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$(port_of $name)/" >/dev/null; done
    for round in $(seq 1 "$ROUNDS"); do
        order=${ORDERS[$(( (round - 1) % 3 ))]}
        for name in $order; do
            line=$(measure "$name")
            echo "$workers $name $round $line" >> "$RESULTS"
            echo "workers $workers round $round $name: $line" >&2
        done
    done
    stop_proxies
done

# User memory per idle keep-alive connection (1 worker each): RSS growth over IDLE connections
# that each made one request.
write_configs 1
start_proxies
IDLE_RESULTS=$WORK/idle.txt
: > "$IDLE_RESULTS"
for name in cutover nginx haproxy; do
    python3 - "$(pids_of $name)" "$(port_of $name)" "$IDLE" >> "$IDLE_RESULTS" <<'PY'
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (min(30000, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
pids, port, n = [int(p) for p in sys.argv[1].split()], int(sys.argv[2]), int(sys.argv[3])
def rss():
    total = 0
    for pid in pids:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS"): total += int(line.split()[1])
    return total
warm = socket.create_connection(("127.0.0.1", port)); warm.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"); warm.recv(4096)
time.sleep(1.5)
before = rss()
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"); socks.append(s)
for s in socks:
    data = b""
    while b"blue" not in data: data += s.recv(4096)
time.sleep(3)  # proxies may return burst memory lazily (cutover: buffers unused for a full second)
print(f"{(rss() - before) * 1024 / n:.0f}")
PY
    echo "idle memory $name: $(tail -1 "$IDLE_RESULTS") bytes per connection" >&2
done

# Switch scenario: 100 switches under load, each proxy switched its own way.
SWITCH_RESULTS=$WORK/switch.txt
: > "$SWITCH_RESULTS"
sleep 1.5  # cutover's green must be ready (ready_after 1s) for gated switches; the bench forces anyway
"$BIN/cutover-bench" switch --proxy "http://127.0.0.1:$PORT_CUTOVER/" --socket "$WORK/cutover.sock" \
    --switches "$SWITCHES" --interval 100 -c 20 --json | tee "$WORK/switch-cutover.json" >> "$SWITCH_RESULTS"
"$BIN/cutover-bench" switch --proxy "http://127.0.0.1:$PORT_NGINX/" \
    --switch-command "sed s/COLOR/{color}/ $WORK/nginx.conf.template > $WORK/nginx.conf && nginx -c $WORK/nginx.conf -p $WORK/ -s reload" \
    --switches "$SWITCHES" --interval 100 -c 20 --json | tee "$WORK/switch-nginx.json" >> "$SWITCH_RESULTS"
"$BIN/cutover-bench" switch --proxy "http://127.0.0.1:$PORT_HAPROXY/" \
    --switch-command "echo 'set map $WORK/colors.map active {color}' | socat - UNIX-CONNECT:$WORK/haproxy.sock >/dev/null" \
    --switches "$SWITCHES" --interval 100 -c 20 --json | tee "$WORK/switch-haproxy.json" >> "$SWITCH_RESULTS"

# Latency by percentile at a fixed rate (open loop: each request's latency counts from when it
# was due, so a stall shows in the tail instead of slowing the client), one proxy after another.
for name in cutover nginx haproxy; do
    "$BIN/cutover-bench" load "http://127.0.0.1:$(port_of $name)/" -c 20 -d "${DURATION}s" --rate "$LATENCY_RATE" --json \
        > "$WORK/latency-$name.json"
    echo "latency $name at $LATENCY_RATE req/s: $(head -c 300 "$WORK/latency-$name.json")" >&2
done
stop_proxies

# The plots BENCHMARKS.md embeds, drawn from the raw reports above.
PLOTS=$(dirname "$OUT")/Benchmarks/plots
mkdir -p "$PLOTS"
"$BIN/cutover-bench" plot percentiles --out "$PLOTS/latency-percentiles.svg" \
    --title "latency by percentile at $LATENCY_RATE req/s, 20 connections, 1 worker" \
    cutover="$WORK/latency-cutover.json" nginx="$WORK/latency-nginx.json" haproxy="$WORK/latency-haproxy.json"
"$BIN/cutover-bench" plot timelines --out "$PLOTS/switch-timelines.svg" --from -200 --to 1000 \
    cutover="$WORK/switch-cutover.json" nginx="$WORK/switch-nginx.json" haproxy="$WORK/switch-haproxy.json"

# Heap allocations per proxied request in steady state (cutover, 1 worker, LD_PRELOAD shim). The
# control plane is quiet here (no admin socket, health checks an hour apart) so that the count is
# the data plane's.
cat > "$WORK/cutover-alloc.conf" <<EOF
listen 127.0.0.1:$PORT_CUTOVER
workers 1
health {
    interval 1h
}
app bench {
    host *
    blue 127.0.0.1:$UP_BLUE
    green 127.0.0.1:$UP_GREEN
}
EOF
LD_PRELOAD="$WORK/malloc_count.so" MALLOC_COUNT_FILE="$WORK/mallocs" "$BIN/cutover" run -c "$WORK/cutover-alloc.conf" 2>/dev/null &
ALLOC_PID=$!
sleep 1
wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT_CUTOVER/" >/dev/null  # warm: connections, pools, buffers
sleep 0.3
before=$(cat "$WORK/mallocs")
wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT_CUTOVER/" > "$WORK/wrk-alloc.out"
sleep 0.3
after=$(cat "$WORK/mallocs")
# Syscalls by kind on the same process: the data syscalls, and none of the ones a request must not
# cost (epoll_ctl, getsockopt, fcntl, timers, clock_gettime outside the vDSO).
kinds=""
for kind in read write readv writev recvfrom sendto epoll_wait epoll_ctl getsockopt setsockopt fcntl clock_gettime \
            timerfd_settime mmap munmap accept4 close; do
    kinds="$kinds,syscalls:sys_enter_$kind"
done
perf stat -x, -e "${kinds#,}" -p "$ALLOC_PID" -o "$WORK/syscalls.txt" -- sleep "$DURATION" &
perfpid=$!
wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT_CUTOVER/" > "$WORK/wrk-syscalls.out"
wait $perfpid || true
awk '/requests in/ {print $1}' "$WORK/wrk-syscalls.out" > "$WORK/syscalls-requests.txt"
kill $ALLOC_PID; wait $ALLOC_PID 2>/dev/null || true
alloc_requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-alloc.out")
echo "$before $after $alloc_requests" > "$WORK/alloc.txt"

LATENCY_RATE="$LATENCY_RATE" python3 Benchmarks/render_report.py "$WORK" "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$IDLE" "$SWITCHES"
# The cost of progressive routing (sticky split, 5 % mirroring) against plain routing: its own
# section of the report, same rounds and duration.
OUT="$OUT" ROUNDS="$ROUNDS" DURATION="$DURATION" CONNS="$CONNS" Benchmarks/routing-cost.sh
# TLS termination against the same peers (ECDSA and RSA certificates): its own section.
OUT="$OUT" ROUNDS="$(( ROUNDS < 5 ? ROUNDS : 5 ))" DURATION="$DURATION" CONNS="$CONNS" Benchmarks/tls-compare.sh
echo "wrote $OUT" >&2
