//! Driver discovery: what the host's NVIDIA driver offers, read from files.
//!
//! No NVML on this path (driver.md): the kernel module version and the GPUs
//! come from the driver's procfs, device nodes are stat'ed under the dev root,
//! libraries come from the driver root's `ld.so.cache` (or a scan of the usual
//! library dirs when the cache has none of them), binaries, firmware and IPC
//! sockets from their standard places. Every path inside the driver root is
//! resolved with the driver root as `/` ([`crate::confined`]). Each lookup is
//! done only when a request needs it.
//!
//! [`libraries`] has the per-capability file lists and the library search,
//! [`nodes`] the device nodes (GPU, control, MIG capability, DRM, IMEX,
//! feature families), [`facts`] what only the driver's own libraries can
//! tell (libcuda's CUDA version, NVML's compute capability, brand and MIG
//! devices), loaded lazily. Device nodes are stat'ed through
//! [`crate::system::System`], so that the whole discovery runs as an
//! ordinary user against a recording system in unit tests.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bounded::PROCFS_FILE;
use crate::config::Config;
use crate::request::BusId;
use crate::system::{RealSystem, System};

pub mod facts;
pub mod facts_cache;
pub mod facts_helper;
#[cfg(test)]
pub(crate) mod fake;
pub mod libraries;
pub mod nodes;

pub use facts::{HostFacts, MigInfo, MigLookup};
pub use libraries::{HostFile, Library, LibraryArch, XorgModules};
pub use nodes::{
    mig_capability_proc_file, parse_mig_minors, DeviceNode, MigDevice, FULL_ACCESS,
    IMEX_CHANNEL_DIR,
};

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the NVIDIA kernel module is not loaded ({path} does not exist): load it with `modprobe nvidia`, or set proc-root in config.toml if the driver's procfs is elsewhere")]
    NotLoaded { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} has no driver version in its first line (expected \"NVRM version: NVIDIA UNIX ... Kernel Module  <version> ...\")")]
    BadVersionFile { path: PathBuf },
    #[error("{path} is malformed: {problem}")]
    BadGpuInformation { path: PathBuf, problem: String },
    #[error("the driver libraries under {driver_root} are version {library_version} ({library}) but the loaded kernel module is {kernel_version}: the driver is half-upgraded; reboot (or reload the nvidia modules) to finish the upgrade")]
    VersionMismatch {
        driver_root: PathBuf,
        library: PathBuf,
        library_version: String,
        kernel_version: String,
    },
    #[error("no NVIDIA driver library of version {version} found under {driver_root} (looked in its /etc/ld.so.cache and the usual library dirs): install the driver's user-space libraries, or set root in [nvidia-container-cli] of config.toml to where they are")]
    NoLibraries {
        driver_root: PathBuf,
        version: String,
    },
    #[error("cannot read the driver root's ld.so.cache {path}: {source}: run ldconfig in the driver root")]
    BadLdCache {
        path: PathBuf,
        #[source]
        source: crate::ldcache::LdCacheError,
    },
    #[error("device node {path} is missing: is the NVIDIA driver loaded (try `nvidia-smi` on the host), and is dev-root in config.toml right?")]
    MissingNode { path: PathBuf },
    #[error("{path} is not a character device: the NVIDIA device nodes under the dev root are broken; recreate them (nvidia-modprobe, or reload the driver)")]
    NotADevice { path: PathBuf },
    #[error("{path} has no line for {key}: is MIG set up on this host (nvidia-smi mig -lgi)?")]
    MissingMigMinor { path: PathBuf, key: String },
    #[error("MIG instance gi{gi}/ci{ci} of the GPU with minor {gpu_minor} does not exist ({path} is missing): create it with nvidia-smi mig, or request another device")]
    MissingMigInstance {
        gpu_minor: u32,
        gi: u32,
        ci: u32,
        path: PathBuf,
    },
    #[error("{variable}=enabled, but this host has no {what} under {dev_root}/dev: install the driver for it, or unset {variable}")]
    MissingFeatureDevices {
        variable: &'static str,
        what: &'static str,
        dev_root: PathBuf,
    },
    #[error("NVIDIA_IMEX_CHANNELS names channel {channel}, but {path} does not exist: create the channel (nvidia-modprobe -i {channel}) or request another")]
    MissingImexChannel { channel: u32, path: PathBuf },
}

/// Where the driver is seen from: the three roots of config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub driver_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
    /// Where sysfs is read (DRM nodes of a GPU): `/sys` unless configured.
    pub sys_root: PathBuf,
}

impl Roots {
    /// The roots config.toml names (`root`, `dev-root`, `proc-root`,
    /// `sys-root`).
    pub fn from_config(config: &Config) -> Roots {
        Roots {
            driver_root: config.driver_root(),
            dev_root: config.dev_root(),
            proc_root: config.proc_root(),
            sys_root: config.sys_root(),
        }
    }
}

/// One GPU as the driver's procfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index: position in PCI bus order.
    pub index: usize,
    pub bus_id: BusId,
    pub uuid: String,
    /// `Device Minor`: the N of `/dev/nvidiaN`. Not the index.
    pub minor: u32,
    pub model: String,
    /// The procfs directory name (`0000:3b:00.0`), for masking `/proc` later.
    pub proc_dir_name: String,
}

/// The host's driver, as far as discovered so far.
#[derive(Debug, Clone)]
pub struct Driver {
    pub roots: Roots,
    /// Kernel module version from procfs (`550.54.15`).
    pub version: String,
    /// Every GPU, in index order.
    pub gpus: Vec<Gpu>,
    /// How device nodes are stat'ed.
    pub system: Arc<dyn System>,
}

impl Driver {
    /// Reads the kernel module version and the GPUs from procfs.
    pub fn discover(roots: Roots) -> Result<Driver, DriverError> {
        Driver::discover_with(roots, Arc::new(RealSystem))
    }

    /// [`Driver::discover`], with device nodes stat'ed through `system`.
    pub fn discover_with(roots: Roots, system: Arc<dyn System>) -> Result<Driver, DriverError> {
        let nvidia_proc = roots.proc_root.join("driver/nvidia");
        let version_path = nvidia_proc.join("version");
        let version_text = match crate::bounded::read_file_to_string(&version_path, PROCFS_FILE) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(DriverError::NotLoaded { path: version_path })
            }
            Err(source) => {
                return Err(DriverError::Read {
                    path: version_path,
                    source,
                })
            }
        };
        let version = parse_kernel_version(&version_text)
            .ok_or_else(|| DriverError::BadVersionFile {
                path: version_path.clone(),
            })?
            .to_string();
        let gpus = read_gpus(&nvidia_proc.join("gpus"))?;
        Ok(Driver {
            roots,
            version,
            gpus,
            system,
        })
    }
}

/// The version in `/proc/driver/nvidia/version`'s first line: the word after
/// "Kernel Module" (proprietary) or after "for x86_64"/"for aarch64" (open
/// modules: "NVIDIA UNIX Open Kernel Module for x86_64  580.159.04 ...").
pub fn parse_kernel_version(text: &str) -> Option<&str> {
    let first = text.lines().next()?;
    let words: Vec<&str> = first.split_whitespace().collect();
    let looks_like_version = |w: &&&str| {
        w.contains('.')
            && w.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let module = words.iter().position(|w| *w == "Module")?;
    words[module + 1..].iter().find(looks_like_version).copied()
}

/// The `Key: value` pairs of a procfs `information` file.
pub fn parse_information(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(':')?;
        Some((key.trim(), value.trim()))
    })
}

/// Reads every `gpus/<bus id>/information`, sorted by bus id (= NVML index).
fn read_gpus(gpus_dir: &Path) -> Result<Vec<Gpu>, DriverError> {
    let entries = match std::fs::read_dir(gpus_dir) {
        Ok(entries) => entries,
        // A loaded module with no GPU bound has no gpus dir.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DriverError::Read {
                path: gpus_dir.to_path_buf(),
                source,
            })
        }
    };
    let mut gpus = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| DriverError::Read {
            path: gpus_dir.to_path_buf(),
            source,
        })?;
        let dir_name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path().join("information");
        let text = crate::bounded::read_file_to_string(&path, PROCFS_FILE).map_err(|source| {
            DriverError::Read {
                path: path.clone(),
                source,
            }
        })?;
        gpus.push(parse_gpu(&text, &dir_name, &path)?);
    }
    gpus.sort_by_key(|gpu| gpu.bus_id);
    for (index, gpu) in gpus.iter_mut().enumerate() {
        gpu.index = index;
    }
    Ok(gpus)
}

fn parse_gpu(text: &str, dir_name: &str, path: &Path) -> Result<Gpu, DriverError> {
    let (mut model, mut uuid, mut bus, mut minor) = (None, None, None, None);
    for (key, value) in parse_information(text) {
        match key {
            "Model" => model = Some(value),
            "GPU UUID" => uuid = Some(value),
            "Bus Location" => bus = Some(value),
            "Device Minor" => minor = Some(value),
            _ => {}
        }
    }
    let bad = |problem: String| DriverError::BadGpuInformation {
        path: path.to_path_buf(),
        problem,
    };
    let bus_text = bus.unwrap_or(dir_name);
    let bus_id = BusId::parse(bus_text)
        .ok_or_else(|| bad(format!("bus location \"{bus_text}\" is not a PCI bus id")))?;
    let minor_text = minor.ok_or_else(|| bad("no \"Device Minor\" line".to_string()))?;
    let minor = minor_text
        .parse()
        .map_err(|_| bad(format!("device minor \"{minor_text}\" is not a number")))?;
    let uuid = uuid.ok_or_else(|| bad("no \"GPU UUID\" line".to_string()))?;
    Ok(Gpu {
        index: 0,
        bus_id,
        uuid: uuid.to_string(),
        minor,
        model: model.unwrap_or("").to_string(),
        proc_dir_name: dir_name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(
            parse_kernel_version(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version: x\n"
            ),
            Some("550.54.15")
        );
        assert_eq!(
            parse_kernel_version(
                "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U16)  Thu"
            ),
            Some("580.159.04")
        );
        assert_eq!(parse_kernel_version("garbage"), None);
        assert_eq!(parse_kernel_version(""), None);
    }

    #[test]
    fn information_file() {
        let text = "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:             408\nGPU UUID:        GPU-edfee158-11c1-52b8-0517-92f30e7fac88\nBus Location:    0000:06:00.0\nDevice Minor:    3\nGPU Excluded:    No\n";
        let gpu = parse_gpu(text, "0000:06:00.0", Path::new("/p")).unwrap();
        assert_eq!(gpu.minor, 3);
        assert_eq!(gpu.model, "NVIDIA H100 80GB HBM3");
        assert_eq!(gpu.uuid, "GPU-edfee158-11c1-52b8-0517-92f30e7fac88");
        assert_eq!(gpu.bus_id.to_string(), "0000:06:00.0");
        let error = parse_gpu("Model: x\n", "0000:06:00.0", Path::new("/p")).unwrap_err();
        assert!(error.to_string().contains("Device Minor"), "{error}");
    }
}
