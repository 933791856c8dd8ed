//! `<bundle>/config.json`: read whole (never blocking on a FIFO), parsed as
//! a `serde_json::Value` with `preserve_order`, written back atomically
//! with its mode, and put back byte for byte when the real runtime cannot
//! be exec'd after all.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::bounded::{self, TooLarge, CONFIG_JSON};

use super::{kind_name, SpecError};

/// A `config.json` as read from disk.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub path: PathBuf,
    pub value: Value,
    pub mode: u32,
}

/// A `config.json` as bytes, before parsing: enough to decide that a
/// container asks for nothing, and to put the file back as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSpec {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

impl RawSpec {
    /// Reads `<bundle>/config.json` whole.
    pub fn read(bundle: &Path) -> Result<RawSpec, SpecError> {
        let path = bundle.join("config.json");
        let read_error = |source| SpecError::Read {
            path: path.clone(),
            source,
        };
        // O_NONBLOCK: a FIFO put where config.json should be would block a
        // plain open(2) forever, and the engine waiting on us with it. Only
        // a regular file is read (a device or FIFO is never a spec).
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&path)
            .map_err(read_error)?;
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(read_error(std::io::Error::other(
                "it is not a regular file (a FIFO, device or socket)",
            )));
        }
        let mode = metadata.permissions().mode() & 0o7777;
        // Read whole, then parse the slice: serde_json's reader path goes
        // byte by byte through `io::Read`; the parse of a one-GPU create fell
        // from 538k to 356k instructions (issue 8, BENCHMARKS.md).
        let bytes = match bounded::read_to_end(&mut file, CONFIG_JSON, metadata.len()) {
            Ok(bytes) => bytes,
            Err(error) if bounded::is_too_large(&error) => {
                return Err(SpecError::TooLarge {
                    path,
                    source: TooLarge { limit: CONFIG_JSON },
                })
            }
            Err(error) => return Err(read_error(error)),
        };
        Ok(RawSpec { path, bytes, mode })
    }

    /// Parses the bytes into a [`BundleSpec`].
    pub fn parse(&self) -> Result<BundleSpec, SpecError> {
        let value: Value =
            serde_json::from_slice(&self.bytes).map_err(|error| SpecError::Parse {
                path: self.path.clone(),
                message: error.to_string(),
            })?;
        if !value.is_object() {
            return Err(SpecError::Shape {
                path: self.path.clone(),
                field: "the document".into(),
                expected: "an object",
                found: kind_name(&value),
            });
        }
        Ok(BundleSpec {
            path: self.path.clone(),
            value,
            mode: self.mode,
        })
    }

    /// Puts the original bytes back, atomically (the runtime could not be
    /// exec'd after the patch: leave the bundle as the engine wrote it).
    pub fn restore(&self) -> Result<(), SpecError> {
        write_bytes_atomically(&self.path, &self.bytes, self.mode)
    }
}

impl BundleSpec {
    /// Reads and parses `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<BundleSpec, SpecError> {
        RawSpec::read(bundle)?.parse()
    }

    /// The rootfs directory on the host (`root.path`, relative to the bundle).
    pub fn rootfs(&self) -> PathBuf {
        let root = self
            .value
            .pointer("/root/path")
            .and_then(Value::as_str)
            .unwrap_or("rootfs");
        let bundle = self.path.parent().unwrap_or(Path::new("."));
        bundle.join(root)
    }

    /// Writes `value` atomically: a temp file in the bundle dir, renamed
    /// over `config.json`; same mode as before. On any failure the temp
    /// file is removed and the original is untouched.
    ///
    /// Not fsynced: the rename already makes the replacement atomic for
    /// every reader (runc reads it next) and for a killed writer, and a
    /// bundle does not outlive a crash of the machine (engines create
    /// bundles anew for every task; after a reboot the container is created
    /// again, from a new config.json). On a disk-backed bundle the fsync was
    /// the biggest single cost of a `create` and tens of ms at the tail
    /// while the disk is busy (issue 18, BENCHMARKS.md).
    pub fn write(&self, value: &Value) -> Result<(), SpecError> {
        let bytes = serde_json::to_vec(value).map_err(|source| SpecError::Write {
            path: self.path.clone(),
            source: std::io::Error::other(source),
        })?;
        write_bytes_atomically(&self.path, &bytes, self.mode)
    }
}

/// Temp file next to `path`, renamed over `path` (see
/// [`BundleSpec::write`]); the temp file is removed on any failure.
fn write_bytes_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SpecError> {
    let options = crate::atomic::Options {
        mode,
        owner: None,
        durability: crate::atomic::Durability::Readers,
    };
    crate::atomic::write(path, bytes, &options).map_err(|source| SpecError::Write {
        path: path.to_path_buf(),
        source,
    })
}
