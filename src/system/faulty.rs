//! [`FaultySystem`]: the real calls, with one of them failed on purpose.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;

use super::{NodeStat, RealSystem, System};

/// A [`System`] that makes the real calls but fails the `fail_at`-th one
/// (counting from 1) with `EIO`: the fault injection of the reliability
/// tests, which check that a failure at any step leaves nothing behind.
/// Only the hook uses it, and only when its own environment asks
/// ([`FAULT_INJECTION_ENV`]).
#[derive(Debug)]
pub struct FaultySystem {
    fail_at: usize,
    calls: std::sync::atomic::AtomicUsize,
}

/// `NVIDIA_CONTAINER_HOOK_FAIL_AT=N` in the hook's environment makes its
/// N-th side effect fail (tests only; the hook's environment is the
/// engine's, never the container's).
pub const FAULT_INJECTION_ENV: &str = "NVIDIA_CONTAINER_HOOK_FAIL_AT";

impl FaultySystem {
    pub fn new(fail_at: usize) -> FaultySystem {
        FaultySystem {
            fail_at,
            calls: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn fault(&self) -> nix::Result<()> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if n == self.fail_at {
            tracing::warn!("fault injection: side effect #{n} fails");
            return Err(Errno::EIO);
        }
        Ok(())
    }
}

impl System for FaultySystem {
    fn device_node(&self, path: &Path) -> io::Result<Option<NodeStat>> {
        RealSystem.device_node(path)
    }
    fn enter_mount_namespace(&self, pid: i32) -> io::Result<()> {
        self.fault()?;
        RealSystem.enter_mount_namespace(pid)
    }
    fn open_directory(&self, path: &Path) -> nix::Result<OwnedFd> {
        RealSystem.open_directory(path)
    }
    fn open_in_root(&self, root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
        self.fault()?;
        RealSystem.open_in_root(root, path, flags)
    }
    fn make_directory(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        self.fault()?;
        RealSystem.make_directory(dir, path, mode)
    }
    fn create_file(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<OwnedFd> {
        self.fault()?;
        RealSystem.create_file(dir, path, mode)
    }
    fn set_mode(&self, dir: BorrowedFd<'_>, path: &Path, mode: u32) -> nix::Result<()> {
        self.fault()?;
        RealSystem.set_mode(dir, path, mode)
    }
    fn rename(&self, dir: BorrowedFd<'_>, from: &str, to: &str) -> nix::Result<()> {
        self.fault()?;
        RealSystem.rename(dir, from, to)
    }
    fn remove_file(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        self.fault()?;
        RealSystem.remove_file(dir, path)
    }
    fn create_symlink(&self, dir: BorrowedFd<'_>, name: &str, target: &Path) -> nix::Result<()> {
        self.fault()?;
        RealSystem.create_symlink(dir, name, target)
    }
    fn mount_tmpfs(
        &self,
        target: BorrowedFd<'_>,
        flags: MsFlags,
        options: &str,
    ) -> nix::Result<()> {
        self.fault()?;
        RealSystem.mount_tmpfs(target, flags, options)
    }
    fn remount_read_only(&self, target: BorrowedFd<'_>, flags: MsFlags) -> nix::Result<()> {
        self.fault()?;
        RealSystem.remount_read_only(target, flags)
    }
    fn is_tmpfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        RealSystem.is_tmpfs(dir)
    }
    fn clone_mount(&self, path: &Path) -> nix::Result<OwnedFd> {
        self.fault()?;
        RealSystem.clone_mount(path)
    }
    fn set_mount_attributes(&self, mount: BorrowedFd<'_>, set: u64) -> nix::Result<()> {
        self.fault()?;
        RealSystem.set_mount_attributes(mount, set)
    }
    fn attach_mount(&self, source: BorrowedFd<'_>, target: BorrowedFd<'_>) -> nix::Result<()> {
        self.fault()?;
        RealSystem.attach_mount(source, target)
    }
    fn detach_mount(&self, mount: BorrowedFd<'_>) -> nix::Result<()> {
        self.fault()?;
        RealSystem.detach_mount(mount)
    }
    fn open_pid(&self, pid: i32) -> nix::Result<OwnedFd> {
        self.fault()?;
        RealSystem.open_pid(pid)
    }
    fn enter_mount_namespace_of(&self, pidfd: BorrowedFd<'_>) -> nix::Result<()> {
        self.fault()?;
        RealSystem.enter_mount_namespace_of(pidfd)
    }
    fn write_control_file(&self, dir: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.fault()?;
        RealSystem.write_control_file(dir, name, bytes)
    }
    fn bpf(&self, command: u32, attr: &mut [u8]) -> nix::Result<i64> {
        self.fault()?;
        RealSystem.bpf(command, attr)
    }
    fn remove_directory(&self, dir: BorrowedFd<'_>, path: &str) -> nix::Result<()> {
        self.fault()?;
        RealSystem.remove_directory(dir, path)
    }
    fn is_procfs(&self, dir: BorrowedFd<'_>) -> nix::Result<bool> {
        RealSystem.is_procfs(dir)
    }
}
