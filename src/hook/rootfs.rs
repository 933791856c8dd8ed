//! The container's rootfs, opened from inside its mount namespace, and the
//! one way the hook replaces a file in it (temp file, rename; nothing
//! followed). Every call goes through [`System`].

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::system::System;

use super::HookError;

/// `setns` into the mount namespace of the container's init: the runtime's
/// bind mounts and the container's `/proc` exist only there until
/// `pivot_root`. Needs a single-threaded process.
pub fn enter_mount_namespace(system: &dyn System, pid: i32) -> Result<(), HookError> {
    system
        .enter_mount_namespace(pid)
        .map_err(|source| HookError::Namespace {
            pid,
            path: PathBuf::from(format!("/proc/{pid}/ns/mnt")),
            source,
        })
}

/// `/proc/<pid>/root`: the root of the container's init, which is the
/// runtime's root (its chroot, if any) until `pivot_root`. Opened on the
/// host, before `setns`.
pub fn open_process_root(system: &dyn System, pid: i32) -> Result<OwnedFd, HookError> {
    let path = PathBuf::from(format!("/proc/{pid}/root"));
    system
        .open_directory(&path)
        .map_err(|errno| HookError::Namespace {
            pid,
            path,
            source: errno.into(),
        })
}

/// The rootfs dir, `O_PATH`: `rootfs` (the runtime's absolute path)
/// resolved from `runtime_root`, inside the container's mount namespace.
pub fn open_rootfs(
    system: &dyn System,
    runtime_root: BorrowedFd<'_>,
    rootfs: &Path,
) -> Result<OwnedFd, HookError> {
    let relative = rootfs.strip_prefix("/").unwrap_or(rootfs);
    system
        .open_in_root(
            runtime_root,
            &relative.to_string_lossy(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
        )
        .map_err(|errno| HookError::Rootfs {
            path: rootfs.to_path_buf(),
            source: errno.into(),
        })
}

pub(super) fn is_absent(errno: Errno) -> bool {
    matches!(errno, Errno::ENOENT | Errno::ENOTDIR)
}

/// Writes `bytes` to a temp file in `dir` and renames it over `name`.
/// Nothing is followed: the temp file is created with `O_EXCL | O_NOFOLLOW`,
/// and `renameat` replaces whatever `name` is.
///
/// Not fsynced: the rename already keeps a reader from seeing a partial
/// file, and the file lives in the container's writable layer, which a crash
/// ends with the container (the hook runs again on the next start). On a
/// disk-backed rootfs the two fsyncs took 0.4 ms idle and tens of ms under
/// I/O load (issue 8, BENCHMARKS.md).
pub fn replace_file(
    system: &dyn System,
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let temp = format!(".{name}.nvidia-hook-{}.tmp", std::process::id());
    let create = || system.create_file(dir, Path::new(&temp), mode);
    let fd = match create() {
        // Left by a hook that was killed mid-write (our own pid, reused).
        Err(Errno::EEXIST) => {
            system.remove_file(dir, &temp)?;
            create()?
        }
        other => other?,
    };
    let mut file = File::from(fd);
    let result = (|| {
        // The mode must not depend on the umask runc gave us.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        system.rename(dir, &temp, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = system.remove_file(dir, &temp);
        return result;
    }
    Ok(())
}
