//! The runtime: one invocation from argv to the `execve` of the real runtime.
//!
//! argv scan -> config -> find the real runtime -> (create/run only: read the
//! bundle's config.json -> request -> driver discovery -> edits -> patch and
//! write) -> exec. Everything before the exec either succeeds or leaves the
//! bundle untouched and the real runtime unstarted (contract.md §5).

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::argv::{Action, ArgvError, Invocation};
use crate::config::{Config, ConfigError, Source};
use crate::driver::{Driver, Roots};
use crate::driver_api::HostFacts;
use crate::edits::{select_devices, ContainerEdits, EditsError, HookSettings, LibraryDirs};
use crate::request::{Request, RequestError};
use crate::requirements::RequirementError;
use crate::spec::{RawSpec, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no low-level runtime found: looked for {candidates} on PATH and in /usr/local/sbin, /usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin; install runc, or set runtimes in [nvidia-container-runtime] of config.toml")]
    NoRuntime { candidates: String },
    #[error("the low-level runtime candidate \"{candidate}\" resolves to this program ({path}): set runtimes in [nvidia-container-runtime] of config.toml to the real runc or crun, not to nvidia-container-runtime")]
    RuntimeIsSelf { candidate: String, path: PathBuf },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{path}: {source}")]
    Request {
        path: PathBuf,
        #[source]
        source: RequestError,
    },
    #[error(transparent)]
    Edits(#[from] EditsError),
    #[error(transparent)]
    Requirement(#[from] RequirementError),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::CdiError),
    #[error("the GPU prestart hook \"{name}\" was not found next to {self_dir} or on PATH: install nvidia-container-runtime-hook, or set path in [nvidia-container-runtime-hook] of config.toml")]
    NoHook { name: String, self_dir: PathBuf },
    #[error("cannot determine the working directory (the default bundle): {0}")]
    WorkingDirectory(#[source] std::io::Error),
}

/// What the binary must do after a successful [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The real runtime to exec.
    pub runtime: PathBuf,
    /// argv for it: ours, untouched, with `argv[0]` its absolute path.
    pub argv: Vec<OsString>,
    /// `--version`: print ours before the exec.
    pub print_version: bool,
    /// `Some` when config.json was rewritten.
    /// `Some` when config.json was rewritten: its original, to put back if
    /// the real runtime cannot be exec'd after all.
    pub patched: Option<RawSpec>,
}

/// Standard dirs searched after PATH, as runc's own users expect a runtime to
/// be found even under a minimal PATH (containerd-shim's environment).
const STANDARD_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Finds the real runtime: the first candidate that exists. A candidate that
/// is this very program (a `runc` symlink pointing back at us) is an error:
/// exec'ing it would recurse forever.
pub fn find_runtime(
    candidates: &[String],
    path_env: Option<&str>,
    self_exe: &Path,
) -> Result<PathBuf, RuntimeError> {
    let self_id = std::fs::metadata(self_exe).ok().map(|m| (m.dev(), m.ino()));
    for candidate in candidates.iter().filter(|c| !c.is_empty()) {
        let Some(found) = lookup_executable(candidate, path_env) else {
            tracing::debug!("runtime candidate {candidate} not found");
            continue;
        };
        let found_id = std::fs::metadata(&found).ok().map(|m| (m.dev(), m.ino()));
        if found_id.is_some() && found_id == self_id {
            return Err(RuntimeError::RuntimeIsSelf {
                candidate: candidate.clone(),
                path: found,
            });
        }
        return Ok(found);
    }
    Err(RuntimeError::NoRuntime {
        candidates: candidates.join(", "),
    })
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// An absolute path as is; a name searched on PATH, then the standard dirs.
pub fn lookup_executable(name: &str, path_env: Option<&str>) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable_file(&path).then_some(path);
    }
    path_env
        .unwrap_or("")
        .split(':')
        .filter(|dir| !dir.is_empty())
        .chain(STANDARD_DIRS.iter().copied())
        .map(|dir| Path::new(dir).join(name))
        .find(|path| is_executable_file(path))
}

/// The configured roots.
pub fn roots(config: &Config) -> Roots {
    Roots {
        driver_root: config.driver_root(),
        dev_root: config.dev_root(),
        proc_root: config.proc_root(),
        sys_root: config.sys_root(),
    }
}

/// Finds our hook binary: an absolute `path` as is, else the name next to
/// this executable (a package installs both in one dir), else on PATH.
pub fn find_hook(
    config: &Config,
    source: &Source,
    path_env: Option<&str>,
    self_exe: &Path,
) -> Result<HookSettings, RuntimeError> {
    let name = &config.nvidia_container_runtime_hook.path;
    let self_dir = self_exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let beside_us = || {
        let candidate = self_dir.join(name);
        (!name.contains('/') && is_executable_file(&candidate)).then_some(candidate)
    };
    let path = beside_us()
        .or_else(|| lookup_executable(name, path_env))
        .ok_or_else(|| RuntimeError::NoHook {
            name: name.clone(),
            self_dir: self_dir.clone(),
        })?;
    Ok(HookSettings {
        path,
        // The hook chdirs to / before reading it: a relative path (from
        // a relative NVIDIA_CTK_CONFIG_FILE_PATH) must be made absolute here.
        config_path: match source {
            Source::File(path) => Some(std::path::absolute(path).unwrap_or_else(|_| path.clone())),
            Source::Defaults => None,
        },
    })
}

/// Reads the bundle's spec and, for a GPU container, writes the patched
/// spec. Returns the original when the file was rewritten, or `None` when the container asked for no
/// GPU (then the file is not touched at all).
pub fn modify_bundle(
    bundle: &Path,
    config: &Config,
    hook: &dyn Fn() -> Result<HookSettings, RuntimeError>,
) -> Result<Option<RawSpec>, RuntimeError> {
    let raw = RawSpec::read(bundle)?;
    if !crate::request::may_request_devices(&raw.bytes, config) {
        // Not even a mention of a request: exec at once, without parsing.
        // A malformed file of such a container is runc's to report.
        tracing::debug!(
            "{}: no GPU requested; spec left untouched",
            raw.path.display()
        );
        return Ok(None);
    }
    let spec = raw.parse()?;
    let request =
        Request::from_spec(&spec.value, config).map_err(|source| RuntimeError::Request {
            path: spec.path.clone(),
            source,
        })?;
    let Some(request) = request else {
        tracing::debug!(
            "{}: no GPU requested; spec left untouched",
            spec.path.display()
        );
        return Ok(None);
    };
    tracing::info!(
        "{}: GPU request {:?}, capabilities {}",
        spec.path.display(),
        request.devices,
        request.capabilities
    );
    // CDI mode (or auto with CDI names): the edits come from the spec dirs,
    // not from driver discovery.
    match crate::cdi::plan(config, &request)? {
        crate::cdi::Plan::Legacy => {}
        crate::cdi::Plan::Untouched => return Ok(None),
        crate::cdi::Plan::Inject(names) => {
            let patched = crate::cdi::inject(config, &names, &spec.value, &spec.path)?;
            if patched == spec.value {
                return Ok(None);
            }
            spec.write(&patched)?;
            return Ok(Some(raw));
        }
    }
    let driver = Driver::discover(roots(config)).map_err(EditsError::from)?;
    // NVML and libcuda are loaded only if a MIG device or a requirement
    // term asks for them.
    let mut facts = HostFacts::new(&driver);
    let selection = select_devices(&driver, &request, &mut facts)?;
    if request.disable_require {
        tracing::info!("requirement checks disabled");
    } else if !request.requirements.is_empty() {
        let gpus = selection.physical_gpus(&driver);
        facts.select(gpus.iter().map(|gpu| gpu.uuid.clone()).collect());
        crate::requirements::check(&request.requirements, gpus.len(), &mut facts)?;
    }
    let library_dirs = LibraryDirs::for_rootfs(&spec.rootfs());
    let hook = hook()?;
    let edits =
        ContainerEdits::for_request(&driver, &request, &selection, &library_dirs, Some(&hook))?;
    let patched = crate::spec::apply(&spec.value, &edits, &spec.path)?;
    if patched == spec.value {
        tracing::debug!("{}: already patched; not rewritten", spec.path.display());
        return Ok(None);
    }
    spec.write(&patched)?;
    tracing::info!(
        "{}: injected {} device nodes and {} mounts",
        spec.path.display(),
        edits.device_nodes.len(),
        edits.mounts.len()
    );
    Ok(Some(raw))
}

/// Does everything before the exec.
pub fn prepare(
    argv: &[OsString],
    invocation: &Invocation,
    (config, source): (&Config, &Source),
    path_env: Option<&str>,
    self_exe: &Path,
) -> Result<Prepared, RuntimeError> {
    let action = invocation.action();
    if action == Action::Modify {
        if let Some(error) = &invocation.bundle_error {
            return Err(error.clone().into());
        }
    }
    let runtime = find_runtime(
        &config.nvidia_container_runtime.runtimes,
        path_env,
        self_exe,
    )?;
    let mut patched = None;
    if action == Action::Modify {
        let bundle = match &invocation.bundle {
            Some(bundle) => bundle.clone(),
            None => std::env::current_dir().map_err(RuntimeError::WorkingDirectory)?,
        };
        let hook = || find_hook(config, source, path_env, self_exe);
        patched = modify_bundle(&bundle, config, &hook)?;
    }
    let mut exec_argv = argv.to_vec();
    if let Some(first) = exec_argv.first_mut() {
        *first = runtime.clone().into_os_string();
    }
    Ok(Prepared {
        runtime,
        argv: exec_argv,
        print_version: action == Action::Version,
        patched,
    })
}

/// Our version banner, printed before the real runtime's.
pub fn version_banner() -> String {
    format!(
        "NVIDIA Container Runtime version {} (rust)\nspec: 1.2.0\n\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_path_then_standard_dirs() {
        assert_eq!(
            lookup_executable("sh", Some("")),
            Some(PathBuf::from("/usr/bin/sh"))
        );
        assert_eq!(lookup_executable("definitely-not-here-xyz", None), None);
        assert_eq!(
            lookup_executable("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(lookup_executable("/nonexistent/runc", None), None);
    }

    #[test]
    fn self_is_refused_and_missing_is_explained() {
        let sh = lookup_executable("sh", None).unwrap();
        let error = find_runtime(&["sh".into()], None, &sh).unwrap_err();
        assert!(
            matches!(error, RuntimeError::RuntimeIsSelf { .. }),
            "{error}"
        );
        let error = find_runtime(&["nope-1".into(), "nope-2".into()], None, &sh).unwrap_err();
        assert!(error.to_string().contains("nope-1, nope-2"), "{error}");
    }
}
