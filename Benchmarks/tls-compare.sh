#!/usr/bin/env bash
# TLS termination: cutover against nginx and HAProxy on this machine, in the same run, all three
# on the system libssl with the same certificate (ECDSA P-256, then RSA 2048), 1 worker each,
# forwarding to the same upstream. Writes BENCHMARKS.md's tls section.
#
#   Benchmarks/tls-compare.sh                   # ROUNDS=5 DURATION=5
#   ROUNDS=1 DURATION=2 Benchmarks/tls-compare.sh
#
# Rows: keep-alive TLS requests (wrk, 50 connections): requests/s and proxy CPU µs per request;
# new handshakes per second, full and resumed (`openssl s_time -new` / `-reuse`: one client, a
# GET per connection); user memory per idle TLS keep-alive connection (RSS growth over IDLE
# connections that each made one request). Rounds alternate the order of the proxies.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
IDLE=${IDLE:-2000}
OUT=${OUT:-$ROOT/BENCHMARKS.md}

. Benchmarks/common.sh
bench_setup tls
service nginx stop >/dev/null 2>&1 || true
service haproxy stop >/dev/null 2>&1 || true

UP=$(free_port)
"$BIN/cutover-bench" upstream --port "$UP" --color blue >/dev/null & PIDS+=($!)
sleep 0.3

openssl req -x509 -nodes -days 30 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$WORK/ecdsa.key" -out "$WORK/ecdsa.pem" 2>/dev/null
openssl req -x509 -nodes -days 30 -subj /CN=bench.test -addext subjectAltName=DNS:bench.test -newkey rsa:2048 \
    -keyout "$WORK/rsa.key" -out "$WORK/rsa.pem" 2>/dev/null

start_proxies() {  # $1 = ecdsa | rsa
    local cert=$WORK/$1.pem key=$WORK/$1.key
    P_CUTOVER=$(free_port); P_NGINX=$(free_port); P_HAPROXY=$(free_port)
    cat > "$WORK/cutover.conf" <<EOF
listen 127.0.0.1:$P_CUTOVER tls
workers 1
access_log off
health {
    interval 1h
}
limits {
    max_connections 20000
}
tls {
    certificate $cert $key
    default_certificate bench.test
    session_cache 20000
}
app bench {
    host *
    blue 127.0.0.1:$UP
    green 127.0.0.1:$UP
}
EOF
    cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
worker_rlimit_nofile 16000;
events { worker_connections 8000; }
http {
    access_log off;
    upstream blue { server 127.0.0.1:$UP; keepalive 128; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$P_NGINX ssl reuseport;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        location / {
            proxy_pass http://blue;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    cat "$cert" "$key" > "$WORK/haproxy-$1.pem"
    cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    pidfile $WORK/haproxy.pid
    tune.ssl.cachesize 20000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:$P_HAPROXY ssl crt $WORK/haproxy-$1.pem alpn http/1.1
    default_backend blue
backend blue
    server b 127.0.0.1:$UP
EOF
    launch_proxies
}

pids_of() { case $1 in cutover) echo "$CUTOVER_PID" ;; nginx) echo "$NGINX_PIDS" ;; haproxy) echo "$HAPROXY_PID" ;; esac; }
port_of() { case $1 in cutover) echo "$P_CUTOVER" ;; nginx) echo "$P_NGINX" ;; haproxy) echo "$P_HAPROXY" ;; esac; }
ticks() { local total=0; for pid in "$@"; do total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $total; }

# Connections per wall-clock second of `openssl s_time` ($2: -new or -reuse, $3: the version);
# s_time's own "real seconds" are whole seconds.
handshakes() {
    local start end count
    start=$(date +%s.%N)
    count=$(openssl s_time -connect "127.0.0.1:$1" "$2" "$3" -www / -time "$DURATION" 2>/dev/null \
        | awk '/connections in .* real seconds/ {print $1; exit}')
    end=$(date +%s.%N)
    python3 -c "print(${count:-0} / ($end - $start))"
}

RESULTS=$WORK/results.txt
: > "$RESULTS"
ORDERS=("cutover nginx haproxy" "nginx haproxy cutover" "haproxy cutover nginx")
for cert in ecdsa rsa; do
    start_proxies $cert
    for name in cutover nginx haproxy; do wrk -t1 -c"$CONNS" -d1s "https://127.0.0.1:$(port_of $name)/" >/dev/null; done
    for round in $(seq 1 "$ROUNDS"); do
        for name in ${ORDERS[$(( (round - 1) % 3 ))]}; do
            port=$(port_of "$name")
            # Keep-alive TLS requests.
            before=$(ticks $(pids_of "$name"))
            wrk -t1 -c"$CONNS" -d"${DURATION}s" "https://127.0.0.1:$port/" > "$WORK/wrk.out"
            after=$(ticks $(pids_of "$name"))
            requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
            # New connections: full handshakes, then resumed ones (one client, GET / on each).
            full=$(handshakes "$port" -new -tls1_3)
            resumed=$(handshakes "$port" -reuse -tls1_3)
            resumed12=$(handshakes "$port" -reuse -tls1_2)
            echo "$cert $name $round $requests $((after - before)) ${full:-0} ${resumed:-0} ${resumed12:-0}" >> "$RESULTS"
            echo "$cert round $round $name: $requests requests, $((after - before)) ticks, $full full/s, $resumed resumed/s, $resumed12 resumed TLS 1.2/s" >&2
        done
    done
    if [ "$cert" = ecdsa ]; then
        # User memory per idle TLS keep-alive connection (ECDSA, TLS 1.3).
        for name in cutover nginx haproxy; do
            mem=$(python3 - "$(pids_of $name)" "$(port_of $name)" "$IDLE" <<'PY'
import resource, socket, ssl, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (min(30000, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),) * 2)
pids, port, n = [int(p) for p in sys.argv[1].split()], int(sys.argv[2]), int(sys.argv[3])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
def rss():
    return sum(int(line.split()[1]) for pid in pids for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
def connect():
    s = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="bench.test")
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
    data = b""
    while b"blue" not in data: data += s.recv(4096)
    return s
warm = [connect() for _ in range(50)]
time.sleep(1.5)
before = rss()
socks = [connect() for _ in range(n)]
time.sleep(3)
print(f"{(rss() - before) * 1024 / n:.0f}")
PY
)
            echo "idle $name $mem" >> "$RESULTS"
            echo "idle TLS memory $name: $mem bytes per connection" >&2
        done
    fi
    stop_proxies
done

OPENSSL_VERSION=$(openssl version)
python3 - "$RESULTS" "$OUT" "$ROUNDS" "$DURATION" "$CONNS" "$IDLE" "$OPENSSL_VERSION" <<'PY'
import os, statistics, sys
results, out, rounds, duration, conns, idle, openssl_version = sys.argv[1:]
duration = float(duration); tick = 1e6 / os.sysconf("SC_CLK_TCK")
rows = [line.split() for line in open(results)]
runs, memory = {}, {}
for row in rows:
    if row[0] == "idle":
        memory[row[1]] = int(row[2]) if row[2].lstrip("-").isdigit() else None
        continue
    cert, name, rnd, requests, cpu, full, resumed, resumed12 = row
    requests = int(requests)
    runs.setdefault(cert, {}).setdefault(name, []).append(
        {"round": int(rnd), "rps": requests / duration, "cpu": int(cpu) * tick / max(requests, 1), "full": float(full),
         "resumed": float(resumed), "resumed12": float(resumed12)})
def median(cert, name, key): return statistics.median(r[key] for r in runs[cert][name])
def ratios(cert, key, better_low=False):
    # Per round: cutover against the better peer of that round.
    out = []
    for a, b, c in zip(runs[cert]["cutover"], runs[cert]["nginx"], runs[cert]["haproxy"]):
        peer = min(b[key], c[key]) if better_low else max(b[key], c[key])
        out.append(a[key] / peer if peer else float("nan"))
    return out
lines = []
for cert, label in (("ecdsa", "ECDSA P-256"), ("rsa", "RSA 2048")):
    if cert not in runs: continue
    lines.append(f"\n**{label}**\n")
    lines.append("| proxy | keep-alive TLS requests/s | CPU µs per request | full handshakes/s (1.3) | resumed/s (1.3) | resumed/s (1.2) |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name in ("cutover", "nginx", "haproxy"):
        lines.append(f"| {name} | {median(cert, name, 'rps'):,.0f} | {median(cert, name, 'cpu'):.1f} | "
                     f"{median(cert, name, 'full'):,.0f} | {median(cert, name, 'resumed'):,.0f} | {median(cert, name, 'resumed12'):,.0f} |")
    def fmt(values): return ", ".join(f"{v:.2f}" for v in values)
    lines.append("")
    lines.append(f"cutover ÷ the better peer, per round: requests/s {fmt(ratios(cert, 'rps'))} "
                 f"(median {statistics.median(ratios(cert, 'rps')):.2f}); CPU per request {fmt(ratios(cert, 'cpu', True))} "
                 f"(median {statistics.median(ratios(cert, 'cpu', True)):.2f}); full handshakes/s {fmt(ratios(cert, 'full'))} "
                 f"(median {statistics.median(ratios(cert, 'full')):.2f}); resumed (1.3) {fmt(ratios(cert, 'resumed'))} "
                 f"(median {statistics.median(ratios(cert, 'resumed')):.2f}); resumed (1.2) {fmt(ratios(cert, 'resumed12'))} "
                 f"(median {statistics.median(ratios(cert, 'resumed12')):.2f}).")
if memory:
    lines.append("")
    lines.append("| idle TLS keep-alive connection (ECDSA, TLS 1.3, after one request) | cutover | nginx | haproxy |")
    lines.append("|---|---:|---:|---:|")
    lines.append("| user memory per connection (RSS growth) | " + " | ".join(
        f"{memory.get(n):,} B" if memory.get(n) is not None else "—" for n in ("cutover", "nginx", "haproxy")) + " |")
section = f"""<!-- tls:begin -->
## TLS termination

Generated by `Benchmarks/tls-compare.sh` (its last run; `compare.sh` runs it): {rounds} alternating
rounds of {duration:g} s per proxy, 1 worker each, the same certificate and the same upstream. All three
load the system libssl ({openssl_version}; HAProxy was built against a later 3.0 patch release and
runs on the same shared library). Settings:

- cutover: `listen … tls`, `tls {{ certificate …; default_certificate bench.test; session_cache 20000 }}` (TLS 1.2 and 1.3,
  OpenSSL's default ciphers, session tickets with in-memory keys, `SSL_MODE_RELEASE_BUFFERS`).
- nginx: `listen … ssl reuseport`, `ssl_protocols TLSv1.2 TLSv1.3` (nginx 1.22's default stops at
  1.2, whose resumption skips the key exchange that 1.3's does: not a like-for-like row),
  `ssl_session_cache shared:SSL:10m`, `ssl_session_tickets on`, upstream `keepalive 128`.
- HAProxy: `bind … ssl crt … alpn http/1.1`, `tune.ssl.cachesize 20000`, `http-reuse always`.

Keep-alive requests: `wrk -t1 -c{conns}` over HTTPS; CPU is the proxy's user + system time per request.
Handshakes: `openssl s_time -new` (full) and `-reuse` (resumed), TLS 1.3 unless marked 1.2, one
client fetching `/` per connection — the client's own crypto runs on the same two cores, so these are rates a single
client sees, compared like for like. Memory: {idle} TLS connections that each made one request.
{chr(10).join(lines)}
<!-- tls:end -->
"""
sys.path.insert(0, "Benchmarks")
from report_section import replace_section
replace_section(out, "tls", section)
print(section)
PY
echo "wrote $OUT" >&2
