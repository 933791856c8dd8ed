#!/usr/bin/env bash
# The Debian package as an admin meets it: build it with dpkg-buildpackage,
# check it with lintian, install it with dpkg -i, use it (the installed
# runtime starts a GPU container against the fake driver), purge it, and
# check that nothing of it is left and that /etc/docker/daemon.json was never
# touched. Run by .ci/run; as root, on Debian 12, with debhelper, lintian,
# dpkg-dev, runc, busybox-static, gcc and rustup's cargo.
#
# The machine ends as it started: the package is purged on every exit, and
# the test refuses to start where this package or one that it replaces is
# installed (purging it would remove the admin's).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
pkg=nvidia-container-runtime-rs
# What this package Conflicts with/Replaces (debian/control): installing it
# would remove them.
replaced="nvidia-container-runtime nvidia-container-toolkit nvidia-container-toolkit-base nvidia-docker2"
bins="nvidia-container-runtime nvidia-container-runtime-hook nvidia-ctk nvidia-cdi-hook nvidia-docker"
started=$SECONDS

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# Installed, half-installed or config-files left: dpkg knows it.
is_installed() {
    local status
    status=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)
    [ -n "$status" ] && [ "$status" != not-installed ]
}

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i, and runc starts the test container)"
for name in $pkg $replaced; do
    if is_installed "$name"; then
        fail "$name is installed: this test installs and purges $pkg, which would remove it; run it on a machine without it"
    fi
done
for bin in $bins; do
    [ ! -e "/usr/bin/$bin" ] || fail "/usr/bin/$bin exists, owned by no package this test knows: remove it first"
done

work=$(mktemp -d /tmp/ncr-deb.XXXXXX)
installed=false
cleanup() {
    if $installed; then
        echo "== cleanup: dpkg --purge $pkg"
        dpkg --purge "$pkg" >/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# /etc/docker/daemon.json: its checksum, or "absent". Nothing here may change it.
daemon_json_state() {
    if [ -e /etc/docker/daemon.json ]; then
        sha256sum </etc/docker/daemon.json
    else
        echo absent
    fi
}
daemon_json_before=$(daemon_json_state)
check_daemon_json() {
    [ "$(daemon_json_state)" = "$daemon_json_before" ] ||
        fail "/etc/docker/daemon.json changed ($1)"
}

echo "== fetch the locked dependencies (the package build is offline)"
cargo fetch --locked

echo "== build: dpkg-buildpackage -b -us -uc (in a copy of the tree)"
# A copy: dpkg-buildpackage writes its results next to the source dir and
# its build files into debian/; neither belongs in the checkout. The copy is
# what git would commit (tracked and not ignored files), so a stray target/
# is not copied.
mkdir "$work/src"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$repo" ls-files -z --cached --others --exclude-standard |
        tar -C "$repo" --null -T - --ignore-failed-read -cf - | tar -C "$work/src" -xf -
else
    tar -C "$repo" --exclude=./target --exclude=./.git -cf - . | tar -C "$work/src" -xf -
fi
build_started=$SECONDS
if ! (cd "$work/src" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1; then
    tail -n 60 "$work/build.log" >&2
    fail "dpkg-buildpackage failed (the last lines of its log are above)"
fi
echo "built in $((SECONDS - build_started)) s"
debs=("$work"/*.deb)
[ "${#debs[@]}" = 1 ] || fail "expected one .deb, got: ${debs[*]}"
deb=${debs[0]}
[ "$(basename "$deb")" = "${pkg}_$(dpkg-parsechangelog -l debian/changelog -S Version)_amd64.deb" ] ||
    fail "unexpected package file $(basename "$deb")"
echo "$(basename "$deb"): $(stat -c %s "$deb") bytes, installed size $(dpkg-deb -f "$deb" Installed-Size) KiB"

echo "== lintian"
# Errors and warnings fail; the accepted ones are overridden, with the reason,
# in debian/$pkg.lintian-overrides. Info tags are listed (README.source
# says which are expected).
# Two runs: lintian 2.116 exits 2 under --show-overrides when an override
# matched (an overridden error still counts), whatever --fail-on says; the
# first run shows everything, the second decides.
lintian --display-info --show-overrides "$work"/*.changes >"$work/lintian.log" 2>&1 || true
grep -v 'running with root privileges' "$work/lintian.log" || true
for level in E W I O; do
    echo "lintian $level: $(grep -c "^$level: " "$work/lintian.log" || true)"
done
lintian_status=0
lintian --fail-on error,warning "$work"/*.changes >/dev/null 2>&1 || lintian_status=$?
[ "$lintian_status" = 0 ] || fail "lintian found errors or warnings"

echo "== contents"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$work/conffiles"
grep -qx /etc/nvidia-container-runtime/config.toml "$work/conffiles" ||
    fail "/etc/nvidia-container-runtime/config.toml is not a conffile: $(cat "$work/conffiles")"
dpkg-deb --fsys-tarfile "$deb" | tar -t | sed 's|^\./|/|; s|/$||' | grep -v '^$' | sort >"$work/paths"
for path in \
    /usr/bin/nvidia-container-runtime /usr/bin/nvidia-container-runtime-hook \
    /usr/bin/nvidia-ctk /usr/bin/nvidia-cdi-hook /usr/bin/nvidia-docker \
    /usr/bin/nvidia-container-runtime-facts \
    /etc/nvidia-container-runtime/config.toml \
    /usr/share/doc/$pkg/examples/daemon.json.example \
    /usr/share/doc/$pkg/examples/k8s/runtimeclass.yaml \
    /usr/share/doc/$pkg/examples/containerd/config.toml \
    /usr/share/doc/$pkg/examples/containerd/99-nvidia.toml \
    /usr/share/man/man1/nvidia-ctk.1.gz \
    /usr/share/man/man1/nvidia-ctk-runtime-configure.1.gz \
    /usr/share/man/man1/nvidia-ctk-cdi-generate.1.gz \
    /usr/share/man/man1/nvidia-ctk-cdi-list.1.gz \
    /usr/share/man/man1/nvidia-container-runtime.1.gz \
    /usr/share/man/man1/nvidia-container-runtime-hook.1.gz \
    /usr/share/man/man1/nvidia-docker.1.gz \
    /usr/share/man/man1/nvidia-cdi-hook.1.gz \
    /usr/share/man/man1/nvidia-container-runtime-facts.1.gz \
    /lib/systemd/system/nvidia-cdi-refresh.service \
    /lib/systemd/system/nvidia-cdi-refresh.path \
    /usr/share/bash-completion/completions/nvidia-ctk \
    /usr/share/zsh/vendor-completions/_nvidia-ctk \
    /usr/share/fish/vendor_completions.d/nvidia-ctk.fish; do
    grep -qx "$path" "$work/paths" || fail "$path is not in the package"
done
# Never an engine's config (nvidia-docker2 shipped /etc/docker/daemon.json).
if grep -E '^/etc/' "$work/paths" | grep -vE '^/etc(/nvidia-container-runtime(/config\.toml)?)?$'; then
    fail "the package ships files in /etc other than its own config.toml (above)"
fi
# Which of the package's paths exist before the install: after the purge,
# exactly those must exist again.
while read -r path; do
    if [ -e "$path" ]; then echo "$path"; fi
done <"$work/paths" >"$work/existed-before"

echo "== static runtime and hook"
# No dynamic loader on a start: no PT_INTERP, no NEEDED. The facts helper
# stays dynamic (it dlopens the driver's libraries).
for bin in nvidia-container-runtime nvidia-container-runtime-hook; do
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/bin/$bin" >"$work/$bin"
    if readelf -lW "$work/$bin" | grep -q 'INTERP' || readelf -dW "$work/$bin" | grep -q NEEDED; then
        fail "/usr/bin/$bin is dynamically linked: $(readelf -dW "$work/$bin" | grep NEEDED)"
    fi
done
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/nvidia-container-runtime-facts >"$work/facts-helper"
readelf -dW "$work/facts-helper" | grep -q 'NEEDED.*libc.so' ||
    fail "nvidia-container-runtime-facts is not dynamically linked"

echo "== dpkg -i"
installed=true
dpkg -i "$deb" 2>&1 | tee "$work/install.log"
is_installed "$pkg" || fail "$pkg is not installed after dpkg -i"
grep -q 'nvidia-ctk runtime configure --runtime=docker' "$work/install.log" ||
    fail "postinst did not print the registration command"
check_daemon_json "after dpkg -i"
cmp /etc/nvidia-container-runtime/config.toml packaging/config.toml ||
    fail "the installed config.toml is not packaging/config.toml"

echo "== the CDI refresh units"
# Static checks of the installed units (unknown keys and values, a bad
# command line, a second ExecStart outside a oneshot); the man page is
# checked below. systemd is not PID 1 here, so the units cannot run:
# tests/cdi.rs runs the service's commands. An unknown key is only a
# warning to systemd-analyze: any output fails.
verify_log=$(systemd-analyze verify --man=no /lib/systemd/system/nvidia-cdi-refresh.service \
    /lib/systemd/system/nvidia-cdi-refresh.path 2>&1) || fail "systemd-analyze verify failed: $verify_log"
[ -z "$verify_log" ] || fail "systemd-analyze verify warns about the units: $verify_log"
for unit in nvidia-cdi-refresh.service nvidia-cdi-refresh.path; do
    [ -L "/etc/systemd/system/multi-user.target.wants/$unit" ] ||
        fail "$unit is not enabled after dpkg -i"
done

echo "== the static hook ignores loader variables without a re-exec"
# A dynamically linked hook re-executes itself without LD_PRELOAD; the
# static one has no loader to abuse and execs nothing.
execs=$(LD_PRELOAD=/nonexistent.so strace -f -qq -e trace=execve -o /dev/stdout \
    /usr/bin/nvidia-container-runtime-hook poststop </dev/null | grep -c 'execve(' || true)
[ "$execs" = 1 ] || fail "the static hook exec'd $execs programs with LD_PRELOAD set (expected only its own start)"

echo "== nvidia-container-runtime --version"
# Reads the installed config.toml (a syntax error would stop it) and execs runc.
version=$(/usr/bin/nvidia-container-runtime --version)
echo "$version"
grep -q "^NVIDIA Container Runtime version $(dpkg-parsechangelog -l debian/changelog -S Version)" <<<"$version" ||
    fail "unexpected version banner"
grep -q '^runc version' <<<"$version" || fail "--version did not reach runc"

echo "== nvidia-ctk runtime configure --runtime=docker --dry-run"
dry_run=$(/usr/bin/nvidia-ctk runtime configure --runtime=docker --dry-run)
echo "$dry_run"
grep -q '"path": "/usr/bin/nvidia-container-runtime"' <<<"$dry_run" ||
    fail "the dry run does not register /usr/bin/nvidia-container-runtime"
check_daemon_json "after runtime configure --dry-run"

echo "== man pages and completions"
if command -v man >/dev/null; then
    for page in nvidia-ctk nvidia-ctk-runtime-configure nvidia-ctk-cdi-generate nvidia-container-runtime nvidia-docker; do
        man -w "$page" >/dev/null || fail "man $page: not found"
    done
fi
bash -c 'source /usr/share/bash-completion/completions/nvidia-ctk && complete -p nvidia-ctk' >/dev/null ||
    fail "the bash completion does not register for nvidia-ctk"

echo "== a GPU container through the installed runtime (fake driver)"
NCR_RUNTIME=/usr/bin/nvidia-container-runtime CI="${CI:-true}" \
    cargo test --locked --test packaging -- --ignored --exact installed_runtime_gives_a_container_its_gpu
check_daemon_json "after the container"

echo "== dpkg --purge"
# A spec the refresh unit wrote names our hook: the purge removes it. Only
# where the machine has no spec of that name already.
refresh_spec=/var/run/cdi/nvidia.yaml
wrote_spec=false
if [ ! -e "$refresh_spec" ]; then
    mkdir -p /var/run/cdi
    printf 'cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ncontainerEdits:\n  hooks:\n  - hookName: createContainer\n    path: /usr/bin/nvidia-container-runtime-hook\n' >"$refresh_spec"
    wrote_spec=true
fi
dpkg --purge "$pkg"
if [ "$wrote_spec" = true ] && [ -e "$refresh_spec" ]; then
    rm -f "$refresh_spec"
    fail "$refresh_spec names the removed hook and is left after --purge"
fi
installed=false
! is_installed "$pkg" || fail "$pkg is still known to dpkg after --purge"
[ ! -e /etc/nvidia-container-runtime ] || fail "/etc/nvidia-container-runtime is left after --purge"
while read -r path; do
    if grep -qxF "$path" "$work/existed-before"; then
        [ -e "$path" ] || fail "$path existed before the install and is gone after the purge"
    else
        [ ! -e "$path" ] || fail "$path is left after the purge"
    fi
done <"$work/paths"
for unit in nvidia-cdi-refresh.service nvidia-cdi-refresh.path; do
    [ ! -e "/etc/systemd/system/multi-user.target.wants/$unit" ] ||
        fail "$unit is still enabled after dpkg --purge"
done
check_daemon_json "after dpkg --purge"

echo "== packaging test passed in $((SECONDS - started)) s"
