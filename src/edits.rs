//! The edits: what a GPU container gets, as one model.
//!
//! [`ContainerEdits`] has the shape of CDI's `containerEdits` (env, device
//! nodes, mounts, hooks) so that the runtime's patch and a CDI spec come from
//! the same discovery. This module turns a [`Request`] and a [`Driver`] into
//! edits (contract.md §3); [`crate::spec`] applies them to `config.json`.

use std::path::{Path, PathBuf};

use crate::driver::{DeviceNode, Driver, DriverError, Gpu};
use crate::request::{Capability, DeviceId, Devices, Request};

#[derive(Debug, thiserror::Error)]
pub enum EditsError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(
        "{source_name} names GPU {device}, but this host has {available}: use one of those, or all"
    )]
    UnknownGpu {
        source_name: String,
        device: String,
        available: String,
    },
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub options: Vec<String>,
}

/// An OCI hook, with the stage it runs at (CDI's `hookName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub hook_name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u32>,
}

/// Everything a container gets, in CDI's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEdits {
    /// `KEY=VALUE` entries, add-or-replace by key.
    pub env: Vec<String>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
}

/// Options of read-only file mounts (libraries, binaries, firmware): no
/// setuid and no device files through them, as the anchor mounts them.
pub const FILE_MOUNT_OPTIONS: &[&str] = &["ro", "nosuid", "nodev", "bind"];
/// Options of IPC mounts (sockets, the MPS pipe dir): nothing executable.
pub const IPC_MOUNT_OPTIONS: &[&str] = &["nosuid", "nodev", "noexec", "bind"];

/// Environment of every hook entry we write: explicit and minimal, so that
/// runc never hands the container's env (an image's `LD_PRELOAD`) to a
/// process running as root on the host (CVE-2025-23266, security.md).
pub const HOOK_ENV: &[&str] =
    &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
/// runc kills a hook that runs longer than this many seconds.
pub const HOOK_TIMEOUT_SECONDS: u32 = 30;
/// The argument that marks a hook entry as written by this runtime. docker's
/// own `--gpus` entry (`[nvidia-container-runtime-hook, prestart]`) lacks it.
pub const HOOK_INJECTED_FLAG: &str = "--injected-by-runtime";

/// Where our prestart hook is and which config file it must read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    /// Absolute path of `nvidia-container-runtime-hook`.
    pub path: PathBuf,
    /// The config file the runtime loaded, if any.
    pub config_path: Option<PathBuf>,
}

/// Our prestart hook entry for a container: it writes the container's
/// ld.so.cache for `libraries` (`(soname, container path)`) and masks
/// `/proc/driver/nvidia` to the GPUs whose procfs dirs are `gpu_proc_dirs`.
pub fn prestart_hook(
    settings: &HookSettings,
    libraries: &[(String, PathBuf)],
    gpu_proc_dirs: &[&str],
) -> Hook {
    let mut args = vec![
        "nvidia-container-runtime-hook".to_string(),
        "prestart".to_string(),
        HOOK_INJECTED_FLAG.to_string(),
    ];
    if let Some(config) = &settings.config_path {
        args.push("--config".to_string());
        args.push(config.to_string_lossy().into_owned());
    }
    for (soname, path) in libraries {
        args.push("--library".to_string());
        args.push(format!("{soname}={}", path.display()));
    }
    for dir in gpu_proc_dirs {
        args.push("--gpu".to_string());
        args.push(dir.to_string());
    }
    Hook {
        hook_name: "prestart".to_string(),
        path: settings.path.clone(),
        args,
        env: HOOK_ENV.iter().map(|e| e.to_string()).collect(),
        timeout: Some(HOOK_TIMEOUT_SECONDS),
    }
}

/// The container's library dir: Debian-family images (`/etc/debian_version`)
/// use the multiarch dir, every other glibc image `/usr/lib64`. The rootfs is
/// looked into without following symlinks out of it.
pub fn container_library_dir(rootfs: &Path) -> PathBuf {
    if crate::confined::exists(rootfs, Path::new("/etc/debian_version")) {
        PathBuf::from("/usr/lib/x86_64-linux-gnu")
    } else {
        PathBuf::from("/usr/lib64")
    }
}

/// The GPUs a request selects, in the order asked, without duplicates.
pub fn select_gpus<'a>(driver: &'a Driver, request: &Request) -> Result<Vec<&'a Gpu>, EditsError> {
    let ids = match &request.devices {
        Devices::All => return Ok(driver.gpus.iter().collect()),
        Devices::NoGpu => return Ok(Vec::new()),
        Devices::List(ids) => ids,
    };
    let mut selected: Vec<&Gpu> = Vec::with_capacity(ids.len());
    for id in ids {
        let found = driver.gpus.iter().find(|gpu| match id {
            DeviceId::Index(index) => gpu.index == *index as usize,
            DeviceId::Uuid(uuid) => gpu.uuid.eq_ignore_ascii_case(uuid),
            DeviceId::BusId(bus) => gpu.bus_id == *bus,
        });
        let Some(gpu) = found else {
            return Err(EditsError::UnknownGpu {
                source_name: request.devices_source.clone(),
                device: id.to_string(),
                available: describe_gpus(driver, id),
            });
        };
        if !selected.iter().any(|s| s.index == gpu.index) {
            selected.push(gpu);
        }
    }
    Ok(selected)
}

/// "GPUs 0-1", "GPU 0", "no GPU", or the UUIDs / bus ids when the user named
/// a GPU that way.
fn describe_gpus(driver: &Driver, asked: &DeviceId) -> String {
    let count = driver.gpus.len();
    match (count, asked) {
        (0, _) => "no GPU (the driver lists none in its procfs)".to_string(),
        (_, DeviceId::Uuid(_)) => format!(
            "GPUs {}",
            driver
                .gpus
                .iter()
                .map(|g| g.uuid.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, DeviceId::BusId(_)) => format!(
            "GPUs at {}",
            driver
                .gpus
                .iter()
                .map(|g| g.bus_id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (1, _) => "GPU 0".to_string(),
        (_, _) => format!("GPUs 0-{}", count - 1),
    }
}

fn mount(host_path: &Path, container_path: &Path, options: &[&str]) -> Mount {
    Mount {
        host_path: host_path.to_path_buf(),
        container_path: container_path.to_path_buf(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

impl ContainerEdits {
    /// The edits for one GPU container. `library_dir` is the container's
    /// library dir ([`container_library_dir`]).
    /// `hook`: where our prestart hook is; `None` leaves it out (CDI specs
    /// for engines that do not run our hook, and tests of the bare edits).
    pub fn for_request(
        driver: &Driver,
        request: &Request,
        library_dir: &Path,
        hook: Option<&HookSettings>,
    ) -> Result<ContainerEdits, EditsError> {
        let gpus = select_gpus(driver, request)?;
        let capabilities = request.capabilities;
        let mut edits = ContainerEdits::default();

        // Device nodes: the control node always, the selected GPUs, and the
        // nodes of the capabilities. Optional nodes that the host lacks are
        // skipped (a host without nvidia-uvm loaded still runs nvidia-smi).
        edits
            .device_nodes
            .push(driver.required_device_node("nvidiactl")?);
        for gpu in &gpus {
            edits
                .device_nodes
                .push(driver.required_device_node(&format!("nvidia{}", gpu.minor))?);
        }
        let mut optional = Vec::new();
        if capabilities.contains(Capability::Compute) {
            optional.extend(["nvidia-uvm", "nvidia-uvm-tools"]);
        }
        if capabilities.contains(Capability::Display) {
            optional.push("nvidia-modeset");
        }
        for name in optional {
            match driver.device_node(name)? {
                Some(node) => edits.device_nodes.push(node),
                None => tracing::warn!("optional device node /dev/{name} not found; skipped"),
            }
        }

        // Libraries: each real file at its own name and at its SONAME, so it
        // resolves through the loader's default path even in an image without
        // ldconfig; libcuda also as libcuda.so, which programs dlopen.
        let mut cache_entries = Vec::new();
        for library in driver.libraries(capabilities)? {
            cache_entries.push((library.soname.clone(), library_dir.join(&library.soname)));
            let file_name = library.file_name();
            let mut names = vec![file_name.clone()];
            if library.soname != file_name {
                names.push(library.soname.clone());
            }
            if library.soname == "libcuda.so.1" {
                names.push("libcuda.so".to_string());
            }
            for name in names {
                edits.mounts.push(mount(
                    &library.host_path,
                    &library_dir.join(name),
                    FILE_MOUNT_OPTIONS,
                ));
            }
        }
        for binary in driver.binaries(capabilities) {
            edits.mounts.push(mount(
                &binary.host_path,
                &binary.container_path,
                FILE_MOUNT_OPTIONS,
            ));
        }
        for firmware in driver.firmware() {
            edits.mounts.push(mount(
                &firmware.host_path,
                &firmware.container_path,
                FILE_MOUNT_OPTIONS,
            ));
        }
        for ipc in driver.ipc(capabilities) {
            edits.mounts.push(mount(
                &ipc.host_path,
                &ipc.container_path,
                IPC_MOUNT_OPTIONS,
            ));
        }
        if let Some(settings) = hook {
            let proc_dirs: Vec<&str> = gpus.iter().map(|g| g.proc_dir_name.as_str()).collect();
            edits
                .hooks
                .push(prestart_hook(settings, &cache_entries, &proc_dirs));
        }
        Ok(edits)
    }
}
