//! CUDA forward compatibility: an image's `cuda-compat` libraries
//! (`/usr/local/cuda/compat/libcuda.so.<version>` and friends), used in
//! place of the host's when, and only when, their driver major is newer
//! than the host kernel module's. Data centers pin long-term driver
//! branches and run images built for newer CUDA; NVIDIA's stack does the
//! same (libnvidia-container's compat mode, its `enable-cuda-compat` hook).
//!
//! Nothing of the image is trusted: the host process only lists the compat
//! directory (resolved confined to the rootfs) and `lstat`s its entries;
//! the version comes from the file name, never from loading the file, and
//! only a regular file counts. The container's own loader then finds the
//! libraries through the ld.so.cache entries the hook lists first
//! ([`super::ld_cache`]); no image file is mounted, opened or executed by
//! a host process (CVE-2024-0132 and CVE-2025-23359 were NVIDIA mounting
//! image-supplied compat files).

use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::SFlag;

use crate::system::System;

/// Where `cuda-compat` installs its libraries, relative to the rootfs.
pub const COMPAT_DIR: &str = "usr/local/cuda/compat";

/// The libraries of a `cuda-compat` package (by name prefix); each is
/// listed by its SONAME-named entry and its development name.
const COMPAT_LIBRARIES: &[&str] = &[
    "libcuda",
    "libcudadebugger",
    "libnvidia-nvvm",
    "libnvidia-ptxjitcompiler",
    "libnvidia-pkcs11",
    "libnvidia-pkcs11-openssl3",
    "libnvidia-gpucomp",
];

/// What an image's compat dir offers and whether it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat {
    /// No compat dir in the image (most images).
    None,
    /// There is one, but it has no regular `libcuda.so.<version>` file.
    Unusable { dir: PathBuf, why: String },
    /// Its driver is not newer than the host's: the host's libcuda is used.
    NotNewer { version: String, host: String },
    /// Newer than the host's: these go first in ld.so.cache.
    Use(CompatLibraries),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatLibraries {
    /// The compat dir as the container sees it.
    pub dir: PathBuf,
    /// The driver version of its libcuda (`560.35.03`), from the file name.
    pub version: String,
    /// The names ld.so.cache lists (`libcuda.so.1`, `libcuda.so`,
    /// `libnvidia-nvvm.so.4`, ...), each an entry of the compat dir.
    pub names: Vec<String>,
}

impl CompatLibraries {
    /// `(key, path in the container)` for ld.so.cache.
    pub fn cache_entries(&self) -> Vec<(String, PathBuf)> {
        self.names
            .iter()
            .map(|name| (name.clone(), self.dir.join(name)))
            .collect()
    }
}

impl Compat {
    /// One line for the log and `nvidia-ctk info`.
    pub fn describe(&self) -> String {
        match self {
            Compat::None => format!("no /{COMPAT_DIR}"),
            Compat::Unusable { dir, why } => format!("{}: not used: {why}", dir.display()),
            Compat::NotNewer { version, host } => format!(
                "/{COMPAT_DIR}: libcuda {version} is not newer than the host's driver {host}: not used"
            ),
            Compat::Use(libraries) => format!(
                "{}: libcuda {} is newer than the host's driver: listed first ({})",
                libraries.dir.display(),
                libraries.version,
                libraries.names.join(", ")
            ),
        }
    }
}

/// The major of a driver version (`560` of `560.35.03`).
pub fn driver_major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// `560.35.03` of `libcuda.so.560.35.03`: at least two numeric components.
fn libcuda_version(name: &str) -> Option<&str> {
    let version = name.strip_prefix("libcuda.so.")?;
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (parts.len() >= 2 && numeric).then_some(version)
}

/// A name ld.so.cache should list: `<lib>.so` or `<lib>.so.<N>` of a
/// compat library.
fn is_listed_name(name: &str) -> bool {
    COMPAT_LIBRARIES.iter().any(|lib| {
        name.strip_prefix(lib)
            .and_then(|rest| rest.strip_prefix(".so"))
            .is_some_and(|rest| {
                rest.is_empty()
                    || rest
                        .strip_prefix('.')
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
    })
}

fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    parts(a).cmp(&parts(b))
}

/// Looks at the image's compat dir, from inside the container's mount
/// namespace (`root` is its rootfs), against the host driver `host_version`.
pub fn inspect(system: &dyn System, root: BorrowedFd<'_>, host_version: &str) -> Compat {
    let container_dir = Path::new("/").join(COMPAT_DIR);
    let dir = match system.open_in_root(root, COMPAT_DIR, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(dir) => dir,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => return Compat::None,
        Err(errno) => {
            return Compat::Unusable {
                dir: container_dir,
                why: format!("cannot open it: {errno}"),
            }
        }
    };
    let mut listing = match nix::dir::Dir::from_fd(dir.into_raw_fd()) {
        Ok(listing) => listing,
        Err(errno) => {
            return Compat::Unusable {
                dir: container_dir,
                why: format!("cannot list it: {errno}"),
            }
        }
    };
    let dir_fd = listing.as_raw_fd();
    let entries: Vec<String> = listing
        .iter()
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str().ok().map(str::to_string))
        .collect();
    let kind = |name: &str| {
        nix::sys::stat::fstatat(Some(dir_fd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()
            .map(|stat| SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()))
    };
    let mut version: Option<String> = None;
    let mut symlinked = Vec::new();
    let mut names = Vec::new();
    for name in &entries {
        let file_type = kind(name);
        if let Some(found) = libcuda_version(name) {
            match file_type {
                Some(SFlag::S_IFREG) => {
                    let newer = version
                        .as_deref()
                        .is_none_or(|v| compare_versions(found, v).is_gt());
                    if newer {
                        version = Some(found.to_string());
                    }
                }
                _ => symlinked.push(name.clone()),
            }
        }
        let listable = matches!(file_type, Some(SFlag::S_IFREG | SFlag::S_IFLNK));
        if listable && is_listed_name(name) {
            names.push(name.clone());
        }
    }
    for name in &symlinked {
        tracing::warn!(
            "{}/{name} is not a regular file (a symlink?); ignored for CUDA compatibility",
            container_dir.display()
        );
    }
    let Some(version) = version else {
        return Compat::Unusable {
            dir: container_dir,
            why: "it has no regular libcuda.so.<version> file".to_string(),
        };
    };
    let newer = match (driver_major(&version), driver_major(host_version)) {
        (Some(compat), Some(host)) => compat > host,
        _ => false,
    };
    if !newer {
        return Compat::NotNewer {
            version,
            host: host_version.to_string(),
        };
    }
    names.sort();
    Compat::Use(CompatLibraries {
        dir: container_dir,
        version,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::RealSystem;
    use std::os::fd::AsFd;

    #[test]
    fn names_and_versions() {
        assert_eq!(libcuda_version("libcuda.so.560.35.03"), Some("560.35.03"));
        assert_eq!(libcuda_version("libcuda.so.1"), None);
        assert_eq!(libcuda_version("libcuda.so"), None);
        assert_eq!(libcuda_version("libcuda.so.560.x"), None);
        assert!(is_listed_name("libcuda.so.1"));
        assert!(is_listed_name("libcuda.so"));
        assert!(is_listed_name("libnvidia-nvvm.so.4"));
        assert!(!is_listed_name("libcuda.so.560.35.03"));
        assert!(!is_listed_name("libcudart.so.12"));
        assert_eq!(driver_major("550.54.15"), Some(550));
    }

    #[test]
    fn only_a_newer_regular_libcuda_is_used() {
        let root = std::env::temp_dir().join(format!("ncr-compat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let compat = root.join(COMPAT_DIR);
        std::fs::create_dir_all(&root).unwrap();
        let check = |host: &str| {
            let fd = RealSystem.open_directory(&root).unwrap();
            inspect(&RealSystem, fd.as_fd(), host)
        };
        assert_eq!(check("550.54.15"), Compat::None);
        std::fs::create_dir_all(&compat).unwrap();
        std::fs::write(compat.join("libcuda.so.560.35.03"), b"").unwrap();
        std::os::unix::fs::symlink("libcuda.so.560.35.03", compat.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("libcuda.so.1", compat.join("libcuda.so")).unwrap();
        std::fs::write(compat.join("libnvidia-nvvm.so.560.35.03"), b"").unwrap();
        std::os::unix::fs::symlink(
            "libnvidia-nvvm.so.560.35.03",
            compat.join("libnvidia-nvvm.so.4"),
        )
        .unwrap();
        match check("550.54.15") {
            Compat::Use(libraries) => {
                assert_eq!(libraries.version, "560.35.03");
                assert_eq!(
                    libraries.names,
                    ["libcuda.so", "libcuda.so.1", "libnvidia-nvvm.so.4"]
                );
                assert_eq!(
                    libraries.cache_entries()[1],
                    (
                        "libcuda.so.1".to_string(),
                        PathBuf::from("/usr/local/cuda/compat/libcuda.so.1")
                    )
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(check("560.28.03"), Compat::NotNewer { .. }));
        assert!(matches!(check("570.86.10"), Compat::NotNewer { .. }));
        // A libcuda that is a symlink (to a host file, say) does not count.
        std::fs::remove_file(compat.join("libcuda.so.560.35.03")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", compat.join("libcuda.so.560.35.03")).unwrap();
        assert!(matches!(check("550.54.15"), Compat::Unusable { .. }));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
