//! CDI, the Container Device Interface, as a library that knows no GPU: the
//! spec format ([`spec`]), qualified device names ([`name`]) and the spec
//! dirs ([`registry`]). Spec format:
//! <https://github.com/cncf-tags/container-device-interface/blob/main/SPEC.md>.
//!
//! What a spec means for a GPU container (generating one from the driver,
//! turning resolved edits into ours) is [`crate::edits`]'s; which names a
//! container's request resolves to is the runtime's mode
//! ([`crate::runtime::mode`]). Nothing here imports from above this layer.

use std::path::PathBuf;

pub mod name;
pub mod registry;
pub mod spec;

pub use name::{
    looks_qualified, parse_kind, parse_qualified_name, validate_device_name, NameError,
    QualifiedName,
};
pub use registry::{BrokenSpec, LoadedSpec, Registry, Resolved, ResolvedPart};
pub use spec::{
    write_spec_file, Device, DeviceNode, Edits, Format, Hook, Mount, Spec, KNOWN_CDI_VERSIONS,
};

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error(transparent)]
    BadName(#[from] NameError),
    #[error("CDI device {name} is not defined in any spec in {dirs}{hint}: write a spec for it (NVIDIA GPUs: nvidia-ctk cdi generate --output /var/run/cdi/nvidia.yaml), or request a device that nvidia-ctk cdi list shows")]
    Unresolvable {
        name: String,
        dirs: String,
        hint: String,
    },
    #[error("CDI device {name} is defined only in {path}, which is not a valid CDI spec ({problem}): fix or remove that file")]
    OnlyInBroken {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("CDI device {name} is defined twice in {dir}: in {first} and in {second}; remove one of them")]
    Conflict {
        name: String,
        dir: PathBuf,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("cannot encode the CDI spec as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("cannot write {path}: {source}; any previous file there was left as it was")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
