#!/usr/bin/env bash
# Coverage-guided fuzzing of Routehub's parsers with cargo-fuzz (libFuzzer).
#
#   scripts/fuzz.sh [--short] [--merge] [SECONDS_PER_TARGET] [TARGET...]
#
# Runs each target (all of them by default) one after another, one
# process each, for SECONDS_PER_TARGET seconds (default 180; 5 with
# --short), starting from the saved corpus (fuzz/corpus/<target>/) and
# every past failure (fuzz/regressions/<target>/). New inputs go to a
# scratch directory; --merge folds those that reach new code into the saved
# corpus. Prints executions per second per target; a crash leaves its input
# in fuzz/artifacts/<target>/ and makes the script exit 1.
#
# Needs a nightly toolchain (`cargo +nightly`) and cargo-fuzz, which it
# installs if missing. --short (what scripts/test.sh runs) skips with one
# line saying why when either can't be had; otherwise that is an error.
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
merge=false
seconds=""
targets=()
for arg in "$@"; do
    case "$arg" in
        --short) short=true ;;
        --merge) merge=true ;;
        -h | --help)
            sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *[!0-9]*) targets+=("$arg") ;;
        *) seconds="$arg" ;;
    esac
done
if [ -z "$seconds" ]; then
    if $short; then seconds=5; else seconds=180; fi
fi

unavailable() {
    if $short; then
        echo "== fuzz: skipped: $1"
        exit 0
    fi
    echo "fuzz: $1" >&2
    exit 1
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    unavailable "no nightly toolchain (cargo +nightly does not run; rustup toolchain install nightly)"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== fuzz: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked >/dev/null 2>&1; then
        unavailable "cargo-fuzz is not installed and cargo install cargo-fuzz --locked failed"
    fi
fi

# What a case is made of is plain safe Rust: no sanitizer (it would only
# slow each run), but debug assertions and overflow checks are on.
fuzz=(cargo +nightly fuzz)
flags=(--sanitizer none)

mapfile -t all < <("${fuzz[@]}" list)
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    if ! printf '%s\n' "${all[@]}" | grep -qx "$t"; then
        echo "fuzz: no target $t (targets: ${all[*]})" >&2
        exit 1
    fi
done

echo "== fuzz: building ${#targets[@]} targets (nightly, libFuzzer)"
build_start=$(date +%s)
if [ ${#targets[@]} -eq 1 ]; then
    "${fuzz[@]}" build "${flags[@]}" "${targets[0]}"
else
    "${fuzz[@]}" build "${flags[@]}"
fi
echo "   built in $(($(date +%s) - build_start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

failed=()
total_execs=0
printf '%-16s %6s %12s %9s %7s  %s\n' target seconds executions execs/s corpus result
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "fuzz/corpus/$t"
    dirs=("$scratch/$t" "fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
    log="$scratch/$t.log"
    result=ok
    # -timeout: one input taking this long is a hang, reported as a crash.
    if ! "${fuzz[@]}" run "${flags[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        result="FAILED"
        failed+=("$t")
    fi
    execs=$(stat number_of_executed_units "$log")
    rate=$(stat average_exec_per_sec "$log")
    total_execs=$((total_execs + ${execs:-0}))
    if $merge && [ "$result" = ok ]; then
        "${fuzz[@]}" run "${flags[@]}" "$t" "fuzz/corpus/$t" "$scratch/$t" -- -set_cover_merge=1 -use_counters=0 >>"$log" 2>&1 ||
            echo "fuzz: merging new inputs of $t into fuzz/corpus/$t failed" >&2
    fi
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    printf '%-16s %6s %12s %9s %7s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
    if [ "$result" != ok ]; then
        grep -E "panicked at|^thread '|Test unit written to|SUMMARY" "$log" | head -n 8 | sed 's/^/    /' || true
    fi
done
echo "== fuzz: $total_execs executions in all"

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}" >&2
    echo "  reproduce: cargo +nightly fuzz run --sanitizer none TARGET fuzz/artifacts/TARGET/<file>" >&2
    echo "  keep it: copy the file to fuzz/regressions/TARGET/ (replayed by cargo test -p routehub-fuzz)" >&2
    exit 1
fi
