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
/// what it made (for [`undo_links`]). A link in a read-only part of the
/// image (a read-only rootfs) is skipped with a warning: the container
/// finds the file by its own name and through ld.so.cache, and must still
/// start. On another failure the links made so far are undone.
pub fn create_links(
    system: &dyn System,
    root: BorrowedFd<'_>,
    links: &[(PathBuf, PathBuf)],
) -> Result<Vec<Made>, HookError> {
    let mut made = Vec::new();
    for (target, link) in links {
        match create_symlink(system, root, target, link, Replace::SameLibrary) {
            Ok(what) => made.push(what),
            Err(HookError::Inject { source, .. })
                if source.raw_os_error() == Some(nix::libc::EROFS) =>
            {
                tracing::warn!(
                    "{} -> {}: the rootfs is read-only there; link not created",
                    link.display(),
                    target.display()
                );
            }
            Err(error) => {
                undo_links(system, root, &made);
                return Err(error);
            }
        }
    }
    Ok(made)
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

/// Which existing symlink at a link's path [`create_symlink`] replaces (a
/// file or dir there is always left alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// Any symlink: NVIDIA's `create-symlinks`.
    AnySymlink,
    /// Only one that points at the same library, of any version
    /// (`libcuda.so.1 -> libcuda.so.535.104.05`, an image that baked in
    /// another driver): our own links. A link of the image to anything else
    /// is the image's choice and stays.
    SameLibrary,
}

/// The name of a library without its `.so` and version
/// (`libcuda.so.550.54.15` -> `libcuda`); other names whole.
fn library_stem(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.find(".so") {
        Some(end) => name[..end].to_string(),
        None => name,
    }
}

/// `link -> target`, created in the rootfs: the parent resolved confined,
/// an existing symlink replaced as `replace` says, anything else there
/// left alone. Returns what it did, for [`undo_links`].
pub fn create_symlink(
    system: &dyn System,
    root: BorrowedFd<'_>,
    target: &Path,
    link: &Path,
    replace: Replace,
) -> Result<Made, HookError> {
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
                return Ok(Made::Nothing);
            }
            let same_library = current
                .as_deref()
                .is_some_and(|current| library_stem(Path::new(current)) == library_stem(target));
            if replace == Replace::SameLibrary && !same_library {
                tracing::info!(
                    "{} is the image's symlink to {:?}; left as it is",
                    link.display(),
                    current.unwrap_or_default()
                );
                return Ok(Made::Nothing);
            }
            system
                .remove_file(dir.as_fd(), &name.to_string_lossy())
                .map_err(fail(format!("replace the symlink {}", link.display())))?;
            let previous = PathBuf::from(current.unwrap_or_default());
            make_link(system, dir.as_fd(), name, target, link)?;
            return Ok(Made::Replaced {
                link: link.to_path_buf(),
                previous,
            });
        }
        Ok(_) => {
            tracing::info!(
                "{} exists and is not a symlink; left as it is",
                link.display()
            );
            return Ok(Made::Nothing);
        }
        Err(_) => {}
    }
    make_link(system, dir.as_fd(), name, target, link)?;
    Ok(Made::Created(link.to_path_buf()))
}

fn make_link(
    system: &dyn System,
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    target: &Path,
    link: &Path,
) -> Result<(), HookError> {
    system
        .create_symlink(dir, &name.to_string_lossy(), target)
        .map_err(fail(format!("create the symlink {}", link.display())))
}

/// What [`create_symlink`] did at a link's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// The link was there already, or something else is there.
    Nothing,
    /// A new link.
    Created(PathBuf),
    /// A symlink to `previous` replaced.
    Replaced { link: PathBuf, previous: PathBuf },
}

/// Undoes what [`create_links`] made, last first: a created link removed,
/// a replaced one pointed at its previous target again. Best effort (the
/// container is failing anyway); what cannot be undone is logged.
pub fn undo_links(system: &dyn System, root: BorrowedFd<'_>, made: &[Made]) {
    for made in made.iter().rev() {
        let (link, previous) = match made {
            Made::Nothing => continue,
            Made::Created(link) => (link, None),
            Made::Replaced { link, previous } => (link, Some(previous)),
        };
        let relative_link = PathBuf::from(relative(link));
        let name = relative_link
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let parent = relative_link.parent().unwrap_or(Path::new(""));
        let result = system
            .open_in_root(
                root,
                &parent.to_string_lossy(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            )
            .and_then(|dir| {
                system.remove_file(dir.as_fd(), &name)?;
                match previous {
                    Some(previous) => system.create_symlink(dir.as_fd(), &name, previous),
                    None => Ok(()),
                }
            });
        if let Err(errno) = result {
            tracing::warn!("cannot undo the symlink {}: {errno}", link.display());
        }
    }
}
