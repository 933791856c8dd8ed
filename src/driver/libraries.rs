//! The driver's files a container gets per capability (contract.md §3):
//! libraries (from the driver root's `ld.so.cache`, or a scan of the usual
//! library dirs when the cache lists none, checked against the kernel
//! module's version), binaries, GSP firmware, IPC sockets and the graphics
//! vendor files. Every path is resolved with the driver root as `/`.

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::confined;
use crate::ldcache::{
    LdCache, FLAG_ARCH_MASK, FLAG_ELF, FLAG_ELF_LIBC6, FLAG_TYPE_MASK, FLAG_X8664_LIB64,
};
use crate::request::{Capabilities, Capability};

use super::{Driver, DriverError};

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
            // The GBM backend (gbm/nvidia-drm_gbm.so links to it) and the
            // Vulkan producer of older drivers, as NVIDIA's graphics
            // discovery adds them.
            "libnvidia-allocator",
            "libnvidia-vulkan-producer",
            // EGL external platforms, versioned on their own.
            "libnvidia-egl-gbm",
            "libnvidia-egl-wayland",
            "libnvidia-egl-wayland2",
            "libnvidia-egl-xcb",
            "libnvidia-egl-xlib",
        ],
        Capability::Ngx => &["libnvidia-ngx"],
        // compat32 selects the i386 copies of the other capabilities' libraries.
        Capability::Compat32 => &[],
    }
}

/// Driver libraries whose file names carry their own version, not the
/// driver's (`libnvidia-egl-wayland.so.1.1.13`): NVIDIA ships them with
/// the driver, built from their own projects.
const OWN_VERSION_PREFIXES: &[&str] = &[
    "libnvidia-egl-gbm",
    "libnvidia-egl-wayland",
    "libnvidia-egl-wayland2",
    "libnvidia-egl-xcb",
    "libnvidia-egl-xlib",
];

/// Whether a real file is of this driver: its name ends in the driver
/// version, or it is one of [`OWN_VERSION_PREFIXES`] with any version.
fn is_driver_file(path: &Path, soname: &str, version: &str) -> bool {
    file_has_version(path, version)
        || OWN_VERSION_PREFIXES
            .iter()
            .any(|prefix| library_matches(soname, prefix))
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
            LibraryArch::X86_64 => arch == FLAG_X8664_LIB64,
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
    "/usr/share/egl/egl_external_platform.d/09_nvidia_wayland2.json",
    "/usr/share/egl/egl_external_platform.d/10_nvidia_wayland.json",
    "/usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
    "/usr/share/egl/egl_external_platform.d/20_nvidia_xcb.json",
    "/usr/share/egl/egl_external_platform.d/20_nvidia_xlib.json",
    "/usr/share/vulkan/icd.d/nvidia_icd.x86_64.json",
    "/etc/vulkan/icd.d/nvidia_icd.x86_64.json",
    "/usr/share/vulkan/icd.d/nvidia_layers.json",
    "/etc/vulkan/icd.d/nvidia_layers.json",
    "/etc/OpenCL/vendors/nvidia.icd",
    // OptiX's shader cache seed, and the X server's config snippets (an X
    // server in the container finds the NVIDIA driver module by them).
    "/usr/share/nvidia/nvoptix.bin",
    "/usr/share/X11/xorg.conf.d/10-nvidia.conf",
    "/usr/share/X11/xorg.conf.d/nvidia-drm-outputclass.conf",
];

/// Where distributions and NVIDIA's installer put the X server's driver
/// module (`nvidia_drv.so`) and GLX extension (`libglxserver_nvidia.so.<v>`).
const XORG_MODULE_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/nvidia/xorg",
    "/usr/lib/xorg/modules/drivers",
    "/usr/lib/xorg/modules/extensions",
    "/usr/lib/xorg/modules/updates/drivers",
    "/usr/lib/xorg/modules/updates/extensions",
    "/usr/lib64/xorg/modules/drivers",
    "/usr/lib64/xorg/modules/extensions",
];

impl Driver {
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
        let cached = match crate::bounded::read_file(&cache_path, crate::bounded::LD_SO_CACHE) {
            Ok(bytes) => {
                let cache = LdCache::parse(&bytes).map_err(|source| DriverError::BadLdCache {
                    path: cache_path.clone(),
                    source,
                })?;
                self.libraries_from_cache(&cache, arch)?
            }
            Err(error) => {
                if crate::bounded::is_too_large(&error) {
                    tracing::warn!(
                        "{}: {error}; scanning the library dirs",
                        cache_path.display()
                    );
                }
                Vec::new()
            }
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
            if is_driver_file(&real, &entry.key, &self.version) {
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
                        || own_version_file(name)
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

    /// Whether the driver root's `ld.so.cache` lists this driver's
    /// libraries (else they come from the scan of the library dirs).
    pub fn libraries_in_ld_cache(&self) -> bool {
        let root = &self.roots.driver_root;
        let cache_path = confined::resolve(root, Path::new("/etc/ld.so.cache"))
            .unwrap_or_else(|_| root.join("etc/ld.so.cache"));
        crate::bounded::read_file(&cache_path, crate::bounded::LD_SO_CACHE)
            .ok()
            .and_then(|bytes| LdCache::parse(&bytes).ok())
            .and_then(|cache| self.libraries_from_cache(&cache, LibraryArch::X86_64).ok())
            .is_some_and(|found| !found.is_empty())
    }

    /// Driver libraries of another version in the library dirs: left out of
    /// every container (a half-upgraded driver, or an old one not removed).
    pub fn other_version_libraries(&self) -> Vec<PathBuf> {
        let all_prefixes: Vec<&str> = Capability::ALL
            .into_iter()
            .flat_map(library_prefixes)
            .copied()
            .collect();
        let mut found = Vec::new();
        for dir in LIBRARY_DIRS {
            let Ok(resolved) = confined::resolve(&self.roots.driver_root, Path::new(dir)) else {
                continue;
            };
            for entry in std::fs::read_dir(&resolved).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some((base, version)) = name.split_once(".so.") else {
                    continue;
                };
                let is_driver_version = version.split('.').count() >= 2
                    && version
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
                if all_prefixes.contains(&base) && is_driver_version && version != self.version {
                    found.push(entry.path());
                }
            }
        }
        found.sort();
        found.dedup();
        found
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

/// `libnvidia-egl-wayland.so.1.1.13`: a real file (three version parts)
/// of one of [`OWN_VERSION_PREFIXES`], not its SONAME link.
fn own_version_file(name: &str) -> bool {
    OWN_VERSION_PREFIXES.iter().any(|prefix| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix(".so."))
            .is_some_and(|version| {
                version.split('.').count() >= 3
                    && version
                        .split('.')
                        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            })
    })
}

/// The X server's NVIDIA modules, mounted at their own path, and the
/// `libglxserver_nvidia.so -> libglxserver_nvidia.so.<version>` link the
/// X server loads it by (`(target, link)`), as NVIDIA's installer makes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XorgModules {
    pub files: Vec<HostFile>,
    pub links: Vec<(PathBuf, PathBuf)>,
}

impl Driver {
    /// [`XorgModules`] found under the driver root.
    pub fn xorg_modules(&self) -> XorgModules {
        let glx_server = format!("libglxserver_nvidia.so.{}", self.version);
        let mut modules = XorgModules::default();
        for dir in XORG_MODULE_DIRS {
            for name in ["nvidia_drv.so", glx_server.as_str()] {
                let container_path = Path::new(dir).join(name);
                let Ok(host_path) = confined::resolve(&self.roots.driver_root, &container_path)
                else {
                    continue;
                };
                if !host_path.is_file() {
                    continue;
                }
                if name == glx_server {
                    modules.links.push((
                        PathBuf::from(name),
                        Path::new(dir).join("libglxserver_nvidia.so"),
                    ));
                }
                modules.files.push(HostFile {
                    host_path,
                    container_path,
                });
            }
        }
        modules
    }
}

fn file_has_version(path: &Path, version: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(version))
        .is_some_and(|base| base.ends_with(".so."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_versioned_on_their_own() {
        assert!(own_version_file("libnvidia-egl-wayland.so.1.1.13"));
        assert!(own_version_file("libnvidia-egl-gbm.so.1.1.2"));
        // The SONAME link, another library, a non-number.
        assert!(!own_version_file("libnvidia-egl-wayland.so.1"));
        assert!(!own_version_file("libnvidia-egl-waylandx.so.1.1.13"));
        assert!(!own_version_file("libnvidia-egl-wayland.so.1.1.x"));
        assert!(is_driver_file(
            Path::new("/x/libnvidia-egl-wayland.so.1.1.13"),
            "libnvidia-egl-wayland.so.1",
            "550.54.15"
        ));
        assert!(!is_driver_file(
            Path::new("/x/libnvidia-glcore.so.535.00.00"),
            "libnvidia-glcore.so.535.00.00",
            "550.54.15"
        ));
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
