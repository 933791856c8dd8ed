//! Out-of-band injection: the edits applied to a live container that a
//! plain runc or crun created without them (`docker run --gpus` on a
//! stock Docker: dockerd adds our hook and nothing else).
//!
//! The recipe of hook-mode.md section 4, with every side effect through
//! [`System`]: the container's init is checked to be the runtime's child
//! in another mount namespace and held by a pidfd; each host source is
//! cloned as a detached mount in the host's namespace and checked (a
//! regular file for a library, the expected character device for a node),
//! with its flags set before it is attached anywhere; the device rules are
//! widened; then, inside the container's mount namespace, each target is
//! created and resolved confined to the rootfs (`O_EXCL | O_NOFOLLOW`,
//! `RESOLVE_IN_ROOT`), refused under a shared mount, and the source moved
//! onto it by fd. Any failure undoes everything done so far.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::edits::{ContainerEdits, Mount};
use crate::system::System;

use super::cgroup::{self, Applied, Hierarchy};
use super::HookError;

/// The character major of the NVIDIA driver's GPU and control nodes.
const NVIDIA_MAJOR: u64 = 195;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// The container's init, checked and held.
pub struct Container {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// `/proc/<pid>/root`: the root of the runtime as the container's mount
    /// namespace has it (the runtime's chroot, if it runs in one).
    pub root: OwnedFd,
}

fn fail(what: impl Into<String>) -> impl FnOnce(Errno) -> HookError {
    let what = what.into();
    move |errno| HookError::Inject {
        action: what,
        source: errno.into(),
    }
}

/// Checks that `pid` is a child of the hook's parent (runc, crun) living in
/// another mount namespace, and holds it by a pidfd: a state naming a
/// foreign process (`{"pid": 1}`) is refused.
pub fn check_container(system: &dyn System, pid: i32) -> Result<Container, HookError> {
    let foreign = |why: String| HookError::ForeignPid { pid, why };
    let pidfd = system
        .open_pid(pid)
        .map_err(|e| foreign(format!("pidfd_open: {e}")))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| foreign(format!("/proc/{pid}/status: {e}")))?;
    let parent: i32 = status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|ppid| ppid.trim().parse().ok())
        .ok_or_else(|| foreign("no PPid in its status".to_string()))?;
    let runtime = nix::unistd::getppid().as_raw();
    if parent != runtime {
        return Err(foreign(format!(
            "its parent is {parent}, not the runtime {runtime} that runs this hook"
        )));
    }
    let namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    if namespace(&pid.to_string()) == namespace("self") {
        return Err(foreign("it shares the hook's mount namespace".to_string()));
    }
    let root = super::rootfs::open_process_root(system, pid)?;
    Ok(Container { pid, pidfd, root })
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
}

/// One source, cloned and checked in the host's namespace.
struct Source {
    mount: OwnedFd,
    container_path: PathBuf,
    kind: Kind,
}

fn mount_flags(mount: &Mount) -> u64 {
    let mut flags = 0;
    for option in &mount.options {
        flags |= match option.as_str() {
            "ro" => MOUNT_ATTR_RDONLY,
            "nosuid" => MOUNT_ATTR_NOSUID,
            "nodev" => MOUNT_ATTR_NODEV,
            "noexec" => MOUNT_ATTR_NOEXEC,
            _ => 0,
        };
    }
    flags
}

/// Clones and checks every source of `edits` (host side).
fn sources(system: &dyn System, edits: &ContainerEdits) -> Result<Vec<Source>, HookError> {
    let mut out = Vec::new();
    for node in &edits.device_nodes {
        let mount = system
            .clone_mount(&node.host_path)
            .map_err(fail(format!("clone {}", node.host_path.display())))?;
        let stat = nix::sys::stat::fstat(mount.as_raw_fd())
            .map_err(fail(format!("stat {}", node.host_path.display())))?;
        let expected = nix::sys::stat::makedev(node.major, node.minor);
        let is_char = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFCHR;
        // A GPU's node is /dev/nvidia<minor> of the driver's own major: a
        // node of that name with other numbers is not the GPU it claims.
        let gpu_minor = node
            .path
            .to_str()
            .and_then(|p| p.strip_prefix("/dev/nvidia"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok());
        let wrong_gpu = gpu_minor.is_some_and(|minor| {
            nix::sys::stat::minor(stat.st_rdev) != minor
                || nix::sys::stat::major(stat.st_rdev) != NVIDIA_MAJOR
        });
        if !is_char || stat.st_rdev != expected || wrong_gpu {
            return Err(HookError::WrongSource {
                path: node.host_path.clone(),
                expected: format!("the character device {}:{}", node.major, node.minor),
            });
        }
        // Never nodev: the node is the point.
        system
            .set_mount_attributes(
                mount.as_fd(),
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
            )
            .map_err(fail(format!(
                "set the flags of {}",
                node.host_path.display()
            )))?;
        out.push(Source {
            mount,
            container_path: node.path.clone(),
            kind: Kind::File,
        });
    }
    for mount_edit in &edits.mounts {
        if mount_edit.mount_type != "bind" {
            return Err(HookError::Unsupported {
                what: format!(
                    "a {} mount at {}",
                    mount_edit.mount_type,
                    mount_edit.container_path.display()
                ),
            });
        }
        let host = &mount_edit.host_path;
        let meta = std::fs::metadata(host).map_err(|e| HookError::Inject {
            action: format!("stat {}", host.display()),
            source: e,
        })?;
        let kind = if meta.is_dir() {
            Kind::Directory
        } else {
            Kind::File
        };
        let acceptable = meta.is_file() || meta.is_dir() || meta.file_type().is_socket();
        if !acceptable {
            return Err(HookError::WrongSource {
                path: host.clone(),
                expected: "a regular file, a directory or a socket".to_string(),
            });
        }
        let mount = system
            .clone_mount(host)
            .map_err(fail(format!("clone {}", host.display())))?;
        // What was checked is what is mounted: the clone's own type.
        let stat = nix::sys::stat::fstat(mount.as_raw_fd())
            .map_err(fail(format!("stat {}", host.display())))?;
        let cloned_dir = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        if cloned_dir != (kind == Kind::Directory) {
            return Err(HookError::WrongSource {
                path: host.clone(),
                expected: "the same file it was a moment ago".to_string(),
            });
        }
        system
            .set_mount_attributes(mount.as_fd(), mount_flags(mount_edit))
            .map_err(fail(format!("set the flags of {}", host.display())))?;
        out.push(Source {
            mount,
            container_path: mount_edit.container_path.clone(),
            kind,
        });
    }
    Ok(out)
}

/// What was done inside the container, to undo it.
#[derive(Default)]
struct Done {
    /// Attached mounts (their detached-tree fds, now attached).
    mounts: Vec<OwnedFd>,
    /// Created files and dirs, in creation order, relative to the rootfs.
    created: Vec<(PathBuf, Kind)>,
}

impl Done {
    fn undo(self, system: &dyn System, rootfs: BorrowedFd<'_>) {
        for mount in self.mounts.iter().rev() {
            if let Err(errno) = system.detach_mount(mount.as_fd()) {
                tracing::warn!("cannot detach an injected mount: {errno}");
            }
        }
        for (path, kind) in self.created.iter().rev() {
            let text = path.to_string_lossy();
            let result = match kind {
                Kind::File => system.remove_file(rootfs, &text),
                Kind::Directory => system.remove_directory(rootfs, &text),
            };
            if let Err(errno) = result {
                tracing::warn!("cannot remove {text} from the rootfs: {errno}");
            }
        }
    }
}

fn in_root(
    system: &dyn System,
    rootfs: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    system.open_in_root(rootfs, &path.to_string_lossy(), flags)
}

/// Creates `relative` (and its missing parents) inside the rootfs, never
/// through a symlink: a parent that exists is followed only as
/// `RESOLVE_IN_ROOT` allows (inside the rootfs), and the leaf is made with
/// `O_EXCL | O_NOFOLLOW` (a symlink there is removed and replaced).
fn create_target(
    system: &dyn System,
    rootfs: BorrowedFd<'_>,
    relative: &Path,
    kind: Kind,
    done: &mut Done,
) -> Result<(), HookError> {
    let error = |action: &str| fail(format!("{action} /{} in the container", relative.display()));
    let mut parent = PathBuf::new();
    let components: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((leaf, parents)) = components.split_last() else {
        return Err(HookError::Unsupported {
            what: format!("the target /{}", relative.display()),
        });
    };
    for name in parents {
        let next = parent.join(name);
        match in_root(system, rootfs, &next, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let dir = in_root(system, rootfs, &parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map_err(error("open the parent of"))?;
                system
                    .make_directory(dir.as_fd(), Path::new(name), 0o755)
                    .map_err(error("create a parent of"))?;
                done.created.push((next.clone(), Kind::Directory));
            }
            Err(errno) => return Err(error("resolve a parent of")(errno)),
        }
        parent = next;
    }
    let dir = in_root(system, rootfs, &parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
        .map_err(error("open the parent of"))?;
    let leaf = Path::new(leaf);
    // What is at the leaf now, the leaf itself (a symlink is not followed).
    let existing = nix::sys::stat::fstatat(
        Some(dir.as_raw_fd()),
        leaf,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    if let Ok(stat) = existing {
        let format = stat.st_mode & nix::libc::S_IFMT;
        let matches = match kind {
            Kind::Directory => format == nix::libc::S_IFDIR,
            Kind::File => format != nix::libc::S_IFDIR && format != nix::libc::S_IFLNK,
        };
        if matches {
            return Ok(());
        }
        if format == nix::libc::S_IFLNK {
            system
                .remove_file(dir.as_fd(), &leaf.to_string_lossy())
                .map_err(error("remove the symlink at"))?;
        } else {
            return Err(HookError::Unsupported {
                what: format!(
                    "/{} in the image (it is not a {:?})",
                    relative.display(),
                    kind
                ),
            });
        }
    }
    match kind {
        Kind::Directory => system
            .make_directory(dir.as_fd(), leaf, 0o755)
            .map_err(error("create"))?,
        Kind::File => {
            system
                .create_file(dir.as_fd(), leaf, 0o644)
                .map_err(error("create"))?;
        }
    }
    done.created.push((relative.to_path_buf(), kind));
    Ok(())
}

/// Whether the mount holding `fd` propagates to others (`shared:` in
/// mountinfo): a mount attached under it would appear elsewhere, on the
/// host too (`-v /tmp/x:/usr/lib/...:rshared`).
fn under_shared_mount(fd: BorrowedFd<'_>) -> bool {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .unwrap_or_default();
    let Some(id) = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .map(|v| v.trim().to_string())
    else {
        return true;
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .find(|line| line.split(' ').next() == Some(id.as_str()))
        .is_none_or(|line| {
            line.split(" - ")
                .next()
                .unwrap_or("")
                .split(' ')
                .skip(6)
                .any(|field| field.starts_with("shared:"))
        })
}

/// Mounts every source at its target inside the container (called inside
/// its mount namespace, `rootfs` opened there).
fn attach_all(
    system: &dyn System,
    rootfs: BorrowedFd<'_>,
    sources: Vec<Source>,
    done: &mut Done,
) -> Result<(), HookError> {
    for source in sources {
        let relative = source
            .container_path
            .strip_prefix("/")
            .unwrap_or(&source.container_path)
            .to_path_buf();
        create_target(system, rootfs, &relative, source.kind, done)?;
        let target =
            in_root(system, rootfs, &relative, OFlag::O_PATH | OFlag::O_NOFOLLOW).map_err(fail(
                format!("resolve /{} in the container", relative.display()),
            ))?;
        let stat = nix::sys::stat::fstat(target.as_raw_fd()).map_err(fail(format!(
            "stat /{} in the container",
            relative.display()
        )))?;
        let is_dir = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR;
        let is_link = stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK;
        if is_link || is_dir != (source.kind == Kind::Directory) {
            return Err(HookError::Unsupported {
                what: format!(
                    "/{} in the container changed under the hook",
                    relative.display()
                ),
            });
        }
        if under_shared_mount(target.as_fd()) {
            return Err(HookError::SharedMount {
                path: Path::new("/").join(&relative),
            });
        }
        system
            .attach_mount(source.mount.as_fd(), target.as_fd())
            .map_err(fail(format!("mount onto /{}", relative.display())))?;
        done.mounts.push(source.mount);
    }
    Ok(())
}

/// The injection, host side then container side. Returns the undo of the
/// container-side work and of the cgroup change, to run if a later step
/// (the ld.so.cache, the /proc mask) fails.
pub struct Injected {
    done: Done,
    rules: Applied,
    pub nodes: usize,
    pub mounts: usize,
}

impl Injected {
    pub fn undo(self, system: &dyn System, rootfs: BorrowedFd<'_>) {
        self.done.undo(system, rootfs);
        self.rules.undo(system);
    }
}

/// Everything that must happen before `setns` (host side).
pub struct Prepared {
    sources: Vec<Source>,
    rules: Applied,
    nodes: usize,
    mounts: usize,
}

/// Clones and checks the sources and widens the device rules, in the
/// host's namespaces.
pub fn prepare(
    system: &dyn System,
    container: &Container,
    edits: &ContainerEdits,
    spec: &serde_json::Value,
) -> Result<Prepared, HookError> {
    let sources = sources(system, edits)?;
    let hierarchy: Hierarchy = cgroup::locate(nix::unistd::getppid().as_raw(), container.pid)?;
    let numbers: Vec<(u64, u64)> = edits
        .device_nodes
        .iter()
        .map(|n| (n.major, n.minor))
        .collect();
    let rules = cgroup::allow(system, &hierarchy, &numbers, &cgroup::spec_rules(spec))?;
    Ok(Prepared {
        sources,
        rules,
        nodes: edits.device_nodes.len(),
        mounts: edits.mounts.len(),
    })
}

impl Prepared {
    /// Undoes the host-side work (nothing was attached yet).
    pub fn undo(self, system: &dyn System) {
        self.rules.undo(system);
    }

    /// Attaches everything inside the container (call after `setns`).
    pub fn attach(
        self,
        system: &dyn System,
        rootfs: BorrowedFd<'_>,
    ) -> Result<Injected, HookError> {
        let mut done = Done::default();
        match attach_all(system, rootfs, self.sources, &mut done) {
            Ok(()) => Ok(Injected {
                done,
                rules: self.rules,
                nodes: self.nodes,
                mounts: self.mounts,
            }),
            Err(error) => {
                done.undo(system, rootfs);
                self.rules.undo(system);
                Err(error)
            }
        }
    }
}
