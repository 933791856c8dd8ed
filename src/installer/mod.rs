//! `nvidia-ctk-installer` (also run as `nvidia-toolkit`, the name the GPU
//! Operator's DaemonSet execs): puts the toolkit on a Kubernetes node and
//! registers it with the node's engine, as NVIDIA's cmd/nvidia-ctk-installer
//! does (kubernetes.md §1), then waits and undoes the registration on
//! SIGTERM.
//!
//! The steps, in order ([`run`]):
//! 1. the exclusive flock on `TOOLKIT_PID_FILE` ([`lock`]);
//! 2. the engine's config found ([`engine::resolve`]: plain containerd,
//!    docker, CRI-O; k3s, rke2, k0s and microk8s recognised under
//!    `HOST_ROOT_MOUNT`, or refused with what to do);
//! 3. `$ROOT/toolkit` built and swapped in atomically ([`toolkit`]), with
//!    config.toml for the driver root (`runtimes` = the engine's default
//!    runtime's binary, runc, crun);
//! 4. with `CDI_ENABLED`, the management CDI spec
//!    (`management.nvidia.com/gpu=all`) in `CDI_OUTPUT_DIR`;
//! 5. `nvidia`, `nvidia-cdi` and `nvidia-legacy` registered through
//!    [`crate::configure`] (containerd drop-in, CRI-O drop-in, daemon.json),
//!    with `container_annotations = ["cdi.k8s.io/*"]` and, with CDI,
//!    `enable_cdi`;
//! 6. only if a byte of the engine's config changed: containerd checks it
//!    (`containerd config dump`), the engine is restarted ([`restart`]) and
//!    must listen on its socket again, then answer its own API and name our
//!    handlers there (the CRI's Version and Status for containerd and
//!    CRI-O, what kubelet reads; `/info` for dockerd:
//!    [`crate::engine_api`]); a refused, silent or unserving engine gets
//!    the previous bytes back and another restart;
//! 7. unless `NO_DAEMON`: wait for SIGTERM, SIGINT, SIGHUP, SIGQUIT or
//!    SIGPIPE, then put the engine's config back byte for byte (CRI-O: only
//!    the default is unset), restart it, release the lock.
//!
//! Where ours differs from NVIDIA's, on purpose: containerd's config
//! version is read from the root file's `version` (never `containerd
//! config dump`, whose output is never written back: toolkit#1222,
//! gpu-operator#2646); no restart when nothing changed; the check, the
//! engine's own answer after the restart (NVIDIA's sends the signal and
//! waits for nothing) and the rollback; the previous bytes restored on cleanup (so a previous
//! `default_runtime_name` comes back: gpu-operator#188, toolkit#1328); the
//! atomic toolkit swap instead of `rm -rf`; signals that arrive during the
//! install are held until it is done, then handled (NVIDIA's exits without
//! cleanup).
//!
//! ## NVIDIA's variables
//!
//! | Variable | Here |
//! |---|---|
//! | `RUNTIME` (docker\|containerd\|crio) | honoured, default docker |
//! | `RUNTIME_CONFIG`, `CONTAINERD_CONFIG`, `DOCKER_CONFIG`, `CRIO_CONFIG` | honoured (the first set wins); unset: the engine's default path, or the k3s/rke2/k0s/microk8s file found under `HOST_ROOT_MOUNT` |
//! | `RUNTIME_SOCKET`, `CONTAINERD_SOCKET`, `DOCKER_SOCKET` | honoured |
//! | `RUNTIME_DROP_IN_CONFIG`, `RUNTIME_DROP_IN_CONFIG_HOST_PATH` | honoured (the host path goes into `imports`) |
//! | `NVIDIA_RUNTIME_NAME`, `CONTAINERD_RUNTIME_CLASS`, `DOCKER_RUNTIME_NAME` | honoured, default nvidia; the others are `<name>-cdi`, `<name>-legacy` |
//! | `NVIDIA_RUNTIME_SET_AS_DEFAULT`, `CONTAINERD_SET_AS_DEFAULT` | honoured, default true |
//! | `RUNTIME_RESTART_MODE` (signal\|systemd\|none) | honoured; default signal, systemd for CRI-O (and microk8s), none for k0s |
//! | `RUNTIME_EXECUTABLE_PATH` | ours differs: a containerd the installer runs itself for the check (`config dump`, never used as the config's source); unset: `chroot $HOST_ROOT_MOUNT containerd` on the config's host path |
//! | `RUNTIME_READY_TIMEOUT` | ours: seconds the engine has after a restart to listen and serve our handlers [default: 60] |
//! | `RUNTIME_CONFIG_HOST_PATH` | ours: that host path [default: `RUNTIME_CONFIG` less the `HOST_ROOT_MOUNT` prefix; neither: the check is skipped with a warning] |
//! | `HOST_ROOT_MOUNT` | honoured, default /host |
//! | `ROOT`, `TOOLKIT_INSTALL_DIR` | honoured, default /usr/local/nvidia |
//! | `TOOLKIT_PID_FILE` | honoured, default /run/nvidia/toolkit/toolkit.pid |
//! | `NO_DAEMON` | honoured (no wait, no cleanup, as NVIDIA's) |
//! | `NO_RUNTIME_CONFIG` | honoured (toolkit and CDI only) |
//! | `DRIVER_ROOT`, `NVIDIA_DRIVER_ROOT` | honoured, default /run/nvidia/driver (config.toml's `[nvidia-container-cli] root`) |
//! | `DRIVER_ROOT_CTR_PATH` | honoured for the CDI spec: discovered there, host paths rewritten to `DRIVER_ROOT`; default /driver-root when it exists, else `DRIVER_ROOT` |
//! | `DEV_ROOT`, `NVIDIA_DEV_ROOT` | honoured (`dev-root`) |
//! | `DEV_ROOT_CTR_PATH` | honoured for the CDI spec's discovery, like `DRIVER_ROOT_CTR_PATH` |
//! | `CDI_ENABLED` | honoured: management spec, and `enable_cdi` in the engine |
//! | `RUNTIME_ENABLE_CDI` | honoured (`enable_cdi` only) |
//! | `CDI_KIND` | honoured, default management.nvidia.com/gpu |
//! | `CDI_OUTPUT_DIR` | honoured, default /var/run/cdi |
//! | `ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED`, `ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS` | honoured, defaults true and false |
//! | `NVIDIA_CONTAINER_RUNTIME_MODE`, `_MODES_CDI_DEFAULT_KIND`, `_MODES_CDI_ANNOTATION_PREFIXES`, `_RUNTIMES`, `_DEBUG`, `_LOG_LEVEL` | honoured (lists comma-separated) |
//! | `NVIDIA_CONTAINER_RUNTIME_PROC_ROOT`, `_SYS_ROOT` | ours: config.toml's `proc-root`/`sys-root`; the wrappers' `modules` check reads the proc root |
//! | `RUNTIME_CONFIG_SOURCE(S)` | not honoured: the file is always the source (the point of the rewrite) |
//! | `CONTAINERD_RUNTIME_TYPE`, `CONTAINERD_USE_LEGACY_CONFIG`, `[CONTAINERD_]RUNTIME_CONFIG_OVERRIDE` | not honoured: the entries copy runc's, with runc.v2 |
//! | `CRIO_CONFIG_MODE`, `CRIO_HOOKS_DIR` | not honoured: config mode only (the hook mode is deprecated) |
//! | `CREATE_DEVICE_NODES` | not honoured: no control device nodes are created |
//! | `ENABLE_NRI_PLUGIN`, `NRI_SOCKET`, `NRI_NAMESPACE` | not honoured: no NRI mode |

pub mod engine;
pub mod lock;
pub mod restart;
pub mod settings;
pub mod toolkit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::configure::{ConfigureError, Engine};
use restart::RestartMode;
pub use settings::{Cli, RuntimeArg, RuntimeConfigKeys, Settings};

#[derive(Debug, thiserror::Error)]
pub enum InstallerError {
    #[error("cannot lock the pid file {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another installer holds the lock on {path} (pid {holder}): one installer per node; stop that one first, or point TOOLKIT_PID_FILE elsewhere")]
    Locked { path: PathBuf, holder: String },
    #[error("cannot read the binary to install, {path} (set TOOLKIT_SOURCE_DIR to the dir holding our binaries): {source}")]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Install {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot register the runtimes")]
    Configure(#[source] ConfigureError),
    #[error("{command} refused {config}: {stderr}; the previous config was put back")]
    Refused {
        config: PathBuf,
        command: String,
        stderr: String,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot restart the engine ({what}): {source}")]
    Restart {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine did not answer on {socket} within {timeout:?} after its restart: read its log (journalctl -u {unit}, or the engine's own), and raise RUNTIME_READY_TIMEOUT if it is only slow")]
    NotReady {
        socket: PathBuf,
        timeout: Duration,
        unit: String,
    },
    #[error("the engine listens on {socket} again, but its API did not answer within {timeout:?} after the restart, so kubelet cannot use it either: read its log (journalctl -u {unit}), and raise RUNTIME_READY_TIMEOUT if it is only slow")]
    NotServing {
        socket: PathBuf,
        timeout: Duration,
        unit: String,
        #[source]
        source: Box<crate::engine_api::EngineApiError>,
    },
    #[error("the CRI on {socket} still reports RuntimeReady false {timeout:?} after the restart ({reason}: {message}): read its log (journalctl -u {unit})")]
    RuntimeNotReady {
        socket: PathBuf,
        timeout: Duration,
        reason: String,
        message: String,
        unit: String,
    },
    #[error("{} on {} answers after its restart but serves no runtime handler {} (it serves {}): it does not read {}; point RUNTIME_CONFIG at the file it runs on (the --config in `systemctl cat {}`), or RUNTIME_DROP_IN_CONFIG at a file its imports name", .0.engine, .0.socket.display(), .0.missing.join(", "), .0.listed.join(", "), .0.config.display(), .0.unit)]
    HandlersMissing(Box<Unserved>),
    #[error("{} on {} did not load runtime {} from {} within {:?} of the SIGHUP (it has {}): it refused the reload, and its log says why (journalctl -u {}: \"Error reconfiguring the daemon\")", .0.engine, .0.socket.display(), .0.missing.join(", "), .0.config.display(), .0.timeout, .0.listed.join(", "), .0.unit)]
    ReloadNotTaken(Box<Unserved>),
    #[error("the engine did not take the new config, so the previous config was put back and the engine restarted")]
    RolledBack {
        #[source]
        source: Box<InstallerError>,
    },
    #[error("{} changed since this installer wrote it; left as it is: remove our runtimes from it by hand (nvidia-ctk runtime configure --uninstall)", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ChangedSince { paths: Vec<PathBuf> },
    #[error("{flavour} renders its containerd config from a template at every start and {dir} has none (config.toml.tmpl, or config-v3.toml.tmpl from k3s v1.31): {flavour} finds $ROOT/toolkit/nvidia-container-runtime by itself when it starts, so run with NO_RUNTIME_CONFIG=true and restart {flavour}; or copy config.toml to the template and run again")]
    NeedsTemplate { flavour: String, dir: PathBuf },
    #[error("{path} holds Go template syntax (`{{{{ ... }}}}`), which no TOML parser reads (rke2#3385): we do not edit it. Either run with NO_RUNTIME_CONFIG=true (k3s and rke2 find $ROOT/toolkit/nvidia-container-runtime themselves at start), or make the template plain TOML, or point RUNTIME_CONFIG at a plain TOML file")]
    GoTemplate { path: PathBuf },
    #[error("cannot wait for signals: {0}")]
    Signals(#[source] nix::errno::Errno),
    #[error("cannot generate the CDI spec ({command})")]
    Cdi {
        command: String,
        #[source]
        source: Box<InstallerError>,
    },
}

/// An engine that came back without our handlers.
#[derive(Debug)]
pub struct Unserved {
    /// What it said it is (`containerd 2.1.9`, `dockerd 28.5.2`).
    pub engine: String,
    pub socket: PathBuf,
    pub missing: Vec<String>,
    pub listed: Vec<String>,
    /// The file we edited.
    pub config: PathBuf,
    pub unit: String,
    pub timeout: Duration,
}

pub type Result<T, E = InstallerError> = std::result::Result<T, E>;

/// What a run ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `NO_DAEMON`: installed and registered, left so.
    Installed,
    /// Waited, got `signal`, cleaned up.
    CleanedUp { signal: String },
}

/// The signals that end the wait (NVIDIA's list).
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGPIPE,
    ] {
        set.add(signal);
    }
    set
}

/// The whole installer (see the module doc). `say` gets one line per step.
/// The stop signals are blocked in the calling thread from the start, so
/// one that arrives mid-install waits for the install to finish and is
/// then handled like one during the wait (children get an empty mask:
/// std's spawn resets it).
pub fn run(settings: &Settings, say: &dyn Fn(&str)) -> Result<Outcome> {
    let signals = stop_signals();
    if !settings.no_daemon {
        signals.thread_block().map_err(InstallerError::Signals)?;
    }
    let _lock = lock::PidLock::acquire(&settings.pid_file)?;
    say(&format!("locked {}", settings.pid_file.display()));
    let target = if settings.no_runtime_config {
        None
    } else {
        Some(engine::resolve(settings)?)
    };
    let ours: Vec<String> = toolkit::HANDLERS
        .iter()
        .map(|handler| handler.name(&settings.runtime_name))
        .collect();
    let runtimes = match (&settings.runtime_config.runtimes, &target) {
        (Some(list), _) => list.clone(),
        (None, Some(target)) => engine::low_level_runtimes(target, &ours),
        (None, None) => vec!["runc".to_string(), "crun".to_string()],
    };
    let toolkit = toolkit::install(settings, &runtimes)?;
    say(&format!(
        "installed {} (low-level runtimes: {})",
        toolkit.display(),
        runtimes.join(", ")
    ));
    if settings.cdi_enabled {
        let spec = generate_management_spec(settings, &toolkit)?;
        say(&format!("wrote the CDI spec {}", spec.display()));
    }
    let registration = match &target {
        Some(target) => Some(register(settings, target, &toolkit, say)?),
        None => None,
    };
    if settings.no_daemon {
        return Ok(Outcome::Installed);
    }
    say("waiting for SIGTERM");
    let signal = signals.wait().map_err(InstallerError::Signals)?;
    say(&format!("got {signal:?}: cleaning up"));
    if let (Some(target), Some(registration)) = (&target, &registration) {
        cleanup(settings, target, &toolkit, registration, say)?;
    }
    Ok(Outcome::CleanedUp {
        signal: format!("{signal:?}"),
    })
}

/// Registers our handlers; restarts the engine only when a byte changed.
pub fn register(
    settings: &Settings,
    target: &engine::Target,
    toolkit: &Path,
    say: &dyn Fn(&str),
) -> Result<engine::Registration> {
    let options = engine::options(settings, target, toolkit);
    let plan = crate::configure::plan(&options).map_err(InstallerError::Configure)?;
    if plan.is_noop() {
        say(&format!(
            "{} already registers our runtimes: not restarting the engine",
            target.config.display()
        ));
        return Ok(engine::Registration::default());
    }
    if target.engine == Engine::Docker
        && settings.set_as_default
        && target.restarter.mode == RestartMode::Signal
    {
        // dockerd re-reads `runtimes` on SIGHUP but `default-runtime` only
        // at start (engines.md); NVIDIA's installer signals it all the same.
        say("warning: dockerd applies default-runtime only when it restarts; SIGHUP reloads the runtimes alone (RUNTIME_RESTART_MODE=systemd restarts it)");
    }
    let registration = engine::apply_plan(&plan)?;
    for snapshot in &registration.snapshots {
        say(&format!("wrote {}", snapshot.path.display()));
    }
    let handlers: Vec<&str> = options.entries().into_iter().map(|(n, _)| n).collect();
    if target.check {
        match engine::check_containerd(settings, &target.config, &handlers) {
            Ok(Ok(())) => say("containerd config dump lists our runtimes"),
            Ok(Err(engine::Unchecked::NoBinary(command))) => say(&format!(
                "warning: cannot run {command}: containerd's config was not checked before the restart (set RUNTIME_EXECUTABLE_PATH)"
            )),
            Ok(Err(engine::Unchecked::NoHostPath(path))) => say(&format!(
                "warning: the host's path of {} is unknown: containerd's config was not checked before the restart (set RUNTIME_CONFIG_HOST_PATH)",
                path.display()
            )),
            Err(error) => {
                engine::restore(&registration)?;
                return Err(error);
            }
        }
    }
    let expected = restart::Expected {
        handlers: &handlers,
        config: &target.config,
    };
    if let Err(error) = target.restarter.restart(Some(expected), say) {
        say(&format!("{error}: putting the previous config back"));
        engine::restore(&registration)?;
        // The engine may be down (a crash loop under its supervisor) or
        // up on the new config: either way it must read the old one.
        if let Err(again) = target.restarter.restart(None, say) {
            say(&format!(
                "{again}: the engine reads the previous config when its supervisor starts it again"
            ));
        }
        return Err(InstallerError::RolledBack {
            source: Box::new(error),
        });
    }
    Ok(registration)
}

/// Undoes [`register`]: the previous bytes (CRI-O: our entries stay, only
/// the default goes, as NVIDIA's), then a restart.
pub fn cleanup(
    settings: &Settings,
    target: &engine::Target,
    toolkit: &Path,
    registration: &engine::Registration,
    say: &dyn Fn(&str),
) -> Result<()> {
    let options = engine::options(settings, target, toolkit);
    if target.engine == Engine::Crio {
        let plan =
            crate::configure::unset_crio_default(&options).map_err(InstallerError::Configure)?;
        if plan.is_noop() {
            return Ok(());
        }
        crate::configure::apply(&plan).map_err(InstallerError::Configure)?;
        say("unset CRI-O's default runtime; our handlers stay (CRI-O cannot stop pods whose handler is gone)");
    } else if registration.changed() {
        if target.engine == Engine::Docker {
            // dockerd's SIGHUP reload applies only the keys a file sets, so
            // a daemon.json without `runtimes` leaves ours in the running
            // daemon until it restarts (harmless: the toolkit stays).
            say("dockerd keeps the runtimes it has until it restarts, when daemon.json no longer names any");
        }
        engine::restore(registration)?;
        for snapshot in &registration.snapshots {
            say(&format!("restored {}", snapshot.path.display()));
        }
    } else {
        // This run found our entries already there (an earlier installer
        // was killed before its cleanup): there are no previous bytes of
        // ours, so take our entries out the way `nvidia-ctk runtime
        // configure --uninstall` does (NVIDIA's cleanup always does).
        let mut uninstall = options;
        uninstall.uninstall = true;
        let plan = crate::configure::plan(&uninstall).map_err(InstallerError::Configure)?;
        if plan.is_noop() {
            say("nothing of ours to take out of the engine's config");
            return Ok(());
        }
        for applied in crate::configure::apply(&plan).map_err(InstallerError::Configure)? {
            say(&format!("took our runtimes out: {applied:?}"));
        }
    }
    target.restarter.restart(None, say)
}

/// The management spec (`<CDI_KIND>=all`), generated by the installed
/// nvidia-ctk with the installed hook, discovered under the container's
/// view of the driver and written with the host's paths. A child process,
/// not a library call: generating reads NVML, which a static binary (the
/// installer, in its image) cannot dlopen; the image's nvidia-ctk is
/// dynamic for that (deploy/kubernetes/image/build.sh).
fn generate_management_spec(settings: &Settings, toolkit: &Path) -> Result<PathBuf> {
    let (vendor, class) = settings
        .cdi_kind
        .split_once('/')
        .unwrap_or(("management.nvidia.com", "gpu"));
    let mut command = Command::new(toolkit.join("nvidia-ctk"));
    command
        .args([
            "cdi",
            "generate",
            "--mode",
            "management",
            "--format",
            "json",
        ])
        .arg(format!("--vendor={vendor}"))
        .arg(format!("--class={class}"))
        .arg("--driver-root")
        .arg(&settings.driver_root_ctr_path)
        .arg("--hook-path")
        .arg(toolkit.join("nvidia-container-runtime-hook"));
    if let Some(dev) = settings
        .dev_root_ctr_path
        .as_ref()
        .or(settings.dev_root.as_ref())
    {
        command.arg("--dev-root").arg(dev);
    }
    let what = format!("{command:?}");
    let cdi_error = |source| InstallerError::Cdi {
        command: what.clone(),
        source: Box::new(source),
    };
    let output = command.output().map_err(|source| {
        cdi_error(InstallerError::Spawn {
            command: what.clone(),
            source,
        })
    })?;
    if !output.status.success() {
        return Err(cdi_error(InstallerError::Command {
            command: what.clone(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }));
    }
    let mut spec: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        cdi_error(InstallerError::Command {
            command: what.clone(),
            status: "exit 0".to_string(),
            stderr: format!("its output is not JSON: {e}"),
        })
    })?;
    rewrite_prefix(
        &mut spec,
        &settings.driver_root_ctr_path,
        &settings.driver_root,
    );
    let text = serde_norway::to_string(&spec).map_err(|e| {
        cdi_error(InstallerError::Command {
            command: what.clone(),
            status: "exit 0".to_string(),
            stderr: format!("cannot render it as YAML: {e}"),
        })
    })?;
    let path = settings
        .cdi_output_dir
        .join(format!("{vendor}-{class}.yaml"));
    std::fs::create_dir_all(&settings.cdi_output_dir).map_err(|source| {
        InstallerError::Install {
            path: settings.cdi_output_dir.clone(),
            source,
        }
    })?;
    crate::cdi::write_spec_file(&path, &text).map_err(|e| InstallerError::Install {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(path)
}

/// Every string of `value` that is `from` or under it, moved under `to`
/// (NVIDIA's installer rewrites /driver-root to the host driver root the
/// same way: the spec is read by the engine on the host).
fn rewrite_prefix(value: &mut serde_json::Value, from: &Path, to: &Path) {
    if from == to {
        return;
    }
    match value {
        serde_json::Value::String(text) => {
            if let Ok(rest) = Path::new(text.as_str()).strip_prefix(from) {
                *text = to.join(rest).display().to_string();
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                rewrite_prefix(item, from, to);
            }
        }
        serde_json::Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                rewrite_prefix(item, from, to);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_toml_has_the_keys_and_forced_modes() {
        let dir = Path::new("/nonexistent");
        let mut settings = Settings::for_tests(Engine::Containerd, dir);
        settings.driver_root = PathBuf::from("/run/nvidia/driver");
        settings.runtime_config.accept_envvar_when_unprivileged = false;
        settings.runtime_config.accept_as_volume_mounts = true;
        settings.runtime_config.annotation_prefixes = Some(vec!["cdi.k8s.io/".into()]);
        settings.runtime_config.default_kind = Some("management.nvidia.com/gpu".into());
        let toolkit = Path::new("/usr/local/nvidia/toolkit");
        let runtimes = vec!["runc".to_string(), "crun".to_string()];
        let text = toolkit::config_text(&settings, toolkit, "nvidia-container-runtime", &runtimes);
        let config = crate::config::Config::parse(&text, Path::new("config.toml")).unwrap();
        assert!(!config.accept_nvidia_visible_devices_envvar_when_unprivileged);
        assert!(config.accept_nvidia_visible_devices_as_volume_mounts);
        assert_eq!(config.driver_root(), Path::new("/run/nvidia/driver"));
        assert_eq!(config.nvidia_container_runtime.runtimes, runtimes);
        assert_eq!(
            config.nvidia_container_runtime.mode,
            crate::config::Mode::Auto
        );
        assert_eq!(
            config.nvidia_container_runtime.modes.cdi.default_kind,
            "management.nvidia.com/gpu"
        );
        assert_eq!(
            config.nvidia_container_runtime_hook.path,
            "/usr/local/nvidia/toolkit/nvidia-container-runtime-hook"
        );
        for (name, mode) in [
            ("nvidia-container-runtime.cdi", crate::config::Mode::Cdi),
            (
                "nvidia-container-runtime.legacy",
                crate::config::Mode::Legacy,
            ),
        ] {
            let text = toolkit::config_text(&settings, toolkit, name, &runtimes);
            let config = crate::config::Config::parse(&text, Path::new("c")).unwrap();
            assert_eq!(config.nvidia_container_runtime.mode, mode, "{name}");
        }
    }

    #[test]
    fn prefixes_are_rewritten_to_the_host_driver_root() {
        let mut spec = serde_json::json!({
            "containerEdits": {"mounts": [{"hostPath": "/driver-root/usr/lib/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1"}],
            "hooks": [{"path": "/usr/local/nvidia/toolkit/nvidia-container-runtime-hook"}]},
            "other": "/driver-rootx"
        });
        rewrite_prefix(
            &mut spec,
            Path::new("/driver-root"),
            Path::new("/run/nvidia/driver"),
        );
        assert_eq!(
            spec["containerEdits"]["mounts"][0]["hostPath"],
            "/run/nvidia/driver/usr/lib/libcuda.so.1"
        );
        assert_eq!(
            spec["containerEdits"]["mounts"][0]["containerPath"],
            "/usr/lib/libcuda.so.1"
        );
        assert_eq!(spec["other"], "/driver-rootx");
    }
}
