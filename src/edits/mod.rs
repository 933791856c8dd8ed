//! The edits: what a GPU container gets, as one model.
//!
//! [`ContainerEdits`] has the shape of CDI's `containerEdits` (env, device
//! nodes, mounts, hooks) so that the runtime's patch, the hook and a CDI
//! spec all come from the same discovery: [`select`] resolves a request's
//! devices, [`build`] turns a request, a driver and a selection into edits
//! (contract.md §3), [`prestart`] is our hook's entry and argv contract,
//! [`cdi`] converts to and from CDI's edits, and [`mod@generate`] writes the
//! spec of `nvidia-ctk cdi generate`. [`crate::oci::patch`] applies edits
//! to `config.json`; nothing else decides what a container gets.

use std::path::{Path, PathBuf};

use crate::cdi::CdiError;
use crate::driver::{DeviceNode, DriverError};
use crate::request::RequestError;

pub mod build;
pub mod cdi;
pub mod generate;
pub mod prestart;
pub mod select;

pub use generate::{generate, GenerateMode, GenerateOptions, NameStrategy};
pub use prestart::{
    prestart_hook, HookSettings, HOOK_ENV, HOOK_INJECTED_FLAG, HOOK_TIMEOUT_SECONDS,
};
pub use select::{select_devices, Selection};

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum EditsError {
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(
        "{source_name} names GPU {device}, but this host has {available}: use one of those, or all"
    )]
    UnknownGpu {
        source_name: String,
        device: String,
        available: String,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Cdi(#[from] CdiError),
    #[error("CDI device {name} ({path}): {problem}")]
    CdiEdit {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("{source_name} names MIG device {device}, which cannot be used: {problem}; list the MIG devices with nvidia-smi -L")]
    MigLookup {
        source_name: String,
        device: String,
        problem: String,
    },
    #[error("GPU {gpu} is in MIG mode, but its MIG devices cannot be listed: {problem}; check the driver with nvidia-smi -L")]
    MigList { gpu: String, problem: String },
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub options: Vec<String>,
    /// The OCI mount `type`: `bind` for everything we inject; a CDI spec
    /// may name another.
    pub mount_type: String,
}

/// An OCI hook, with the stage it runs at (CDI's `hookName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub hook_name: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u32>,
}

/// Everything a container gets, in CDI's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerEdits {
    /// `KEY=VALUE` entries, add-or-replace by key.
    pub env: Vec<String>,
    pub device_nodes: Vec<DeviceNode>,
    pub mounts: Vec<Mount>,
    pub hooks: Vec<Hook>,
}

/// Options of read-only file mounts (libraries, binaries, firmware): no
/// setuid and no device files through them, as the anchor mounts them.
pub const FILE_MOUNT_OPTIONS: &[&str] = &["ro", "nosuid", "nodev", "bind"];
/// Options of IPC mounts (sockets, the MPS pipe dir): nothing executable.
pub const IPC_MOUNT_OPTIONS: &[&str] = &["nosuid", "nodev", "noexec", "bind"];

/// The container's library dirs for 64- and 32-bit libraries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryDirs {
    pub lib64: PathBuf,
    pub lib32: PathBuf,
}

impl LibraryDirs {
    /// Debian-family images (`/etc/debian_version`) use the multiarch dirs,
    /// every other glibc image `/usr/lib64` and `/usr/lib` (the Red Hat
    /// layout). The rootfs is looked into without following symlinks out
    /// of it.
    pub fn for_rootfs(rootfs: &Path) -> LibraryDirs {
        if crate::confined::exists(rootfs, Path::new("/etc/debian_version")) {
            LibraryDirs {
                lib64: PathBuf::from("/usr/lib/x86_64-linux-gnu"),
                lib32: PathBuf::from("/usr/lib/i386-linux-gnu"),
            }
        } else {
            LibraryDirs {
                lib64: PathBuf::from("/usr/lib64"),
                lib32: PathBuf::from("/usr/lib"),
            }
        }
    }
}
