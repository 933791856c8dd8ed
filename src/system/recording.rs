//! [`RecordingSystem`]: the fake of [`System`] for unit tests as an
//! ordinary user.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sys::stat::Mode;

use super::{fd_path, owned, NodeStat, RealSystem, System};

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
    CreateSymlink { link: PathBuf, target: PathBuf },
    MountTmpfs { target: PathBuf, options: String },
    RemountReadOnly(PathBuf),
    CloneMount(PathBuf),
    SetMountAttributes(u64),
    AttachMount { target: PathBuf },
    DetachMount,
    OpenPid(i32),
    EnterMountNamespaceOf,
    WriteControlFile { file: PathBuf, text: String },
    Bpf(u32),
    RemoveDirectory(PathBuf),
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

    /// `/proc/<pid>/root` of the recorded (fake) process is our own root.
    fn open_directory(&self, path: &Path) -> nix::Result<OwnedFd> {
        self.record(Call::OpenDirectory(path.to_path_buf()));
        let text = path.to_string_lossy();
        let process_root = text
            .strip_prefix("/proc/")
            .and_then(|rest| rest.strip_suffix("/root"))
            .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()));
        if process_root {
            return RealSystem.open_directory(Path::new("/"));
        }
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

    fn create_symlink(&self, dir: BorrowedFd<'_>, name: &str, target: &Path) -> nix::Result<()> {
        self.record(Call::CreateSymlink {
            link: path_of(dir).join(name),
            target: target.to_path_buf(),
        });
        RealSystem.create_symlink(dir, name, target)
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

    /// An `O_PATH` fd of the path stands for the detached mount.
    fn clone_mount(&self, path: &Path) -> nix::Result<OwnedFd> {
        self.record(Call::CloneMount(path.to_path_buf()));
        let flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
        nix::fcntl::open(path, flags, Mode::empty()).map(owned)
    }

    fn set_mount_attributes(&self, _mount: BorrowedFd<'_>, set: u64) -> nix::Result<()> {
        self.record(Call::SetMountAttributes(set));
        Ok(())
    }

    fn attach_mount(&self, _source: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::AttachMount {
            target: path_of(target),
        });
        Ok(())
    }

    fn detach_mount(&self, _mount: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::DetachMount);
        Ok(())
    }

    /// Our own pidfd stands for the process'.
    fn open_pid(&self, pid: i32) -> nix::Result<OwnedFd> {
        self.record(Call::OpenPid(pid));
        RealSystem.open_pid(std::process::id() as i32)
    }

    fn enter_mount_namespace_of(&self, _pidfd: BorrowedFd<'_>) -> nix::Result<()> {
        self.record(Call::EnterMountNamespaceOf);
        Ok(())
    }

    fn write_control_file(&self, dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.record(Call::WriteControlFile {
            file: path_of(dir).join(name),
            text: String::from_utf8_lossy(bytes).into_owned(),
        });
        Ok(())
    }

    fn bpf(&self, command: u32, _attr: &mut [u8]) -> nix::Result<i64> {
        self.record(Call::Bpf(command));
        Err(Errno::EPERM)
    }

    fn remove_directory(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        self.record(Call::RemoveDirectory(path_of(dir).join(path)));
        RealSystem.remove_directory(dir, path)
    }

    /// A directory named `proc` stands for a procfs (a test's rootfs has
    /// a plain one).
    fn is_procfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        Ok(path_of(dir).file_name().is_some_and(|name| name == "proc")
            || RealSystem.is_procfs(dir)?)
    }
}
