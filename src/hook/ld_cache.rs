//! The container's `/etc/ld.so.cache`, written in Rust: the image's own
//! entries kept, one entry per injected library added; nothing from the
//! image is executed (no ldconfig).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use crate::bounded::{self, LD_SO_CACHE};
use crate::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};
use crate::system::System;

use super::rootfs::{is_absent, replace_file};
use super::HookError;

/// The most of an image's ld.so.cache that is read ([`bounded::LD_SO_CACHE`]).
pub const MAX_LD_CACHE_BYTES: u64 = LD_SO_CACHE.bytes;

/// Adds one entry per library to the container's `/etc/ld.so.cache`,
/// keeping the image's own entries. Returns the number of entries written
/// and, when the image's cache could not be used, why.
///
/// `/etc` is resolved inside `root`; an image without one gets no cache
/// (musl and scratch images have no use for it). The image's cache is read
/// only if it is a regular file of at most [`MAX_LD_CACHE_BYTES`], opened
/// without following a symlink and without blocking on a FIFO. The new
/// cache is a temp file in `/etc` renamed over `ld.so.cache`, mode 0644; a
/// symlink at `ld.so.cache` is replaced, never written through.
///
/// `preferred` entries (an image's newer CUDA compat libraries) go before
/// everything else, so that the loader, which takes the first entry of a
/// name, resolves those names to them.
pub fn update_ld_cache(
    system: &dyn System,
    root: BorrowedFd<'_>,
    rootfs: &Path,
    libraries: &[(String, PathBuf)],
    preferred: &[(String, PathBuf)],
) -> Result<(usize, Option<String>), HookError> {
    let fail = |action, path, source: io::Error| HookError::LdCache {
        action,
        path,
        rootfs: rootfs.to_path_buf(),
        source,
    };
    let etc = match system.open_in_root(root, "etc", OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(errno) if is_absent(errno) || errno == Errno::ELOOP => {
            tracing::info!("{}: no /etc; no ld.so.cache written", rootfs.display());
            return Ok((0, Some("the image has no /etc".to_string())));
        }
        Err(errno) => return Err(fail("open", "/etc", errno.into())),
    };

    let (mut cache, note) = match read_image_cache(etc.as_fd()) {
        Ok(cache) => (cache, None),
        Err(note) => {
            tracing::warn!(
                "{}: /etc/ld.so.cache: {note}; writing a cache of the injected libraries only",
                rootfs.display()
            );
            (LdCache::default(), Some(note))
        }
    };
    let entry = |key: &String, path: &PathBuf| CacheEntry {
        flags: FLAGS_X86_64_LIBC6,
        key: key.clone(),
        value: path.to_string_lossy().into_owned(),
        os_version: 0,
        hwcap: 0,
    };
    cache.add_or_replace_all(
        libraries
            .iter()
            .map(|(soname, path)| entry(soname, path))
            .collect(),
    );
    // In front, in their own order; one pass (this runs on every start).
    if !preferred.is_empty() {
        let rest = std::mem::take(&mut cache.entries);
        cache.entries = preferred
            .iter()
            .map(|(name, path)| entry(name, path))
            .chain(rest)
            .collect();
    }
    let bytes = cache.to_bytes();
    match replace_file(system, etc.as_fd(), "ld.so.cache", &bytes, 0o644) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(Errno::EROFS as i32) => {
            // A read-only image (not `root.readonly`, which runc applies
            // after the hooks): the libraries resolve by the SONAME links
            // our hook made in the default library dirs, where it could.
            tracing::warn!(
                "{}: /etc is read-only; no ld.so.cache written",
                rootfs.display()
            );
            return Ok((0, Some("/etc is read-only".to_string())));
        }
        Err(error) => return Err(fail("write", "/etc/ld.so.cache", error)),
    }
    tracing::info!(
        "{}: wrote /etc/ld.so.cache with {} entries ({} injected)",
        rootfs.display(),
        cache.entries.len(),
        libraries.len()
    );
    Ok((cache.entries.len(), note))
}

/// The image's cache, or why it cannot be used (then the caller starts from
/// an empty one: a broken cache must not stop the container).
fn read_image_cache(etc: BorrowedFd<'_>) -> Result<LdCache, String> {
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(Some(etc.as_raw_fd()), "ld.so.cache", flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(LdCache::default()),
        Err(Errno::ELOOP) => {
            return Err("it is a symlink; it is replaced, not followed".to_string())
        }
        Err(errno) => return Err(format!("cannot open it: {errno}")),
    };
    // SAFETY: openat just returned this fd and nothing else owns it.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !metadata.file_type().is_file() {
        return Err("it is not a regular file".to_string());
    }
    let bytes = bounded::read_to_end(file, LD_SO_CACHE, metadata.len()).map_err(|error| {
        match bounded::is_too_large(&error) {
            true => error.to_string(),
            false => format!("cannot read it: {error}"),
        }
    })?;
    LdCache::parse(&bytes).map_err(|e| e.to_string())
}
