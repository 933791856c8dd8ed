//! `nvidia-ctk cdi generate`: the CDI spec of this host, made of
//! [`ContainerEdits::for_request`] output (the same discovery and mount
//! rules as the runtime's own patch).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cdi::{parse_kind, validate_device_name, CdiError, Device, NameError, Spec};
use crate::config::Config;
use crate::driver::{Driver, LibraryArch, MigInfo, MigLookup};
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

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub vendor: String,
    pub class: String,
    pub strategy: NameStrategy,
    /// Our prestart hook: it writes the container's ld.so.cache and masks
    /// `/proc/driver/nvidia` when an engine applies the spec itself.
    pub hook: HookSettings,
}

/// MIG devices are not part of generated specs: nothing may look one up.
struct NoMig;

impl MigLookup for NoMig {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        Err(format!(
            "MIG device {uuid}: generated specs hold whole GPUs only"
        ))
    }
    fn mig_by_index(&mut self, _parent: &str, index: u32) -> Result<Option<MigInfo>, String> {
        Err(format!(
            "MIG device {index}: generated specs hold whole GPUs only"
        ))
    }
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

/// The spec for this host: one device per GPU (named per `strategy`), an
/// `all` device, and the common edits (control nodes, libraries, binaries,
/// firmware, IPC sockets, our hook) that every device needs.
///
/// Every part is [`ContainerEdits::for_request`] output: the common edits
/// are a request for no GPU with every capability the config allows; a
/// device's edits are what a request for that GPU (or for all) adds to
/// them. The hook is only in the common edits, without `--gpu`: hooks of
/// several devices would each mount their own `/proc/driver/nvidia` mask
/// over the previous one. Given no `--gpu`, the hook shows the procfs dirs
/// of the GPUs whose `/dev/nvidia<minor>` nodes are in the container's
/// spec (`hook::gpu_dirs_from_devices`), never another GPU's.
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
    let capabilities = Capabilities::parse(
        &config.supported_driver_capabilities,
        "supported-driver-capabilities in config.toml",
    )?;
    let dirs = library_dirs(driver, capabilities)?;
    let edits_for = |devices: Devices, hook: Option<&HookSettings>| {
        let request = Request::for_devices(devices, capabilities, "nvidia-ctk cdi generate");
        let selection = select_devices(driver, &request, &mut NoMig)?;
        ContainerEdits::for_request(driver, &request, &selection, &dirs, hook)
    };
    let common = edits_for(Devices::NoGpu, Some(&options.hook))?;
    let mut devices = Vec::new();
    for gpu in &driver.gpus {
        let edits = edits_for(Devices::List(vec![DeviceId::Index(gpu.index as u32)]), None)?;
        let edits = to_cdi(&without(&edits, &common));
        let names = match options.strategy {
            NameStrategy::Index => vec![gpu.index.to_string()],
            NameStrategy::Uuid => vec![gpu.uuid.clone()],
            NameStrategy::Both => vec![gpu.index.to_string(), gpu.uuid.clone()],
        };
        for name in names {
            validate_device_name(&name).map_err(|problem| {
                CdiError::BadName(NameError {
                    what: "generated device name",
                    name: name.clone(),
                    problem,
                })
            })?;
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: edits.clone(),
            });
        }
    }
    if !driver.gpus.is_empty() {
        let all = edits_for(Devices::All, None)?;
        devices.push(Device {
            name: ALL_DEVICE.to_string(),
            annotations: BTreeMap::new(),
            container_edits: to_cdi(&without(&all, &common)),
        });
    }
    let mut container_edits = to_cdi(&common);
    // An engine that applied this spec has done the injection: a legacy
    // runtime or hook that also sees the container (docker's default
    // runtime is nvidia, say) must not inject a second time. The anchor's
    // specs carry the same entry.
    container_edits
        .env
        .insert(0, format!("{}=void", VISIBLE_DEVICES));
    Ok(Spec {
        cdi_version: GENERATED_CDI_VERSION.to_string(),
        kind,
        annotations: BTreeMap::new(),
        devices,
        container_edits,
    })
}
