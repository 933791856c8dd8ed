//! The runtime: one invocation from argv to the `execve` of the real runtime.
//!
//! argv scan -> config -> find the real runtime -> (create/run only: read the
//! bundle's config.json -> request -> driver discovery -> edits -> patch and
//! write) -> exec. Everything before the exec either succeeds or leaves the
//! bundle untouched and the real runtime unstarted (contract.md §5).
//!
//! [`argv`] scans what the engine asked, [`locate`] finds the real runtime
//! and our hook, [`mode`] decides between the legacy path and CDI. This
//! module orchestrates: every call from here goes down a layer.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};
use crate::driver::{Driver, HostFacts, Roots};
use crate::edits::{select_devices, ContainerEdits, EditsError, HookSettings, LibraryDirs};
use crate::oci::{RawSpec, SpecError};
use crate::request::{Request, RequestError};
use crate::requirements::RequirementError;

pub mod argv;
pub mod fallback;
pub mod locate;
pub mod mode;

use argv::{Action, ArgvError, Invocation};
pub use fallback::ConfigState;
pub use locate::{find_hook, find_runtime, lookup_executable};
use mode::{ModeError, Route};

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
    #[error(transparent)]
    Mode(#[from] ModeError),
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
    /// `Some` when config.json was rewritten: its original, to put back if
    /// the real runtime cannot be exec'd after all.
    pub patched: Option<RawSpec>,
    /// The config could not be used and this call went on without it: the
    /// message to log (stderr too on `create`).
    pub warning: Option<String>,
}

/// The bundle's config.json, or `None` when it does not even mention a
/// request on `config`'s channels: then it is runc's, untouched and not
/// parsed (a malformed file of such a container is runc's to report). Over
/// the size limit it is streamed for the mentions instead: a file that does
/// mention a request gets the limit error, any other is still runc's (a
/// fault of ours must not stop it).
fn read_if_requesting(bundle: &Path, config: &Config) -> Result<Option<RawSpec>, RuntimeError> {
    let raw = match RawSpec::read(bundle) {
        Ok(raw) => raw,
        Err(error @ SpecError::TooLarge { .. }) => {
            let path = bundle.join("config.json");
            // O_NONBLOCK, as RawSpec::read: never hang on a FIFO.
            let mentions = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&path)
                .and_then(|file| crate::request::may_request_devices_in(file, config))
                .unwrap_or(true);
            if mentions {
                return Err(error.into());
            }
            tracing::debug!(
                "{}: over the size limit and no GPU requested; spec left untouched",
                path.display()
            );
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    if !crate::request::may_request_devices(&raw.bytes, config) {
        tracing::debug!(
            "{}: no GPU requested; spec left untouched",
            raw.path.display()
        );
        return Ok(None);
    }
    Ok(Some(raw))
}

/// Reads the bundle's spec and, for a GPU container, writes the patched
/// spec. Returns the original when the file was rewritten, or `None` when the container asked for no
/// GPU (then the file is not touched at all).
pub fn modify_bundle(
    bundle: &Path,
    config: &Config,
    hook: &dyn Fn() -> Result<HookSettings, RuntimeError>,
    state_dir: &Path,
) -> Result<Option<RawSpec>, RuntimeError> {
    let Some(raw) = read_if_requesting(bundle, config)? else {
        return Ok(None);
    };
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
    let library_dirs = LibraryDirs::for_rootfs(&spec.rootfs());
    let Some(edits) = container_edits(config, &request, &library_dirs, hook, state_dir)? else {
        return Ok(None);
    };
    let patched = crate::oci::patch::apply(&spec.value, &edits, &spec.path)?;
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

/// What a GPU container gets for `request`, by the mode's route: the spec
/// dirs' edits for CDI names; else driver discovery, device selection, the
/// requirement checks and our own edits. `None`: the route leaves the
/// container alone. The runtime patches config.json with the result, the
/// hook applies it to a live container: neither re-derives it.
/// `state_dir`: where the driver facts that change only with the driver
/// are cached between starts ([`crate::driver::facts_cache`]).
pub fn container_edits(
    config: &Config,
    request: &Request,
    library_dirs: &LibraryDirs,
    hook: &dyn Fn() -> Result<HookSettings, RuntimeError>,
    state_dir: &Path,
) -> Result<Option<ContainerEdits>, RuntimeError> {
    match mode::route(config, request)? {
        Route::Legacy => {}
        Route::Untouched => return Ok(None),
        Route::Cdi(names) => return mode::cdi_edits(config, &names).map(Some),
    }
    let driver = Driver::discover(Roots::from_config(config)).map_err(EditsError::from)?;
    // NVML and libcuda are loaded only if a MIG device or a requirement
    // term asks for a fact the cache does not hold.
    let mut facts = HostFacts::for_runtime(&driver, state_dir);
    let selection = select_devices(&driver, request, &mut facts)?;
    if request.disable_require {
        tracing::info!("requirement checks disabled");
    } else if !request.requirements.is_empty() {
        let gpus = selection.physical_gpus(&driver);
        facts.select(gpus.iter().map(|gpu| gpu.uuid.clone()).collect());
        crate::requirements::check(&request.requirements, gpus.len(), &mut facts)?;
    }
    let hook = hook()?;
    let edits =
        ContainerEdits::for_request(&driver, request, &selection, library_dirs, Some(&hook))?;
    Ok(Some(edits))
}

/// Does everything before the exec. A broken config ([`fallback`]) stops
/// only a GPU `create`/`run`; anything else goes on with the last good
/// config's low-level runtime and the config's error as a warning.
pub fn prepare(
    argv: &[OsString],
    invocation: &Invocation,
    config: ConfigState,
    path_env: Option<&str>,
    self_exe: &Path,
    state_dir: &Path,
) -> Result<Prepared, RuntimeError> {
    let action = invocation.action();
    if action == Action::Modify {
        if let Some(error) = &invocation.bundle_error {
            return Err(error.clone().into());
        }
    }
    let bundle = || match &invocation.bundle {
        Some(bundle) => Ok(bundle.clone()),
        None => std::env::current_dir().map_err(RuntimeError::WorkingDirectory),
    };
    let mut patched = None;
    let mut warning = None;
    let runtime = match config {
        ConfigState::Loaded(config, source) => {
            let runtime = find_runtime(
                &config.nvidia_container_runtime.runtimes,
                path_env,
                self_exe,
            )?;
            if action == Action::Modify {
                let hook = || find_hook(&config, &source, path_env, self_exe);
                patched = modify_bundle(&bundle()?, &config, &hook, state_dir)?;
                fallback::remember_runtimes(state_dir, &config.nvidia_container_runtime.runtimes);
            }
            runtime
        }
        ConfigState::Broken(error) => {
            if action == Action::Modify {
                // The same test as with a config, on the channels that any
                // config could enable. A file that mentions a request, or
                // one over the size limit that does, stops here with the
                // config's error; one that cannot be read is runc's to
                // report, as for any bundle.
                match read_if_requesting(&bundle()?, &fallback::every_request_channel()) {
                    Ok(Some(_)) | Err(RuntimeError::Spec(SpecError::TooLarge { .. })) => {
                        return Err(error.into())
                    }
                    Ok(None) | Err(_) => {}
                }
            }
            warning = Some(format!(
                "{}; this call went on without it (it asked for no GPU), with the low-level runtime of the last good config",
                crate::logging::error_chain(&error)
            ));
            find_runtime(
                &fallback::runtimes_without_config(state_dir),
                path_env,
                self_exe,
            )?
        }
    };
    let mut exec_argv = argv.to_vec();
    if let Some(first) = exec_argv.first_mut() {
        *first = runtime.clone().into_os_string();
    }
    Ok(Prepared {
        runtime,
        argv: exec_argv,
        print_version: action == Action::Version,
        patched,
        warning,
    })
}

/// Our version banner, printed before the real runtime's.
pub fn version_banner() -> String {
    format!(
        "NVIDIA Container Runtime version {} (rust)\nspec: 1.2.0\n\n",
        env!("CARGO_PKG_VERSION")
    )
}
