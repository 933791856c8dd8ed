//! The GPU prestart hook: what `nvidia-container-runtime-hook prestart` does
//! inside a container that the runtime patched.
//!
//! This module owns the hook's side of the contract with [`crate::edits`]
//! (its argv, see [`crate::edits::prestart_hook`]), its hardening (loader
//! variables scrubbed by a re-exec, `chdir("/")`, a deadline below runc's
//! hook timeout), and the two things only a hook can do because they need
//! the container's mount namespace: writing the container's
//! `/etc/ld.so.cache` (in Rust, nothing from the image is executed) and
//! masking `/proc/driver/nvidia` to the selected GPUs with
//! `ModifyDeviceFiles: 0` (CVE-2021-1056).
//!
//! The hook runs as root on the host while the image is attacker-controlled
//! (security.md): every path inside the rootfs is opened with
//! `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a rootfs dir fd,
//! files are replaced with temp file + `renameat`, and inputs come only from
//! argv, the OCI state on stdin and the bundle's `config.json`, never from the
//! environment.
//!
//! [`args`] parses the entry's argv, [`harden`] is the process setup,
//! [`rootfs`] opens the container's rootfs and replaces files in it,
//! [`ld_cache`] and [`proc_mask`] are the two jobs. Every side effect goes
//! through [`crate::system::System`]. The out-of-band injector (docker
//! `--gpus` on plain runc) belongs here too, applying the same
//! [`crate::edits::ContainerEdits`] to a live container.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::config::{Config, ConfigError};
use crate::oci::{BundleSpec, SpecError, State, StateError};
use crate::request::requests_gpus;
use crate::system::System;

pub mod args;
pub mod cuda_compat;
pub mod harden;
pub mod ld_cache;
pub mod proc_mask;
pub mod rootfs;
#[cfg(test)]
mod tests;

pub use args::{HookArgs, Stage};
pub use harden::{harden_process, scrub_loader_environment, DEADLINE_SECONDS, LOADER_VARIABLES};
pub use ld_cache::{update_ld_cache, MAX_LD_CACHE_BYTES};
pub use proc_mask::{
    build_masked_tree, gpu_dirs_from_devices, mask_params, mask_proc_driver, read_masked_tree,
    MaskedTree,
};

use proc_mask::PROC_DRIVER_NVIDIA;
use rootfs::{enter_mount_namespace, open_rootfs};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("invalid hook arguments: {problem}: the hook entry in config.json is not one this runtime writes; recreate the container with nvidia-container-runtime")]
    Args { problem: String },
    #[error("cannot re-execute /proc/self/exe without {variables}: {source}")]
    Reexec {
        variables: String,
        #[source]
        source: Errno,
    },
    #[error("cannot {action}: {source}")]
    Setup {
        action: &'static str,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot read the config file {path} named by --config: {source}: restore it, or recreate the container so that the runtime writes a hook entry for the current config")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the container requested GPUs through docker's --gpus but was not started with the nvidia runtime: run it with `--runtime=nvidia`, or make nvidia the default runtime (`nvidia-ctk runtime configure --runtime=docker --set-as-default`, then restart docker)")]
    NotOurRuntime,
    #[error("cannot enter the mount namespace of container process {pid} ({path}): {source}: did the container exit before its prestart hook ran?")]
    Namespace {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the container's rootfs {path}: {source}: check root.path in the bundle's config.json")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {action} {path} in the container's rootfs {rootfs}: {source}")]
    LdCache {
        action: &'static str,
        path: &'static str,
        rootfs: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read the driver's procfs {path}: {source}: is the NVIDIA driver loaded, and is proc-root in config.toml right?")]
    ProcSource {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mask /proc/driver/nvidia in the container ({action}): {source}")]
    Mask {
        action: String,
        #[source]
        source: io::Error,
    },
}

/// The config named by `--config`, or the defaults. Never looked up through
/// the environment: the hook's environment is not an input.
pub fn load_config(path: Option<&Path>) -> Result<Config, HookError> {
    let Some(path) = path else {
        return Ok(Config::default());
    };
    Config::from_file(path).map_err(|error| match error {
        // The hook's own message: the file was named by the runtime's entry.
        ConfigError::Read { path, source } => HookError::ReadConfig { path, source },
        other => other.into(),
    })
}

/// What a prestart run did, for the debug log and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Not a GPU container (docker's entry on a container without a request).
    pub skipped: bool,
    /// Entries written to the container's `/etc/ld.so.cache` (0 when none).
    pub ld_cache_entries: usize,
    /// Why the image's cache was not kept, when it was not.
    pub ld_cache_note: Option<String>,
    /// `/proc/driver/nvidia` was masked.
    pub masked_proc: bool,
    /// What the image's CUDA compat dir offered, when compute was asked
    /// for and the handling is on.
    pub cuda_compat: Option<cuda_compat::Compat>,
}

/// The prestart stage, from the state on stdin on.
pub fn prestart(
    args: &HookArgs,
    state: &State,
    config: &Config,
    system: &dyn System,
) -> Result<Report, HookError> {
    let spec = BundleSpec::read(&state.bundle)?;
    if !args.injected {
        // docker's own `--gpus` entry on a container that plain runc runs:
        // nothing was injected, so the container would start without GPUs.
        if requests_gpus(&spec.value) {
            return Err(HookError::NotOurRuntime);
        }
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    }
    let rootfs = spec.rootfs();

    // The driver's procfs is a host path: read it before leaving the host's
    // mount namespace. Its error only matters if there is something to mask.
    let proc_source = config.proc_root().join(PROC_DRIVER_NVIDIA);
    // A CDI spec's hook entry is shared by every device and so names no
    // GPU: then the GPUs are the ones whose nodes the spec gives.
    let gpus = if args.gpus.is_empty() {
        gpu_dirs_from_devices(&spec.value, &proc_source)
    } else {
        args.gpus.clone()
    };
    let masked_tree = read_masked_tree(&proc_source, &gpus, &args.proc_files);
    // CUDA forward compatibility needs compute (libcuda is injected) and
    // the host driver's version, read here on the host.
    let compat_host_version = (config.cuda_compat_enabled()
        && args
            .libraries
            .iter()
            .any(|(soname, _)| soname == "libcuda.so.1"))
    .then(|| {
        crate::bounded::read_file_to_string(
            &proc_source.join("version"),
            crate::bounded::PROCFS_FILE,
        )
        .ok()
        .and_then(|text| crate::driver::parse_kernel_version(&text).map(str::to_string))
    })
    .flatten();

    enter_mount_namespace(system, state.pid)?;
    let root = open_rootfs(system, &rootfs)?;

    let mut report = Report::default();
    let mut preferred = Vec::new();
    if let Some(host_version) = &compat_host_version {
        let compat = cuda_compat::inspect(system, root.as_fd(), host_version);
        tracing::info!("{}: CUDA compat: {}", rootfs.display(), compat.describe());
        if let cuda_compat::Compat::Use(libraries) = &compat {
            preferred = libraries.cache_entries();
        }
        report.cuda_compat = Some(compat);
    }
    if !args.libraries.is_empty() {
        let (entries, note) =
            update_ld_cache(system, root.as_fd(), &rootfs, &args.libraries, &preferred)?;
        report.ld_cache_entries = entries;
        report.ld_cache_note = note;
    }
    report.masked_proc = mask_proc_driver(system, root.as_fd(), &masked_tree)?;
    Ok(report)
}
