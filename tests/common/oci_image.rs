//! OCI image archives built from a local rootfs, for `ctr image import`
//! (containerd has no registry here).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use super::{build_rootfs, RootfsKind, CONTAINER_PATH};

/// Runs `cmd`; its stdout, or a panic with its output.
fn run_stdout(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCI image layout archive (what `ctr image import` reads) with one
/// uncompressed layer: the rootfs of `kind`.
pub fn oci_archive(dir: &Path, kind: RootfsKind, name: &str, entrypoint: &[&str]) -> PathBuf {
    let build = dir.join(format!("oci-{}", name.replace([':', '/', '.'], "_")));
    let rootfs = build_rootfs(&build, kind);
    let layout = build.join("layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let layer = build.join("layer.tar");
    run_stdout(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
    );
    let add_blob = |path: &Path| -> (String, u64) {
        let sum = run_stdout(Command::new("sha256sum").arg(path));
        let digest = sum.split_whitespace().next().unwrap().to_string();
        fs::copy(path, blobs.join(&digest)).unwrap();
        (
            format!("sha256:{digest}"),
            fs::metadata(path).unwrap().len(),
        )
    };
    let (layer_digest, layer_size) = add_blob(&layer);
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("PATH={CONTAINER_PATH}")], "Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let config_path = build.join("config.json");
    fs::write(&config_path, config.to_string()).unwrap();
    let (config_digest, config_size) = add_blob(&config_path);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let manifest_path = build.join("manifest.json");
    fs::write(&manifest_path, manifest.to_string()).unwrap();
    let (manifest_digest, manifest_size) = add_blob(&manifest_path);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
            },
        }],
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = build.join("image.tar");
    run_stdout(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .arg("."),
    );
    archive
}
