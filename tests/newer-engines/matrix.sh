#!/usr/bin/env bash
# The container tests again in every other generation, cgroup mode and
# low-level runtime (tests/common/generation.rs): `cargo test` alone runs
# them once, on Debian 12's runc and this machine's cgroup v1.
#
#   tests/newer-engines/matrix.sh [CARGO_TEST_ARGS...]
#
# The sid root must be built (rig.sh build). Exits non-zero if any cell
# failed, after running them all; each cell's cargo output goes to stdout.
set -uo pipefail
cd "$(dirname "$0")/../.."

# The test files that start containers through a low-level runtime. The
# reliability file (faults, kills, resource limits of our own runtime) runs
# in the cgroup v2 cells with runc, where its containers meet other rules.
FILES=(runtime hook hook_only cdi cdi_hooks contract requirements)

failed=()
for engines in debian12 sid; do
    for cgroup in v1 v2; do
        for low_level in runc crun; do
            if [ "$engines/$cgroup/$low_level" = debian12/v1/runc ]; then
                continue # cargo test's own run
            fi
            args=()
            for file in "${FILES[@]}"; do args+=(--test "$file"); done
            if [ "$cgroup/$low_level" = v2/runc ]; then args+=(--test reliability); fi
            echo "== $engines engines, cgroup $cgroup, $low_level"
            started=$SECONDS
            if NCR_TEST_ENGINES=$engines NCR_TEST_CGROUP=$cgroup NCR_TEST_LOW_LEVEL=$low_level \
                cargo test --no-fail-fast "$@" "${args[@]}"; then
                echo "== $engines/$cgroup/$low_level: passed in $((SECONDS - started)) s"
            else
                echo "== $engines/$cgroup/$low_level: FAILED in $((SECONDS - started)) s"
                failed+=("$engines/$cgroup/$low_level")
            fi
        done
    done
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed cells: ${failed[*]}" >&2
    exit 1
fi
