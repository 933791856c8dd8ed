#!/usr/bin/env bash
# GPU acceptance check of the runtime, in one call, on a machine with an
# NVIDIA GPU (root, driver loaded, no network, no cargo, no runc; nvcc and
# python3 there). Everything it needs is carried in tests/gpu/carry/ (made by
# tests/gpu/prepare.sh). Run from anywhere:
#
#     bash tests/gpu/acceptance.sh               # on the GPU machine
#     bash tests/gpu/acceptance.sh --simulated   # here: the test suite's fake driver
#
# Prints `PASS name`, `FAIL name: detail` or `SKIP name: reason` per check,
# goes on after failures, and ends with `N passed, M failed, K skipped`.
# Writes to $OUT (default /tmp/gpu-acceptance-out): acceptance.log (all of the
# output), RESULTS.md, patched-config.json, runtime-debug.log. On the GPU
# machine RESULTS.md is also copied to tests/gpu/RESULTS.md there.
#
# Knobs (environment): ACCEPT_SIMULATED=1 (= --simulated), ACCEPT_TIMING_RUNS
# (20), ACCEPT_RUN_TIMEOUT_S (60 per container), ACCEPT_BUDGET_S (360: checks
# not started by then are skipped, and container timeouts shrink so that the
# whole run stays under about 7 minutes), ACCEPT_KEEP=1 (keep the work dir).
set -u

SIMULATED=${ACCEPT_SIMULATED:-0}
for arg in "$@"; do
    case "$arg" in
    --simulated) SIMULATED=1 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "acceptance.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

GPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$GPU_DIR/../.." && pwd)
CARRY=$GPU_DIR/carry
OUT=${OUT:-/tmp/gpu-acceptance-out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-accept.XXXXXX)
START_S=$(date +%s)
BUDGET_S=${ACCEPT_BUDGET_S:-360}
RUN_TIMEOUT_S=${ACCEPT_RUN_TIMEOUT_S:-60}
TIMING_RUNS=${ACCEPT_TIMING_RUNS:-20}
RUNC_LIB_DIR=/tmp/ncr-gpu-runc/lib # the carried runc's RUNPATH (prepare.sh)

RT=$CARRY/bin/nvidia-container-runtime
HOOK=$CARRY/bin/nvidia-container-runtime-hook
RUNC=$CARRY/runc/runc
HELPER="python3 $GPU_DIR/helper.py"
STATE=$WORK/state
LOGS=$WORK/logs
CONF=$WORK/config.toml
DEBUG_LOG=$WORK/runtime-debug.log
RESULTS=$WORK/results.tsv
FACTS=$WORK/facts.txt
TEMPLATE_ROOTFS=$WORK/rootfs-template
SPEC_TEMPLATE=$WORK/spec-template/config.json
SEQ=0
PASSED=0
FAILED=0
SKIPPED=0

# ------------------------------------------------------------------ output
section() { printf '\n=== %s\n' "$*"; }
info() { printf 'INFO %s\n' "$*"; }
fact() { printf '%s: %s\n' "$1" "$2" >>"$FACTS"; printf 'INFO %s: %s\n' "$1" "$2"; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tr -d '\r' >>"$RESULTS"; }
pass() { PASSED=$((PASSED + 1)); record PASS "$1" "${2:-}"; printf 'PASS %s%s\n' "$1" "${2:+ ($2)}"; }
fail() { FAILED=$((FAILED + 1)); record FAIL "$1" "$2"; printf 'FAIL %s: %s\n' "$1" "$2"; }
skip() { SKIPPED=$((SKIPPED + 1)); record SKIP "$1" "$2"; printf 'SKIP %s: %s\n' "$1" "$2"; }
# Shows a file indented, at most N lines (default 30).
show() { [ -s "$1" ] && sed -n "1,${2:-30}p" "$1" | sed 's/^/    | /'; return 0; }
one_line() { tr '\n' ' ' <"$1" | tr -s ' ' | cut -c1-${2:-300}; }
in_budget() { [ $(($(date +%s) - START_S)) -lt "$BUDGET_S" ]; }
# A container's timeout: ACCEPT_RUN_TIMEOUT_S, less once the budget (plus a
# minute of grace) runs out, so that hanging runs cannot outlast the call.
run_timeout() {
    local left=$((BUDGET_S + 60 - ($(date +%s) - START_S)))
    [ "$left" -lt 5 ] && left=5
    [ "$left" -lt "$RUN_TIMEOUT_S" ] && echo "$left" || echo "$RUN_TIMEOUT_S"
}
now_ns() { date +%s%N; }

# ------------------------------------------------------------------ containers
# new_bundle NAME ARGS_JSON [ENV...]: a bundle with a fresh copy of the rootfs.
new_bundle() {
    local name=$1 args=$2
    shift 2
    local b=$WORK/bundles/$name
    rm -rf "$b"
    mkdir -p "$b/rootfs"
    cp -a "$TEMPLATE_ROOTFS/." "$b/rootfs/"
    $HELPER spec "$SPEC_TEMPLATE" "$b/config.json" "$b/rootfs" "$args" "$@"
    echo "$b"
}

# run_ctr NAME RUNTIME BUNDLE: `RUNTIME run` with a timeout; sets RC, OUTF, ERRF.
run_ctr() {
    local name=$1 runtime=$2 bundle=$3
    SEQ=$((SEQ + 1))
    local id=acc-$$-$SEQ-$name t
    t=$(run_timeout)
    OUTF=$LOGS/$name.out
    ERRF=$LOGS/$name.err
    NVIDIA_CTK_CONFIG_FILE_PATH=$CONF timeout -k 5 "$t" \
        "$runtime" --root "$STATE" run --bundle "$bundle" "$id" </dev/null >"$OUTF" 2>"$ERRF"
    RC=$?
    [ "$RC" = 124 ] && echo "(timed out after ${t}s)" >>"$ERRF"
    "$RUNC" --root "$STATE" delete -f "$id" >/dev/null 2>&1
    return 0
}

# ctr_detail: one line about the last run, for a FAIL.
ctr_detail() { echo "rc=$RC stdout: $(one_line "$OUTF" 200) stderr: $(one_line "$ERRF" 400)"; }

# ------------------------------------------------------------------ preflight
preflight() {
    section "preflight"
    fact "mode" "$([ "$SIMULATED" = 1 ] && echo "SIMULATED (fake driver of the test suite, no GPU)" || echo "real GPU")"
    fact "date" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    fact "repo" "$REPO ($(cat "$CARRY/MANIFEST" 2>/dev/null | sed -n 2p))"
    info "carry manifest:"
    show "$CARRY/MANIFEST" 20
    if [ "$(id -u)" != 0 ]; then
        fail "preflight" "not root: runc, device cgroups and mknod need root"
        return 1
    fi
    local missing=""
    for f in "$RT" "$HOOK" "$RUNC" "$CARRY/runc/lib/libseccomp.so.2" "$CARRY/rootfs.tar"; do
        [ -f "$f" ] || missing="$missing $f"
    done
    if [ -n "$missing" ]; then
        fail "preflight" "missing in carry:$missing (run bash tests/gpu/prepare.sh here and name tests/gpu/carry in carry)"
        return 1
    fi
    command -v python3 >/dev/null || { fail "preflight" "python3 not found"; return 1; }
    chmod 0755 "$CARRY"/bin/* "$RUNC" 2>/dev/null
    mkdir -p "$RUNC_LIB_DIR" "$STATE" "$LOGS" "$WORK/bundles" "$TEMPLATE_ROOTFS" "$(dirname "$SPEC_TEMPLATE")"
    cp "$CARRY/runc/lib/libseccomp.so.2" "$RUNC_LIB_DIR/"
    local bad=""
    for b in "$RT" "$HOOK" "$CARRY/bin/nvidia-ctk" "$RUNC"; do
        local out
        out=$(timeout 10 "$b" --version 2>&1 </dev/null)
        if echo "$out" | grep -qE 'error while loading shared libraries|GLIBC_[0-9.]+. not found|cannot execute|Exec format error'; then
            bad="$bad $(basename "$b"): $(echo "$out" | head -2 | tr '\n' ' ')"
        fi
    done
    if [ -n "$bad" ]; then
        fail "carried-binaries-load" "$bad"
        return 1
    fi
    pass "carried-binaries-load" "runtime, hook, nvidia-ctk and runc start on this host's glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)"
    info "runc: $("$RUNC" --version 2>&1 | head -1)"
    tar -xf "$CARRY/rootfs.tar" -C "$TEMPLATE_ROOTFS" || { fail "preflight" "cannot unpack rootfs.tar"; return 1; }
    (cd "$(dirname "$SPEC_TEMPLATE")" && "$RUNC" spec) || { fail "preflight" "runc spec failed"; return 1; }
    return 0
}

# ------------------------------------------------------------------ host
# Sets HOST_SMI (the host's nvidia-smi command), HOST_LIST, CUDA_VERSION,
# DRIVER_VERSION, GPU_BUS0 (procfs dir of GPU 0), SYNTH_PROC.
HOST_SMI=""
HOST_LIST=""
CUDA_VERSION=""
DRIVER_VERSION=""
GPU_BUS0=""
SYNTH_PROC=0
FAKE=$WORK/fake-driver

host_report_simulated() {
    section "host (simulated: the fake driver)"
    if ! bash "$GPU_DIR/make-fake-driver.sh" "$FAKE" >"$LOGS/fake-driver.log" 2>&1; then
        show "$LOGS/fake-driver.log" 40
        fail "fake-driver" "make-fake-driver.sh failed"
        return 1
    fi
    HOST_SMI="env LD_LIBRARY_PATH=$FAKE/driver-root/usr/lib/x86_64-linux-gnu FAKE_NVML_DEV_ROOT=$FAKE/dev-root $FAKE/driver-root/usr/bin/nvidia-smi"
    HOST_LIST=$($HOST_SMI -L 2>&1)
    DRIVER_VERSION=550.54.15
    CUDA_VERSION=12.4 # the fake libcuda's cuDriverGetVersion: 12040
    GPU_BUS0=$(ls "$FAKE/proc-root/driver/nvidia/gpus" | sort | head -1)
    fact "machine" "$(uname -n), kernel $(uname -r), $(nproc) CPUs, no GPU"
    fact "driver" "fake $DRIVER_VERSION, CUDA $CUDA_VERSION, roots under $FAKE"
    fact "cgroup" "$(stat -fc %T /sys/fs/cgroup 2>/dev/null | sed 's/cgroup2fs/v2 (cgroup2fs)/; s/tmpfs/v1 (tmpfs with controllers)/')"
    info "host nvidia-smi -L (fake, with FAKE_NVML_DEV_ROOT):"
    printf '%s\n' "$HOST_LIST" | sed 's/^/    | /'
    info "device nodes:"
    ls -l "$FAKE/dev-root/dev" | sed 's/^/    | /'
    return 0
}

host_report_real() {
    section "host as found"
    fact "machine" "$(uname -n), kernel $(uname -r) ($(uname -m)), $(nproc) CPUs, $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}"), glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)"
    case "$(uname -r)" in 4.4.0) info "kernel 4.4.0: this looks like gVisor (runsc), where runc may not work and /proc/driver/nvidia may be missing" ;; esac
    systemd-detect-virt >/dev/null 2>&1 && info "virtualization: $(systemd-detect-virt 2>/dev/null)"

    section "driver: kernel module (/proc/driver/nvidia)"
    if [ -r /proc/driver/nvidia/version ]; then
        show /proc/driver/nvidia/version 2
        DRIVER_VERSION=$(head -1 /proc/driver/nvidia/version | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1)
        info "gpus/:"
        for g in /proc/driver/nvidia/gpus/*; do
            [ -d "$g" ] || continue
            echo "    | $(basename "$g"): $(grep -E '^(Model|GPU UUID|Device Minor)' "$g/information" | tr -s ' \t' ' ' | tr '\n' ';')"
        done
        info "params (selection):"
        grep -E '^(ModifyDeviceFiles|DeviceFile)' /proc/driver/nvidia/params 2>/dev/null | sed 's/^/    | /'
        GPU_BUS0=$(ls /proc/driver/nvidia/gpus 2>/dev/null | sort | head -1)
    else
        info "/proc/driver/nvidia/version is MISSING (not a standard host: sandboxed kernel?)"
    fi
    info "/proc/devices:"
    grep -iE 'nvidia' /proc/devices 2>/dev/null | sed 's/^/    | /'

    section "driver: nvidia-smi"
    local smi
    smi=$(command -v nvidia-smi || true)
    [ -z "$smi" ] && [ -x /usr/local/nvidia/bin/nvidia-smi ] && smi=/usr/local/nvidia/bin/nvidia-smi
    if [ -z "$smi" ]; then
        fail "host-nvidia-smi" "no nvidia-smi on PATH or in /usr/local/nvidia/bin"
        return 1
    fi
    HOST_SMI=$smi
    fact "nvidia-smi" "$smi -> $(readlink -f "$smi")"
    HOST_LIST=$(timeout 20 "$smi" -L 2>&1)
    info "host nvidia-smi -L:"
    printf '%s\n' "$HOST_LIST" | sed 's/^/    | /'
    timeout 20 "$smi" 2>&1 | sed -n '1,12p' | sed 's/^/    | /'
    CUDA_VERSION=$(timeout 20 "$smi" 2>/dev/null | grep -oE 'CUDA Version: *[0-9]+\.[0-9]+' | grep -oE '[0-9]+\.[0-9]+' | head -1)
    local q
    q=$(timeout 20 "$smi" --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
    [ -z "$DRIVER_VERSION" ] && DRIVER_VERSION=$q
    [ -n "$q" ] && [ "$q" != "$DRIVER_VERSION" ] && info "nvidia-smi says driver $q, procfs says $DRIVER_VERSION"
    fact "driver" "${DRIVER_VERSION:-?}, CUDA ${CUDA_VERSION:-?} (nvidia-smi header)"
    fact "gpus" "$(printf '%s\n' "$HOST_LIST" | grep -c '^GPU [0-9]') ($(printf '%s\n' "$HOST_LIST" | sed -n 's/^GPU 0: \(.*\) (UUID.*/\1/p'))"

    section "driver: libraries"
    info "ldconfig -p | grep -E 'libcuda|libnvidia-ml':"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvidia-ml\.so' | sed 's/^/    | /'
    ldconfig -p 2>/dev/null | grep -qE 'libcuda\.so' || info "libcuda is NOT in the host's ld.so.cache"
    info "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-<unset>}"
    info "/etc/ld.so.conf.d mentioning nvidia/cuda: $(grep -rlE 'nvidia|cuda' /etc/ld.so.conf.d 2>/dev/null | tr '\n' ' ')"
    local where=""
    for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /lib64 /usr/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/compat /usr/local/cuda/lib64/stubs; do
        local hits
        hits=$(ls "$d"/libcuda.so.* "$d"/libnvidia-ml.so.* 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
        [ -n "$hits" ] && { echo "    | $d: $hits"; where="$where $d"; }
    done
    fact "driver libraries in" "${where:- none of the usual dirs}"
    info "libcuda.so.* anywhere on the root filesystem but /tmp (find -xdev, 20 s):"
    timeout 20 find / -xdev \( -path /proc -o -path /sys -o -path /tmp -o -path "$REPO" \) -prune -o \
        -name 'libcuda.so.*' -print 2>/dev/null | head -20 | sed 's/^/    | /'
    if [ -d /usr/local/nvidia ]; then
        info "/usr/local/nvidia: $(ls /usr/local/nvidia | tr '\n' ' ')"
        info "mount: $(findmnt -no SOURCE,FSTYPE,OPTIONS --target /usr/local/nvidia 2>/dev/null | head -1)"
        touch /usr/local/nvidia/.acc-rw-test 2>/dev/null && { rm -f /usr/local/nvidia/.acc-rw-test; info "/usr/local/nvidia is writable"; } || info "/usr/local/nvidia is read-only"
    fi
    info "firmware: $(ls -d /lib/firmware/nvidia/* 2>/dev/null | tr '\n' ' ')"

    section "device nodes, cgroups, tools"
    ls -l /dev/nvidia* 2>&1 | sed 's/^/    | /'
    ls -l /dev/nvidia-caps 2>/dev/null | sed 's/^/    | /'
    local cg
    if [ -z "$(ls /sys/fs/cgroup 2>/dev/null)" ]; then
        mkdir -p /sys/fs/cgroup 2>/dev/null
        mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null &&
            info "NOTE: no cgroup file system was mounted; mounted cgroup2 at /sys/fs/cgroup for runc (test setup)"
    fi
    cg=$(stat -fc %T /sys/fs/cgroup 2>/dev/null)
    case "$cg" in
    cgroup2fs) fact "cgroup" "v2 (unified, cgroup2fs at /sys/fs/cgroup)" ;;
    tmpfs) fact "cgroup" "v1 (tmpfs with $(ls /sys/fs/cgroup | tr '\n' ' '))" ;;
    *) fact "cgroup" "unknown (/sys/fs/cgroup is '$cg')" ;;
    esac
    info "/proc/self/cgroup: $(head -3 /proc/self/cgroup | tr '\n' ' ')"
    info "host runc: $(command -v runc || echo none) (the carried one is used)"
    info "nvcc: $(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || echo none) $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || /usr/local/cuda/bin/nvcc --version 2>/dev/null | grep -o 'release [0-9.]*')"
    info "host compiler: $(g++ --version 2>/dev/null | head -1 || echo none)"

    # No procfs of the driver: the runtime cannot discover it. As a test-only
    # workaround, a proc root is synthesized from nvidia-smi so that the other
    # checks still say something; the /proc checks are then skipped.
    if [ ! -r /proc/driver/nvidia/version ]; then
        synthesize_proc_root "$smi"
    fi
    return 0
}

synthesize_proc_root() {
    local smi=$1 p=$WORK/synth-proc
    SYNTH_PROC=1
    mkdir -p "$p/driver/nvidia/gpus"
    printf 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  %s  (synthesized by acceptance.sh)\n' "$DRIVER_VERSION" >"$p/driver/nvidia/version"
    local i=0 minors
    minors=$(timeout 20 "$smi" -q 2>/dev/null | sed -n 's/^ *Minor Number *: *//p')
    timeout 20 "$smi" --query-gpu=name,uuid,pci.bus_id --format=csv,noheader 2>/dev/null |
        while IFS=, read -r name uuid bus; do
            name=$(echo "$name" | sed 's/^ *//; s/ *$//')
            uuid=$(echo "$uuid" | tr -d ' ')
            bus=$(echo "$bus" | tr -d ' ' | tr 'A-F' 'a-f')
            bus=${bus: -12}
            local minor
            minor=$(echo "$minors" | sed -n "$((i + 1))p" | tr -dc '0-9')
            [ -n "$minor" ] || minor=$i
            mkdir -p "$p/driver/nvidia/gpus/$bus"
            printf 'Model: \t\t %s\nGPU UUID: \t %s\nBus Location: \t %s\nDevice Minor: \t %s\n' "$name" "$uuid" "$bus" "$minor" \
                >"$p/driver/nvidia/gpus/$bus/information"
            i=$((i + 1))
        done
    printf 'ModifyDeviceFiles: 1\n' >"$p/driver/nvidia/params"
    cp /proc/devices "$p/devices" 2>/dev/null
    GPU_BUS0=$(ls "$p/driver/nvidia/gpus" | sort | head -1)
    fact "proc-root" "SYNTHESIZED at $p from nvidia-smi (host has no /proc/driver/nvidia): a test workaround, not product behaviour"
    find "$p" -type f | sed 's/^/    | /'
}

# ------------------------------------------------------------------ CUDA program
VECTOR_ADD=""
build_cuda_program() {
    section "CUDA program (tests/gpu/vector_add.cu, CUDA runtime static)"
    if [ "$SIMULATED" = 1 ]; then
        skip "cuda-program-build" "simulated: no nvcc and no GPU here"
        return 0
    fi
    local nvcc
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
    if [ -z "$nvcc" ]; then
        fail "cuda-program-build" "nvcc not found"
        return 0
    fi
    local out=$WORK/vector_add cudalib
    cudalib=$(dirname "$(dirname "$(readlink -f "$nvcc")")")
    # Compile with nvcc, link with g++ so that libstdc++ and libgcc are
    # static too: the binary then needs only glibc (and libcuda at run time).
    if timeout 180 "$nvcc" -O2 -cudart static -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
        -c "$GPU_DIR/vector_add.cu" -o "$WORK/vector_add.o" >"$LOGS/nvcc.log" 2>&1 &&
        g++ -o "$out" "$WORK/vector_add.o" -L"$cudalib/lib64" -L"$cudalib/targets/x86_64-linux/lib" \
            -lcudart_static -ldl -lpthread -lrt -static-libstdc++ -static-libgcc >>"$LOGS/nvcc.log" 2>&1; then
        info "built with nvcc + g++ -static-libstdc++ -static-libgcc"
    elif timeout 180 "$nvcc" -O2 -cudart static -Xcompiler -static-libstdc++,-static-libgcc \
        "$GPU_DIR/vector_add.cu" -o "$out" >>"$LOGS/nvcc.log" 2>&1; then
        info "built with nvcc alone (the g++ link failed; see nvcc.log below)"
        show "$LOGS/nvcc.log" 10
    else
        show "$LOGS/nvcc.log" 40
        fail "cuda-program-build" "nvcc failed"
        return 0
    fi
    info "NEEDED: $(readelf -d "$out" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
    info "glibc symbol versions needed: $(objdump -T "$out" 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -3 | tr '\n' ' ')"
    pass "cuda-program-build"
    VECTOR_ADD=$out

    # Does it load with the rootfs's glibc (Debian 12, 2.36)? If not, the
    # rootfs gets this host's glibc files instead (and the log says so).
    local multi=$TEMPLATE_ROOTFS/usr/lib/x86_64-linux-gnu
    if "$multi/ld-linux-x86-64.so.2" --library-path "$multi" --list "$out" >"$LOGS/ldlist.log" 2>&1 &&
        ! grep -q 'not found' "$LOGS/ldlist.log"; then
        info "vector_add loads with the rootfs's glibc ($("$multi/libc.so.6" | head -1 | grep -oE 'version [0-9.]+'))"
    else
        show "$LOGS/ldlist.log" 10
        info "NOTE: vector_add needs a newer glibc than the rootfs's: the rootfs gets this host's glibc files"
        for lib in libc.so.6 ld-linux-x86-64.so.2 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
            for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64; do
                [ -e "$d/$lib" ] && { cp -L "$d/$lib" "$multi/$lib"; break; }
            done
        done
        fact "rootfs glibc" "replaced by the host's $(getconf GNU_LIBC_VERSION) (vector_add needed it)"
    fi
    cp "$out" "$TEMPLATE_ROOTFS/usr/local/bin/vector_add"

    local host_out
    host_out=$(timeout 60 "$out" 2>&1)
    local rc=$?
    printf '%s\n' "$host_out" | sed 's/^/    | /'
    if [ $rc = 0 ] && echo "$host_out" | grep -q 'vector_add: OK'; then
        pass "cuda-program-host" "$(echo "$host_out" | grep -o 'device0=.*')"
    else
        fail "cuda-program-host" "rc=$rc: $(echo "$host_out" | tail -1)"
    fi
    if [ -z "$CUDA_VERSION" ]; then
        local api
        api=$(echo "$host_out" | sed -n 's/.*driver_api=\([0-9]*\).*/\1/p')
        [ -n "$api" ] && CUDA_VERSION="$((api / 1000)).$(((api % 1000) / 10))"
        info "CUDA version from cudaDriverGetVersion: ${CUDA_VERSION:-?}"
    fi
}

# ------------------------------------------------------------------ config
# write_config NAME [DRIVER_ROOT DEV_ROOT PROC_ROOT]
write_config() {
    local name=$1 root=${2:-} dev=${3:-} proc=${4:-}
    {
        echo "# acceptance.sh config: $name"
        if [ -n "$root" ]; then
            echo "[nvidia-container-cli]"
            echo "root = \"$root\""
            echo
        fi
        echo "[nvidia-container-runtime]"
        echo "runtimes = [\"$RUNC\"]"
        echo "debug = \"$DEBUG_LOG\""
        echo "log-level = \"debug\""
        [ -n "$dev" ] && echo "dev-root = \"$dev\""
        [ -n "$proc" ] && echo "proc-root = \"$proc\""
    } >"$CONF"
}

# The workload of the probe and of the timing: the CUDA program, or in
# simulated mode (or without one) nvidia-smi -L.
WORKLOAD_ARGS='["nvidia-smi","-L"]'
WORKLOAD_OK='^GPU 0:'
WORKLOAD_NAME="nvidia-smi -L"
PATCHED=$WORK/patched-config.json
CONFIG_NAME=""

probe() { # probe CONFIG_NAME: create through our runtime, keep the patched spec
    local name=$1 b
    b=$(new_bundle "probe-$name" "$WORKLOAD_ARGS" NVIDIA_VISIBLE_DEVICES=all)
    SEQ=$((SEQ + 1))
    local id=acc-$$-$SEQ-probe
    NVIDIA_CTK_CONFIG_FILE_PATH=$CONF timeout -k 5 "$(run_timeout)" \
        "$RT" --root "$STATE" create --bundle "$b" "$id" </dev/null >"$LOGS/probe-$name.out" 2>"$LOGS/probe-$name.err"
    PROBE_RC=$?
    "$RUNC" --root "$STATE" delete -f "$id" >/dev/null 2>&1
    PROBE_ERR=$(one_line "$LOGS/probe-$name.err" 500)
    PROBE_WHY=$($HELPER probe-ok "$b/config.json" 2>&1)
    local ok=$?
    [ $ok = 0 ] && cp "$b/config.json" "$PATCHED"
    return $ok
}

choose_config() {
    section "driver discovery through the runtime (create with NVIDIA_VISIBLE_DEVICES=all)"
    if [ "$SIMULATED" = 1 ]; then
        write_config "fake driver" "$FAKE/driver-root" "$FAKE/dev-root" "$FAKE/proc-root"
        if probe simulated; then
            CONFIG_NAME="fake driver roots"
            pass "driver-discovery" "$PROBE_WHY"
        else
            fail "driver-discovery" "$PROBE_WHY; create rc=$PROBE_RC: $PROBE_ERR"
            return 1
        fi
    else
        local proc=""
        [ "$SYNTH_PROC" = 1 ] && proc=$WORK/synth-proc
        # 1. the defaults: driver root / (ld.so.cache, else a scan of the
        #    usual dirs, /usr/local/nvidia/lib64 included).
        write_config "defaults" "" "" "$proc"
        if probe default; then
            CONFIG_NAME="defaults (driver root /)"
        else
            info "defaults: $PROBE_WHY; create rc=$PROBE_RC: $PROBE_ERR"
            # 2. the driver in its own tree: /usr/local/nvidia as the driver
            #    root (lib64/, bin/ inside), device nodes in the host's /dev.
            if [ -d /usr/local/nvidia ]; then
                write_config "driver root /usr/local/nvidia" /usr/local/nvidia / "$proc"
                if probe usrlocal; then
                    CONFIG_NAME="root = /usr/local/nvidia, dev-root = /"
                else
                    info "driver root /usr/local/nvidia: $PROBE_WHY; create rc=$PROBE_RC: $PROBE_ERR"
                fi
            fi
        fi
        if [ -z "$CONFIG_NAME" ]; then
            fail "driver-discovery" "no config let the runtime find the driver (see INFO lines above)"
            return 1
        fi
        pass "driver-discovery" "config: $CONFIG_NAME; $PROBE_WHY"
    fi
    fact "runtime config" "$CONFIG_NAME$([ "$SYNTH_PROC" = 1 ] && echo ", proc-root = synthesized")"
    fact "libcuda.so.1 injected from" "$($HELPER mount-source "$PATCHED" libcuda.so.)"
    fact "nvidia-smi injected from" "$($HELPER mount-source "$PATCHED" nvidia-smi)"
    info "config.toml used:"
    show "$CONF" 20
    info "what the runtime wrote into config.json (probe):"
    $HELPER summary "$PATCHED" | sed 's/^/    /'
    [ "$PROBE_RC" = 0 ] || info "NOTE: the probe's create itself failed (rc=$PROBE_RC): $PROBE_ERR"
    cp "$PATCHED" "$OUT/patched-config.json"
    return 0
}

# ------------------------------------------------------------------ checks
check_runc_sanity() {
    local b
    b=$(new_bundle runc-sanity '["sh","-c","echo runc-ok; cat /etc/debian_version"]')
    run_ctr runc-sanity "$RUNC" "$b"
    if [ "$RC" = 0 ] && grep -q runc-ok "$OUTF"; then
        pass "runc-sanity" "plain runc runs the rootfs (Debian $(sed -n 2p "$OUTF"))"
        return 0
    fi
    fail "runc-sanity" "plain runc cannot run a container here: $(ctr_detail)"
    return 1
}

# smi_check NAME DEVICES EXPECTED: nvidia-smi -L in a container equals EXPECTED.
smi_check() {
    local name=$1 devices=$2 expected=$3 b
    b=$(new_bundle "$name" '["nvidia-smi","-L"]' "NVIDIA_VISIBLE_DEVICES=$devices")
    run_ctr "$name" "$RT" "$b"
    local got
    got=$(tr -d '\r' <"$OUTF")
    if [ "$RC" = 0 ] && [ "$got" = "$expected" ] && [ -n "$got" ]; then
        pass "$name" "NVIDIA_VISIBLE_DEVICES=$devices: $(printf '%s' "$got" | wc -l | awk '{print $1+1}') line(s) equal the host's"
    else
        fail "$name" "NVIDIA_VISIBLE_DEVICES=$devices: expected [$(echo "$expected" | tr '\n' '|')] got [$(echo "$got" | tr '\n' '|')] rc=$RC stderr: $(one_line "$ERRF" 400)"
    fi
}

check_smi() {
    section "nvidia-smi -L inside vs on the host"
    local n
    n=$(printf '%s\n' "$HOST_LIST" | grep -c '^GPU [0-9]')
    if [ "$n" = 0 ]; then
        fail "smi-list-all" "the host's nvidia-smi -L lists no GPU: $HOST_LIST"
        return
    fi
    local host_gpus
    host_gpus=$(printf '%s\n' "$HOST_LIST" | grep '^GPU [0-9]')
    smi_check smi-list-all all "$host_gpus"
    smi_check smi-list-index0 0 "$(printf '%s\n' "$host_gpus" | head -1)"
    local last_line uuid model
    last_line=$(printf '%s\n' "$host_gpus" | tail -1)
    uuid=$(echo "$last_line" | sed -n 's/.*(UUID: \(GPU-[^)]*\)).*/\1/p')
    model=$(echo "$last_line" | sed -n 's/^GPU [0-9]*: \(.*\) (UUID.*/\1/p')
    if [ -n "$uuid" ]; then
        smi_check smi-list-uuid "$uuid" "GPU 0: $model (UUID: $uuid)"
    else
        fail "smi-list-uuid" "no UUID in the host's list: $last_line"
    fi
}

check_none() {
    section "NVIDIA_VISIBLE_DEVICES=none: driver, no GPU"
    local b
    b=$(new_bundle none '["sh","-c","nvidia-smi -L; echo smi_rc=$?; echo ---dev; ls /dev; echo ---lib; ls /usr/lib/x86_64-linux-gnu"]' NVIDIA_VISIBLE_DEVICES=none)
    run_ctr none "$RT" "$b"
    show "$OUTF" 8
    local problems=""
    [ "$RC" = 0 ] || problems="$problems container rc=$RC ($(one_line "$ERRF" 300));"
    grep -qE '^GPU [0-9]+:' "$OUTF" && problems="$problems nvidia-smi lists a GPU;"
    grep -q 'smi_rc=' "$OUTF" || problems="$problems no output;"
    grep -qE 'not found|error while loading' "$OUTF" && problems="$problems nvidia-smi or its library missing;"
    grep -q 'No devices were found' "$OUTF" || problems="$problems no 'No devices were found';"
    sed -n '/^---lib/,$p' "$OUTF" | grep -qx 'libnvidia-ml.so.1' || problems="$problems no libnvidia-ml.so.1;"
    sed -n '/^---lib/,$p' "$OUTF" | grep -qx 'libcuda.so.1' || problems="$problems no libcuda.so.1;"
    sed -n '/^---dev/,/^---lib/p' "$OUTF" | grep -qx 'nvidiactl' || problems="$problems no /dev/nvidiactl;"
    sed -n '/^---dev/,/^---lib/p' "$OUTF" | grep -qE '^nvidia[0-9]+$' && problems="$problems a /dev/nvidiaN is there;"
    if [ -z "$problems" ]; then
        pass "visible-none" "nvidia-smi: No devices were found; libcuda.so.1, libnvidia-ml.so.1, /dev/nvidiactl present; no /dev/nvidiaN"
    else
        fail "visible-none" "$problems"
    fi
}

# no_gpu_check NAME [ENV]: a container that must be left alone.
no_gpu_check() {
    local name=$1
    shift
    local b before after
    b=$(new_bundle "$name" '["sh","-c","echo ---dev; ls /dev; echo ---lib; ls /usr/lib/x86_64-linux-gnu; echo ---bin; command -v nvidia-smi || echo no-nvidia-smi"]' "$@")
    before=$(sha256sum <"$b/config.json")
    run_ctr "$name" "$RT" "$b"
    after=$(sha256sum <"$b/config.json")
    local problems=""
    [ "$RC" = 0 ] || problems="$problems container rc=$RC ($(one_line "$ERRF" 300));"
    [ "$before" = "$after" ] || problems="$problems config.json was rewritten;"
    grep -qE '^nvidia' "$OUTF" && problems="$problems /dev/nvidia* present: $(grep -E '^nvidia' "$OUTF" | tr '\n' ' ');"
    grep -qE '^lib(cuda|nvidia)' "$OUTF" && problems="$problems driver libraries present;"
    grep -q 'no-nvidia-smi' "$OUTF" || problems="$problems nvidia-smi present;"
    if [ -z "$problems" ]; then
        pass "$name" "config.json untouched; no /dev/nvidia*, no driver library, no nvidia-smi"
    else
        fail "$name" "$problems"
    fi
}

check_void() {
    section "NVIDIA_VISIBLE_DEVICES=void, and no request at all: left alone"
    no_gpu_check visible-void NVIDIA_VISIBLE_DEVICES=void
    no_gpu_check no-request
}

check_cuda_container() {
    section "CUDA program inside the container"
    if [ "$SIMULATED" = 1 ]; then
        skip "cuda-program-container" "simulated: no GPU"
        return
    fi
    if [ -z "$VECTOR_ADD" ]; then
        fail "cuda-program-container" "no CUDA program (build failed)"
        return
    fi
    local b
    b=$(new_bundle cuda '["/usr/local/bin/vector_add"]' NVIDIA_VISIBLE_DEVICES=all)
    run_ctr cuda "$RT" "$b"
    show "$OUTF" 5
    if [ "$RC" = 0 ] && grep -q 'vector_add: OK' "$OUTF"; then
        pass "cuda-program-container" "$(grep -o 'device0=.*' "$OUTF")"
    else
        fail "cuda-program-container" "$(ctr_detail)"
    fi
}

check_proc() {
    section "/proc/driver/nvidia inside (NVIDIA_VISIBLE_DEVICES=0)"
    if [ "$SIMULATED" = 1 ]; then
        skip "proc-modify-device-files" "simulated: the container's /proc has no /proc/driver/nvidia to mask"
        skip "proc-gpus-only-selected" "simulated: the container's /proc has no /proc/driver/nvidia to mask"
        return
    fi
    if [ "$SYNTH_PROC" = 1 ]; then
        skip "proc-modify-device-files" "the host has no /proc/driver/nvidia"
        skip "proc-gpus-only-selected" "the host has no /proc/driver/nvidia"
        return
    fi
    local b
    b=$(new_bundle proc '["sh","-c","cat /proc/driver/nvidia/params; echo ---gpus; ls /proc/driver/nvidia/gpus"]' NVIDIA_VISIBLE_DEVICES=0)
    run_ctr proc "$RT" "$b"
    grep -E '^(ModifyDeviceFiles|DeviceFile)' "$OUTF" | sed 's/^/    | /'
    if [ "$RC" = 0 ] && grep -qE '^ModifyDeviceFiles: *0$' "$OUTF"; then
        pass "proc-modify-device-files" "ModifyDeviceFiles: 0 inside (host: $(grep -E '^ModifyDeviceFiles' /proc/driver/nvidia/params 2>/dev/null))"
    else
        fail "proc-modify-device-files" "inside: '$(grep -E '^ModifyDeviceFiles' "$OUTF")'; $(ctr_detail)"
    fi
    local got host_count
    got=$(sed -n '/^---gpus/,$p' "$OUTF" | sed 1d | tr '\n' ' ' | sed 's/ $//')
    host_count=$(ls /proc/driver/nvidia/gpus | wc -l)
    if [ "$RC" = 0 ] && [ "$got" = "$GPU_BUS0" ]; then
        pass "proc-gpus-only-selected" "gpus/ = $got (host has $host_count$([ "$host_count" = 1 ] && echo ': with one GPU this only shows the GPU is there'))"
    else
        fail "proc-gpus-only-selected" "gpus/ inside = '$got', want '$GPU_BUS0'; $(ctr_detail)"
    fi
}

# The CUDA version the driver's libcuda.so.1 reports (cuDriverGetVersion),
# through the loader's normal search (LD_LIBRARY_PATH included); needs gcc.
cuda_version_from_libcuda() {
    command -v gcc >/dev/null || return 1
    cat >"$WORK/cudaver.c" <<'EOF'
#include <dlfcn.h>
#include <stdio.h>
int main(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    int (*get)(int *), v = 0;
    if (!h) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    get = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    if (!get || get(&v) != 0) return 1;
    printf("%d.%d\n", v / 1000, (v % 1000) / 10);
    return 0;
}
EOF
    gcc -o "$WORK/cudaver" "$WORK/cudaver.c" -ldl 2>/dev/null && timeout 20 "$WORK/cudaver"
}

check_require() {
    if [ -z "$CUDA_VERSION" ]; then
        CUDA_VERSION=$(cuda_version_from_libcuda 2>/dev/null)
        info "CUDA version from libcuda.so.1's cuDriverGetVersion: ${CUDA_VERSION:-unknown}"
    fi
    section "NVIDIA_REQUIRE_CUDA against the host's CUDA ${CUDA_VERSION:-?}"
    if [ -z "$CUDA_VERSION" ]; then
        fail "require-cuda-above" "the host's CUDA version is unknown"
        fail "require-cuda-below" "the host's CUDA version is unknown"
        return
    fi
    local major=${CUDA_VERSION%%.*} minor=${CUDA_VERSION#*.} above below
    above="$major.$((minor + 1))"
    if [ "$minor" -gt 0 ]; then below="$major.$((minor - 1))"; else below="$((major - 1)).0"; fi
    local args='["sh","-c","echo container-started; nvidia-smi -L >/dev/null 2>&1; echo smi_rc=$?"]'
    local b
    b=$(new_bundle req-above "$args" NVIDIA_VISIBLE_DEVICES=all "NVIDIA_REQUIRE_CUDA=cuda>=$above")
    run_ctr req-above "$RT" "$b"
    info "cuda>=$above: rc=$RC stderr: $(one_line "$ERRF" 400)"
    if grep -q container-started "$OUTF"; then
        fail "require-cuda-above" "cuda>=$above on a CUDA $CUDA_VERSION host: the container STARTED (requirement not enforced)"
    elif [ "$RC" != 0 ] && grep -q 'nvidia-container-runtime' "$ERRF" && grep -qiE 'cuda' "$ERRF"; then
        pass "require-cuda-above" "cuda>=$above refused: $(grep -m1 -iE 'cuda' "$ERRF" | cut -c1-300)"
    else
        fail "require-cuda-above" "cuda>=$above: not started, but not with our message: rc=$RC $(one_line "$ERRF" 300)"
    fi
    local v
    for v in "$below" "$CUDA_VERSION"; do
        local name=require-cuda-below
        [ "$v" = "$CUDA_VERSION" ] && name=require-cuda-equal
        b=$(new_bundle "req-$v" "$args" NVIDIA_VISIBLE_DEVICES=all "NVIDIA_REQUIRE_CUDA=cuda>=$v")
        run_ctr "$name" "$RT" "$b"
        if [ "$RC" = 0 ] && grep -q container-started "$OUTF" && grep -q 'smi_rc=0' "$OUTF"; then
            pass "$name" "cuda>=$v accepted on CUDA $CUDA_VERSION"
        else
            fail "$name" "cuda>=$v on CUDA $CUDA_VERSION: $(ctr_detail)"
        fi
    done
}

# The requirement string of the nvidia/cuda:12.6 images: its cuda>= term
# makes the runtime dlopen the driver root's libcuda and call
# cuDriverGetVersion, and a failing cuda>= falls through to brand= terms.
CUDA_12_IMAGE_REQUIRE='cuda>=12.6 brand=unknown,driver>=470,driver<471 brand=grid,driver>=470,driver<471 brand=tesla,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 brand=quadro,driver>=470,driver<471 brand=quadrortx,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 brand=vapps,driver>=470,driver<471 brand=vpc,driver>=470,driver<471 brand=vcs,driver>=470,driver<471 brand=vws,driver>=470,driver<471 brand=cloudgaming,driver>=470,driver<471 brand=unknown,driver>=535,driver<536 brand=geforce,driver>=535,driver<536'
REQUIRE_COST=""

# What the real driver adds to a start: `create` into a no-op low-level
# runtime (true) with a stock CUDA image's NVIDIA_REQUIRE_CUDA against the
# same without it, interleaved. The difference is the dlopen of libcuda and
# cuDriverGetVersion (NVML too when cuda>= fails).
check_require_cost() {
    section "cost of NVIDIA_REQUIRE_CUDA: $TIMING_RUNS x create into a no-op runtime, with and without, interleaved"
    local conf_noop=$WORK/config-noop.toml truepath
    truepath=$(command -v true)
    sed "s#^runtimes = .*#runtimes = [\"$truepath\"]#; s#^debug = .*#debug = \"/dev/null\"#" "$CONF" >"$conf_noop"
    local with without i t0 t1 bad=0 require=$CUDA_12_IMAGE_REQUIRE
    # A refused create stops early and would measure nothing: on a host below
    # CUDA 12.6 (the simulated one has 12.4) the image's string is kept whole
    # but for its cuda term, lowered to the host's, so both sides start.
    if [ -n "$CUDA_VERSION" ] && [ "$(printf '%s\n' "$CUDA_VERSION" 12.6 | sort -V | head -1)" != 12.6 ]; then
        require="cuda>=$CUDA_VERSION ${CUDA_12_IMAGE_REQUIRE#* }"
        info "host CUDA $CUDA_VERSION < 12.6: measuring with cuda>=$CUDA_VERSION and the image's brand terms"
    fi
    with=$(new_bundle cost-with '["true"]' NVIDIA_VISIBLE_DEVICES=all "NVIDIA_REQUIRE_CUDA=$require")
    without=$(new_bundle cost-without '["true"]' NVIDIA_VISIBLE_DEVICES=all)
    cp "$with/config.json" "$WORK/cost-with.json"
    cp "$without/config.json" "$WORK/cost-without.json"
    : >"$WORK/c-with"
    : >"$WORK/c-without"
    for i in $(seq 1 "$TIMING_RUNS"); do
        in_budget || break
        local order="with without"
        [ $((i % 2)) = 0 ] && order="without with"
        for side in $order; do
            local b=$with
            [ "$side" = without ] && b=$without
            cp "$WORK/cost-$side.json" "$b/config.json"
            t0=$(now_ns)
            NVIDIA_CTK_CONFIG_FILE_PATH=$conf_noop "$RT" --root "$STATE" create --bundle "$b" "cost-$$-$i-$side" \
                </dev/null >"$LOGS/cost-$side.out" 2>"$LOGS/cost-$side.err"
            local rc=$?
            t1=$(now_ns)
            if [ "$rc" = 0 ]; then
                echo "$(((t1 - t0) / 1000))" >>"$WORK/c-$side"
            else
                bad=$((bad + 1))
                info "$side: rc=$rc $(one_line "$LOGS/cost-$side.err" 300)"
            fi
        done
    done
    local mw mo
    mw=$(sort -n "$WORK/c-with" | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}')
    mo=$(sort -n "$WORK/c-without" | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}')
    REQUIRE_COST=$(awk -v w="$mw" -v o="$mo" -v nw="$(wc -l <"$WORK/c-with")" -v no="$(wc -l <"$WORK/c-without")" 'BEGIN {
        printf "| create into a no-op runtime | runs | median (ms) |\n|---|---|---|\n"
        printf "| with the CUDA 12.6 image NVIDIA_REQUIRE_CUDA | %d | %.2f |\n", nw, w/1000
        printf "| without | %d | %.2f |\n", no, o/1000
        printf "\nthe requirement check adds **%.2f ms** (median)\n", (w-o)/1000
    }')
    printf '%s\n' "$REQUIRE_COST"
    if [ "$bad" = 0 ] && [ -s "$WORK/c-with" ] && [ -s "$WORK/c-without" ]; then
        pass "require-cost" "$(printf '%s\n' "$REQUIRE_COST" | grep -o 'adds.*' | tr -d '*')"
    else
        fail "require-cost" "$bad creates failed (see the log above): the cost of a refused create is not the cost of the check"
    fi
}

# nvidia-ctk info and doctor on this host, as a support ticket would show
# them: info must name the driver the kernel module reports.
check_ctk_reports() {
    section "nvidia-ctk info / doctor on this host"
    local ctk=$CARRY/bin/nvidia-ctk
    NVIDIA_CTK_CONFIG_FILE_PATH=$CONF "$ctk" info --config "$CONF" >"$LOGS/info.out" 2>"$LOGS/info.err"
    local rc=$?
    show "$LOGS/info.out" 40
    NVIDIA_CTK_CONFIG_FILE_PATH=$CONF "$ctk" doctor --config "$CONF" >"$LOGS/doctor.out" 2>&1
    local drc=$?
    show "$LOGS/doctor.out" 40
    local version
    version=$(sed -n 's/^driver: \([0-9.]*\).*/\1/p' "$LOGS/info.out")
    if [ "$rc" = 0 ] && [ -n "$version" ]; then
        pass "ctk-info" "driver $version; doctor exit $drc, $(grep -c '^fail' "$LOGS/doctor.out") fail lines"
    else
        fail "ctk-info" "rc=$rc $(one_line "$LOGS/info.err" 300) $(one_line "$LOGS/info.out" 200)"
    fi
}

TIMING_TABLE=""
check_timing() {
    section "start timing: $TIMING_RUNS x ($WORKLOAD_NAME) through our runtime vs plain runc, interleaved"
    if [ ! -s "$PATCHED" ]; then
        fail "timing" "no patched config.json from the probe"
        return
    fi
    local ours runc_b
    ours=$(new_bundle time-ours "$WORKLOAD_ARGS" NVIDIA_VISIBLE_DEVICES=all)
    cp "$ours/config.json" "$WORK/pristine.json"
    runc_b=$WORK/bundles/time-runc
    mkdir -p "$runc_b/rootfs"
    cp -a "$TEMPLATE_ROOTFS/." "$runc_b/rootfs/"
    $HELPER baseline "$PATCHED" "$runc_b/config.json" "$runc_b/rootfs"
    info "plain runc gets the runtime's config.json without our hook and NVIDIA_* env:"
    $HELPER summary "$runc_b/config.json" | grep -cE 'mount|device' | sed 's/^/    mounts+devices: /'

    # One untimed start each, and both must work.
    cp "$WORK/pristine.json" "$ours/config.json"
    run_ctr warm-ours "$RT" "$ours"
    if [ "$RC" != 0 ] || ! grep -qE "$WORKLOAD_OK" "$OUTF"; then
        fail "timing" "warm-up through our runtime failed: $(ctr_detail)"
        return
    fi
    run_ctr warm-runc "$RUNC" "$runc_b"
    if [ "$RC" != 0 ] || ! grep -qE "$WORKLOAD_OK" "$OUTF"; then
        fail "timing" "warm-up with plain runc (same mounts and nodes, no hook) failed: $(ctr_detail)"
        return
    fi

    local i t0 t1 bad=0 done_runs=0
    : >"$WORK/t-ours"
    : >"$WORK/t-runc"
    for i in $(seq 1 "$TIMING_RUNS"); do
        in_budget || break
        local order="ours runc"
        [ $((i % 2)) = 0 ] && order="runc ours"
        for side in $order; do
            if [ "$side" = ours ]; then
                cp "$WORK/pristine.json" "$ours/config.json"
                t0=$(now_ns)
                run_ctr "t$i-ours" "$RT" "$ours"
            else
                t0=$(now_ns)
                run_ctr "t$i-runc" "$RUNC" "$runc_b"
            fi
            t1=$(now_ns)
            if [ "$RC" != 0 ] || ! grep -qE "$WORKLOAD_OK" "$OUTF"; then
                bad=$((bad + 1))
                info "run $i $side failed: $(ctr_detail)"
            else
                echo "$(((t1 - t0) / 1000))" >>"$WORK/t-$side" # microseconds
            fi
        done
        done_runs=$i
    done
    median() { sort -n "$1" | awk '{a[NR]=$1} END {if (NR==0) {print 0} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
    minimum() { sort -n "$1" | head -1; }
    local mo mr
    mo=$(median "$WORK/t-ours")
    mr=$(median "$WORK/t-runc")
    info "ours (ms): $(awk '{printf "%.1f ", $1/1000}' "$WORK/t-ours")"
    info "runc (ms): $(awk '{printf "%.1f ", $1/1000}' "$WORK/t-runc")"
    TIMING_TABLE=$(awk -v mo="$mo" -v mr="$mr" -v no="$(wc -l <"$WORK/t-ours")" -v nr="$(wc -l <"$WORK/t-runc")" \
        -v lo="$(minimum "$WORK/t-ours")" -v lr="$(minimum "$WORK/t-runc")" -v w="$WORKLOAD_NAME" 'BEGIN {
        printf "| start of `%s` | runs | median (ms) | min (ms) |\n|---|---|---|---|\n", w
        printf "| our runtime -> runc (+ hook) | %d | %.1f | %.1f |\n", no, mo/1000, lo/1000
        printf "| plain runc, same mounts and nodes | %d | %.1f | %.1f |\n", nr, mr/1000, lr/1000
        if (mr > 0) printf "\nratio of medians (ours / runc): **%.3f**; overhead %.1f ms\n", mo/mr, (mo-mr)/1000
    }')
    printf '%s\n' "$TIMING_TABLE"
    if [ "$bad" != 0 ]; then
        fail "timing" "$bad of $((done_runs * 2)) timed runs failed"
    elif [ "$done_runs" -lt "$TIMING_RUNS" ]; then
        fail "timing" "only $done_runs of $TIMING_RUNS pairs within the ${BUDGET_S}s budget; medians above"
    else
        pass "timing" "$(printf '%s\n' "$TIMING_TABLE" | grep -o 'ratio.*' | tr -d '*')"
    fi
}

# ------------------------------------------------------------------ report
write_results() {
    local md=$OUT/RESULTS.md
    {
        if [ "$SIMULATED" = 1 ]; then
            echo "# GPU acceptance: SIMULATED dry run (no GPU)"
        else
            echo "# GPU acceptance results"
        fi
        echo
        echo "Written by \`tests/gpu/acceptance.sh\`$([ "$SIMULATED" = 1 ] && echo " --simulated"); the whole output is in acceptance.log next to it."
        echo
        echo "| | |"
        echo "|---|---|"
        sed 's/^\([^:]*\): \(.*\)$/| \1 | \2 |/' "$FACTS"
        echo
        echo "## Checks"
        echo
        echo "| result | check | detail |"
        echo "|---|---|---|"
        awk -F'\t' '{gsub(/\|/, "\\|", $3); printf "| %s | %s | %s |\n", $1, $2, $3}' "$RESULTS"
        echo
        if [ -n "$TIMING_TABLE" ]; then
            echo "## Start timing"
            echo
            printf '%s\n' "$TIMING_TABLE"
            echo
        fi
        if [ -n "$REQUIRE_COST" ]; then
            echo "## Cost of a stock CUDA image's NVIDIA_REQUIRE_CUDA"
            echo
            printf '%s\n' "$REQUIRE_COST"
            echo
        fi
        echo "**$PASSED passed, $FAILED failed, $SKIPPED skipped**"
    } >"$md"
    if [ "$SIMULATED" != 1 ]; then
        cp "$md" "$GPU_DIR/RESULTS.md" 2>/dev/null # the repo copy on the GPU machine
    fi
    [ -f "$DEBUG_LOG" ] && tail -c 4000000 "$DEBUG_LOG" >"$OUT/runtime-debug.log"
}

cleanup() {
    local id
    for id in $("$RUNC" --root "$STATE" list -q 2>/dev/null); do
        "$RUNC" --root "$STATE" delete -f "$id" >/dev/null 2>&1
    done
    if [ "${ACCEPT_KEEP:-0}" = 1 ]; then
        info "work dir kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}

main() {
    : >"$RESULTS"
    : >"$FACTS"
    mkdir -p "$LOGS"
    if preflight; then
        if [ "$SIMULATED" = 1 ]; then host_report_simulated; else host_report_real; fi
        local host_ok=$?
        build_cuda_program
        if [ -n "$VECTOR_ADD" ]; then
            WORKLOAD_ARGS='["/usr/local/bin/vector_add"]'
            WORKLOAD_OK='vector_add: OK'
            WORKLOAD_NAME="vector_add (CUDA program)"
        fi
        section "runc on this host"
        check_runc_sanity
        if [ "$host_ok" = 0 ] && choose_config; then
            local step
            for step in check_smi check_none check_void check_cuda_container check_proc check_require check_ctk_reports check_require_cost check_timing; do
                if in_budget; then
                    $step
                else
                    skip "$step" "time budget of ${BUDGET_S}s used up"
                fi
            done
        fi
        if [ -s "$DEBUG_LOG" ]; then
            section "runtime debug log (last 25 lines of $(wc -l <"$DEBUG_LOG"))"
            tail -25 "$DEBUG_LOG" | cut -c1-400
        fi
    fi
    write_results
    section "summary ($(($(date +%s) - START_S)) s)"
    awk -F'\t' '{printf "%s %s\n", $1, $2}' "$RESULTS"
    cleanup
    echo "results: $OUT/RESULTS.md, log: $OUT/acceptance.log"
    echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
    [ "$FAILED" = 0 ]
}

main 2>&1 | tee "$OUT/acceptance.log"
exit "${PIPESTATUS[0]}"
