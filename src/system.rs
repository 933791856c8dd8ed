//! The one seam for side effects on a container and the host.
//!
//! Everything this crate does to a container's filesystem or to the host
//! beyond reading plain files goes through [`System`]: entering a
//! container's mount namespace, opening and creating files confined to a
//! rootfs, mounting, and stat'ing device nodes (which only root can make).
//! [`RealSystem`] makes the syscalls; [`RecordingSystem`] records every
//! call, serves device nodes from a table and makes no privileged call, so
//! that what the driver discovery, the edits and the hook plan to do is
//! unit-tested as an ordinary user (youki's `Syscall` trait and its test
//! implementation are the model). Real runc in the integration tests proves
//! the rest. The out-of-band injector adds its calls (mknod, chown, cgroup
//! writes) here.
//!
//! File descriptors name what an operation acts on wherever they can, so
//! that no path is resolved twice (security.md rule 2).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// What a stat of a would-be device node found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStat {
    /// A character device (what every NVIDIA node is).
    pub is_char_device: bool,
    pub major: u64,
    pub minor: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl NodeStat {
    /// A character device node with these numbers, mode 0666, owned by root.
    pub fn char_device(major: u64, minor: u64) -> NodeStat {
        NodeStat {
            is_char_device: true,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        }
    }
}

/// The side effects, one method each. `dir` arguments are directory fds;
/// relative paths are resolved beneath them.
pub trait System: std::fmt::Debug + Send + Sync {
    /// stat(2), following symlinks, of a path that should be a device node.
    /// `Ok(None)`: nothing is there.
    fn device_node(&self, path: &Path) -> io::Result<Option<NodeStat>>;

    /// `setns` into the mount namespace of process `pid` (the runtime's
    /// bind mounts and the container's `/proc` exist only there until
    /// `pivot_root`). Needs a single-threaded process.
    fn enter_mount_namespace(&self, pid: i32) -> io::Result<()>;

    /// Opens a directory by its absolute path, `O_PATH`.
    fn open_directory(&self, path: &Path) -> nix::Result<OwnedFd>;

    /// Opens `path` with `root` as `/`: absolute symlinks and `..` never
    /// leave `root`, and `/proc/self/...` magic links are refused.
    fn open_in_root(&self, root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd>;

    /// Creates directory `path` beneath `dir`.
    fn make_directory(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()>;

    /// Creates a new file beneath `dir`, write-only, never through a symlink
    /// and never over an existing file (`O_EXCL | O_NOFOLLOW`).
    fn create_file(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<OwnedFd>;

    /// chmod of `path` beneath `dir`.
    fn set_mode(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()>;

    /// Renames `from` over `to`, both beneath `dir`.
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> nix::Result<()>;

    /// Removes the file `path` beneath `dir`.
    fn remove_file(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()>;

    /// Mounts a tmpfs over the directory `target` names.
    fn mount_tmpfs(&self, target: BorrowedFd<'_>, flags: MsFlags, options: &str)
        -> nix::Result<()>;

    /// Remounts the mount at `target` read-only, keeping `flags`.
    fn remount_read_only(&self, target: BorrowedFd<'_>, flags: MsFlags) -> nix::Result<()>;

    /// Whether the directory `dir` is on a tmpfs.
    fn is_tmpfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool>;
}

/// The name of an fd for syscalls that take paths: the magic link of this
/// process, resolved by the kernel to exactly the file the fd holds.
fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: every caller passes an fd that a syscall has just returned
    // and that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The syscalls themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSystem;

impl System for RealSystem {
    fn device_node(&self, path: &Path) -> io::Result<Option<NodeStat>> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let rdev = meta.rdev();
        Ok(Some(NodeStat {
            is_char_device: meta.file_type().is_char_device(),
            major: nix::sys::stat::major(rdev),
            minor: nix::sys::stat::minor(rdev),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        }))
    }

    fn enter_mount_namespace(&self, pid: i32) -> io::Result<()> {
        let file = File::open(format!("/proc/{pid}/ns/mnt"))?;
        nix::sched::setns(file.as_fd(), CloneFlags::CLONE_NEWNS)?;
        Ok(())
    }

    fn open_directory(&self, path: &Path) -> nix::Result<OwnedFd> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        nix::fcntl::open(path, flags, Mode::empty()).map(owned)
    }

    fn open_in_root(&self, root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // openat2 answers EAGAIN with RESOLVE_IN_ROOT when a rename elsewhere
        // raced the lookup; the kernel asks callers to retry.
        let mut attempts = 0;
        loop {
            match openat2(root.as_raw_fd(), path, how) {
                Ok(fd) => return Ok(owned(fd)),
                Err(Errno::EAGAIN) if attempts < 16 => attempts += 1,
                Err(errno) => return Err(errno),
            }
        }
    }

    fn make_directory(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), path, Mode::from_bits_truncate(mode))
    }

    fn create_file(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<OwnedFd> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(
            Some(dir.as_raw_fd()),
            path,
            flags,
            Mode::from_bits_truncate(mode),
        )
        .map(owned)
    }

    fn set_mode(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        nix::sys::stat::fchmodat(
            Some(dir.as_raw_fd()),
            path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }

    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> nix::Result<()> {
        renameat(Some(dir.as_raw_fd()), from, Some(dir.as_raw_fd()), to)
    }

    fn remove_file(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        nix::unistd::unlinkat(Some(dir.as_raw_fd()), path, UnlinkatFlags::NoRemoveDir)
    }

    fn mount_tmpfs(
        &self,
        target: BorrowedFd<'_>,
        flags: MsFlags,
        options: &str,
    ) -> nix::Result<()> {
        nix::mount::mount(
            Some("tmpfs"),
            fd_path(target).as_str(),
            Some("tmpfs"),
            flags,
            Some(options),
        )
    }

    fn remount_read_only(&self, target: BorrowedFd<'_>, flags: MsFlags) -> nix::Result<()> {
        nix::mount::mount(
            None::<&str>,
            fd_path(target).as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | flags,
            None::<&str>,
        )
    }

    fn is_tmpfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        let statfs = nix::sys::statfs::fstatfs(dir)?;
        Ok(statfs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
    }
}

/// One call made through a [`RecordingSystem`]; fds are shown as the paths
/// they held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    EnterMountNamespace(i32),
    OpenDirectory(PathBuf),
    OpenInRoot(String),
    MakeDirectory(PathBuf),
    CreateFile(PathBuf),
    SetMode(PathBuf, u32),
    Rename(PathBuf, String),
    RemoveFile(PathBuf),
    MountTmpfs { target: PathBuf, options: String },
    RemountReadOnly(PathBuf),
}

/// A [`System`] for tests as an ordinary user: device nodes come from a
/// table ([`RecordingSystem::add_device_node`]), file operations act on the
/// real (temporary) directories they are given, and the privileged calls
/// (`setns`, `mount`) are recorded and not made. A directory "mounted"
/// over reports itself as a tmpfs afterwards, so the code under test goes
/// on as it would after a real mount.
#[derive(Debug, Default)]
pub struct RecordingSystem {
    nodes: Mutex<HashMap<PathBuf, NodeStat>>,
    calls: Mutex<Vec<Call>>,
    /// (st_dev, st_ino) of the directories a tmpfs was "mounted" over.
    mounted: Mutex<Vec<(u64, u64)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in another test thread poisons the lock; the data is still
    // what that thread left, which is all a recorder needs.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn path_of(fd: BorrowedFd<'_>) -> PathBuf {
    std::fs::read_link(fd_path(fd)).unwrap_or_default()
}

fn identity(fd: BorrowedFd<'_>) -> Option<(u64, u64)> {
    nix::sys::stat::fstat(fd.as_raw_fd())
        .ok()
        .map(|stat| (stat.st_dev, stat.st_ino))
}

impl RecordingSystem {
    pub fn new() -> RecordingSystem {
        RecordingSystem::default()
    }

    /// Makes `path` a character device node for [`System::device_node`].
    pub fn add_device_node(&self, path: impl Into<PathBuf>, stat: NodeStat) {
        lock(&self.nodes).insert(path.into(), stat);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    fn record(&self, call: Call) {
        lock(&self.calls).push(call);
    }
}

impl System for RecordingSystem {
    fn device_node(&self, path: &Path) -> io::Result<Option<NodeStat>> {
        if let Some(stat) = lock(&self.nodes).get(path) {
            return Ok(Some(*stat));
        }
        RealSystem.device_node(path)
    }

    fn enter_mount_namespace(&self, pid: i32) -> io::Result<()> {
        self.record(Call::EnterMountNamespace(pid));
        Ok(())
    }

    fn open_directory(&self, path: &Path) -> nix::Result<OwnedFd> {
        self.record(Call::OpenDirectory(path.to_path_buf()));
        RealSystem.open_directory(path)
    }

    fn open_in_root(&self, root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.record(Call::OpenInRoot(path.to_string()));
        RealSystem.open_in_root(root, path, flags)
    }

    fn make_directory(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        self.record(Call::MakeDirectory(path_of(dir).join(path)));
        RealSystem.make_directory(dir, path, mode)
    }

    fn create_file(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<OwnedFd> {
        self.record(Call::CreateFile(path_of(dir).join(path)));
        RealSystem.create_file(dir, path, mode)
    }

    fn set_mode(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        self.record(Call::SetMode(path_of(dir).join(path), mode));
        RealSystem.set_mode(dir, path, mode)
    }

    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> nix::Result<()> {
        self.record(Call::Rename(path_of(dir).join(from), to.to_string()));
        RealSystem.rename(dir, from, to)
    }

    fn remove_file(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        self.record(Call::RemoveFile(path_of(dir).join(path)));
        RealSystem.remove_file(dir, path)
    }

    fn mount_tmpfs(
        &self,
        target: BorrowedFd<'_>,
        _flags: MsFlags,
        options: &str,
    ) -> nix::Result<()> {
        self.record(Call::MountTmpfs {
            target: path_of(target),
            options: options.to_string(),
        });
        if let Some(id) = identity(target) {
            lock(&self.mounted).push(id);
        }
        Ok(())
    }

    fn remount_read_only(&self, target: BorrowedFd<'_>, _flags: MsFlags) -> nix::Result<()> {
        self.record(Call::RemountReadOnly(path_of(target)));
        Ok(())
    }

    fn is_tmpfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        match identity(dir) {
            Some(id) if lock(&self.mounted).contains(&id) => Ok(true),
            _ => RealSystem.is_tmpfs(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_system_serves_nodes_and_records_without_privilege() {
        let dir = std::env::temp_dir().join(format!("ncr-system-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        let system = RecordingSystem::new();
        system.add_device_node("/fake/dev/nvidia0", NodeStat::char_device(195, 0));
        assert_eq!(
            system.device_node(Path::new("/fake/dev/nvidia0")).unwrap(),
            Some(NodeStat::char_device(195, 0))
        );
        assert_eq!(system.device_node(&dir.join("absent")).unwrap(), None);

        let root = system.open_directory(&dir).unwrap();
        let proc = system
            .open_in_root(root.as_fd(), "/proc", OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .unwrap();
        system
            .mount_tmpfs(proc.as_fd(), MsFlags::MS_NOSUID, "mode=0555")
            .unwrap();
        assert!(system.is_tmpfs(proc.as_fd()).unwrap());
        system.enter_mount_namespace(42).unwrap();
        let calls = system.calls();
        assert_eq!(calls[0], Call::OpenDirectory(dir.clone()));
        assert_eq!(calls[1], Call::OpenInRoot("/proc".to_string()));
        assert_eq!(
            calls[2],
            Call::MountTmpfs {
                target: dir.join("proc"),
                options: "mode=0555".to_string()
            }
        );
        assert_eq!(calls[3], Call::EnterMountNamespace(42));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
