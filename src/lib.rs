//! A GPU container runtime in front of runc.
//!
//! The data flows top-down through the modules: [`argv`] (what the engine
//! asked) -> [`config`] -> [`request`] (what the container asks for) ->
//! [`driver`] (what the host has) -> [`edits`] (what the container gets) ->
//! [`spec`] (config.json patched) -> [`runtime`] (exec the real runtime).
//! [`ldcache`], [`elf`], [`confined`] and [`atomic`] are the file-format, path
//! and file-replacement helpers
//! they share; [`logging`] reports errors the way engines read them.

pub mod argv;
pub mod atomic;
pub mod cdi;
pub mod config;
pub mod configure;
pub mod confined;
pub mod ctk;
pub mod driver;
pub mod driver_api;
pub mod edits;
pub mod elf;
pub mod hook;
pub mod ldcache;
pub mod logging;
pub mod nvidia_docker;
pub mod request;
pub mod requirements;
pub mod runtime;
pub mod spec;
