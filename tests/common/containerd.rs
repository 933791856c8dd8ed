//! The admin's containerd config that the engine and node-installer tests
//! start containerd on, in each generation's config version.

#![allow(dead_code)]

use std::path::Path;

use super::*;

/// The images the tests import (no registry here).
pub const GPU_IMAGE: &str = "docker.io/library/ncr-gpu:latest";
pub const PAUSE_IMAGE: &str = "docker.io/library/ncr-pause:latest";

/// The admin's containerd config: its own root, state and sockets, the
/// sandbox image imported locally, runc with an option ours must copy. In
/// the config version of the generation's containerd: 2 for 1.6, 3 for 2.x
/// (whose CRI is split into the `cri.v1.images` and `cri.v1.runtime`
/// plugins), with `cdi` as the spec dir of containerd 2's own CDI.
pub fn containerd_config(generation: Generation, dir: &Path, cdi: &Path) -> String {
    let root = dir.join("root");
    let state = dir.join("state");
    let socket = dir.join("containerd.sock");
    let cni = dir.join("cni");
    match generation.engines {
        Engines::Debian12 => format!(
            r#"# the admin's containerd config (test)
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}" # local, no registry here
    stream_server_port = "0"
    # This machine withholds CAP_SYS_RESOURCE: without it the sandbox's
    # oom_score_adj (-998) is refused, under runc alone too.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}/bin"
      conf_dir = "{cni}/conf"
"#,
            root = root.display(),
            state = state.display(),
            socket = socket.display(),
            cni = cni.display(),
        ),
        Engines::Sid => format!(
            r#"# the admin's containerd config (test)
version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{PAUSE_IMAGE}" # local, no registry here
  [plugins."io.containerd.cri.v1.runtime"]
    # This machine withholds CAP_SYS_RESOURCE (see the version 2 config).
    restrict_oom_score_adj = true
    cdi_spec_dirs = ["{cdi}"]
    [plugins."io.containerd.cri.v1.runtime".containerd]
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{cni}/bin"]
      conf_dir = "{cni}/conf"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_port = "0"
"#,
            root = root.display(),
            state = state.display(),
            socket = socket.display(),
            cni = cni.display(),
            cdi = cdi.display(),
        ),
    }
}

/// The CRI plugin that holds the runtimes in the generation's config.
pub fn cri_runtime_plugin(generation: Generation) -> &'static str {
    match generation.engines {
        Engines::Debian12 => "io.containerd.grpc.v1.cri",
        Engines::Sid => "io.containerd.cri.v1.runtime",
    }
}
