#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: fuzz/run.sh [seconds-per-target]
# (default 10). Exits non-zero at the first target that finds a crash; the
# input is left in fuzz/artifacts/<target>/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run -s none <target> <file>`).
#
# Stable toolchain only: cargo-fuzz passes nightly-only rustc flags
# (-Zsanitizer, -Cpasses=sancov-module, ...), which stable accepts with
# RUSTC_BOOTSTRAP=1. `-s none`: no AddressSanitizer. The targets are safe
# Rust, where ASan adds little, and ASan would rebuild the world instrumented
# (set FUZZ_SANITIZER=address to use it anyway; the runtime ships with
# rust-std for x86_64-unknown-linux-gnu).
#
# Needs cargo-fuzz: `cargo install cargo-fuzz --locked` (about 70 s on 2 cores).
# New inputs found go to fuzz/corpus-new/<target>/ (git-ignored), so a CI run
# does not change the checked-in corpus; merge them by hand with
# `cargo fuzz cmin` when they are interesting.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-10}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets=(argv request requirements ldcache information config spec_patch)
export RUSTC_BOOTSTRAP=1

echo "== build the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer"

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "corpus-new/$target"
    echo "== fuzz $target for ${seconds}s"
    # corpus-new first: libFuzzer writes new inputs to the first dir only.
    # -rss_limit_mb: a parser that allocates from a length field without
    # checking it is a finding, not an out-of-memory kill of the machine.
    log="$(mktemp)"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "corpus-new/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    # libFuzzer is chatty: show the summary, and everything on a finding.
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        rm -f "$log"
        echo "fuzz target $target failed (status $status): the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    rm -f "$log"
done
echo "== all fuzz targets ran ${seconds}s without a finding"
