//! Driver discovery: what the host's NVIDIA driver offers, read from files.
//!
//! No NVML on this path (driver.md): the kernel module version and the GPUs
//! come from the driver's procfs, device nodes are stat'ed under the dev root,
//! libraries come from the driver root's `ld.so.cache` (or a scan of the usual
//! library dirs when the cache has none of them), binaries, firmware and IPC
//! sockets from their standard places. Every path inside the driver root is
//! resolved with the driver root as `/` ([`crate::confined`]). Each lookup is
//! done only when a request needs it.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::confined;
use crate::ldcache::LdCache;
use crate::request::{BusId, Capabilities, Capability};

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
}

/// Where the driver is seen from: the three roots of config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub driver_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
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

/// A character device node found under the dev root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container (`/dev/nvidia0`).
    pub path: PathBuf,
    /// Path on the host (under the dev root).
    pub host_path: PathBuf,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the host node.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A driver library: one real file, reachable by its SONAME.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Library {
    /// The SONAME (`libcuda.so.1`), the ld.so.cache key.
    pub soname: String,
    /// The real file on the host (`<root>/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15`).
    pub host_path: PathBuf,
}

impl Library {
    /// The real file's name (`libcuda.so.550.54.15`).
    pub fn file_name(&self) -> String {
        self.host_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A host file to bind-mount at the same or a fixed path in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
}

/// The library name prefixes per capability (contract.md §3). A library
/// matches when its SONAME is `<prefix>.so` or starts with `<prefix>.so.`.
pub fn library_prefixes(capability: Capability) -> &'static [&'static str] {
    match capability {
        Capability::Utility => &["libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"],
        Capability::Compute => &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-opencl",
            "libnvidia-gpucomp",
            "libnvidia-ptxjitcompiler",
            "libnvidia-fatbinaryloader",
            "libnvidia-allocator",
            "libnvidia-compiler",
            "libnvidia-pkcs11",
            "libnvidia-pkcs11-openssl3",
            "libnvidia-nvvm",
            "libnvidia-tileiras",
        ],
        Capability::Video => &[
            "libvdpau_nvidia",
            "libnvidia-encode",
            "libnvidia-opticalflow",
            "libnvcuvid",
        ],
        Capability::Graphics | Capability::Display => &[
            "libnvidia-eglcore",
            "libnvidia-glcore",
            "libnvidia-tls",
            "libnvidia-glsi",
            "libnvidia-fbc",
            "libnvidia-ifr",
            "libnvidia-rtcore",
            "libnvoptix",
            "libGLX_nvidia",
            "libEGL_nvidia",
            "libGLESv2_nvidia",
            "libGLESv1_CM_nvidia",
            "libnvidia-glvkspirv",
            "libnvidia-cbl",
        ],
        Capability::Ngx => &["libnvidia-ngx"],
        // compat32 selects the i386 copies of the other capabilities' libraries.
        Capability::Compat32 => &[],
    }
}

/// The binaries per capability (contract.md §3).
pub fn binary_names(capability: Capability) -> &'static [&'static str] {
    match capability {
        Capability::Utility => &[
            "nvidia-smi",
            "nvidia-debugdump",
            "nvidia-persistenced",
            "nv-fabricmanager",
        ],
        Capability::Compute => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
        _ => &[],
    }
}

/// The capabilities whose libraries a request gets: video implies compute.
pub fn library_capabilities(capabilities: Capabilities) -> Capabilities {
    let mut effective = capabilities;
    if capabilities.contains(Capability::Video) {
        effective.insert(Capability::Compute);
    }
    effective
}

fn library_matches(soname: &str, prefix: &str) -> bool {
    soname
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(".so"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// Library dirs scanned when the driver root's cache lists no driver
/// library. `/usr/local/nvidia/lib64` is where some GPU hosts (and the
/// GPU Operator's images) keep the driver outside the loader's dirs.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib",
    "/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
];

const BINARY_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/nvidia/bin",
];

/// ld.so.cache flags of x86-64 libc6 entries.
const X86_64_LIBC6: i32 = 0x0303;

/// The host's driver, as far as discovered so far.
#[derive(Debug, Clone)]
pub struct Driver {
    pub roots: Roots,
    /// Kernel module version from procfs (`550.54.15`).
    pub version: String,
    /// Every GPU, in index order.
    pub gpus: Vec<Gpu>,
}

impl Driver {
    /// Reads the kernel module version and the GPUs from procfs.
    pub fn discover(roots: Roots) -> Result<Driver, DriverError> {
        let nvidia_proc = roots.proc_root.join("driver/nvidia");
        let version_path = nvidia_proc.join("version");
        let version_text = match std::fs::read_to_string(&version_path) {
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
        })
    }

    /// The driver libraries for these capabilities: x86-64 only, real files
    /// whose name ends in the driver version, one entry per SONAME.
    pub fn libraries(&self, capabilities: Capabilities) -> Result<Vec<Library>, DriverError> {
        let prefixes: Vec<&str> = library_capabilities(capabilities)
            .iter()
            .flat_map(library_prefixes)
            .copied()
            .collect();
        let root = &self.roots.driver_root;
        let cache_path = confined::resolve(root, Path::new("/etc/ld.so.cache"))
            .unwrap_or_else(|_| root.join("etc/ld.so.cache"));
        let cached = match std::fs::read(&cache_path) {
            Ok(bytes) => {
                let cache = LdCache::parse(&bytes).map_err(|source| DriverError::BadLdCache {
                    path: cache_path.clone(),
                    source,
                })?;
                self.libraries_from_cache(&cache)?
            }
            Err(_) => Vec::new(),
        };
        // A host whose cache does not list the driver (it lives in, say,
        // /usr/local/nvidia) is found by scanning the library dirs.
        let all = if cached.is_empty() {
            self.libraries_from_dirs()?
        } else {
            cached
        };
        if all.is_empty() {
            return Err(DriverError::NoLibraries {
                driver_root: root.clone(),
                version: self.version.clone(),
            });
        }
        Ok(all
            .into_iter()
            .filter(|library| prefixes.iter().any(|p| library_matches(&library.soname, p)))
            .collect())
    }

    /// Every driver library (any capability) the cache lists, after the
    /// version check.
    fn libraries_from_cache(&self, cache: &LdCache) -> Result<Vec<Library>, DriverError> {
        let all_prefixes: Vec<&str> = Capability::ALL
            .into_iter()
            .flat_map(library_prefixes)
            .copied()
            .collect();
        let mut libraries = Vec::new();
        let mut seen = HashSet::new();
        for entry in cache.entries_with_flags(X86_64_LIBC6) {
            if !all_prefixes.iter().any(|p| library_matches(&entry.key, p)) {
                continue;
            }
            if !seen.insert(entry.key.clone()) {
                continue;
            }
            let Ok(real) = confined::resolve(&self.roots.driver_root, Path::new(&entry.value))
            else {
                continue;
            };
            if !real.is_file() {
                continue;
            }
            self.check_version(&entry.key, &real)?;
            if file_has_version(&real, &self.version) {
                libraries.push(Library {
                    soname: entry.key.clone(),
                    host_path: real,
                });
            }
        }
        Ok(libraries)
    }

    /// The SONAME links of `libcuda` and `libnvidia-ml` point at the files of
    /// the installed driver: if their version is not the kernel module's, the
    /// user has a half-upgraded driver and must hear it plainly.
    fn check_version(&self, soname: &str, real: &Path) -> Result<(), DriverError> {
        if soname != "libcuda.so.1" && soname != "libnvidia-ml.so.1" {
            return Ok(());
        }
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((_, library_version)) = name.split_once(".so.") else {
            return Ok(());
        };
        if library_version != self.version {
            return Err(DriverError::VersionMismatch {
                driver_root: self.roots.driver_root.clone(),
                library: real.to_path_buf(),
                library_version: library_version.to_string(),
                kernel_version: self.version.clone(),
            });
        }
        Ok(())
    }

    /// Scans the library dirs for `<prefix>.so.<version>` files and reads
    /// their SONAME from the ELF file.
    fn libraries_from_dirs(&self) -> Result<Vec<Library>, DriverError> {
        let all_prefixes: Vec<&str> = Capability::ALL
            .into_iter()
            .flat_map(library_prefixes)
            .copied()
            .collect();
        let suffix = format!(".so.{}", self.version);
        let mut libraries = Vec::new();
        let mut seen_files = HashSet::new();
        let mut seen_sonames = HashSet::new();
        for dir in LIBRARY_DIRS {
            let Ok(resolved_dir) = confined::resolve(&self.roots.driver_root, Path::new(dir))
            else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(&resolved_dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| {
                    name.strip_suffix(&suffix)
                        .is_some_and(|base| all_prefixes.contains(&base))
                })
                .collect();
            names.sort();
            for name in names {
                let Ok(real) =
                    confined::resolve(&self.roots.driver_root, &Path::new(dir).join(&name))
                else {
                    continue;
                };
                if !real.is_file() || !seen_files.insert(real.clone()) {
                    continue;
                }
                let soname = crate::elf::soname(&real).unwrap_or_else(|| name.clone());
                if seen_sonames.insert(soname.clone()) {
                    libraries.push(Library {
                        soname,
                        host_path: real,
                    });
                }
            }
        }
        Ok(libraries)
    }

    /// Binaries for these capabilities found under the driver root, mounted
    /// at `/usr/bin/<name>` in the container.
    pub fn binaries(&self, capabilities: Capabilities) -> Vec<HostFile> {
        let mut found = Vec::new();
        for name in capabilities.iter().flat_map(binary_names) {
            let hit = BINARY_DIRS.iter().find_map(|dir| {
                let path =
                    confined::resolve(&self.roots.driver_root, &Path::new(dir).join(name)).ok()?;
                path.is_file().then_some(path)
            });
            if let Some(host_path) = hit {
                found.push(HostFile {
                    host_path,
                    container_path: Path::new("/usr/bin").join(name),
                });
            }
        }
        found
    }

    /// GSP firmware files of this driver version, mounted at their own path.
    pub fn firmware(&self) -> Vec<HostFile> {
        let dir = Path::new("/lib/firmware/nvidia").join(&self.version);
        let Ok(resolved) = confined::resolve(&self.roots.driver_root, &dir) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&resolved) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("gsp") && name.ends_with(".bin"))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter(|name| resolved.join(name).is_file())
            .map(|name| HostFile {
                host_path: resolved.join(&name),
                container_path: dir.join(&name),
            })
            .collect()
    }

    /// IPC endpoints (sockets, the MPS pipe dir) for these capabilities that
    /// exist under the driver root, mounted at their standard path.
    pub fn ipc(&self, capabilities: Capabilities) -> Vec<HostFile> {
        let mut wanted: Vec<&str> = Vec::new();
        if capabilities.contains(Capability::Utility) {
            wanted.push("/run/nvidia-persistenced/socket");
            wanted.push("/run/nvidia-fabricmanager/socket");
        }
        if capabilities.contains(Capability::Compute) {
            wanted.push("/tmp/nvidia-mps");
        }
        wanted
            .into_iter()
            .filter_map(|path| {
                let host_path = confined::resolve(&self.roots.driver_root, Path::new(path)).ok()?;
                let meta = host_path.metadata().ok()?;
                let usable = meta.file_type().is_socket() || meta.is_dir();
                usable.then(|| HostFile {
                    host_path,
                    container_path: PathBuf::from(path),
                })
            })
            .collect()
    }

    /// Stats `/dev/<name>` under the dev root. `Ok(None)`: it does not exist.
    pub fn device_node(&self, name: &str) -> Result<Option<DeviceNode>, DriverError> {
        let container_path = Path::new("/dev").join(name);
        let host_path = confined::resolve(&self.roots.dev_root, &container_path)
            .unwrap_or_else(|_| self.roots.dev_root.join("dev").join(name));
        let meta = match std::fs::metadata(&host_path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DriverError::Read {
                    path: host_path,
                    source,
                })
            }
        };
        if !meta.file_type().is_char_device() {
            return Err(DriverError::NotADevice { path: host_path });
        }
        let rdev = meta.rdev();
        Ok(Some(DeviceNode {
            path: container_path,
            host_path,
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            file_mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }))
    }

    /// Like [`Driver::device_node`], but a missing node is an error.
    pub fn required_device_node(&self, name: &str) -> Result<DeviceNode, DriverError> {
        self.device_node(name)?
            .ok_or_else(|| DriverError::MissingNode {
                path: self.roots.dev_root.join("dev").join(name),
            })
    }
}

fn file_has_version(path: &Path, version: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(version))
        .is_some_and(|base| base.ends_with(".so."))
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
        let text = std::fs::read_to_string(&path).map_err(|source| DriverError::Read {
            path: path.clone(),
            source,
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

    #[test]
    fn library_prefix_matching() {
        assert!(library_matches("libcuda.so.1", "libcuda"));
        assert!(library_matches("libcuda.so", "libcuda"));
        assert!(!library_matches("libcudadebugger.so.1", "libcuda"));
        assert!(!library_matches("libcuda.sox", "libcuda"));
        assert!(file_has_version(
            Path::new("/x/libcuda.so.550.54.15"),
            "550.54.15"
        ));
        assert!(!file_has_version(
            Path::new("/x/libcuda.so.535.00.00"),
            "550.54.15"
        ));
        assert!(!file_has_version(
            Path::new("/x/libcuda.so.1550.54.15"),
            "550.54.15"
        ));
    }
}
