//! Replacing a file so that readers see the old or the new one, never half.
//!
//! One mechanism for every file this crate rewrites: the bundle's
//! `config.json` (runc reads it next), engine configs (`nvidia-ctk runtime
//! configure`; a torn daemon.json stops dockerd from starting) and CDI specs
//! (engines rescan their spec dirs at any time). The data goes to a temp
//! file in the same directory and is renamed over the target; rename(2)
//! within one filesystem is atomic. Files that must survive a crash of the
//! machine are also fsynced ([`Durability`]).

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How the new file is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Permission bits of the new file, set explicitly (the umask must not
    /// narrow them).
    pub mode: u32,
    /// `(uid, gid)` to give the new file, to keep the previous owner.
    pub owner: Option<(u32, u32)>,
    pub durability: Durability,
}

/// What a replaced file must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Readers and a killed writer: every reader sees the old file or the
    /// new one, never half. No fsync, so a crash of the machine may leave
    /// either. For files that do not outlive such a crash: a bundle's
    /// `config.json` (engines create bundles anew for every task) and state
    /// under `/run`. On a busy disk an fsync costs tens of ms on every
    /// container start (issue 18, BENCHMARKS.md).
    Readers,
    /// Also a crash of the machine: the data is fsynced before the rename
    /// (else ext4 and xfs may persist the rename first, leaving the name on
    /// an empty file) and the directory after it. Engine configs, CDI specs.
    Crash,
}

/// The temp file's name: hidden, and ending in `.tmp` so that a scanner of
/// the dir (an engine reading `*.json`/`*.yaml` specs) never takes it.
fn temp_path(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    dir.join(format!(".{name}.nvidia-{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically (see the module doc). On any failure
/// the temp file is removed and `path` is as it was.
pub fn write(path: &Path, bytes: &[u8], options: &Options) -> io::Result<()> {
    let temp = temp_path(path);
    // A temp file of this name can only be left by a process that was
    // killed mid-write and had our pid: stale, and in the way of create_new.
    let _ = std::fs::remove_file(&temp);
    let result = write_then_rename(&temp, path, bytes, options);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8], options: &Options) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)?;
    file.set_permissions(std::fs::Permissions::from_mode(options.mode))?;
    if let Some((uid, gid)) = options.owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    file.write_all(bytes)?;
    if options.durability == Durability::Crash {
        // Data before the rename (see Durability::Crash).
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(temp, path)?;
    if options.durability == Durability::Crash {
        if let Some(dir) = temp.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("ncr-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, b"old").unwrap();
        // A stale temp file of our pid does not block the write.
        std::fs::write(temp_path(&path), b"stale").unwrap();
        let options = Options {
            mode: 0o640,
            owner: None,
            durability: Durability::Crash,
        };
        write(&path, b"new", &options).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A failure (no such dir) leaves nothing behind.
        assert!(write(&dir.join("missing/x"), b"x", &options).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
