//! A rootful podman of a test's own (storage, run and temp dirs in the
//! test's temp dir, its own containers.conf), images imported from a built
//! rootfs, and the system CDI spec dir podman 4.3 reads (it has neither
//! `--cdi-spec-dir` nor containers.conf `cdi_spec_dirs`).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::*;

/// How long one podman command may take on this 2-core machine.
const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// podman with its state in `dir`; `podman system reset` on drop (podman
/// keeps storage/overlay bind-mounted, and the reset undoes that also when
/// an assertion failed, so the temp dir can go).
pub struct Podman {
    dir: PathBuf,
    containers_conf: PathBuf,
}

impl Podman {
    /// Writes `dir/containers.conf` (file events, cgroupfs: no systemd here).
    pub fn new(dir: &Path) -> Podman {
        let containers_conf = dir.join("containers.conf");
        fs::write(
            &containers_conf,
            "[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        Podman {
            dir: dir.to_path_buf(),
            containers_conf,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = podman_command(&self.dir, &self.containers_conf);
        command.args(args).stdin(Stdio::null());
        command
    }

    fn output(&self, args: &[&str]) -> RunOutput {
        output_with_timeout(self.command(args), PODMAN_TIMEOUT)
            .unwrap_or_else(|| panic!("podman {args:?} timed out"))
    }

    /// Imports a rootfs of `kind` as `image`.
    pub fn import(&self, kind: RootfsKind, image: &str) {
        let build = self.dir.join("image");
        let rootfs = build_rootfs(&build, kind);
        let tar = build.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar of the image");
        self.output(&["import", tar.to_str().unwrap(), image])
            .assert_success("podman import");
    }

    /// `podman run` with [`PODMAN_RUN`]'s flags, then `args`.
    pub fn run(&self, args: &[&str]) -> RunOutput {
        self.output(&[&PODMAN_RUN[..], args].concat())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .command(&["system", "reset", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A spec file in the system's `/var/run/cdi` under a unique name, removed
/// on drop (also when the test fails).
pub struct SystemSpecFile(pub PathBuf);

impl SystemSpecFile {
    pub fn new(what: &str) -> SystemSpecFile {
        SystemSpecFile(PathBuf::from(format!(
            "/var/run/cdi/ncr-test-{}.yaml",
            unique_id(what)
        )))
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SystemSpecFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The vendor of the tests' specs in the system dirs: `nvidia.com`, unless
/// the host has a real `nvidia.com/gpu` spec there, which ours would
/// conflict with.
pub fn system_spec_vendor() -> &'static str {
    let system = nvidia_container_runtime::cdi::Registry::load(&[
        PathBuf::from("/etc/cdi"),
        PathBuf::from("/var/run/cdi"),
    ]);
    if system
        .device_names()
        .iter()
        .any(|name| name.starts_with("nvidia.com/gpu="))
    {
        "ncr-test.nvidia.com"
    } else {
        "nvidia.com"
    }
}
