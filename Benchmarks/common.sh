# Sourced by the benchmark scripts (after `cd` to the repository): the release build, a work
# folder, processes stopped on exit, and free loopback ports.
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
