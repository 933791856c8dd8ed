//! The edits: what a GPU container gets, as one model.
//!
//! [`ContainerEdits`] has the shape of CDI's `containerEdits` (env, device
//! nodes, mounts, hooks) so that the runtime's patch and a CDI spec come from
//! the same discovery. This module turns a [`Request`] and a [`Driver`] into
//! edits (contract.md §3); [`crate::spec`] applies them to `config.json`.

use std::path::{Path, PathBuf};

use crate::driver::{DeviceNode, Driver, DriverError, Gpu, LibraryArch, MigDevice};
use crate::driver_api::{HostFacts, MigInfo};
use crate::request::{Capability, DeviceId, Devices, ImexChannels, Request};

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
    #[error("{source_name} names MIG device {device}, which cannot be used: {problem}; list the MIG devices with nvidia-smi -L")]
    MigLookup {
        source_name: String,
        device: String,
        problem: String,
    },
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub options: Vec<String>,
    /// The OCI mount `type`: `bind` for everything we inject; a CDI spec
    /// may name another.
    pub mount_type: String,
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
    proc_files: &[String],
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
    // Extra files of /proc/driver/nvidia the container must still see
    // through the hook's mask (MIG capability files CUDA reads).
    for file in proc_files {
        args.push("--proc-file".to_string());
        args.push(file.clone());
    }
    Hook {
        hook_name: "prestart".to_string(),
        path: settings.path.clone(),
        args,
        env: HOOK_ENV.iter().map(|e| e.to_string()).collect(),
        timeout: Some(HOOK_TIMEOUT_SECONDS),
    }
}

/// An opt-in device family: enabled, its variable, what it is (for the
/// error), and the `(dir under /dev, name prefix)` patterns of its nodes.
type FeatureFamily = (
    bool,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The container's library dirs for 64- and 32-bit libraries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryDirs {
    pub lib64: PathBuf,
    pub lib32: PathBuf,
}

impl LibraryDirs {
    /// Debian-family images (`/etc/debian_version`) use the multiarch dirs,
    /// every other glibc image `/usr/lib64` and `/usr/lib` (the Red Hat
    /// layout). The rootfs is looked into without following symlinks out
    /// of it.
    pub fn for_rootfs(rootfs: &Path) -> LibraryDirs {
        if crate::confined::exists(rootfs, Path::new("/etc/debian_version")) {
            LibraryDirs {
                lib64: PathBuf::from("/usr/lib/x86_64-linux-gnu"),
                lib32: PathBuf::from("/usr/lib/i386-linux-gnu"),
            }
        } else {
            LibraryDirs {
                lib64: PathBuf::from("/usr/lib64"),
                lib32: PathBuf::from("/usr/lib"),
            }
        }
    }
}

/// How MIG devices are looked up (NVML, loaded lazily, in the runtime).
pub trait MigLookup {
    /// A MIG device by its `MIG-...` UUID.
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String>;
    /// The MIG device at `index` of the GPU with `parent_uuid`; `Ok(None)`
    /// when there is none at that index.
    fn mig_by_index(&mut self, parent_uuid: &str, index: u32) -> Result<Option<MigInfo>, String>;
}

impl MigLookup for HostFacts<'_> {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        HostFacts::mig_by_uuid(self, uuid)
    }
    fn mig_by_index(&mut self, parent_uuid: &str, index: u32) -> Result<Option<MigInfo>, String> {
        HostFacts::mig_by_index(self, parent_uuid, index)
    }
}

/// What a request selects: whole GPUs and MIG devices, in the order asked,
/// without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection<'a> {
    pub gpus: Vec<&'a Gpu>,
    pub migs: Vec<MigDevice>,
}

impl<'a> Selection<'a> {
    /// Every GPU involved: whole GPUs and MIG parents, each once, in order.
    pub fn physical_gpus(&self, driver: &'a Driver) -> Vec<&'a Gpu> {
        let mut gpus: Vec<&Gpu> = self.gpus.clone();
        for mig in &self.migs {
            if let Some(parent) = driver.gpus.get(mig.parent_index) {
                if !gpus.iter().any(|g| g.index == parent.index) {
                    gpus.push(parent);
                }
            }
        }
        gpus
    }
}

/// Resolves a request's devices. MIG devices need NVML (`mig`), which is
/// asked only when the request names one.
pub fn select_devices<'a>(
    driver: &'a Driver,
    request: &Request,
    mig: &mut dyn MigLookup,
) -> Result<Selection<'a>, EditsError> {
    let ids = match &request.devices {
        Devices::All => {
            return Ok(Selection {
                gpus: driver.gpus.iter().collect(),
                migs: Vec::new(),
            })
        }
        Devices::NoGpu => return Ok(Selection::default()),
        Devices::List(ids) => ids,
    };
    let unknown = |id: &DeviceId| EditsError::UnknownGpu {
        source_name: request.devices_source.clone(),
        device: id.to_string(),
        available: describe_gpus(driver, id),
    };
    let mig_error = |id: &DeviceId, problem: String| EditsError::MigLookup {
        source_name: request.devices_source.clone(),
        device: id.to_string(),
        problem,
    };
    let mut selection = Selection::default();
    for id in ids {
        let info = match id {
            DeviceId::MigUuid(uuid) => mig.mig_by_uuid(uuid).map_err(|e| mig_error(id, e))?,
            DeviceId::MigIndex { gpu, mig: index } => {
                let parent = driver.gpus.get(*gpu as usize).ok_or_else(|| unknown(id))?;
                mig.mig_by_index(&parent.uuid, *index)
                    .map_err(|e| mig_error(id, e))?
                    .ok_or_else(|| mig_error(id, format!("GPU {gpu} has no MIG device {index}")))?
            }
            _ => {
                let gpu = driver
                    .gpus
                    .iter()
                    .find(|gpu| match id {
                        DeviceId::Index(index) => gpu.index == *index as usize,
                        DeviceId::Uuid(uuid) => gpu.uuid.eq_ignore_ascii_case(uuid),
                        DeviceId::BusId(bus) => gpu.bus_id == *bus,
                        DeviceId::MigUuid(_) | DeviceId::MigIndex { .. } => false,
                    })
                    .ok_or_else(|| unknown(id))?;
                if !selection.gpus.iter().any(|s| s.index == gpu.index) {
                    selection.gpus.push(gpu);
                }
                continue;
            }
        };
        let parent_index = driver
            .gpus
            .iter()
            .position(|gpu| gpu.uuid.eq_ignore_ascii_case(&info.parent_uuid))
            .ok_or_else(|| {
                mig_error(
                    id,
                    format!(
                        "its parent GPU {} is not in the driver's procfs",
                        info.parent_uuid
                    ),
                )
            })?;
        let device = MigDevice {
            parent_index,
            gpu_instance: info.gpu_instance,
            compute_instance: info.compute_instance,
            uuid: info.uuid,
        };
        if !selection.migs.contains(&device) {
            selection.migs.push(device);
        }
    }
    Ok(selection)
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
        mount_type: "bind".to_string(),
        host_path: host_path.to_path_buf(),
        container_path: container_path.to_path_buf(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

impl ContainerEdits {
    /// The edits for one GPU container. `rootfs_dirs` are the container's
    /// library dirs ([`LibraryDirs::for_rootfs`]).
    /// `hook`: where our prestart hook is; `None` leaves it out (CDI specs
    /// for engines that do not run our hook, and tests of the bare edits).
    pub fn for_request(
        driver: &Driver,
        request: &Request,
        selection: &Selection,
        rootfs_dirs: &LibraryDirs,
        hook: Option<&HookSettings>,
    ) -> Result<ContainerEdits, EditsError> {
        let capabilities = request.capabilities;
        let mut edits = ContainerEdits::default();
        let physical = selection.physical_gpus(driver);

        // Device nodes: the control node always, the selected GPUs (a MIG
        // device's parent too), and the nodes of the capabilities. Optional
        // nodes the host lacks are skipped (a host without nvidia-uvm loaded
        // still runs nvidia-smi).
        edits.add_node(driver.required_device_node("nvidiactl")?);
        for gpu in &physical {
            edits.add_node(driver.required_device_node(&format!("nvidia{}", gpu.minor))?);
        }
        let mut proc_files = Vec::new();
        if !selection.migs.is_empty() || request.mig_config || request.mig_monitor {
            let minors = driver.mig_minors()?;
            for mig in &selection.migs {
                // The GPU instance's and the compute instance's capability
                // nodes, as named in mig-minors (`gpu1/gi2/access`, ...).
                for file in driver.mig_access_files(mig)? {
                    let name = file
                        .trim_start_matches("capabilities/")
                        .replace("/mig/", "/");
                    edits.add_node(driver.mig_capability_node(&minors, &name)?);
                    proc_files.push(file);
                }
            }
            for (wanted, name) in [
                (request.mig_config, "config"),
                (request.mig_monitor, "monitor"),
            ] {
                if wanted {
                    edits.add_node(driver.mig_capability_node(&minors, name)?);
                    proc_files.push(format!("capabilities/mig/{name}"));
                }
            }
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
                Some(node) => edits.add_node(node),
                None => tracing::warn!("optional device node /dev/{name} not found; skipped"),
            }
        }
        if capabilities.contains(Capability::Graphics) || capabilities.contains(Capability::Display)
        {
            // Only the selected GPUs' DRM nodes: a container must not render
            // on (or read the framebuffer of) a GPU it was not given.
            for gpu in &selection.gpus {
                for node in driver.drm_nodes(gpu)? {
                    edits.add_node(node);
                }
            }
        }
        edits.add_imex_channels(driver, request.imex_channels.as_ref())?;
        edits.add_feature_devices(driver, request)?;

        // Libraries: each real file at its own name and at its SONAME, so it
        // resolves through the loader's default path even in an image without
        // ldconfig; libcuda also as libcuda.so, which programs dlopen.
        let mut cache_entries = Vec::new();
        for library in driver.libraries(capabilities)? {
            cache_entries.push((
                library.soname.clone(),
                rootfs_dirs.lib64.join(&library.soname),
            ));
            edits.add_library(&library, &rootfs_dirs.lib64);
        }
        if capabilities.contains(Capability::Compat32) {
            for library in driver.libraries_for(capabilities, LibraryArch::I386)? {
                edits.add_library(&library, &rootfs_dirs.lib32);
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
        if capabilities.contains(Capability::Graphics) || capabilities.contains(Capability::Display)
        {
            for file in driver.graphics_files() {
                edits.mounts.push(mount(
                    &file.host_path,
                    &file.container_path,
                    FILE_MOUNT_OPTIONS,
                ));
            }
        }
        for ipc in driver.ipc(capabilities) {
            edits.mounts.push(mount(
                &ipc.host_path,
                &ipc.container_path,
                IPC_MOUNT_OPTIONS,
            ));
        }
        if let Some(settings) = hook {
            let proc_dirs: Vec<&str> = physical.iter().map(|g| g.proc_dir_name.as_str()).collect();
            edits.hooks.push(prestart_hook(
                settings,
                &cache_entries,
                &proc_dirs,
                &proc_files,
            ));
        }
        Ok(edits)
    }

    /// Adds a device node once (a MIG parent may be selected twice).
    fn add_node(&mut self, node: DeviceNode) {
        if !self.device_nodes.iter().any(|n| n.path == node.path) {
            self.device_nodes.push(node);
        }
    }

    fn add_library(&mut self, library: &crate::driver::Library, dir: &Path) {
        let file_name = library.file_name();
        let mut names = vec![file_name.clone()];
        if library.soname != file_name {
            names.push(library.soname.clone());
        }
        if library.soname == "libcuda.so.1" {
            names.push("libcuda.so".to_string());
        }
        for name in names {
            self.mounts.push(mount(
                &library.host_path,
                &dir.join(name),
                FILE_MOUNT_OPTIONS,
            ));
        }
    }

    fn add_imex_channels(
        &mut self,
        driver: &Driver,
        channels: Option<&ImexChannels>,
    ) -> Result<(), EditsError> {
        const DIR: &str = "nvidia-caps-imex-channels";
        match channels {
            None => {}
            Some(ImexChannels::All) => {
                for node in driver.device_nodes_with_prefix(DIR, "channel")? {
                    self.add_node(node);
                }
            }
            Some(ImexChannels::List(list)) => {
                for channel in list {
                    let name = format!("{DIR}/channel{channel}");
                    let node = driver.device_node(&name)?.ok_or_else(|| {
                        DriverError::MissingImexChannel {
                            channel: *channel,
                            path: driver.roots.dev_root.join("dev").join(&name),
                        }
                    })?;
                    self.add_node(node);
                }
            }
        }
        Ok(())
    }

    /// `NVIDIA_GDS`, `NVIDIA_MOFED`, `NVIDIA_NVSWITCH`, `NVIDIA_GDRCOPY`.
    fn add_feature_devices(
        &mut self,
        driver: &Driver,
        request: &Request,
    ) -> Result<(), EditsError> {
        let features = request.features;
        let families: [FeatureFamily; 4] = [
            (
                features.gds,
                "NVIDIA_GDS",
                "/dev/nvidia-fs*",
                &[("", "nvidia-fs")],
            ),
            (
                features.mofed,
                "NVIDIA_MOFED",
                "/dev/infiniband/uverbs* or rdma_cm",
                &[("infiniband", "uverbs"), ("infiniband", "rdma_cm")],
            ),
            (
                features.nvswitch,
                "NVIDIA_NVSWITCH",
                "/dev/nvidia-nvswitch*",
                &[("", "nvidia-nvswitch")],
            ),
            (
                features.gdrcopy,
                "NVIDIA_GDRCOPY",
                "/dev/gdrdrv",
                &[("", "gdrdrv")],
            ),
        ];
        for (enabled, variable, what, patterns) in families {
            if !enabled {
                continue;
            }
            let mut found = Vec::new();
            for (dir, prefix) in patterns {
                found.extend(driver.device_nodes_with_prefix(dir, prefix)?);
            }
            if found.is_empty() {
                return Err(DriverError::MissingFeatureDevices {
                    variable,
                    what,
                    dev_root: driver.roots.dev_root.clone(),
                }
                .into());
            }
            for node in found {
                self.add_node(node);
            }
        }
        Ok(())
    }
}
