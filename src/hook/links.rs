//! Symlinks the hook creates in the container's rootfs: the ones its argv
//! names (`--link TARGET::LINK`: the driver's GBM backend and GLX server
//! module, and NVIDIA's `create-symlinks`), and the `/dev/dri/by-path`
//! links of the DRM nodes a container gets, as udev names them on the host
//! (`pci-0000:3b:00.0-card -> ../card1`, `-render -> ../renderD129`), which
//! Vulkan and EGL use to match a DRM node to a GPU. Every path is resolved
//! confined to the rootfs; an existing symlink is replaced, anything else
//! at a link's path is left as it is.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use serde_json::Value;

use crate::system::System;

use super::HookError;

/// The `/dev/dri/by-path` links of the DRM nodes among `device_paths`
/// (`/dev/dri/card1`, `/dev/dri/renderD129`): `(target, link)`, the PCI
/// address of each node read from `<sys_root>/bus/pci/devices/<bus>/drm/`
/// on the host. A node sysfs does not know gets no link.
pub fn drm_by_path_links<'a>(
    device_paths: impl Iterator<Item = &'a Path>,
    sys_root: &Path,
) -> Vec<(PathBuf, PathBuf)> {
    let names: Vec<String> = device_paths
        .filter_map(|path| path.strip_prefix("/dev/dri").ok())
        .filter_map(|name| name.to_str())
        .filter(|name| name.starts_with("card") || name.starts_with("renderD"))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let Ok(buses) = std::fs::read_dir(sys_root.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut links = Vec::new();
    for bus in buses.filter_map(|entry| entry.ok()) {
        let bus_name = bus.file_name().to_string_lossy().into_owned();
        for name in &names {
            if !bus.path().join("drm").join(name).exists() {
                continue;
            }
            let kind = if name.starts_with("card") {
                "card"
            } else {
                "render"
            };
            links.push((
                PathBuf::from(format!("../{name}")),
                PathBuf::from(format!("/dev/dri/by-path/pci-{bus_name}-{kind}")),
            ));
        }
    }
    links.sort();
    links
}

/// Creates `links` (`(target, absolute link path)`) in the rootfs; returns
/// how many exist afterwards. A link in a read-only part of the image (a
/// read-only rootfs) is skipped with a warning: it only names a file the
/// container also finds by its own name, and the container must still start.
pub fn create_links(
    system: &dyn System,
    root: BorrowedFd<'_>,
    links: &[(PathBuf, PathBuf)],
) -> Result<usize, HookError> {
    let mut created = 0;
    for (target, link) in links {
        match create_symlink(system, root, target, link) {
            Ok(()) => created += 1,
            Err(HookError::Inject { source, .. })
                if source.raw_os_error() == Some(nix::libc::EROFS) =>
            {
                tracing::warn!(
                    "{} -> {}: the rootfs is read-only there; link not created",
                    link.display(),
                    target.display()
                );
            }
            Err(error) => return Err(error),
        }
    }
    Ok(created)
}

/// [`drm_by_path_links`] of a config.json's `linux.devices`.
pub fn drm_links_of_spec(spec: &Value, sys_root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let paths: Vec<PathBuf> = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|device| device.get("path")?.as_str().map(PathBuf::from))
        .collect();
    drm_by_path_links(paths.iter().map(PathBuf::as_path), sys_root)
}

pub(super) fn relative(path: &Path) -> String {
    path.strip_prefix("/")
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

pub(super) fn fail(action: String) -> impl FnOnce(nix::Error) -> HookError {
    move |errno| HookError::Inject {
        action,
        source: errno.into(),
    }
}

/// Creates the missing parents of `path` (relative to the rootfs) and
/// returns its parent dir, all confined.
pub(super) fn create_parents(
    system: &dyn System,
    root: BorrowedFd<'_>,
    path: &Path,
) -> Result<OwnedFd, HookError> {
    let mut current = PathBuf::new();
    let parent = path.parent().unwrap_or(Path::new(""));
    for component in parent.components() {
        let next = current.join(component);
        match system.open_in_root(
            root,
            &next.to_string_lossy(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        ) {
            Ok(_) => {}
            Err(nix::errno::Errno::ENOENT) => {
                let dir = system
                    .open_in_root(
                        root,
                        &current.to_string_lossy(),
                        OFlag::O_PATH | OFlag::O_DIRECTORY,
                    )
                    .map_err(fail(format!("open /{}", current.display())))?;
                system
                    .make_directory(dir.as_fd(), Path::new(component.as_os_str()), 0o755)
                    .map_err(fail(format!("create /{}", next.display())))?;
            }
            Err(errno) => return Err(fail(format!("resolve /{}", next.display()))(errno)),
        }
        current = next;
    }
    system
        .open_in_root(
            root,
            &current.to_string_lossy(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(fail(format!("open /{}", current.display())))
}

/// `link -> target`, created in the rootfs: the parent resolved confined,
/// an existing symlink replaced, anything else there left alone.
pub fn create_symlink(
    system: &dyn System,
    root: BorrowedFd<'_>,
    target: &Path,
    link: &Path,
) -> Result<(), HookError> {
    let relative_link = PathBuf::from(relative(link));
    let dir = create_parents(system, root, &relative_link)?;
    let name = relative_link.file_name().unwrap_or_default();
    match nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(stat) if stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK => {
            let current = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name).ok();
            if current.as_deref() == Some(target.as_os_str()) {
                return Ok(());
            }
            system
                .remove_file(dir.as_fd(), &name.to_string_lossy())
                .map_err(fail(format!("replace the symlink {}", link.display())))?;
        }
        Ok(_) => {
            tracing::info!(
                "{} exists and is not a symlink; left as it is",
                link.display()
            );
            return Ok(());
        }
        Err(_) => {}
    }
    nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
        .map_err(fail(format!("create the symlink {}", link.display())))
}
