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
//! [`RecordingSystem`] is the fake, [`FaultySystem`] the fault injection of the
//! reliability tests.
//!
//! File descriptors name what an operation acts on wherever they can, so
//! that no path is resolved twice (security.md rule 2).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

mod faulty;
mod recording;

pub use faulty::{FaultySystem, FAULT_INJECTION_ENV};
pub use recording::{Call, RecordingSystem};

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

    /// Creates the symlink `name` in `dir`, pointing at `target`.
    fn create_symlink(&self, dir: BorrowedFd<'_>, name: &str, target: &Path) -> nix::Result<()>;

    /// Mounts a tmpfs over the directory `target` names.
    fn mount_tmpfs(&self, target: BorrowedFd<'_>, flags: MsFlags, options: &str)
        -> nix::Result<()>;

    /// Remounts the mount at `target` read-only, keeping `flags`.
    fn remount_read_only(&self, target: BorrowedFd<'_>, flags: MsFlags) -> nix::Result<()>;

    /// Whether the directory `dir` is on a tmpfs.
    fn is_tmpfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool>;

    /// A detached copy of the file or directory at `path` as a mount of its
    /// own (`open_tree(OPEN_TREE_CLONE)`, not recursive), in the caller's
    /// mount namespace: the source of an out-of-band bind mount.
    fn clone_mount(&self, path: &Path) -> nix::Result<OwnedFd>;

    /// Sets `MOUNT_ATTR_*` flags on a detached mount (`mount_setattr`),
    /// before it is attached anywhere.
    fn set_mount_attributes(&self, mount: BorrowedFd<'_>, set: u64) -> nix::Result<()>;

    /// Attaches the detached mount `source` onto `target` (`move_mount`,
    /// both by fd: no path is resolved).
    fn attach_mount(&self, source: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()>;

    /// Detaches the mount whose root `mount` is (`umount2(MNT_DETACH)`).
    fn detach_mount(&self, mount: BorrowedFd<'_>) -> nix::Result<()>;

    /// A pidfd of `pid` (`pidfd_open`): the process cannot be swapped for
    /// another with the same number while it is held.
    fn open_pid(&self, pid: i32) -> nix::Result<OwnedFd>;

    /// `setns` into the mount namespace of the process `pidfd` holds.
    fn enter_mount_namespace_of(&self, pidfd: BorrowedFd<'_>) -> nix::Result<()>;

    /// Writes `bytes` to the existing file `name` beneath `dir`, opened
    /// write-only without following symlinks (cgroup control files).
    fn write_control_file(&self, dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()>;

    /// `bpf(2)` with `attr` as the command's attribute union.
    fn bpf(&self, command: u32, attr: &mut [u8]) -> nix::Result<i64>;

    /// Removes the empty directory `path` beneath `dir`.
    fn remove_directory(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()>;

    /// Whether the directory `dir` is the root of a procfs.
    fn is_procfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool>;
}

const OPEN_TREE_CLONE: u32 = 1;
const AT_EMPTY_PATH: u32 = 0x1000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A syscall's `-1`/errno convention as a result.
fn check(result: nix::libc::c_long) -> nix::Result<nix::libc::c_long> {
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(result)
    }
}

/// The name of an fd for syscalls that take paths: the magic link of this
/// process, resolved by the kernel to exactly the file the fd holds.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

pub(crate) fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
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

    fn create_symlink(&self, dir: BorrowedFd<'_>, name: &str, target: &Path) -> nix::Result<()> {
        nix::unistd::symlinkat(target, Some(dir.as_raw_fd()), name)
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

    fn clone_mount(&self, path: &Path) -> nix::Result<OwnedFd> {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| Errno::EINVAL)?;
        // SAFETY: open_tree takes a dirfd, a NUL-terminated path that
        // outlives the call, and flags; it returns a new fd or -1.
        let fd = check(unsafe {
            nix::libc::syscall(
                nix::libc::SYS_open_tree,
                nix::libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | nix::libc::O_CLOEXEC as u32,
            )
        })?;
        Ok(owned(fd as std::os::fd::RawFd))
    }

    fn set_mount_attributes(&self, mount: BorrowedFd<'_>, set: u64) -> nix::Result<()> {
        let attr = MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: the fd is valid for the call, the path is the empty C
        // string, and attr points at a mount_attr of the size passed.
        check(unsafe {
            nix::libc::syscall(
                nix::libc::SYS_mount_setattr,
                mount.as_raw_fd(),
                c"".as_ptr(),
                AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        })?;
        Ok(())
    }

    fn attach_mount(&self, source: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
        // SAFETY: both fds are valid for the call and both paths are the
        // empty C string (the fds themselves name source and target).
        check(unsafe {
            nix::libc::syscall(
                nix::libc::SYS_move_mount,
                source.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        })?;
        Ok(())
    }

    fn detach_mount(&self, mount: BorrowedFd<'_>) -> nix::Result<()> {
        nix::mount::umount2(fd_path(mount).as_str(), nix::mount::MntFlags::MNT_DETACH)
    }

    fn open_pid(&self, pid: i32) -> nix::Result<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = check(unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) })?;
        Ok(owned(fd as std::os::fd::RawFd))
    }

    fn enter_mount_namespace_of(&self, pidfd: BorrowedFd<'_>) -> nix::Result<()> {
        nix::sched::setns(pidfd, CloneFlags::CLONE_NEWNS)
    }

    fn write_control_file(&self, dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let how = OpenHow::new()
            .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(dir.as_raw_fd(), name, how)?;
        let mut file = File::from(owned(fd));
        // One write per rule: a cgroup control file takes one rule a write.
        file.write_all(bytes)
    }

    fn bpf(&self, command: u32, attr: &mut [u8]) -> nix::Result<i64> {
        // SAFETY: attr is a live, writable buffer of the size passed; the
        // kernel reads and writes at most that many bytes of it.
        let result = check(unsafe {
            nix::libc::syscall(
                nix::libc::SYS_bpf,
                command,
                attr.as_mut_ptr(),
                attr.len() as u32,
            )
        })?;
        Ok(result as i64)
    }

    fn remove_directory(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        nix::unistd::unlinkat(Some(dir.as_raw_fd()), path, UnlinkatFlags::RemoveDir)
    }

    fn is_procfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        let statfs = nix::sys::statfs::fstatfs(dir)?;
        Ok(statfs.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
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
