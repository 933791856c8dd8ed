//! `nvidia-ctk info`: what this host offers and what a container would get,
//! everything a support ticket needs in one command (the successor of
//! nvidia-docker 1's `/gpu/info`). NVML and libcuda are loaded here (this
//! is not the start path); their absence is reported, not fatal.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cdi::Registry;
use crate::config::Config;
use crate::driver::{Driver, HostFacts, Roots};
use crate::request::{Capabilities, Capability};
use crate::requirements::Facts;

use super::engines::{registrations, EngineRegistration};
use super::{ConfigReport, HostRoot};

#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub config: ConfigReport,
    pub driver: Result<DriverInfo, String>,
    pub engines: Vec<EngineRegistration>,
    pub cdi: CdiInfo,
    /// With `--rootfs`: what the image's CUDA compat dir offers.
    pub cuda_compat: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriverInfo {
    pub version: String,
    /// What libcuda's `cuDriverGetVersion` says (`12.4`).
    pub cuda_version: Result<String, String>,
    pub driver_root: PathBuf,
    pub gpus: Vec<GpuInfo>,
    pub device_nodes: NodesInfo,
    pub libraries: LibrariesInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub minor: u32,
    pub uuid: String,
    pub bus_id: String,
    pub name: String,
    /// `enabled` with the MIG devices NVML lists, `disabled`, or why it is
    /// not known.
    pub mig: Result<Vec<String>, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodesInfo {
    pub found: Vec<PathBuf>,
    pub missing: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LibrariesInfo {
    /// `ld.so.cache` of the driver root, or the library dirs scanned.
    pub found_through: &'static str,
    pub files: Result<Vec<(String, PathBuf)>, String>,
    /// Libraries of another driver version, left out of containers.
    pub other_versions: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CdiInfo {
    pub spec_dirs: Vec<PathBuf>,
    pub specs: Vec<CdiSpecInfo>,
    pub broken: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CdiSpecInfo {
    pub path: PathBuf,
    pub kind: String,
    pub devices: Vec<String>,
    /// What in the spec does not fit this host's driver (files gone,
    /// libraries of another version); empty when it matches.
    pub stale: Vec<String>,
}

/// Collects everything; `rootfs`: an image to look into for CUDA compat.
pub fn collect(config: &ConfigReport, host: &HostRoot, rootfs: Option<&Path>) -> Info {
    let effective = config.effective();
    let version = current_driver_version(&effective);
    Info {
        config: config.clone(),
        driver: driver_info(&effective),
        engines: registrations(host),
        cdi: cdi_info(&effective, version.as_deref()),
        cuda_compat: rootfs.map(|rootfs| cuda_compat(&effective, rootfs, version.as_deref())),
    }
}

/// The hook's own decision for an image: the same code, run on the host
/// against a rootfs dir (listing and lstat only, as in the container).
fn cuda_compat(config: &Config, rootfs: &Path, host_version: Option<&str>) -> String {
    use crate::hook::cuda_compat::inspect;
    use crate::system::{RealSystem, System};
    let Some(host_version) = host_version else {
        return "unknown: no driver loaded to compare with".to_string();
    };
    let root = match RealSystem.open_directory(rootfs) {
        Ok(root) => root,
        Err(errno) => return format!("cannot open {}: {errno}", rootfs.display()),
    };
    let compat = inspect(&RealSystem, std::os::fd::AsFd::as_fd(&root), host_version);
    if config.cuda_compat_enabled() {
        compat.describe()
    } else {
        format!(
            "{} (but the handling is off in config.toml)",
            compat.describe()
        )
    }
}

fn current_driver_version(config: &Config) -> Option<String> {
    Driver::discover(Roots::from_config(config))
        .ok()
        .map(|driver| driver.version)
}

fn driver_info(config: &Config) -> Result<DriverInfo, String> {
    let driver = Driver::discover(Roots::from_config(config))
        .map_err(|error| crate::logging::error_chain(&error))?;
    let mut facts = HostFacts::new(&driver);
    let cuda_version = facts.cuda_version();
    let gpus = driver
        .gpus
        .iter()
        .map(|gpu| GpuInfo {
            index: gpu.index,
            minor: gpu.minor,
            uuid: gpu.uuid.clone(),
            bus_id: gpu.bus_id.to_string(),
            name: gpu.model.clone(),
            mig: mig_devices(&mut facts, &gpu.uuid),
        })
        .collect();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let mut names: Vec<String> = [
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidia-modeset",
    ]
    .map(str::to_string)
    .to_vec();
    names.extend(driver.gpus.iter().map(|gpu| format!("nvidia{}", gpu.minor)));
    for name in names {
        match driver.device_node(&name) {
            Ok(Some(node)) => found.push(node.host_path),
            _ => missing.push(driver.roots.dev_root.join("dev").join(&name)),
        }
    }
    let all: Capabilities = Capability::ALL.into_iter().collect();
    let files = driver
        .libraries(all)
        .map(|libraries| {
            libraries
                .into_iter()
                .map(|library| (library.soname, library.host_path))
                .collect()
        })
        .map_err(|error| crate::logging::error_chain(&error));
    Ok(DriverInfo {
        version: driver.version.clone(),
        cuda_version,
        driver_root: driver.roots.driver_root.clone(),
        gpus,
        device_nodes: NodesInfo { found, missing },
        libraries: LibrariesInfo {
            found_through: if driver.libraries_in_ld_cache() {
                "the driver root's ld.so.cache"
            } else {
                "a scan of the library dirs"
            },
            files,
            other_versions: driver.other_version_libraries(),
        },
    })
}

/// The MIG devices of a GPU, by NVML's MIG index, until the first gap.
fn mig_devices(facts: &mut HostFacts<'_>, uuid: &str) -> Result<Vec<String>, String> {
    let mut devices = Vec::new();
    for index in 0..64 {
        match facts.mig_by_index(uuid, index)? {
            Some(mig) => devices.push(mig.uuid),
            None => break,
        }
    }
    Ok(devices)
}

fn cdi_info(config: &Config, driver_version: Option<&str>) -> CdiInfo {
    let dirs = config.cdi_spec_dirs();
    let registry = Registry::load(&dirs);
    CdiInfo {
        spec_dirs: dirs,
        specs: registry
            .specs
            .iter()
            .map(|loaded| CdiSpecInfo {
                path: loaded.path.clone(),
                kind: loaded.spec.kind.clone(),
                devices: loaded.spec.devices.iter().map(|d| d.name.clone()).collect(),
                stale: stale_parts(&loaded.spec, driver_version),
            })
            .collect(),
        broken: registry
            .broken
            .iter()
            .map(|broken| (broken.path.clone(), broken.problem.clone()))
            .collect(),
    }
}

/// What of a spec does not fit this host: host files that are gone, and
/// driver libraries of another version than the loaded driver's.
pub fn stale_parts(spec: &crate::cdi::Spec, driver_version: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let edits = std::iter::once(&spec.container_edits)
        .chain(spec.devices.iter().map(|device| &device.container_edits));
    for edits in edits {
        let hosts = edits
            .mounts
            .iter()
            .map(|mount| mount.host_path.clone())
            .chain(
                edits
                    .device_nodes
                    .iter()
                    .map(|node| node.host_path.clone().unwrap_or_else(|| node.path.clone())),
            );
        for host in hosts {
            if !std::path::Path::new(&host).exists() {
                problems.push(format!("{host} no longer exists"));
                continue;
            }
            let versioned = host
                .rsplit('/')
                .next()
                .and_then(|name| name.split_once(".so."));
            if let (Some((_, version)), Some(driver)) = (versioned, driver_version) {
                let is_driver_version = version.split('.').count() >= 2
                    && version.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                if is_driver_version && version != driver {
                    problems.push(format!(
                        "{host} is of driver {version}, the loaded driver is {driver}"
                    ));
                }
            }
        }
    }
    problems.dedup();
    problems
}

impl Info {
    /// The human-readable report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "config: {}", self.config.describe());
        match &self.driver {
            Err(error) => {
                let _ = writeln!(out, "driver: not usable: {error}");
            }
            Ok(driver) => {
                let _ = writeln!(
                    out,
                    "driver: {} (driver root {})",
                    driver.version,
                    driver.driver_root.display()
                );
                match &driver.cuda_version {
                    Ok(version) => {
                        let _ = writeln!(out, "cuda: {version}");
                    }
                    Err(error) => {
                        let _ = writeln!(out, "cuda: unknown ({error})");
                    }
                }
                for gpu in &driver.gpus {
                    let mig = match &gpu.mig {
                        Ok(devices) if devices.is_empty() => "MIG disabled".to_string(),
                        Ok(devices) => format!("MIG enabled: {}", devices.join(", ")),
                        Err(error) => format!("MIG unknown ({error})"),
                    };
                    let _ = writeln!(
                        out,
                        "gpu {}: {} {} bus {} minor {} ({mig})",
                        gpu.index, gpu.name, gpu.uuid, gpu.bus_id, gpu.minor
                    );
                }
                let paths = |list: &[PathBuf]| {
                    list.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let _ = writeln!(out, "device nodes: {}", paths(&driver.device_nodes.found));
                if !driver.device_nodes.missing.is_empty() {
                    let _ = writeln!(
                        out,
                        "device nodes missing: {}",
                        paths(&driver.device_nodes.missing)
                    );
                }
                match &driver.libraries.files {
                    Ok(files) => {
                        let _ = writeln!(
                            out,
                            "libraries ({} found through {}):",
                            files.len(),
                            driver.libraries.found_through
                        );
                        for (soname, path) in files {
                            let _ = writeln!(out, "  {soname} => {}", path.display());
                        }
                    }
                    Err(error) => {
                        let _ = writeln!(out, "libraries: {error}");
                    }
                }
                if !driver.libraries.other_versions.is_empty() {
                    let _ = writeln!(
                        out,
                        "libraries of another driver version (left out): {}",
                        paths(&driver.libraries.other_versions)
                    );
                }
            }
        }
        for engine in &self.engines {
            let state = if let Some(problem) = &engine.problem {
                format!("config broken: {problem}")
            } else if engine.missing {
                "no config file".to_string()
            } else if let Some(entry) = &engine.entry {
                format!(
                    "nvidia registered ({} in {}){}",
                    entry.path,
                    entry.file.display(),
                    if engine.default {
                        ", the default runtime"
                    } else {
                        ""
                    }
                )
            } else {
                "nvidia not registered".to_string()
            };
            let _ = writeln!(
                out,
                "{}: {} ({})",
                engine.engine,
                state,
                engine.config_file.display()
            );
        }
        for spec in &self.cdi.specs {
            let state = if spec.stale.is_empty() {
                "matches the driver".to_string()
            } else {
                format!("stale: {}", spec.stale.join("; "))
            };
            let _ = writeln!(
                out,
                "cdi spec {}: {} devices {} ({state})",
                spec.path.display(),
                spec.kind,
                spec.devices.join(", ")
            );
        }
        for (path, problem) in &self.cdi.broken {
            let _ = writeln!(out, "cdi spec {}: broken: {problem}", path.display());
        }
        if let Some(compat) = &self.cuda_compat {
            let _ = writeln!(out, "cuda compat: {compat}");
        }
        if self.cdi.specs.is_empty() && self.cdi.broken.is_empty() {
            let dirs: Vec<String> = self
                .cdi
                .spec_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            let _ = writeln!(out, "cdi: no spec in {}", dirs.join(", "));
        }
        out
    }
}
