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
use crate::system::System;

pub mod args;
pub mod cdi_hooks;
pub mod cgroup;
pub mod cuda_compat;
pub mod device_filter;
pub mod harden;
pub mod inject;
pub mod ld_cache;
pub mod links;
pub mod proc_mask;
pub mod rootfs;
#[cfg(test)]
mod tests;

pub use args::{HookArgs, Stage};
pub use harden::{harden_process, scrub_loader_environment, DEADLINE_SECONDS, LOADER_VARIABLES};
pub use ld_cache::{update_ld_cache, MAX_LD_CACHE_BYTES};
pub use proc_mask::{
    build_masked_tree, gpu_dirs_from_devices, mask_params, mask_proc_driver, mask_selection,
    mig_files_from_devices, read_masked_tree, MaskedTree,
};

use proc_mask::PROC_DRIVER_NVIDIA;
use rootfs::{enter_mount_namespace, open_process_root, open_rootfs};

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
    #[error(transparent)]
    Edits(#[from] Box<crate::runtime::RuntimeError>),
    #[error("the state names process {pid}, which is not the container this hook runs for ({why}): run this only as the prestart hook of a runtime")]
    ForeignPid { pid: i32, why: String },
    #[error("cannot {action}: {source}; nothing was left changed")]
    Inject {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is not {expected}: the host's driver files changed; check them (nvidia-ctk doctor)"
    )]
    WrongSource { path: PathBuf, expected: String },
    #[error("{path} is on a shared mount in the container (a volume with shared propagation): a GPU file mounted there would appear on the host too; drop the shared propagation of that volume, or run the container with --runtime=nvidia")]
    SharedMount { path: PathBuf },
    #[error("cannot inject {what} from a hook: run the container with the nvidia runtime (--runtime=nvidia), or let the engine apply the CDI spec (docker run --device nvidia.com/gpu=0)")]
    Unsupported { what: String },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("invalid CDI hook arguments: {problem}: the CDI spec names a hook this runtime does not have; regenerate it with nvidia-ctk cdi generate")]
    Subcommand { problem: String },
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

/// The config file [`load_config`] reads, if any.
pub fn config_file(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match path {
        Some(path) => Some(path.to_path_buf()),
        None => crate::config::candidate_paths(&env)
            .into_iter()
            .find(|candidate| candidate.exists()),
    }
}

/// The config named by `--config` (the runtime's entries name the file the
/// runtime read), else NVIDIA's search through the hook's own environment
/// (`NVIDIA_CTK_CONFIG_FILE_PATH`, `XDG_CONFIG_HOME`, the default path):
/// dockerd gives the hook its own environment, so an operator sets the
/// variable on dockerd. The container's `process.env` is never looked at.
pub fn load_config(
    path: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, HookError> {
    let Some(path) = path else {
        return Ok(Config::load(env)?.0);
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
    /// Hook-only mode: device nodes and mounts the hook attached itself.
    pub injected_nodes: usize,
    pub injected_mounts: usize,
    /// What the image's CUDA compat dir offered, when compute was asked
    /// for and the handling is on.
    pub cuda_compat: Option<cuda_compat::Compat>,
    /// Symlinks that exist in the rootfs after the hook (`--link`, DRM
    /// by-path).
    pub links: usize,
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
        // docker's own `--gpus` entry (or podman's hooks.d) on a container
        // that plain runc runs: nothing was injected, so the hook does it.
        return out_of_band(state, &spec, config, system);
    }
    let rootfs = spec.rootfs();

    // The driver's procfs is a host path: read it before leaving the host's
    // mount namespace. Its error only matters if there is something to mask.
    let proc_source = config.proc_root().join(PROC_DRIVER_NVIDIA);
    // A CDI spec's hook entry is shared by every device and so names no
    // GPU: then the GPUs are the ones whose nodes the spec gives.
    let (gpus, proc_files) =
        mask_selection(&spec.value, &proc_source, &args.gpus, &args.proc_files);
    let masked_tree = read_masked_tree(&proc_source, &gpus, &proc_files);
    // The DRM nodes' by-path links come from the host's sysfs.
    let mut links = args.links.clone();
    links.extend(links::drm_links_of_spec(&spec.value, &config.sys_root()));
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

    // The rootfs path is the runtime's: resolved from the runtime's own
    // root as the container's namespace has it (`/proc/<pid>/root`), not
    // from the namespace's `/`, which differs when the runtime runs
    // chrooted (an engine started from a chroot, as libnvidia-container
    // resolves it too).
    let runtime_root = open_process_root(system, state.pid)?;
    enter_mount_namespace(system, state.pid)?;
    let root = open_rootfs(system, runtime_root.as_fd(), &rootfs)?;

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
    report.links = links::create_links(system, root.as_fd(), &links)?.len();
    report.masked_proc = mask_proc_driver(system, root.as_fd(), &masked_tree, false)?;
    Ok(report)
}

/// The hook-only mode: the same request, checks and edits as the runtime's
/// ([`crate::runtime::container_edits`]), applied to the live container
/// ([`inject`]), then what the hook does in runtime mode (ld.so.cache, the
/// /proc mask). The env edits of the model cannot be applied from a hook
/// (the process environment is fixed); none of our own edits are env edits
/// (only a CDI spec may carry one, and a CDI request is refused here).
fn out_of_band(
    state: &State,
    spec: &BundleSpec,
    config: &Config,
    system: &dyn System,
) -> Result<Report, HookError> {
    let request = crate::request::Request::from_spec(&spec.value, config).map_err(|source| {
        Box::new(crate::runtime::RuntimeError::Request {
            path: spec.path.clone(),
            source,
        })
    })?;
    let Some(request) = request else {
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    };
    // Already injected: our runtime (or the precreate stage) patched the
    // spec and its own prestart entry runs the hook's part.
    let injected_entry = spec
        .value
        .pointer("/hooks/prestart")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .any(|hook| {
            hook.get("args")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|args| {
                    args.iter()
                        .any(|a| a.as_str() == Some(crate::edits::HOOK_INJECTED_FLAG))
                })
        });
    if injected_entry {
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    }
    // The process first: a state naming another one is refused before
    // anything is read on its behalf.
    let container = inject::check_container(system, state.pid)?;
    let rootfs = spec.rootfs();
    let relative = rootfs.strip_prefix("/").unwrap_or(&rootfs).to_path_buf();
    // The rootfs as the runtime sees it, from the host.
    let seen = std::path::Path::new(&format!("/proc/{}/root", state.pid)).join(&relative);
    let library_dirs = crate::edits::LibraryDirs::for_rootfs(&seen);
    let self_exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let hook_settings = || {
        Ok(crate::edits::HookSettings {
            path: self_exe.clone(),
            config_path: None,
        })
    };
    let edits = crate::runtime::container_edits(
        config,
        &request,
        &library_dirs,
        &hook_settings,
        &facts_state_dir(),
    )
    .map_err(Box::new)?;
    let Some(mut edits) = edits else {
        return Ok(Report {
            skipped: true,
            ..Report::default()
        });
    };
    if !edits.env.is_empty() {
        return Err(HookError::Unsupported {
            what: format!("environment variables ({})", edits.env.join(", ")),
        });
    }
    // Our own prestart entry says what to write into the cache and mask;
    // any other hook cannot be added to a container already being created.
    let mut ours = None;
    for hook in std::mem::take(&mut edits.hooks) {
        let argv: Vec<std::ffi::OsString> = hook.args.iter().map(Into::into).collect();
        match HookArgs::parse(&argv) {
            Ok(parsed) if parsed.injected && parsed.stage == Stage::Prestart => ours = Some(parsed),
            _ => {
                return Err(HookError::Unsupported {
                    what: format!("the hook {}", hook.path.display()),
                })
            }
        }
    }
    let ours = ours.unwrap_or(HookArgs {
        stage: Stage::Prestart,
        injected: true,
        config: None,
        libraries: Vec::new(),
        gpus: Vec::new(),
        proc_files: Vec::new(),
        links: Vec::new(),
    });
    // Host side: the procfs to mask, the sources, the device rules.
    let proc_source = config.proc_root().join(PROC_DRIVER_NVIDIA);
    let (gpus, proc_files) =
        mask_selection(&spec.value, &proc_source, &ours.gpus, &ours.proc_files);
    let masked_tree = read_masked_tree(&proc_source, &gpus, &proc_files);
    let mut links = ours.links.clone();
    links.extend(links::drm_by_path_links(
        edits.device_nodes.iter().map(|node| node.path.as_path()),
        &config.sys_root(),
    ));
    let prepared = inject::prepare(system, &container, &edits, &spec.value)?;
    // Container side.
    if let Err(errno) = system.enter_mount_namespace_of(container.pidfd.as_fd()) {
        prepared.undo(system);
        return Err(HookError::Namespace {
            pid: state.pid,
            path: PathBuf::from(format!("/proc/{}/ns/mnt", state.pid)),
            source: errno.into(),
        });
    }
    let root = match open_rootfs(system, container.root.as_fd(), &rootfs) {
        Ok(root) => root,
        Err(error) => {
            prepared.undo(system);
            return Err(error);
        }
    };
    let injected = prepared.attach(system, root.as_fd())?;
    let finish = || -> Result<Report, HookError> {
        let mut report = Report {
            injected_nodes: injected.nodes,
            injected_mounts: injected.mounts,
            ..Report::default()
        };
        // The mask first: it lives in the container's /proc alone, and
        // goes with the container if a later step fails; the cache is the
        // last write, atomic, so nothing of the rootfs is left half-done.
        report.masked_proc = mask_proc_driver(system, root.as_fd(), &masked_tree, true)?;
        let made = links::create_links(system, root.as_fd(), &links)?;
        report.links = made.len();
        if !ours.libraries.is_empty() {
            match update_ld_cache(system, root.as_fd(), &rootfs, &ours.libraries, &[]) {
                Ok((entries, note)) => {
                    report.ld_cache_entries = entries;
                    report.ld_cache_note = note;
                }
                Err(error) => {
                    links::undo_links(system, root.as_fd(), &made);
                    return Err(error);
                }
            }
        }
        Ok(report)
    };
    match finish() {
        Ok(report) => Ok(report),
        Err(error) => {
            injected.undo(system, root.as_fd());
            Err(error)
        }
    }
}

/// Where the hook-only mode caches driver facts: the runtime's state dir
/// (`NVIDIA_CONTAINER_RUNTIME_STATE_DIR` where the engine's hook entry sets
/// it, else `/run/nvidia-container-runtime`), shared with the runtime.
fn facts_state_dir() -> std::path::PathBuf {
    crate::runtime::fallback::state_dir(|key| std::env::var(key).ok())
}

/// The annotation that asks for GPUs through podman's or CRI-O's hooks.d
/// (`podman run --annotation nvidia.com/gpus=0`): the hooks.d files run our
/// hook only for containers that carry it, and its value, set at run time,
/// is the device list (an image's `NVIDIA_VISIBLE_DEVICES` alone asks for
/// nothing there).
pub const GPUS_ANNOTATION: &str = "nvidia.com/gpus";

/// The proposed config.json of the `precreate` stage, on stdin.
pub fn read_proposed_spec(input: &mut dyn std::io::Read) -> Result<serde_json::Value, HookError> {
    let bytes =
        crate::bounded::read_to_end(input, crate::bounded::CONFIG_JSON, 0).map_err(|source| {
            HookError::Inject {
                action: "read the proposed config.json on stdin".to_string(),
                source,
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| HookError::Inject {
        action: "parse the proposed config.json on stdin".to_string(),
        source: std::io::Error::other(e),
    })
}

/// The hooks.d request: the annotation's value, as the last
/// `NVIDIA_VISIBLE_DEVICES` of a copy of the spec (the last one wins, as
/// docker's own). `None`: no annotation, nothing asked.
fn with_annotation_request(spec: &serde_json::Value) -> Option<serde_json::Value> {
    let devices = spec
        .pointer("/annotations")?
        .get(GPUS_ANNOTATION)?
        .as_str()?;
    let mut copy = spec.clone();
    let entry = serde_json::Value::String(format!("{}={devices}", crate::request::VISIBLE_DEVICES));
    match copy
        .pointer_mut("/process/env")
        .and_then(serde_json::Value::as_array_mut)
    {
        Some(env) => env.push(entry),
        None => copy["process"]["env"] = serde_json::Value::Array(vec![entry]),
    }
    Some(copy)
}

/// podman's `precreate` stage: the runtime's own patch, done on the
/// proposed config.json (our prestart entry included, pointing at this
/// binary), so that no out-of-band work is needed. A spec without the
/// annotation comes back unchanged.
pub fn precreate(
    spec: &serde_json::Value,
    config: &Config,
    config_file: Option<PathBuf>,
    self_exe: &Path,
) -> Result<serde_json::Value, HookError> {
    let Some(asked) = with_annotation_request(spec) else {
        return Ok(spec.clone());
    };
    let path = PathBuf::from("config.json (precreate)");
    let request = crate::request::Request::from_spec(&asked, config).map_err(|source| {
        Box::new(crate::runtime::RuntimeError::Request {
            path: path.clone(),
            source,
        })
    })?;
    let Some(request) = request else {
        return Ok(spec.clone());
    };
    let root = asked
        .pointer("/root/path")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("rootfs");
    let library_dirs = crate::edits::LibraryDirs::for_rootfs(Path::new(root));
    let hook = || {
        Ok(crate::edits::HookSettings {
            path: self_exe.to_path_buf(),
            config_path: config_file.clone(),
        })
    };
    let edits =
        crate::runtime::container_edits(config, &request, &library_dirs, &hook, &facts_state_dir())
            .map_err(Box::new)?;
    let Some(edits) = edits else {
        return Ok(spec.clone());
    };
    Ok(crate::oci::patch::apply(&asked, &edits, &path)?)
}
