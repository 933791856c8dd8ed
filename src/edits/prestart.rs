//! Our prestart hook's entry in a container's spec, and the argv contract
//! between the edits that write it and [`crate::hook`] that parses it.

use std::path::PathBuf;

use super::Hook;

/// Environment of every hook entry we write: explicit and minimal, so that
/// runc never hands the container's env (an image's `LD_PRELOAD`) to a
/// process running as root on the host (CVE-2025-23266, security.md).
pub const HOOK_ENV: &[&str] =
    &["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"];
/// runc kills a hook that runs longer than this many seconds.
pub const HOOK_TIMEOUT_SECONDS: u32 = 30;
/// The argument that marks a hook entry as written by this runtime. docker's
/// own `--gpus` entry (`[nvidia-container-runtime-hook, prestart]`) lacks it.
pub const HOOK_INJECTED_FLAG: &str = "--injected-by-runtime";

/// Where our prestart hook is and which config file it must read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    /// Absolute path of `nvidia-container-runtime-hook`.
    pub path: PathBuf,
    /// The config file the runtime loaded, if any.
    pub config_path: Option<PathBuf>,
}

/// Our prestart hook entry for a container: it writes the container's
/// ld.so.cache for `libraries` (`(soname, container path)`) and masks
/// `/proc/driver/nvidia` to the GPUs whose procfs dirs are `gpu_proc_dirs`,
/// and creates the symlinks `links` (`(target, link)`) in the rootfs.
pub fn prestart_hook(
    settings: &HookSettings,
    libraries: &[(String, PathBuf)],
    gpu_proc_dirs: &[&str],
    proc_files: &[String],
    links: &[(PathBuf, PathBuf)],
) -> Hook {
    let mut args = vec![
        "nvidia-container-runtime-hook".to_string(),
        "prestart".to_string(),
        HOOK_INJECTED_FLAG.to_string(),
    ];
    if let Some(config) = &settings.config_path {
        args.push("--config".to_string());
        args.push(config.to_string_lossy().into_owned());
    }
    for (soname, path) in libraries {
        args.push("--library".to_string());
        args.push(format!("{soname}={}", path.display()));
    }
    for dir in gpu_proc_dirs {
        args.push("--gpu".to_string());
        args.push(dir.to_string());
    }
    // Extra files of /proc/driver/nvidia the container must still see
    // through the hook's mask (MIG capability files CUDA reads).
    for file in proc_files {
        args.push("--proc-file".to_string());
        args.push(file.clone());
    }
    for (target, link) in links {
        args.push("--link".to_string());
        args.push(format!("{}::{}", target.display(), link.display()));
    }
    Hook {
        hook_name: "prestart".to_string(),
        path: settings.path.clone(),
        args,
        env: HOOK_ENV.iter().map(|e| e.to_string()).collect(),
        timeout: Some(HOOK_TIMEOUT_SECONDS),
    }
}
