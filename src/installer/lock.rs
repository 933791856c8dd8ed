//! The pid file and its lock: one installer per node.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::{InstallerError, Result};

/// The exclusive `flock` on the pid file, held for the installer's life
/// (NVIDIA's main.go takes the same lock on the same file, so ours and
/// theirs exclude each other too). Dropping it removes the file, then
/// releases the lock.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    // Held for its Drop: closing the file releases the lock.
    _file: Flock<File>,
}

impl PidLock {
    pub fn acquire(path: &Path) -> Result<PidLock> {
        let io_error = |source| InstallerError::Lock {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(InstallerError::Locked {
                    path: path.to_path_buf(),
                    holder: holder.trim().to_string(),
                });
            }
            Err((_, errno)) => return Err(io_error(errno.into())),
        };
        file.set_len(0).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        Ok(PidLock {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still locked, so a second installer never locks a
        // file that is about to vanish under it.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder() {
        let tmp = crate::testing::TempDir::new("lock");
        let dir = tmp.path().to_path_buf();
        let path = dir.join("toolkit/toolkit.pid");
        let first = PidLock::acquire(&path).unwrap();
        let error = PidLock::acquire(&path).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        drop(first);
        assert!(!path.exists());
        drop(PidLock::acquire(&path).unwrap());
    }
}
