//! `nvidia-ctk cdi generate`: the CDI spec of this host, made of
//! [`ContainerEdits::for_request`] output (the same discovery and mount
//! rules as the runtime's own patch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cdi::{self, parse_kind, validate_device_name, CdiError, Device, NameError, Spec};
use crate::config::Config;
use crate::driver::{Driver, HostFacts, LibraryArch, IMEX_CHANNEL_DIR};
use crate::request::{Capabilities, Capability, DeviceId, Devices, Request, VISIBLE_DEVICES};

use super::cdi::{to_cdi, without};
use super::prestart::HookSettings;
use super::select::select_devices;
use super::{ContainerEdits, EditsError, LibraryDirs};

/// The version generated specs declare. 0.5.0 is the first with
/// `deviceNodes[].hostPath` (which a driver root or dev root needs), and the
/// newest that podman 4.3's CDI library (Debian 12) accepts.
pub const GENERATED_CDI_VERSION: &str = "0.5.0";

/// The name of the device that holds every GPU's edits.
pub const ALL_DEVICE: &str = "all";

/// How generated devices are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStrategy {
    /// `0`, `1`, ... (the NVML index).
    Index,
    /// `GPU-<uuid>`.
    Uuid,
    /// Both, index first.
    Both,
}

/// What a generated spec describes (`--mode`, NVIDIA's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerateMode {
    /// Every GPU and MIG device, `all`, and the driver's files
    /// (`nvidia.com/gpu`).
    Gpu,
    /// One device `all` with every NVIDIA device node and the driver's
    /// files, no GPU selection: for monitoring agents
    /// (`management.nvidia.com/gpu`).
    Management,
    /// One device per IMEX channel, and `all` (`nvidia.com/imex-channel`).
    Imex,
}

impl GenerateMode {
    /// The kind NVIDIA's generator gives the mode's spec when none is set.
    pub fn default_vendor_and_class(self) -> (&'static str, &'static str) {
        match self {
            GenerateMode::Gpu => ("nvidia.com", "gpu"),
            GenerateMode::Management => ("management.nvidia.com", "gpu"),
            GenerateMode::Imex => ("nvidia.com", "imex-channel"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub mode: GenerateMode,
    pub vendor: String,
    pub class: String,
    pub strategy: NameStrategy,
    /// Our prestart hook: it writes the container's ld.so.cache and masks
    /// `/proc/driver/nvidia` when an engine applies the spec itself.
    pub hook: HookSettings,
}

/// The container library dirs of a generated spec: where the driver keeps
/// its libraries on the host, seen from the driver root (the anchor's
/// choice too). A spec is written before any image is known, so the image's
/// own layout cannot be asked; our hook's ld.so.cache makes the libraries
/// resolve in any glibc image.
fn library_dirs(driver: &Driver, capabilities: Capabilities) -> Result<LibraryDirs, EditsError> {
    let dir_of = |arch, fallback: &str| -> Result<PathBuf, EditsError> {
        let libraries = driver.libraries_for(capabilities, arch)?;
        let dir = libraries
            .iter()
            .filter_map(|library| library.host_path.parent())
            .filter_map(|dir| dir.strip_prefix(&driver.roots.driver_root).ok())
            .map(|relative| Path::new("/").join(relative))
            .next();
        Ok(dir.unwrap_or_else(|| PathBuf::from(fallback)))
    };
    Ok(LibraryDirs {
        lib64: dir_of(LibraryArch::X86_64, "/usr/lib/x86_64-linux-gnu")?,
        lib32: if capabilities.contains(Capability::Compat32) {
            dir_of(LibraryArch::I386, "/usr/lib/i386-linux-gnu")?
        } else {
            PathBuf::from("/usr/lib/i386-linux-gnu")
        },
    })
}

/// The spec for this host, per `options.mode` ([`GenerateMode`]).
pub fn generate(
    driver: &Driver,
    config: &Config,
    options: &GenerateOptions,
) -> Result<Spec, EditsError> {
    let kind = format!("{}/{}", options.vendor, options.class);
    parse_kind(&kind).map_err(|problem| {
        CdiError::BadName(NameError {
            what: "CDI kind",
            name: kind.clone(),
            problem,
        })
    })?;
    let (devices, container_edits) = match options.mode {
        GenerateMode::Imex => (imex_devices(driver)?, cdi::Edits::default()),
        GenerateMode::Gpu | GenerateMode::Management => {
            let mut requests = Requests::new(driver, config)?;
            let common = common_edits(&mut requests, options)?;
            let devices = match options.mode {
                GenerateMode::Management => management_devices(driver, &common)?,
                _ => gpu_devices(&mut requests, &common, options)?,
            };
            (devices, to_cdi(&common))
        }
    };
    for device in &devices {
        validate_device_name(&device.name).map_err(|problem| {
            CdiError::BadName(NameError {
                what: "generated device name",
                name: device.name.clone(),
                problem,
            })
        })?;
    }
    Ok(Spec {
        cdi_version: GENERATED_CDI_VERSION.to_string(),
        kind,
        annotations: BTreeMap::new(),
        devices,
        container_edits,
    })
}

/// Builds the edits of requests for a generated spec: every capability the
/// config allows, the container library dirs of [`library_dirs`], MIG
/// devices looked up through NVML (loaded only when a MIG device is asked).
struct Requests<'a> {
    driver: &'a Driver,
    capabilities: Capabilities,
    dirs: LibraryDirs,
    facts: HostFacts<'a>,
}

impl<'a> Requests<'a> {
    fn new(driver: &'a Driver, config: &Config) -> Result<Requests<'a>, EditsError> {
        let capabilities = Capabilities::parse(
            &config.supported_driver_capabilities,
            "supported-driver-capabilities in config.toml",
        )?;
        Ok(Requests {
            driver,
            capabilities,
            dirs: library_dirs(driver, capabilities)?,
            facts: HostFacts::new(driver),
        })
    }

    fn edits(
        &mut self,
        devices: Devices,
        hook: Option<&HookSettings>,
    ) -> Result<ContainerEdits, EditsError> {
        let request = Request::for_devices(devices, self.capabilities, "nvidia-ctk cdi generate");
        let selection = select_devices(self.driver, &request, &mut self.facts)?;
        ContainerEdits::for_request(self.driver, &request, &selection, &self.dirs, hook)
    }
}

/// The common edits of the GPU and management specs: a request for no GPU
/// with every capability the config allows (control nodes, libraries,
/// binaries, firmware, IPC sockets, our hook), and the entry that tells a
/// legacy runtime or hook seeing the same container (docker's default
/// runtime is nvidia, say) that the engine has done the injection. The
/// anchor's specs carry the same entry.
fn common_edits(
    requests: &mut Requests,
    options: &GenerateOptions,
) -> Result<ContainerEdits, EditsError> {
    let mut common = requests.edits(Devices::NoGpu, Some(&options.hook))?;
    common.env.insert(0, format!("{VISIBLE_DEVICES}=void"));
    Ok(common)
}

fn device(name: String, edits: &ContainerEdits) -> Device {
    Device {
        name,
        annotations: BTreeMap::new(),
        container_edits: to_cdi(edits),
    }
}

/// One device per GPU (named per `strategy`), one per MIG device of a GPU
/// in MIG mode (`<gpu>:<mig>` by NVML's MIG index, or `MIG-<uuid>`), an
/// `all` device, and the common edits every device needs.
///
/// Every part is [`ContainerEdits::for_request`] output: a device's edits
/// are what a request for that GPU (or MIG device, or all) adds to the
/// common ones. `all` holds every GPU and every MIG device's capability
/// nodes, as NVIDIA's merged `all` does: CUDA sees no device of a GPU in
/// MIG mode without them. The hook is only in the common edits, without
/// `--gpu`: hooks of several devices would each mount their own
/// `/proc/driver/nvidia` mask over the previous one. Given no `--gpu`, the
/// hook shows the procfs dirs of the GPUs whose `/dev/nvidia<minor>` nodes
/// are in the container's spec, and the MIG capability files of its
/// `nvidia-caps` nodes (`hook::mask_selection`), never another's.
fn gpu_devices(
    requests: &mut Requests,
    common: &ContainerEdits,
    options: &GenerateOptions,
) -> Result<Vec<Device>, EditsError> {
    let driver = requests.driver;
    let mut devices = Vec::new();
    let mut mig_nodes = Vec::new();
    for gpu in &driver.gpus {
        let edits = requests.edits(Devices::List(vec![DeviceId::Index(gpu.index as u32)]), None)?;
        let edits = without(&edits, common);
        let names = match options.strategy {
            NameStrategy::Index => vec![gpu.index.to_string()],
            NameStrategy::Uuid => vec![gpu.uuid.clone()],
            NameStrategy::Both => vec![gpu.index.to_string(), gpu.uuid.clone()],
        };
        devices.extend(names.into_iter().map(|name| device(name, &edits)));
        if !driver.has_mig_instances(gpu) {
            continue;
        }
        let migs =
            requests
                .facts
                .mig_devices(&gpu.uuid)
                .map_err(|problem| EditsError::MigList {
                    gpu: format!("{} ({})", gpu.index, gpu.uuid),
                    problem,
                })?;
        for (mig_index, mig) in migs {
            let id = DeviceId::MigIndex {
                gpu: gpu.index as u32,
                mig: mig_index,
            };
            let edits = without(&requests.edits(Devices::List(vec![id]), None)?, common);
            mig_nodes.extend(edits.device_nodes.iter().cloned());
            let index_name = format!("{}:{mig_index}", gpu.index);
            let names = match options.strategy {
                NameStrategy::Index => vec![index_name],
                NameStrategy::Uuid => vec![mig.uuid.clone()],
                NameStrategy::Both => vec![index_name, mig.uuid.clone()],
            };
            devices.extend(names.into_iter().map(|name| device(name, &edits)));
        }
    }
    if !driver.gpus.is_empty() {
        let mut all = without(&requests.edits(Devices::All, None)?, common);
        for node in mig_nodes {
            if !all.device_nodes.iter().any(|n| n.path == node.path) {
                all.device_nodes.push(node);
            }
        }
        devices.push(device(ALL_DEVICE.to_string(), &all));
    }
    Ok(devices)
}

/// The management spec: one device `all` with every NVIDIA device node of
/// the host ([`Driver::management_nodes`]: GPUs, MIG capabilities, IMEX
/// channels), found without NVML, and the common edits of the GPU spec
/// (every driver file, our hook). NVIDIA's GPU Operator gives it to DCGM
/// and its exporter, which watch every GPU whatever is given to pods.
/// Unlike NVIDIA's, our hook still masks `/proc/driver/nvidia`'s
/// `ModifyDeviceFiles` (CVE-2021-1056): the container already has every
/// node, so it needs to create none.
fn management_devices(driver: &Driver, common: &ContainerEdits) -> Result<Vec<Device>, EditsError> {
    let mut all = ContainerEdits::default();
    for node in driver.management_nodes()? {
        if !common.device_nodes.iter().any(|n| n.path == node.path) {
            all.device_nodes.push(node);
        }
    }
    Ok(vec![device(ALL_DEVICE.to_string(), &all)])
}

/// The IMEX channel spec: one device per `/dev/nvidia-caps-imex-channels/
/// channel<N>`, named `<N>` as NVIDIA's (`nvidia.com/imex-channel=0`), and
/// `all`. No common edits: a channel is a node and nothing else, and a pod
/// gets its GPUs from the GPU spec.
fn imex_devices(driver: &Driver) -> Result<Vec<Device>, EditsError> {
    let channels = driver.device_nodes_with_prefix(IMEX_CHANNEL_DIR, "channel")?;
    let mut devices = Vec::new();
    let mut all = ContainerEdits::default();
    for node in channels {
        let Some(number) = node
            .path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix("channel"))
            .filter(|number| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
        else {
            continue;
        };
        let edits = ContainerEdits {
            device_nodes: vec![node.clone()],
            ..ContainerEdits::default()
        };
        devices.push(device(number, &edits));
        all.device_nodes.push(node);
    }
    // Channel 10 after channel 9, as NVIDIA's names sort numerically.
    devices.sort_by_key(|device| device.name.parse::<u64>().unwrap_or(u64::MAX));
    if !all.device_nodes.is_empty() {
        devices.push(device(ALL_DEVICE.to_string(), &all));
    }
    Ok(devices)
}
