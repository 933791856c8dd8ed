//! Inputs read whole, each with a limit on how much of it is read: a root
//! process on the host must not be made to allocate without bound by what
//! a container or an image controls. Every limit is far above what a valid
//! input holds, and one that is reached is reported as a limit (what, how
//! large, the usual cause), never as a corrupt input. RELIABILITY.md lists
//! them.

use std::fmt;
use std::io::{self, Read};

/// One kind of input and the most of it that is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What the input is, for the message (`the bundle's config.json`).
    pub what: &'static str,
    pub bytes: u64,
    /// What usually makes a valid input that large, and what to do.
    pub hint: &'static str,
}

/// A bundle's `config.json`. runc and the engines set no limit; the
/// container's annotations and environment are what grows it (200,000
/// annotations are 20 MB; a 100 MiB file is patched in seconds, see
/// RELIABILITY.md). The runtime holds it twice (bytes and parsed).
pub const CONFIG_JSON: Limit = Limit {
    what: "the bundle's config.json",
    bytes: 256 << 20,
    hint: "the container's annotations or environment are the usual cause; make them smaller",
};

/// The OCI state on a hook's stdin: runc copies the container's
/// annotations into it, so it grows with config.json and has its limit.
/// The hook keeps only `id`, `pid`, `bundle` and `status` of it.
pub const HOOK_STATE: Limit = Limit {
    what: "the container state on stdin",
    bytes: CONFIG_JSON.bytes,
    hint: "runc copies the container's annotations into it; they are the usual cause; make them smaller",
};

/// An `ld.so.cache`, the image's or the driver root's (a few hundred KiB in
/// the largest images). The hook then writes a cache of the injected
/// libraries only; driver discovery scans the library dirs instead.
pub const LD_SO_CACHE: Limit = Limit {
    what: "the ld.so.cache",
    bytes: 64 << 20,
    hint: "a real one is a few hundred KiB; rebuild it with ldconfig",
};

/// A CDI spec file (a 64-GPU host's generated spec is well under 1 MiB).
pub const CDI_SPEC: Limit = Limit {
    what: "a CDI spec",
    bytes: 16 << 20,
    hint: "split it into one file per device kind, or regenerate it",
};

/// A file of the driver's procfs (`version`, `params`, a GPU's
/// `information`: each a few hundred bytes; procfs reports no size).
pub const PROCFS_FILE: Limit = Limit {
    what: "a file of the driver's procfs",
    bytes: 1 << 20,
    hint: "is proc-root in config.toml the driver's procfs?",
};

/// `config.toml` (the shipped file, every key commented, is 6 KiB).
pub const CONFIG_TOML: Limit = Limit {
    what: "the config file",
    bytes: 4 << 20,
    hint: "is the path right?",
};

/// The error of an input over its limit; an [`io::Error`] of kind
/// [`io::ErrorKind::FileTooLarge`] carries it, so callers that report read
/// errors report this one too, in these words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    pub limit: Limit,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is larger than {}, the most this reads ({})",
            self.limit.what,
            describe_bytes(self.limit.bytes),
            self.limit.hint
        )
    }
}

impl std::error::Error for TooLarge {}

impl TooLarge {
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::FileTooLarge, self)
    }
}

/// `64 MiB`, `512 KiB`, or bytes.
pub fn describe_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Reads `reader` to its end, or fails with [`TooLarge`] as soon as more
/// than `limit.bytes` came. `size_hint` (a file's length, 0 when unknown)
/// sizes the buffer once.
pub fn read_to_end(reader: impl Read, limit: Limit, size_hint: u64) -> io::Result<Vec<u8>> {
    if size_hint > limit.bytes {
        return Err(TooLarge { limit }.into_io());
    }
    let mut bytes = Vec::with_capacity(size_hint as usize);
    reader.take(limit.bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(TooLarge { limit }.into_io());
    }
    Ok(bytes)
}

/// [`read_to_end`] of a file by path.
pub fn read_file(path: &std::path::Path, limit: Limit) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    read_to_end(file, limit, size)
}

/// [`read_file`] of a file that must be a regular file: opened without
/// blocking (a FIFO put in its place must not hang the reader, and the
/// engine waiting on it), anything else refused.
pub fn read_regular_file(path: &std::path::Path, limit: Limit) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(
            "it is not a regular file (a FIFO, device, socket or directory)",
        ));
    }
    read_to_end(file, limit, meta.len())
}

/// State the runtime keeps for itself under `/run` (the remembered
/// runtimes, the driver facts cache): a few KiB.
pub const RUNTIME_STATE: Limit = Limit {
    what: "a state file of the runtime",
    bytes: 1 << 20,
    hint: "it is not one the runtime wrote; remove it",
};

/// A file the runtime wrote for itself, believed only if it is a regular
/// file owned by our user that nobody else may write: opened without
/// following a symlink or blocking on a FIFO. `None` for anything else, or
/// when it cannot be read (a warning says which).
pub fn read_private_file(path: &std::path::Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let private =
        meta.is_file() && meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o022 == 0;
    if !private {
        tracing::warn!("{}: not a file of ours alone; ignored", path.display());
        return None;
    }
    match read_to_end(file, RUNTIME_STATE, meta.len()) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            tracing::warn!("{}: {error}; ignored", path.display());
            None
        }
    }
}

/// [`read_file`] as UTF-8 text.
pub fn read_file_to_string(path: &std::path::Path, limit: Limit) -> io::Result<String> {
    String::from_utf8(read_file(path, limit)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Whether an error is an input over its limit.
pub fn is_too_large(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::FileTooLarge
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limit = Limit {
        what: "the thing",
        bytes: 8,
        hint: "the usual cause",
    };

    #[test]
    fn at_the_limit_is_read_and_past_it_is_a_limit_error() {
        assert_eq!(
            read_to_end(&b"12345678"[..], SMALL, 0).unwrap(),
            b"12345678"
        );
        let error = read_to_end(&b"123456789"[..], SMALL, 0).unwrap_err();
        assert!(is_too_large(&error));
        assert_eq!(
            error.to_string(),
            "the thing is larger than 8 bytes, the most this reads (the usual cause)"
        );
        // A size known up front fails before anything is read.
        assert!(is_too_large(&read_to_end(&b""[..], SMALL, 9).unwrap_err()));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(describe_bytes(64 << 20), "64 MiB");
        assert_eq!(describe_bytes(512 << 10), "512 KiB");
        assert_eq!(describe_bytes(1000), "1000 bytes");
    }
}
