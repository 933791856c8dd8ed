#!/usr/bin/env bash
# The second engine generation of the test suite: today's docker, containerd,
# podman, runc and crun, from Debian's sid, beside Debian 12's on the host.
#
#   rig.sh build          make the sid root once per machine (kept; rebuilt
#                         when missing, incomplete, or its package list changed)
#   rig.sh versions       print each engine's version, fail on an unexpected major
#   rig.sh enter [--cgroup2] [--] CMD...
#                         run CMD with the sid root as its root, in a private
#                         mount namespace (so every mount dies with it), on
#                         cgroup v1 without the hybrid unified mount, or v2
#   rig.sh host [--cgroup1|--cgroup2] [--] CMD...
#                         run CMD on the host's root: as is, or in a private
#                         mount namespace with v1 alone (--cgroup1) or cgroup2
#                         at /sys/fs/cgroup (--cgroup2)
#   rig.sh path           print the root's path
#
# Why a chroot and not containers of our own: the engines must run for real,
# with their own runc/crun and shims, on this machine's kernel; a chroot of a
# debootstrapped root is the least that gives them their own userland. Inside,
# host paths the tests use (their temp dirs under /tmp, the cargo target dir
# with our binaries, the source tree with the fixtures) are bound at the same
# paths, so a path means the same thing to a test, the daemon and the hook.
#
# The root lives in NCR_SID_ROOT (default /var/cache/ncr-test-engines/sid).
set -euo pipefail

ROOT="${NCR_SID_ROOT:-/var/cache/ncr-test-engines/sid}"
# What the tests run from the root. Changing this list rebuilds the root.
PACKAGES="docker.io docker-cli containerd runc crun podman iproute2 ca-certificates"
# The majors the tests are written for (sid moves: a new major fails loudly
# here, not somewhere deep in a test).
EXPECT_DOCKER=28
EXPECT_CONTAINERD=2
EXPECT_PODMAN=5
EXPECT_RUNC=1.3
EXPECT_CRUN=1

mirror() {
    # The host's own Debian mirror (this machine reaches no other): the first
    # enabled source whose suite is a Debian release, not its security archive.
    local uri
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { print $2 }' | grep -v -- '-security' | grep debian | head -1)"
    if [ -z "$uri" ]; then
        uri="$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null |
            awk '{print $2}' | grep -v -- '-security' | head -1)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

build() {
    local stamp="$ROOT/.ncr-rig-complete"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PACKAGES" ]; then
        echo "sid root: $ROOT (cached)"
        return 0
    fi
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
    local started=$SECONDS work="$ROOT.building.$$"
    rm -rf "$work"
    mkdir -p "$(dirname "$ROOT")"
    echo "sid root: building $ROOT from $(mirror)"
    debootstrap --variant=minbase sid "$work" "$(mirror)" >"$work.log" 2>&1 || {
        tail -30 "$work.log" >&2
        echo "debootstrap sid failed: see $work.log" >&2
        exit 1
    }
    # The mirror's sid Release file reads as expired on this machine's date.
    echo 'Acquire::Check-Valid-Until "false";' >"$work/etc/apt/apt.conf.d/99ncr-no-valid-until"
    # No service may start while packages install.
    printf '#!/bin/sh\nexit 101\n' >"$work/usr/sbin/policy-rc.d"
    chmod 755 "$work/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$work/etc/resolv.conf" 2>/dev/null || true
    unshare -m --propagation private sh -ec '
        mount -t proc proc "$1/proc"
        mount --rbind /dev "$1/dev"
        mount --rbind /sys "$1/sys"
        chroot "$1" sh -ec "
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends $2 >/dev/null
            apt-get clean"
    ' sh "$work" "$PACKAGES" >>"$work.log" 2>&1 || {
        tail -30 "$work.log" >&2
        echo "installing $PACKAGES in the sid root failed: see $work.log" >&2
        exit 1
    }
    echo "$PACKAGES" >"$work/.ncr-rig-complete"
    rm -rf "$ROOT"
    mv "$work" "$ROOT"
    rm -f "$work.log"
    echo "sid root: built in $((SECONDS - started)) s, $(du -sh "$ROOT" | cut -f1)"
}

# The body of `enter`, run inside the new mount namespace.
enter_namespace() {
    local cgroup="$1"
    shift
    [ -f "$ROOT/.ncr-rig-complete" ] || {
        echo "the sid root $ROOT is missing or incomplete: run tests/newer-engines/rig.sh build" >&2
        exit 1
    }
    # runc needs the root to be a mount point ("mount dst=/, flags=MS_REC|MS_SLAVE:
    # invalid argument" otherwise).
    mount --bind "$ROOT" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount --rbind /dev "$ROOT/dev"
    mount --rbind /sys "$ROOT/sys"
    mount --make-rprivate "$ROOT/sys"
    if [ "$cgroup" = v2 ]; then
        # Only hugetlb is free for a v2 hierarchy here; device rules need no
        # controller (runc attaches its BPF filter to the container's cgroup).
        umount -l "$ROOT/sys/fs/cgroup"
        mount -t cgroup2 none "$ROOT/sys/fs/cgroup"
    else
        # crun refuses the hybrid layout ("cgroups in hybrid mode not supported").
        umount "$ROOT/sys/fs/cgroup/unified" 2>/dev/null || true
    fi
    # A private /run per namespace: daemons' sockets and state live in the
    # tests' own dirs, never in the root shared by every test. NCR_RIG_RUN
    # names a dir to use instead, for programs that must share /run across
    # entries, as on a real host (containerd restarted by a test finds the
    # shims its previous run started under /run/containerd).
    if [ -n "${NCR_RIG_RUN:-}" ]; then
        mkdir -p "$NCR_RIG_RUN"
        mount --bind "$NCR_RIG_RUN" "$ROOT/run"
    else
        mount -t tmpfs -o mode=755 tmpfs "$ROOT/run"
    fi
    # The same paths as on the host: temp dirs, our binaries, the fixtures.
    mount --rbind /tmp "$ROOT/tmp"
    local dir
    for dir in ${NCR_RIG_SHARE:-} "$(repo_root)"; do
        [ -e "$dir" ] || continue
        mkdir -p "$ROOT$dir"
        mount --rbind "$dir" "$ROOT$dir"
    done
    # The root at its own path too, so a host path into it (the tests name
    # the sid's runc as $ROOT/usr/sbin/runc) means the same file inside.
    mkdir -p "$ROOT$ROOT"
    mount --bind "$ROOT" "$ROOT$ROOT"
    exec chroot "$ROOT" "$@"
}

repo_root() {
    cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd
}

host_namespace() {
    local cgroup="$1"
    shift
    mount --make-rprivate /
    if [ "$cgroup" = v2 ]; then
        umount -l /sys/fs/cgroup
        mount -t cgroup2 none /sys/fs/cgroup
    else
        umount /sys/fs/cgroup/unified 2>/dev/null || true
    fi
    exec "$@"
}

versions() {
    local failed=0
    check() {
        local name="$1" expect="$2" line="$3" version
        version="$(grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' <<<"$line" | head -1)"
        case "$version" in
            "$expect" | "$expect".*) echo "$name $version (expected $expect.x)" ;;
            *)
                echo "$name $version: expected major $expect.x; sid moved, update the tests and EXPECT_* in $0" >&2
                failed=1
                ;;
        esac
    }
    local e="$0 enter --"
    check dockerd "$EXPECT_DOCKER" "$($e dockerd --version)"
    check docker "$EXPECT_DOCKER" "$($e docker --version)"
    check containerd "$EXPECT_CONTAINERD" "$($e containerd --version | awk '{print $3}')"
    check podman "$EXPECT_PODMAN" "$($e podman --version)"
    check runc "$EXPECT_RUNC" "$($e runc --version | head -1)"
    check crun "$EXPECT_CRUN" "$($e crun --version | head -1)"
    return "$failed"
}

# Sets CGROUP (machine: as this machine mounts it, v1: v1 without the hybrid
# unified mount, v2: cgroup2 alone) and ARGS.
parse_cgroup() {
    CGROUP="$1"
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --cgroup2) CGROUP=v2 ;;
            --cgroup1) CGROUP=v1 ;;
            --) shift; break ;;
            *) break ;;
        esac
        shift
    done
    ARGS=("$@")
    [ ${#ARGS[@]} -gt 0 ] || { echo "usage: $0 enter|host [--cgroup1|--cgroup2] [--] CMD..." >&2; exit 2; }
}

case "${1:-}" in
    build) build ;;
    versions) versions ;;
    path) echo "$ROOT" ;;
    enter)
        shift
        parse_cgroup v1 "$@"
        exec unshare -m --propagation private "$0" __enter "$CGROUP" "${ARGS[@]}"
        ;;
    __enter)
        shift
        enter_namespace "$@"
        ;;
    host)
        shift
        parse_cgroup machine "$@"
        if [ "$CGROUP" = machine ]; then
            exec "${ARGS[@]}"
        fi
        exec unshare -m --propagation private "$0" __host "$CGROUP" "${ARGS[@]}"
        ;;
    __host)
        shift
        host_namespace "$@"
        ;;
    *)
        echo "usage: $0 build | versions | path | enter|host [--cgroup2] [--] CMD..." >&2
        exit 2
        ;;
esac
