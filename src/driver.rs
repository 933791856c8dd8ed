//! Driver discovery: what the host's NVIDIA driver offers, read from files.
//!
//! No NVML on this path (driver.md): the kernel module version and the GPUs
//! come from the driver's procfs, device nodes are stat'ed under the dev root,
//! libraries come from the driver root's `ld.so.cache` (or a scan of the usual
//! library dirs when the cache has none of them), binaries, firmware and IPC
//! sockets from their standard places. Every path inside the driver root is
//! resolved with the driver root as `/` ([`crate::confined`]). Each lookup is
//! done only when a request needs it.

use std::collections::{HashMap, HashSet};
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
    /// The cgroup access the container gets (`rwm`; CDI's `permissions`).
    pub permissions: String,
}

/// The cgroup access of an injected device node: everything, as runc gives
/// the nodes of its own default device list.
pub const FULL_ACCESS: &str = "rwm";

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

/// ld.so.cache flag bits: the low byte is the library type (1 = ELF,
/// 3 = ELF libc6), the next the architecture (0x0300 = x86-64; 0 = the
/// host's default ABI, which on x86 hosts is i386). glibc's dl-cache.h.
const FLAG_TYPE_MASK: i32 = 0x00ff;
const FLAG_ARCH_MASK: i32 = 0xff00;
const FLAG_ELF: i32 = 0x0001;
const FLAG_ELF_LIBC6: i32 = 0x0003;
const FLAG_X86_64: i32 = 0x0300;

/// The architecture of library a lookup wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryArch {
    X86_64,
    /// The 32-bit copies (`compat32`).
    I386,
}

impl LibraryArch {
    /// Whether a cache entry's flags are an ELF library of this arch. Both
    /// libc6 (0x03) and plain ELF (0x01, a library that links no libc) count.
    fn matches(self, flags: i32) -> bool {
        let elf = matches!(flags & FLAG_TYPE_MASK, FLAG_ELF | FLAG_ELF_LIBC6);
        let arch = flags & FLAG_ARCH_MASK;
        elf && match self {
            LibraryArch::X86_64 => arch == FLAG_X86_64,
            LibraryArch::I386 => arch == 0,
        }
    }
}

/// The EGL / Vulkan / OpenCL vendor files of the driver (graphics), mounted
/// at their own path: the loaders inside the image find the driver by them.
pub const GRAPHICS_FILES: &[&str] = &[
    "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
    "/usr/share/vulkan/icd.d/nvidia_icd.json",
    "/etc/vulkan/icd.d/nvidia_icd.json",
    "/usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
    "/etc/vulkan/implicit_layer.d/nvidia_layers.json",
    "/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
    "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
    "/usr/share/egl/egl_external_platform.d/20_nvidia_xcb.json",
    "/usr/share/egl/egl_external_platform.d/20_nvidia_xlib.json",
    "/etc/OpenCL/vendors/nvidia.icd",
];

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
        self.libraries_for(capabilities, LibraryArch::X86_64)
    }

    /// Like [`Driver::libraries`], for one architecture. The i386 copies
    /// are found only through the cache (there is no standard dir to scan).
    pub fn libraries_for(
        &self,
        capabilities: Capabilities,
        arch: LibraryArch,
    ) -> Result<Vec<Library>, DriverError> {
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
                self.libraries_from_cache(&cache, arch)?
            }
            Err(_) => Vec::new(),
        };
        if arch == LibraryArch::I386 {
            return Ok(cached
                .into_iter()
                .filter(|library| prefixes.iter().any(|p| library_matches(&library.soname, p)))
                .collect());
        }
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
    fn libraries_from_cache(
        &self,
        cache: &LdCache,
        arch: LibraryArch,
    ) -> Result<Vec<Library>, DriverError> {
        let all_prefixes: Vec<&str> = Capability::ALL
            .into_iter()
            .flat_map(library_prefixes)
            .copied()
            .collect();
        let mut libraries = Vec::new();
        let mut seen = HashSet::new();
        for entry in cache.entries.iter().filter(|e| arch.matches(e.flags)) {
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
            if arch == LibraryArch::X86_64 {
                self.check_version(&entry.key, &real)?;
            }
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
            permissions: FULL_ACCESS.to_string(),
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

/// One MIG device: a GPU instance / compute instance of a parent GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDevice {
    /// Index of the parent GPU in [`Driver::gpus`].
    pub parent_index: usize,
    pub gpu_instance: u32,
    pub compute_instance: u32,
    pub uuid: String,
}

impl Driver {
    /// `/proc/driver/nvidia-caps/mig-minors`: `name -> minor` of every
    /// MIG capability (`config`, `monitor`, `gpu0/gi1/access`, ...).
    pub fn mig_minors(&self) -> Result<HashMap<String, u32>, DriverError> {
        let path = self.roots.proc_root.join("driver/nvidia-caps/mig-minors");
        let text = std::fs::read_to_string(&path).map_err(|source| DriverError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, minor) = line.trim().rsplit_once(char::is_whitespace)?;
                Some((name.trim().to_string(), minor.trim().parse().ok()?))
            })
            .collect())
    }

    /// The `nvidia-caps` node of a MIG capability named as in mig-minors.
    pub fn mig_capability_node(
        &self,
        minors: &HashMap<String, u32>,
        name: &str,
    ) -> Result<DeviceNode, DriverError> {
        let minor = minors
            .get(name)
            .ok_or_else(|| DriverError::MissingMigMinor {
                path: self.roots.proc_root.join("driver/nvidia-caps/mig-minors"),
                key: name.to_string(),
            })?;
        self.required_device_node(&format!("nvidia-caps/nvidia-cap{minor}"))
    }

    /// The capability files of a MIG device relative to
    /// `/proc/driver/nvidia` (`capabilities/gpu1/mig/gi2/access`, and the
    /// compute instance's), after checking the instance exists.
    pub fn mig_access_files(&self, mig: &MigDevice) -> Result<[String; 2], DriverError> {
        let gpu_minor = self
            .gpus
            .get(mig.parent_index)
            .map(|gpu| gpu.minor)
            .unwrap_or_default();
        let gi = format!(
            "capabilities/gpu{gpu_minor}/mig/gi{}/access",
            mig.gpu_instance
        );
        let ci = format!(
            "capabilities/gpu{gpu_minor}/mig/gi{}/ci{}/access",
            mig.gpu_instance, mig.compute_instance
        );
        let ci_path = self.roots.proc_root.join("driver/nvidia").join(&ci);
        if !ci_path.exists() {
            return Err(DriverError::MissingMigInstance {
                gpu_minor,
                gi: mig.gpu_instance,
                ci: mig.compute_instance,
                path: ci_path,
            });
        }
        Ok([gi, ci])
    }

    /// The DRM card and render nodes of a GPU, from
    /// `<sys>/bus/pci/devices/<bus>/drm/`; none when the GPU has no DRM
    /// device (compute-only boards, or nvidia-drm not loaded).
    pub fn drm_nodes(&self, gpu: &Gpu) -> Result<Vec<DeviceNode>, DriverError> {
        let dir = self
            .roots
            .sys_root
            .join("bus/pci/devices")
            .join(gpu.bus_id.to_string())
            .join("drm");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("card") || name.starts_with("renderD"))
            .collect();
        names.sort();
        let mut nodes = Vec::new();
        for name in names {
            if let Some(node) = self.device_node(&format!("dri/{name}"))? {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// Every node under the dev root's `/dev/<dir>` whose name starts with
    /// `prefix` (`nvidia-fs` -> nvidia-fs0, nvidia-fs1, ...), sorted.
    pub fn device_nodes_with_prefix(
        &self,
        dir: &str,
        prefix: &str,
    ) -> Result<Vec<DeviceNode>, DriverError> {
        let base = self.roots.dev_root.join("dev").join(dir);
        let Ok(entries) = std::fs::read_dir(&base) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        let mut nodes = Vec::new();
        for name in names {
            let relative = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if let Some(node) = self.device_node(&relative)? {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// The graphics vendor files present under the driver root.
    pub fn graphics_files(&self) -> Vec<HostFile> {
        GRAPHICS_FILES
            .iter()
            .filter_map(|path| {
                let host_path = confined::resolve(&self.roots.driver_root, Path::new(path)).ok()?;
                host_path.is_file().then(|| HostFile {
                    host_path,
                    container_path: PathBuf::from(path),
                })
            })
            .collect()
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
