#!/usr/bin/env bash
# Prepares, on a machine WITHOUT a GPU (Debian 12, root, apt-get works), what
# tests/gpu/acceptance.sh needs on the GPU machine, which has no cargo, no
# runc and no network:
#
#   tests/gpu/carry/bin/      the three release binaries (runtime, hook, nvidia-ctk)
#   tests/gpu/carry/runc/     Debian's runc (dpkg -x) + the libseccomp.so.2 it links,
#                             found through RUNPATH=$ORIGIN/lib (patchelf)
#   tests/gpu/carry/rootfs.tar  a small Debian-like glibc rootfs (busybox-static +
#                             libc6's loader and libraries, /etc/debian_version)
#   tests/gpu/carry/MANIFEST  what was built, from which package versions
#
# tests/gpu/carry/ is ignored by git: name it in the device tool's `carry`.
# Usage (repo root or anywhere):  bash tests/gpu/prepare.sh
set -euo pipefail

GPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$GPU_DIR/../.." && pwd)
CARRY=$GPU_DIR/carry
WORK=$(mktemp -d /tmp/gpu-prepare.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

say() { printf '== %s\n' "$*"; }
die() { printf 'prepare.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (dpkg -x keeps root ownership in the rootfs)"
[ "$(uname -m)" = x86_64 ] || die "the GPU machine is x86_64; build there-compatible binaries on x86_64"

# ---------------------------------------------------------------- binaries
say "cargo build --release --bins (in $REPO)"
if ! (cd "$REPO" && cargo build --release --bins) >"$WORK/cargo.log" 2>&1; then
    tail -40 "$WORK/cargo.log" >&2
    die "the release build failed (see above). src/ is being edited by others: retry later; nothing was changed in carry/"
fi
tail -1 "$WORK/cargo.log"
# The runtime and the hook static, as the package ships them; their
# dynamically linked facts helper goes next to them.
for bin in nvidia-container-runtime nvidia-container-runtime-hook; do
    if ! (cd "$REPO" && cargo rustc --release --bin "$bin" -- -C target-feature=+crt-static) >>"$WORK/cargo.log" 2>&1; then
        tail -40 "$WORK/cargo.log" >&2
        die "the static build of $bin failed (see above)"
    fi
done

rm -rf "$CARRY"
mkdir -p "$CARRY/bin" "$CARRY/runc/lib"
for bin in nvidia-container-runtime nvidia-container-runtime-hook nvidia-container-runtime-facts nvidia-ctk; do
    install -m 0755 "$REPO/target/release/$bin" "$CARRY/bin/$bin"
done

# ---------------------------------------------------------------- packages
say "apt-get download runc libseccomp2 libc6 busybox-static"
download() {
    (cd "$WORK" && apt-get download runc libseccomp2 libc6 busybox-static) >"$WORK/apt.log" 2>&1
}
if ! download; then
    say "apt-get download failed; apt-get update and retry"
    apt-get update -qq >/dev/null 2>&1 || true
    download || { cat "$WORK/apt.log" >&2; die "apt-get download failed"; }
fi
for pkg in runc libseccomp2 libc6 busybox-static; do
    deb=$(ls "$WORK"/${pkg}_*.deb | head -1)
    mkdir -p "$WORK/x/$pkg"
    dpkg -x "$deb" "$WORK/x/$pkg"
    echo "$(basename "$deb")" >>"$WORK/manifest.debs"
done

# Finds a file by name in an unpacked package (usr-merged or not).
# Library and program dirs only (a package also ships docs named like it).
find_in() {
    find "$WORK/x/$1" \( -path '*/lib/*' -o -path '*/lib64/*' -o -path '*/bin/*' -o -path '*/sbin/*' \) \
        -name "$2" \( -type f -o -type l \) | sort | head -1
}

# ---------------------------------------------------------------- runc
# The GPU host may lack libseccomp.so.2. Checked here: a wrapper that sets
# LD_LIBRARY_PATH does not work (runc re-executes itself as `runc init` with
# an environment of its own), and neither does RUNPATH=$ORIGIN/lib alone
# (`runc init` runs from a memfd copy of the binary, so $ORIGIN is not the
# carry dir). So the RUNPATH names a fixed dir first, which acceptance.sh
# fills with the carried lib before it runs runc: /tmp/ncr-gpu-runc/lib.
RUNC_LIB_DIR=/tmp/ncr-gpu-runc/lib
say "runc: $(find_in runc runc) + libseccomp.so.2, RUNPATH $RUNC_LIB_DIR:\$ORIGIN/lib"
if ! command -v patchelf >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patchelf >/dev/null; }
fi
install -m 0755 "$(find_in runc runc)" "$CARRY/runc/runc"
seccomp=$(find_in libseccomp2 'libseccomp.so.2.*')
[ -n "$seccomp" ] || die "libseccomp.so.2.* not found in libseccomp2"
install -m 0644 "$(readlink -f "$seccomp")" "$CARRY/runc/lib/libseccomp.so.2"
patchelf --set-rpath "$RUNC_LIB_DIR:\$ORIGIN/lib" "$CARRY/runc/runc"
cat >"$CARRY/runc/README" <<EOF
Debian 12's runc (dpkg -x), with RUNPATH=$RUNC_LIB_DIR:\$ORIGIN/lib (patchelf).
Before running it, copy lib/libseccomp.so.2 to $RUNC_LIB_DIR/ (acceptance.sh
does): runc init runs from a memfd copy of the binary, so only an absolute
RUNPATH reaches it; LD_LIBRARY_PATH does not reach it either. Needs glibc >=
2.34 on the host. No wrapper script: config.toml's runtimes names this file.
EOF

# ---------------------------------------------------------------- rootfs
say "rootfs: busybox-static + libc6 (Debian-like, merged /usr)"
R=$WORK/rootfs
mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,usr/local/bin,usr/local/lib,dev,proc,sys,tmp,run,var,root,etc/ld.so.conf.d}
chmod 1777 "$R/tmp"
ln -s usr/bin "$R/bin"
ln -s usr/sbin "$R/sbin"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
ln -s ../run "$R/var/run"

busybox=$(find_in busybox-static busybox)
install -m 0755 "$(readlink -f "$busybox")" "$R/usr/bin/busybox"
# Every applet the binary has (it runs here: same architecture, static).
for applet in $("$R/usr/bin/busybox" --list); do
    case "$applet" in busybox) continue ;; esac
    [ -e "$R/usr/bin/$applet" ] || ln -s busybox "$R/usr/bin/$applet"
done

MULTI=$R/usr/lib/x86_64-linux-gnu
for lib in libc.so.6 ld-linux-x86-64.so.2 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1; do
    f=$(find_in libc6 "$lib")
    [ -n "$f" ] || die "$lib not found in libc6"
    # Follow the package's own symlinks inside the unpacked tree.
    real=$(readlink -f "$f")
    install -m 0755 "$real" "$MULTI/$lib"
done
ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$R/usr/lib64/ld-linux-x86-64.so.2"
echo "12.0" >"$R/etc/debian_version"
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
echo "root:x:0:" >"$R/etc/group"
printf 'include /etc/ld.so.conf.d/*.conf\n\n' >"$R/etc/ld.so.conf"
printf '# libc default configuration\n/usr/local/lib\n' >"$R/etc/ld.so.conf.d/libc.conf"
printf '# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' \
    >"$R/etc/ld.so.conf.d/x86_64-linux-gnu.conf"

# The rootfs's own loader must run a dynamic busybox-free program: check
# with the loader itself (no chroot needed).
"$MULTI/ld-linux-x86-64.so.2" --library-path "$MULTI" --list "$MULTI/libm.so.6" >/dev/null ||
    die "the rootfs loader cannot load its own libm"

tar --numeric-owner -C "$R" -cf "$CARRY/rootfs.tar" .

# ---------------------------------------------------------------- manifest
{
    echo "prepared: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname) ($(. /etc/os-release; echo "$PRETTY_NAME"))"
    echo "git: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null) $(cd "$REPO" && git status --porcelain 2>/dev/null | wc -l) changed/untracked paths"
    echo "rustc: $(rustc --version 2>/dev/null)"
    echo "debs:"; sed 's/^/  /' "$WORK/manifest.debs"
    echo "rootfs glibc: $("$MULTI/libc.so.6" 2>/dev/null | head -1)"
    echo "files:"; (cd "$CARRY" && find . -type f -printf '  %p %s\n' | sort)
} >"$CARRY/MANIFEST"

# ---------------------------------------------------------------- report
say "carry contents"
(cd "$CARRY" && find . -type f -printf '%10s  %p\n' | sort -k2)
total=$(du -sb "$CARRY" | cut -f1)
tree=$(cd "$REPO" && { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
say "carry total: $total bytes ($((total / 1024 / 1024)) MiB); working tree (tracked + untracked, not ignored): ${tree:-?} bytes; limit 64 MiB together"
[ "$total" -lt $((48 * 1024 * 1024)) ] || die "carry is over 48 MiB: too close to the 64 MiB limit"

cat <<'EOF'
== device tool call (the `run` tool; kind nvidia-h100-x1 = Firecracker VM, see tests/gpu/README.md)
  carry:     ["tests/gpu/carry"]
  timeout_s: 480
  kind:      nvidia-h100-x1
  command:   bash tests/gpu/acceptance.sh
Then copy files_at/RESULTS.md over tests/gpu/RESULTS.md (and read files_at/acceptance.log).
EOF
