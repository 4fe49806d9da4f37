# Sourced by the benchmark scripts (after `cd` to the repository): the release build, a work
# folder, processes stopped on exit, free loopback ports, and the three proxies of a comparison.
#   bench_setup NAME   builds cutover and cutover-bench, sets BIN and WORK, starts PIDS
bench_setup() {
    swift build -c release --product cutover >&2
    swift build -c release --product cutover-bench >&2
    BIN=$(pwd)/.build/release
    WORK=$(mktemp -d "/tmp/cutover-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The three proxies of a comparison, started from the configs in $WORK (cutover.conf,
# nginx.conf, haproxy.cfg); sets CUTOVER_PID, NGINX_PIDS (the workers) and HAPROXY_PID.
launch_proxies() {
    "$BIN/cutover" run -c "$WORK/cutover.conf" 2>"$WORK/cutover.log" & CUTOVER_PID=$!
    nginx -c "$WORK/nginx.conf" -p "$WORK/"
    haproxy -D -f "$WORK/haproxy.cfg"
    sleep 1
    NGINX_PIDS=$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')
    HAPROXY_PID=$(cat "$WORK/haproxy.pid")
}

stop_proxies() {
    kill "$CUTOVER_PID" 2>/dev/null || true
    kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    kill "$HAPROXY_PID" 2>/dev/null || true
    wait "$CUTOVER_PID" 2>/dev/null || true
    sleep 0.5
    rm -f "$WORK/nginx.pid" "$WORK/haproxy.pid"
}
