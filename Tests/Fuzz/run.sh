#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer) of the parsers, outside the package's own build.
#
#   Tests/Fuzz/run.sh SECONDS [HARNESS...]
#
# Builds every harness (or the ones named: request_head chunked response_head config admin)
# with `swiftc -sanitize=fuzzer,address` and runs each for SECONDS (0: no time limit; give
# -runs=N in CUTOVER_FUZZ_ARGS then). Prints each harness's executions, coverage and corpus;
# exits 1 when a harness crashed, failed an assertion, leaked or timed out, after printing the
# saved input (path and hex dump) and the end of libFuzzer's log.
#
# The modules under test are compiled here, one at a time in dependency order, from
# Sources/NAME/*.swift (swiftc -emit-module, whole module, instrumented) and cached in the build
# folder by a hash of their sources, their dependencies and the flags: a second run only links.
# Nothing in .build (swift build's folder) is read or written.
#
# Environment:
#   CUTOVER_FUZZ_BUILD  build folder (default Tests/Fuzz/.build-fuzz, ignored by git)
#   CUTOVER_FUZZ_ARGS   more libFuzzer options for every harness, e.g. -runs=10000000, or
#                       "-fork=1 -ignore_crashes=1 -runs=10000000" to go on after a finding (every
#                       failing input is saved; the run still exits 1)
#   CUTOVER_FUZZ_KEEP   1: keep each run's corpus and log (their folder is printed)
#   CUTOVER_FUZZ_WORKERS
#                       processes per harness (default 1), sharing one corpus; -runs=N counts
#                       per process, and the executions printed are their sum
#   CUTOVER_FUZZ_COVERAGE
#                       1: measure line coverage instead of fuzzing: the harnesses are built
#                       with coverage mapping (no AddressSanitizer, in BUILD-coverage), run once
#                       over the seeds and over CUTOVER_FUZZ_CORPUS/HARNESS (a kept run's corpus),
#                       and llvm-cov reports the parser files each harness is for
#   CUTOVER_FUZZ_CORPUS a folder with a corpus folder per harness (coverage mode)
#   SWIFTC              the compiler (default: swiftc on PATH)
set -euo pipefail

seconds=${1:?usage: Tests/Fuzz/run.sh SECONDS [HARNESS...]}
shift
all_harnesses=(request_head chunked response_head config admin)
if [ $# -gt 0 ]; then harnesses=("$@"); else harnesses=("${all_harnesses[@]}"); fi

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${CUTOVER_FUZZ_BUILD:-$here/.build-fuzz}
coverage=${CUTOVER_FUZZ_COVERAGE:-0}
workers=${CUTOVER_FUZZ_WORKERS:-1}
[ "$coverage" = 1 ] && build=$build-coverage
swiftc=${SWIFTC:-$(command -v swiftc || true)}
[ -n "$swiftc" ] || { echo "fuzz: swiftc not found" >&2; exit 2; }
# The toolchain's own clang (its sanitizer runtimes match swiftc's).
# The toolchain's folder, through symlinks (a version manager's shim is a symlink or a script;
# the real driver sits next to clang, lld, llvm-cov and the sanitizer runtimes).
toolchain_bin=$(dirname "$(readlink -f "$swiftc")")
clang=$toolchain_bin/clang
[ -x "$clang" ] || clang=$(command -v clang || true)
[ -n "$clang" ] || { echo "fuzz: no clang next to $swiftc or on PATH (the toolchain's clang builds the C targets)" >&2; exit 2; }
mkdir -p "$build/modules" "$build/objects" "$build/stamps" "$build/bin" "$build/cmodules"

# -O with the sanitizers: fast enough to fuzz, and the code under test is the optimised code
# (without the release-only -enforce-exclusivity=unchecked: exclusivity stays checked here).
swift_flags=(-O -g -sanitize=fuzzer,address -swift-version 6 -parse-as-library -package-name cutover)
c_flags=(-O1 -g -fsanitize=address,fuzzer-no-link -fno-omit-frame-pointer)
if [ "$coverage" = 1 ]; then
    swift_flags=(-O -g -sanitize=fuzzer -profile-generate -profile-coverage-mapping -swift-version 6 -parse-as-library -package-name cutover)
    c_flags=(-O1 -g -fsanitize=fuzzer-no-link -fprofile-instr-generate -fcoverage-mapping)
fi
toolchain=$("$swiftc" --version 2>&1 | head -1 || true)

# C targets: a module map for each (as SwiftPM makes from include/NAME.h) and an object.
for target in CCutoverSys CCutoverTLS; do
    mkdir -p "$build/cmodules/$target"
    printf 'module %s {\n    header "%s"\n    export *\n}\n' "$target" "$root/Sources/$target/include/$target.h" \
        > "$build/cmodules/$target/module.modulemap"
done
include_flags=(-I "$build/modules" -I "$build/cmodules/CCutoverSys" -I "$build/cmodules/CCutoverTLS" -I "$root/Sources/COpenSSL")

stamp_of() {  # stamp_of KIND NAME FILES...: hash of the toolchain, flags, file contents and dependency stamps
    local kind=$1 name=$2
    shift 2
    {
        echo "$toolchain ${swift_flags[*]} ${c_flags[*]} $kind $name"
        for file in "$@"; do echo "$file"; cat "$file"; done
    } | sha256sum | cut -d' ' -f1
}

build_c() {  # build_c NAME: Sources/NAME/*.c → objects/NAME.o
    local name=$1
    local sources=("$root/Sources/$name"/*.c)
    local stamp
    stamp=$(stamp_of c "$name" "${sources[@]}" "$root/Sources/$name/include/$name.h")
    if [ "$(cat "$build/stamps/$name" 2>/dev/null)" = "$stamp" ] && [ -f "$build/objects/$name.o" ]; then return; fi
    echo "fuzz: compiling $name (C)"
    "$clang" "${c_flags[@]}" -I "$root/Sources/$name/include" -c "${sources[@]}" -o "$build/objects/$name.o"
    echo "$stamp" > "$build/stamps/$name"
}

build_module() {  # build_module NAME DEPENDENCY...: Sources/NAME/**/*.swift → modules/NAME.swiftmodule, objects/NAME.o
    local name=$1
    shift
    local sources
    mapfile -t sources < <(find "$root/Sources/$name" -name '*.swift' | sort)
    local deps=()
    for dep in "$@"; do deps+=("$build/stamps/$dep"); done
    local stamp
    stamp=$(stamp_of swift "$name" "${sources[@]}" "${deps[@]}")
    if [ "$(cat "$build/stamps/$name" 2>/dev/null)" = "$stamp" ] && [ -f "$build/objects/$name.o" ]; then return; fi
    echo "fuzz: compiling $name (${#sources[@]} files)"
    "$swiftc" "${swift_flags[@]}" "${include_flags[@]}" -module-name "$name" -wmo -num-threads 0 -suppress-warnings \
        -emit-module -emit-module-path "$build/modules/$name.swiftmodule" \
        -c "${sources[@]}" -o "$build/objects/$name.o"
    echo "$stamp" > "$build/stamps/$name"
}

# Module NAME and the modules it needs, in Package.swift's dependency order.
module_closure() {
    case $1 in
        http) echo CutoverHTTP ;;
        config) echo CCutoverSys CutoverSystem CutoverConfig ;;
        control) echo CCutoverSys CutoverSystem CutoverHTTP CutoverConfig CutoverRouting CutoverMetrics CutoverRelease \
            CutoverViews CutoverLoop CCutoverTLS CutoverTLS CutoverControl ;;
    esac
}
harness_modules() {
    case $1 in
        request_head|chunked|response_head) module_closure http ;;
        config) module_closure config ;;
        admin) module_closure control ;;
        *) echo "fuzz: unknown harness '$1' (${all_harnesses[*]})" >&2; return 1 ;;
    esac
}
dependencies_of() {
    case $1 in
        CutoverSystem) echo CCutoverSys ;;
        CutoverConfig) echo CutoverSystem ;;
        CutoverRouting) echo CutoverConfig CutoverSystem ;;
        CutoverMetrics) echo CutoverRouting CutoverConfig CutoverSystem ;;
        CutoverRelease) echo CutoverConfig ;;
        CutoverViews) echo CutoverSystem ;;
        CutoverLoop) echo CutoverSystem CutoverHTTP ;;
        CutoverTLS) echo CCutoverTLS CutoverConfig CutoverSystem ;;
        CutoverControl) echo CutoverLoop CutoverRouting CutoverMetrics CutoverConfig CutoverSystem CutoverHTTP CutoverRelease \
            CutoverTLS CutoverViews ;;
    esac
}

max_len() {
    case $1 in
        config) echo 2048 ;;
        admin) echo 1024 ;;
        *) echo 1024 ;;
    esac
}

build_harness() {  # build_harness NAME → bin/NAME
    local name=$1
    local modules objects=() libs=()
    modules=$(harness_modules "$name")
    for module in $modules; do
        case $module in
            CCutover*) build_c "$module" ;;
            *) build_module "$module" $(dependencies_of "$module") ;;
        esac
        objects+=("$build/objects/$module.o")
    done
    case " $modules " in *" CCutoverTLS "*) libs=(-lssl -lcrypto) ;; esac
    local stamps=()
    for module in $modules; do stamps+=("$build/stamps/$module"); done
    local stamp
    local harness_files=("$here/Common.swift" "$here/$name.swift")
    case $name in request_head|response_head) harness_files+=("$here/HeadHarness.swift") ;; esac
    stamp=$(stamp_of harness "$name" "${harness_files[@]}" "${stamps[@]}")
    if [ "$(cat "$build/stamps/harness-$name" 2>/dev/null)" = "$stamp" ] && [ -x "$build/bin/$name" ]; then return; fi
    echo "fuzz: linking $name"
    "$swiftc" "${swift_flags[@]}" "${include_flags[@]}" -module-name "Fuzz_$name" -use-ld=lld \
        "${harness_files[@]}" "${objects[@]}" "${libs[@]}" -o "$build/bin/$name"
    echo "$stamp" > "$build/stamps/harness-$name"
}

for harness in "${harnesses[@]}"; do
    harness_modules "$harness" >/dev/null
    build_harness "$harness"
done

# The files each harness is for: coverage mode reports these.
harness_sources() {
    case $1 in
        request_head) echo CutoverHTTP/RequestHead.swift CutoverHTTP/HeadScanner.swift CutoverHTTP/ByteClasses.swift CutoverHTTP/HeaderKind+Classify.swift ;;
        response_head) echo CutoverHTTP/ResponseHead.swift CutoverHTTP/HeadScanner.swift ;;
        chunked) echo CutoverHTTP/ChunkedDecoder.swift ;;
        config) echo CutoverConfig/ConfigParser.swift ;;
        admin) echo CutoverControl/AdminCommands.swift ;;
    esac
}
# Where the code a harness is for ends in its last file (AdminCommands.swift goes on with
# ControlPlane.execute, which the admin harness does not call): a line pattern, or nothing.
harness_code_ends_at() {
    case $1 in
        admin) echo '^extension ControlPlane' ;;
    esac
}

if [ "$coverage" = 1 ]; then
    bin_dir=$toolchain_bin
    work_root=$(mktemp -d "${TMPDIR:-/tmp}/cutover-fuzz-coverage.XXXXXX")
    for harness in "${harnesses[@]}"; do
        work="$work_root/$harness"
        mkdir -p "$work/sandbox"
        corpora=("$here/corpus/$harness")
        [ -n "${CUTOVER_FUZZ_CORPUS:-}" ] && [ -d "$CUTOVER_FUZZ_CORPUS/$harness" ] && corpora+=("$CUTOVER_FUZZ_CORPUS/$harness")
        inputs=$(find -L "${corpora[@]}" -type f | wc -l)
        # -runs=0: every input of the corpora once, then exit.
        CUTOVER_FUZZ_SANDBOX="$work/sandbox" LLVM_PROFILE_FILE="$work/%p.profraw" SWIFT_BACKTRACE=enable=no \
            "$build/bin/$harness" -runs=0 -max_len="$(max_len "$harness")" "${corpora[@]}" > "$work/log" 2>&1 \
            || { echo "fuzz coverage: $harness failed on its corpus (log: $work/log)"; tail -20 "$work/log"; exit 1; }
        "$bin_dir/llvm-profdata" merge -sparse "$work"/*.profraw -o "$work/merged.profdata"
        sources=()
        for file in $(harness_sources "$harness"); do sources+=("$root/Sources/$file"); done
        echo "== line coverage of $harness over $inputs inputs (${corpora[*]})"
        end_pattern=$(harness_code_ends_at "$harness")
        last_file=${sources[${#sources[@]}-1]}
        limit=0
        [ -n "$end_pattern" ] && limit=$(grep -n -m1 "$end_pattern" "$last_file" | cut -d: -f1 || true)
        # Per file, from the lcov export (DA:LINE,COUNT): lines with code, lines reached, and
        # the line numbers no input reached.
        "$bin_dir/llvm-cov" export -format=lcov "$build/bin/$harness" -instr-profile="$work/merged.profdata" "${sources[@]}" \
            | awk -v root="$root/Sources/" -v last="$last_file" -v limit="$limit" '
                /^SF:/ { path = substr($0, 4); file = path; sub(root, "", file); lines = 0; hit = 0; missed = "" }
                /^DA:/ {
                    split(substr($0, 4), part, ",")
                    if (path == last && limit > 0 && part[1] + 0 >= limit + 0) next
                    lines++
                    if (part[2] > 0) hit++; else missed = missed " " part[1]
                }
                /^end_of_record/ {
                    total_lines += lines; total_hit += hit
                    printf "%-44s %4d of %4d lines  %6.2f %%\n", file, hit, lines, lines ? 100 * hit / lines : 100
                    if (missed != "") print "    not reached:" missed
                }
                END { printf "%-44s %4d of %4d lines  %6.2f %%\n", "all", total_hit, total_lines, total_lines ? 100 * total_hit / total_lines : 100 }'
    done
    rm -rf "$work_root"
    exit 0
fi

failed=0
work_root=$(mktemp -d "${TMPDIR:-/tmp}/cutover-fuzz.XXXXXX")
summary=()
for harness in "${harnesses[@]}"; do
    work="$work_root/$harness"
    mkdir -p "$work/corpus" "$work/artifacts" "$work/sandbox"
    log="$work/log"
    extra=()
    read -r -a extra <<< "${CUTOVER_FUZZ_ARGS:-}"
    if [ "$seconds" = 0 ]; then budget="no time limit"; else budget="${seconds}s"; fi
    echo "== fuzz $harness: $budget ${CUTOVER_FUZZ_ARGS:-} (log: $log)"
    start=$(date +%s)
    set +e
    # New inputs go to the temporary corpus; the committed seeds are only read.
    # SWIFT_BACKTRACE: the runtime's own crash backtracer would run under ASan after a failed
    # check (and report itself); libFuzzer prints the stack.
    pids=()
    for worker in $(seq 1 "$workers"); do
        # Workers share the corpus folder (libFuzzer reloads it), each with its own log and sandbox.
        CUTOVER_FUZZ_SANDBOX="$work/sandbox/$worker" ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} SWIFT_BACKTRACE=enable=no \
            "$build/bin/$harness" -max_total_time="$seconds" -print_final_stats=1 -max_len="$(max_len "$harness")" \
            -timeout=10 -rss_limit_mb=2048 -dict="$here/$harness.dict" -artifact_prefix="$work/artifacts/" \
            "${extra[@]}" "$work/corpus" "$here/corpus/$harness" > "$log.$worker" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    set -e
    elapsed=$(( $(date +%s) - start ))
    cat "$log".* > "$log"
    # Per worker, the last status line: "#N DONE cov: C ft: F corp: K/SIZE …", or in fork mode
    # "#N: cov: C ft: F corp: K exec/s: E oom/timeout/crash: O/T/X …"; executions add up, the
    # coverage shown is the largest a worker reached.
    execs=0 cov= ft= corp=
    for worker_log in "$log".*; do
        last=$(grep -E '^#[0-9]+:?[[:space:]].*cov: ' "$worker_log" | tail -1 || true)
        worker_execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$worker_log" | tail -1)
        [ -n "$worker_execs" ] || worker_execs=$(echo "$last" | sed -nE 's/^#([0-9]+).*/\1/p')
        execs=$((execs + ${worker_execs:-0}))
        worker_cov=$(echo "$last" | sed -nE 's/.*cov: ([0-9]+).*/\1/p')
        if [ -n "$worker_cov" ] && [ "$worker_cov" -ge "${cov:-0}" ]; then
            cov=$worker_cov
            ft=$(echo "$last" | sed -nE 's/.* ft: ([0-9]+).*/\1/p')
            corp=$(echo "$last" | sed -nE 's/.* corp: ([0-9]+(\/[0-9A-Za-z]+)?).*/\1/p')
        fi
    done
    rate=
    [ "$elapsed" -gt 0 ] && rate=$((execs / elapsed))
    notes=$(grep -c '^FUZZ NOTE' "$log" || true)
    artifacts=$(find "$work/artifacts" -type f | wc -l)
    line="$harness: execs ${execs:-?} in ${elapsed}s (${rate:-?}/s), cov ${cov:-?}, ft ${ft:-?}, corpus ${corp:-?}"
    [ "$notes" -gt 0 ] && line+=", notes in the log: $notes ($(grep -m1 -o '^FUZZ NOTE ([^,]*' "$log" | sed 's/^FUZZ NOTE (//'))"
    if [ $status -ne 0 ] || [ "$artifacts" -gt 0 ]; then
        failed=1
        line+=" — FAILED (libFuzzer exit $status, $artifacts saved inputs)"
        echo "$line"
        echo "-- end of the log ($log):"
        grep -E 'FUZZ ASSERTION FAILED|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY' "$log" | head -5 || true
        tail -40 "$log"
        shown=0
        for artifact in "$work/artifacts"/*; do
            shown=$((shown + 1))
            [ $shown -le 5 ] || { echo "-- ($artifacts saved inputs in all, in $work/artifacts)"; break; }
            [ -f "$artifact" ] || continue
            echo "-- saved input: $artifact ($(stat -c %s "$artifact") bytes); reproduce with"
            echo "   SWIFT_BACKTRACE=enable=no $build/bin/$harness $artifact"
            od -A x -t x1z -v "$artifact" | head -64
        done
    else
        echo "$line"
    fi
    summary+=("$line")
done

echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [ $failed -ne 0 ] || [ "${CUTOVER_FUZZ_KEEP:-0}" = 1 ]; then
    echo "fuzz: logs, corpora and saved inputs kept in $work_root"
else
    rm -rf "$work_root"
fi
exit $failed
