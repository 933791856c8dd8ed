#!/usr/bin/env bash
# Development aid (not part of the GPU call): runs acceptance.sh in its REAL
# mode on this GPU-less machine, inside a private mount namespace that makes
# the fake driver look like the lent GPU machine that keeps its driver in
# /usr/local/nvidia (not in ld.so.cache; found through LD_LIBRARY_PATH, as
# CUDA images do):
#   /usr/local/nvidia/{lib64,bin}  the fake driver's libraries and tools
#   /proc/driver                   the fake procfs (bind mount)
#   /dev                           a tmpfs with the usual nodes + nvidia*
# Nothing outside the namespace changes. The CUDA checks fail here (no nvcc,
# no GPU) and the /proc checks fail (a container's fresh procfs does not show
# the bind mount): that is expected. Usage: bash tests/gpu/emulate-host.sh
set -euo pipefail
GPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E=$(mktemp -d /tmp/gpu-emulate.XXXXXX)
bash "$GPU_DIR/make-fake-driver.sh" "$E/fake" >/dev/null
mkdir -p "$E/nv/lib64" "$E/nv/bin"
cp -a "$E/fake/driver-root/usr/lib/x86_64-linux-gnu/." "$E/nv/lib64/"
cp -a "$E/fake/driver-root/usr/bin/." "$E/nv/bin/"

export E GPU_DIR
unshare -m --propagation private bash -c '
    set -e
    mkdir -p /usr/local/nvidia 2>/dev/null || mount -t tmpfs tmpfs /usr/local
    mkdir -p /usr/local/nvidia
    mount --bind "$E/nv" /usr/local/nvidia
    mount -o remount,bind,ro /usr/local/nvidia
    mount --bind "$E/fake/proc-root/driver" /proc/driver
    mkdir -p "$E/olddev"
    mount --bind /dev "$E/olddev"
    mount -t tmpfs -o mode=755 tmpfs /dev
    for n in null zero full random urandom tty ptmx; do
        touch /dev/$n; mount --bind "$E/olddev/$n" /dev/$n
    done
    for d in pts shm mqueue; do
        mkdir -p /dev/$d; [ -d "$E/olddev/$d" ] && mount --bind "$E/olddev/$d" /dev/$d
    done
    cp -a "$E/fake/dev-root/dev/." /dev/
    export PATH=/usr/local/nvidia/bin:$PATH LD_LIBRARY_PATH=/usr/local/nvidia/lib64
    export FAKE_NVML_DEV_ROOT=
    bash "$GPU_DIR/acceptance.sh"
' || true
rm -rf "$E"
rmdir /usr/local/nvidia 2>/dev/null || true
