#!/usr/bin/env bash
# Builds the node installer's image without any registry: a root of our
# binaries plus busybox (the GPU Operator's entrypoint runs /bin/sh, sleep
# and cat, then execs `nvidia-toolkit`), written two ways:
#
#   OUT/installer-rootfs.tar   for `docker import` (see the README)
#   OUT/installer-oci.tar      an OCI image layout for `ctr -n k8s.io image
#                              import` (containerd's CRI, i.e. kubelet) or
#                              `podman load`
#
#   deploy/kubernetes/image/build.sh [OUT] [IMAGE_NAME]
#   BINARIES=target/debug deploy/kubernetes/image/build.sh ...   (no build)
#
# The runtime, its hook and the installer are static executables (as in
# the Debian package); the tools that load the driver's NVML (nvidia-ctk's
# `cdi generate`, the facts helper) stay dynamic and get the build host's
# glibc beside them, which is all they need.
set -euo pipefail
cd "$(dirname "$0")/../../.."
out="$(realpath -m "${1:-target/installer-image}")"
image="${2:-docker.io/nvidia-container-runtime-rs/installer:$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)}"
cargo="${CARGO:-cargo}"

STATIC=(nvidia-ctk-installer nvidia-container-runtime nvidia-container-runtime-hook)
DYNAMIC=(nvidia-ctk nvidia-cdi-hook nvidia-container-runtime-facts)

# BINARIES: a dir of binaries already built (the tests pass target/debug);
# whatever is dynamic among them gets its libraries copied in too.
binaries="${BINARIES:-}"
if [ -z "$binaries" ]; then
    for bin in "${STATIC[@]}"; do
        "$cargo" rustc --release --locked --bin "$bin" -- -C target-feature=+crt-static
    done
    "$cargo" build --release --locked $(printf -- '--bin %s ' "${DYNAMIC[@]}")
    binaries=target/release
fi
binaries="$(realpath "$binaries")"

root="$out/rootfs"
rm -rf "$out"
mkdir -p "$root/usr/bin" "$root/bin" "$root/work" "$root/tmp" "$root/etc"
busybox="$(command -v busybox || true)"
[ -n "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' || {
    echo "build.sh: a static busybox is needed: apt-get install -y busybox-static" >&2
    exit 1
}
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
for bin in "${STATIC[@]}" "${DYNAMIC[@]}"; do
    install -m 0755 "$binaries/$bin" "$root/usr/bin/$bin"
    # No debug info in an image that every GPU node pulls.
    strip --strip-debug "$root/usr/bin/$bin"
done
# The operator execs `nvidia-toolkit` (and its image has /work/nvidia-toolkit).
ln -s nvidia-ctk-installer "$root/usr/bin/nvidia-toolkit"
ln -s /usr/bin/nvidia-ctk-installer "$root/work/nvidia-toolkit"
# glibc for the dynamic ones, at the paths their PT_INTERP and NEEDED name.
for bin in "${STATIC[@]}" "${DYNAMIC[@]}"; do
    ldd "$binaries/$bin" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }' || true
done | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
chmod 1777 "$root/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"

tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$out/installer-rootfs.tar" .

# The OCI layout: one uncompressed layer, a config with the entrypoint and
# PATH, a manifest, an index naming the image.
layout="$out/layout"
mkdir -p "$layout/blobs/sha256"
blob() {
    local digest
    digest="$(sha256sum "$1" | cut -d' ' -f1)"
    cp "$1" "$layout/blobs/sha256/$digest"
    echo "sha256:$digest $(stat -c %s "$1")"
}
read -r layer_digest layer_size < <(blob "$out/installer-rootfs.tar")
cat >"$out/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/bin:/bin"],"Entrypoint":["nvidia-toolkit"],"WorkingDir":"/work"},"rootfs":{"type":"layers","diff_ids":["$layer_digest"]}}
JSON
read -r config_digest config_size < <(blob "$out/config.json")
cat >"$out/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$layer_digest","size":$layer_size}]}
JSON
read -r manifest_digest manifest_size < <(blob "$out/manifest.json")
cat >"$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"$manifest_digest","size":$manifest_size,"annotations":{"io.containerd.image.name":"$image","org.opencontainers.image.ref.name":"${image##*:}"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
tar --numeric-owner --owner=0 --group=0 -C "$layout" -cf "$out/installer-oci.tar" .
echo "$image"
echo "  $out/installer-oci.tar     (ctr -n k8s.io image import, podman load)"
echo "  $out/installer-rootfs.tar  (docker import --change 'ENTRYPOINT [\"nvidia-toolkit\"]' ... $image)"
