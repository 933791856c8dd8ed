//! A GPU container runtime in front of runc.
//!
//! The data flows top-down, and every import points down this list of
//! layers (a module may use its own layer's leaves and anything below):
//!
//! 1. `src/bin/*`: thin; parse argv, call the library, print the error
//!    chain, exit.
//! 2. The entry points: [`runtime`] (one invocation of the runtime: argv
//!    scan, locating runc and the hook, the legacy/CDI mode, the patch,
//!    then the exec), [`hook`] (one call of the prestart hook), [`ctk`]
//!    (`nvidia-ctk`'s command line), [`inspect`] (`nvidia-ctk info` and
//!    `doctor`, which use the runtime's lookups), [`nvidia_docker`] and
//!    [`installer`] (`nvidia-ctk-installer`, the node installer: the
//!    toolkit under `$ROOT/toolkit`, our handlers in the engine's config,
//!    the engine's restart and the cleanup on SIGTERM).
//! 3. [`oci`]: the bundle's `config.json` (read, patch, write) and the OCI
//!    state a hook reads.
//! 4. [`edits`]: what a GPU container gets, as one model, and its
//!    conversions (CDI specs generated, CDI edits resolved).
//! 5. [`driver`]: what the host's driver offers (procfs, libraries, nodes,
//!    lazy libcuda/NVML facts).
//! 6. [`request`]: what the container asks for (env, mounts, annotations).
//! 7. [`cdi`] (a CDI library that knows no GPU), [`config`] (config.toml)
//!    and [`configure`] (the engines' configs).
//! 8. Leaves: [`ldcache`], [`elf`], [`confined`], [`atomic`], [`bounded`]
//!    (the size limit of every input read whole),
//!    [`requirements`], [`logging`], [`engine_api`] (the engines' CRI and
//!    Engine API, as clients: does the engine answer, which runtimes does
//!    it know), and [`system`], the one seam for side effects on a
//!    container or the host.

pub mod cdi;
pub mod config;
pub mod configure;
pub mod ctk;
pub mod driver;
pub mod edits;
pub mod hook;
pub mod inspect;
pub mod installer;
pub mod nvidia_docker;
pub mod oci;
pub mod request;
pub mod runtime;

pub mod atomic;
pub mod bounded;
pub mod confined;
pub mod elf;
pub mod engine_api;
pub mod ldcache;
pub mod logging;
pub mod requirements;
pub mod system;

#[cfg(test)]
pub(crate) mod testing;
