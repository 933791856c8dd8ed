//! The engine's config: where it is (plain engines, k3s, rke2, k0s,
//! microk8s), registering our three handlers through [`crate::configure`],
//! checking the result with the engine's own parser, and putting the
//! previous bytes back.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::configure::{self, Engine, FileChange, Options};

use super::restart::{Api, RestartMode, Restarter};
use super::toolkit::HANDLERS;
use super::{InstallerError, Result, Settings};

/// Which containerd this is, by where its config lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Plain,
    K3s,
    Rke2,
    K0s,
    Microk8s,
}

/// Where and how to register.
#[derive(Debug, Clone)]
pub struct Target {
    pub engine: Engine,
    pub flavour: Flavour,
    /// The file our plan edits (the main config, or k0s's drop-in).
    pub config: PathBuf,
    /// `Some(false)`: edit `config` in place.
    pub drop_in: Option<bool>,
    pub drop_in_path: Option<PathBuf>,
    pub drop_in_host_path: Option<PathBuf>,
    pub restarter: Restarter,
    /// containerd: check the result with `containerd config dump`.
    pub check: bool,
}

const K3S_DIR: &str = "var/lib/rancher/k3s/agent/etc/containerd";
const RKE2_DIR: &str = "var/lib/rancher/rke2/agent/etc/containerd";
const K0S_DROP_INS: &str = "etc/k0s/containerd.d";
const MICROK8S_TEMPLATE: &str = "var/snap/microk8s/current/args/containerd-template.toml";

/// Decides the target. An explicit `RUNTIME_CONFIG` (or its aliases) wins;
/// otherwise containerd's distributions are recognised under the host
/// root, and a config we must not edit is refused with what to do.
pub fn resolve(settings: &Settings) -> Result<Target> {
    let host = &settings.host_root;
    let engine = settings.engine;
    let restarter = |socket: PathBuf, mode: RestartMode, unit: &str| Restarter {
        mode: settings.restart_mode.unwrap_or(mode),
        socket: settings.socket.clone().unwrap_or(socket),
        unit: unit.to_string(),
        host_root: host.clone(),
        exits_on_sighup: engine == Engine::Containerd,
        api: match engine {
            Engine::Containerd | Engine::Crio => Api::Cri,
            Engine::Docker => Api::Docker,
            Engine::Podman => Api::None,
        },
        timeout: settings.ready_timeout,
    };
    let plain = |config: PathBuf, socket: &str, mode, unit: &str| Target {
        engine,
        flavour: Flavour::Plain,
        config,
        drop_in: None,
        drop_in_path: settings.drop_in_config.clone(),
        drop_in_host_path: settings.drop_in_config_host_path.clone(),
        restarter: restarter(PathBuf::from(socket), mode, unit),
        check: engine == Engine::Containerd,
    };
    match engine {
        Engine::Docker => Ok(plain(
            settings
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/docker/daemon.json")),
            "/var/run/docker.sock",
            RestartMode::Signal,
            "docker",
        )),
        Engine::Crio | Engine::Podman => Ok(plain(
            settings
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/crio/crio.conf")),
            "/var/run/crio/crio.sock",
            RestartMode::Systemd,
            "crio",
        )),
        Engine::Containerd => {
            if let Some(config) = &settings.config {
                return Ok(plain(
                    config.clone(),
                    "/run/containerd/containerd.sock",
                    RestartMode::Signal,
                    "containerd",
                ));
            }
            if let Some(target) = detect(settings, &restarter)? {
                return Ok(target);
            }
            Ok(plain(
                PathBuf::from("/etc/containerd/config.toml"),
                "/run/containerd/containerd.sock",
                RestartMode::Signal,
                "containerd",
            ))
        }
    }
}

/// k3s, rke2, k0s, microk8s under the host root, or `None`.
fn detect(
    settings: &Settings,
    restarter: &dyn Fn(PathBuf, RestartMode, &str) -> Restarter,
) -> Result<Option<Target>> {
    let host = &settings.host_root;
    let in_place = |flavour, config: PathBuf, restarter: Restarter, check| Target {
        engine: Engine::Containerd,
        flavour,
        config,
        drop_in: Some(false),
        drop_in_path: None,
        drop_in_host_path: None,
        restarter,
        check,
    };
    for (flavour, dir, unit) in [
        (Flavour::K3s, K3S_DIR, "k3s"),
        (Flavour::Rke2, RKE2_DIR, "rke2-server"),
    ] {
        let dir = host.join(dir);
        if !dir.is_dir() {
            continue;
        }
        // k3s and rke2 render config.toml from these templates at every
        // start (config-v3.toml.tmpl from k3s v1.31, containerd 2's v3
        // config), so an edit of config.toml is lost: the template is the
        // file to edit, and only when it is plain TOML (rke2#3385,
        // gpu-operator#473: Go template syntax breaks every TOML parser).
        let template = ["config-v3.toml.tmpl", "config.toml.tmpl"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file());
        let Some(template) = template else {
            return Err(InstallerError::NeedsTemplate {
                flavour: format!("{flavour:?}").to_lowercase(),
                dir,
            });
        };
        let text = std::fs::read_to_string(&template).map_err(|source| InstallerError::Read {
            path: template.clone(),
            source,
        })?;
        if text.contains("{{") {
            return Err(InstallerError::GoTemplate { path: template });
        }
        // The rendered config.toml is the template's copy, with k3s's own
        // sockets; containerd cannot check the template itself, which may
        // differ from what k3s renders, so the check is left to the restart.
        let socket = PathBuf::from("/run/k3s/containerd/containerd.sock");
        return Ok(Some(in_place(
            flavour,
            template,
            restarter(host_path(host, &socket), RestartMode::Signal, unit),
            false,
        )));
    }
    let k0s = host.join(K0S_DROP_INS);
    if k0s.is_dir() {
        // k0s merges every file of containerd.d into the config it
        // generates and restarts its containerd itself when one changes
        // (k0s docs, "containerd configuration"): our file holds only our
        // runtimes, and no restart is ours to do.
        return Ok(Some(in_place(
            Flavour::K0s,
            k0s.join("nvidia.toml"),
            restarter(
                host_path(host, Path::new("/run/k0s/containerd.sock")),
                RestartMode::None,
                "k0scontroller",
            ),
            false,
        )));
    }
    let microk8s = host.join(MICROK8S_TEMPLATE);
    if microk8s.is_file() {
        // microk8s renders containerd.toml from this template (its
        // ${SNAP_DATA} variables are inside strings, so it is TOML), runs
        // containerd on its own socket (gpu-operator#173) and under the
        // snap's unit.
        return Ok(Some(in_place(
            Flavour::Microk8s,
            microk8s,
            restarter(
                host_path(
                    host,
                    Path::new("/var/snap/microk8s/common/run/containerd.sock"),
                ),
                RestartMode::Systemd,
                "snap.microk8s.daemon-containerd",
            ),
            false,
        )));
    }
    Ok(None)
}

/// A host path as the installer sees it (under the host root's mount).
fn host_path(host: &Path, path: &Path) -> PathBuf {
    host.join(path.strip_prefix("/").unwrap_or(path))
}

/// The configure options for our three handlers.
pub fn options(settings: &Settings, target: &Target, toolkit: &Path) -> Options {
    let mut options = Options::new(target.engine);
    options.config = Some(target.config.clone());
    let mut entries = HANDLERS.iter().map(|handler| {
        (
            handler.name(&settings.runtime_name),
            toolkit.join(handler.wrapper),
        )
    });
    if let Some((name, path)) = entries.next() {
        options.runtime_name = name;
        options.runtime_path = path;
    }
    options.extra_runtimes = entries.collect();
    options.set_as_default = settings.set_as_default;
    options.drop_in = target.drop_in;
    options.drop_in_path = target.drop_in_path.clone();
    options.drop_in_host_path = target.drop_in_host_path.clone();
    options.enable_cdi = settings.cdi_enabled || settings.runtime_enable_cdi;
    if target.flavour == Flavour::K0s {
        options.containerd_config_version = Some(2);
    }
    options
}

/// The low-level runtimes for config.toml's `runtimes`: the engine's
/// default runtime's binary (read from its config file, NVIDIA's step 2),
/// then runc and crun; ours are skipped (a default already set to `nvidia`
/// by an earlier run must not make the runtime exec itself).
pub fn low_level_runtimes(target: &Target, ours: &[String]) -> Vec<String> {
    let mut list = Vec::new();
    if let Some(binary) = default_runtime_binary(target, ours) {
        list.push(binary);
    }
    for name in ["runc", "crun"] {
        if !list.iter().any(|r| r == name) {
            list.push(name.to_string());
        }
    }
    list
}

fn default_runtime_binary(target: &Target, ours: &[String]) -> Option<String> {
    let text = std::fs::read_to_string(&target.config).ok()?;
    // Per engine: the default's name, its entry's binary if it names one,
    // and what the name means without one.
    let (name, binary, fallback) = match target.engine {
        Engine::Docker => {
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            let name = json.get("default-runtime")?.as_str()?.to_string();
            let binary = json["runtimes"][&name]["path"].as_str().map(str::to_string);
            (name.clone(), binary, name)
        }
        Engine::Containerd => {
            let doc: toml_edit::DocumentMut = text.parse().ok()?;
            let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
            let plugin = configure::containerd_cri_plugin(version)?;
            let containerd = doc.get("plugins")?.get(plugin)?.get("containerd")?;
            let name = containerd
                .get("default_runtime_name")
                .and_then(|n| n.as_str())
                .unwrap_or("runc")
                .to_string();
            let binary = containerd
                .get("runtimes")
                .and_then(|r| r.get(&name))
                .and_then(|r| r.get("options"))
                .and_then(|o| o.get("BinaryName"))
                .and_then(|b| b.as_str())
                .map(str::to_string);
            (name, binary, "runc".to_string())
        }
        Engine::Crio | Engine::Podman => {
            let doc: toml_edit::DocumentMut = text.parse().ok()?;
            let runtime = doc.get("crio")?.get("runtime")?;
            let name = runtime.get("default_runtime")?.as_str()?.to_string();
            let binary = runtime
                .get("runtimes")
                .and_then(|r| r.get(&name))
                .and_then(|r| r.get("runtime_path"))
                .and_then(|p| p.as_str())
                .map(str::to_string);
            (name.clone(), binary, name)
        }
    };
    if ours.contains(&name) {
        return None;
    }
    Some(binary.unwrap_or(fallback))
}

/// One file as it was before we wrote it, and as we wrote it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub written: Option<Vec<u8>>,
    /// Whether `<file>.bak` was there before (configure's backup): one we
    /// made goes again on restore.
    pub backup_existed: bool,
}

/// What registering did.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub snapshots: Vec<Snapshot>,
}

impl Registration {
    pub fn changed(&self) -> bool {
        self.snapshots.iter().any(|s| s.before != s.written)
    }
}

/// Writes `plan`'s changed files, remembering their previous bytes.
pub fn apply_plan(plan: &configure::Plan) -> Result<Registration> {
    let mut snapshots = Vec::new();
    for file in plan.files.iter().filter(|f| f.changes_anything()) {
        snapshots.push(snapshot(file)?);
    }
    if let Err(error) = configure::apply(plan) {
        // Put back what was written before the failure.
        let _ = restore(&Registration {
            snapshots: snapshots.clone(),
        });
        return Err(InstallerError::Configure(error));
    }
    Ok(Registration { snapshots })
}

fn snapshot(file: &FileChange) -> Result<Snapshot> {
    let before = match std::fs::read(&file.path) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(InstallerError::Read {
                path: file.path.clone(),
                source,
            })
        }
    };
    Ok(Snapshot {
        path: file.path.clone(),
        before,
        written: file.after.clone().map(String::into_bytes),
        backup_existed: configure::backup_path(&file.path).exists(),
    })
}

/// Puts every file back as it was, byte for byte, in reverse order (the
/// main file's `imports` goes before the drop-in it names). A file that
/// someone changed after we wrote it is left alone and named in the error.
pub fn restore(registration: &Registration) -> Result<()> {
    let mut changed_since = Vec::new();
    for snapshot in registration.snapshots.iter().rev() {
        let now = std::fs::read(&snapshot.path).ok();
        if now != snapshot.written {
            changed_since.push(snapshot.path.clone());
            continue;
        }
        let error = |source| InstallerError::Install {
            path: snapshot.path.clone(),
            source,
        };
        match &snapshot.before {
            Some(bytes) => {
                let metadata = std::fs::metadata(&snapshot.path).ok();
                configure::write_atomically(&snapshot.path, bytes, metadata.as_ref())
                    .map_err(error)?;
            }
            None => match std::fs::remove_file(&snapshot.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(error(e)),
            },
        }
        if !snapshot.backup_existed {
            let _ = std::fs::remove_file(configure::backup_path(&snapshot.path));
        }
    }
    if changed_since.is_empty() {
        Ok(())
    } else {
        Err(InstallerError::ChangedSince {
            paths: changed_since,
        })
    }
}

/// Why the check was not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unchecked {
    /// No containerd to run (the chroot has none, or the path is wrong).
    NoBinary(String),
    /// The host's path of the config is unknown: the installer sees it at
    /// a path of its container's (RUNTIME_CONFIG=/runtime/config-dir/...)
    /// that the host's containerd, run in the host's root, cannot open.
    NoHostPath(PathBuf),
}

/// The command that dumps containerd's view of `config`: the binary of
/// `RUNTIME_EXECUTABLE_PATH` run here, on `config` (its imports name host
/// paths, so this is for an installer that sees the host's paths as they
/// are: tests, a host install); else the host's containerd in the host's
/// root (`chroot $HOST_ROOT_MOUNT containerd`), on the config's host path:
/// `RUNTIME_CONFIG_HOST_PATH`, else `config` under the host root's mount
/// with that prefix taken off.
pub fn dump_command(settings: &Settings, config: &Path) -> Result<Command, Unchecked> {
    let (mut command, path) = match &settings.runtime_executable {
        Some(binary) => (Command::new(binary), config.to_path_buf()),
        None => {
            let path = match (
                &settings.config_host_path,
                config.strip_prefix(&settings.host_root),
            ) {
                (Some(path), _) => path.clone(),
                (None, Ok(rest)) if settings.host_root != Path::new("/") => {
                    Path::new("/").join(rest)
                }
                (None, _) if settings.host_root == Path::new("/") => config.to_path_buf(),
                (None, _) => return Err(Unchecked::NoHostPath(config.to_path_buf())),
            };
            let mut command = Command::new("chroot");
            command.arg(&settings.host_root).arg("containerd");
            (command, path)
        }
    };
    command.arg("--config").arg(path).args(["config", "dump"]);
    Ok(command)
}

/// `containerd --config X config dump` must succeed and show each of our
/// handlers. This is containerd's own parser and merge (imports, the
/// plugin sections), run before any restart, so a config containerd
/// would refuse never reaches the running one; what it serves once
/// restarted is the restart's own check ([`super::restart`]).
/// `Ok(Err(why))` when it could not be run.
pub fn check_containerd(
    settings: &Settings,
    config: &Path,
    handlers: &[&str],
) -> Result<Result<(), Unchecked>> {
    let mut command = match dump_command(settings, config) {
        Ok(command) => command,
        Err(why) => return Ok(Err(why)),
    };
    let what = format!("{command:?}");
    let output = match command.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(Unchecked::NoBinary(what)))
        }
        Err(source) => {
            return Err(InstallerError::Spawn {
                command: what,
                source,
            })
        }
    };
    // chroot's own "cannot run the command" statuses (coreutils: 126
    // found but not runnable, 127 not found).
    if matches!(output.status.code(), Some(126 | 127)) && settings.runtime_executable.is_none() {
        return Ok(Err(Unchecked::NoBinary(what)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(InstallerError::Refused {
            config: config.to_path_buf(),
            command: what,
            stderr: crate::logging::one_line(String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    // containerd 1.6 and 1.7 dump only the plugins they load: a config
    // that disables the CRI plugin has no runtimes section at all.
    // (1.6 quotes the ids with ", 2.x with '; 2.x's runtimes are in
    // cri.v1.runtime.)
    let has_cri = stdout.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("[plugins.")
            && (line.contains("io.containerd.grpc.v1.cri")
                || line.contains("io.containerd.cri.v1.runtime"))
    });
    if !has_cri {
        return Err(InstallerError::Refused {
            config: config.to_path_buf(),
            command: what,
            stderr: "its dump has no CRI plugin (is io.containerd.grpc.v1.cri in disabled_plugins?), so kubelet could not use it".into(),
        });
    }
    for handler in handlers {
        if !stdout.contains(&format!(".runtimes.{handler}]")) {
            return Err(InstallerError::Refused {
                config: config.to_path_buf(),
                command: what,
                stderr: format!("its dump has no runtime {handler}"),
            });
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_runtime_binary_comes_first_and_ours_is_skipped() {
        let tmp = crate::testing::TempDir::new("engine");
        let dir = tmp.path().to_path_buf();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"fast\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.fast.options]\nBinaryName = \"/opt/crun\"\n",
        )
        .unwrap();
        let settings = Settings::for_tests(Engine::Containerd, &dir);
        let mut target = resolve(&settings).unwrap();
        target.config = config.clone();
        let ours = vec!["nvidia".to_string()];
        assert_eq!(
            low_level_runtimes(&target, &ours),
            ["/opt/crun", "runc", "crun"]
        );
        std::fs::write(
            &config,
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\ndefault_runtime_name = \"nvidia\"\n",
        )
        .unwrap();
        assert_eq!(low_level_runtimes(&target, &ours), ["runc", "crun"]);
    }

    #[test]
    fn distributions_are_recognised_or_refused() {
        let tmp = crate::testing::TempDir::new("detect");
        let dir = tmp.path().to_path_buf();
        let mut settings = Settings::for_tests(Engine::Containerd, &dir);
        settings.config = None;
        settings.socket = None;
        let k3s = dir.join(K3S_DIR);
        std::fs::create_dir_all(&k3s).unwrap();
        std::fs::write(k3s.join("config.toml"), "version = 2\n").unwrap();
        let error = resolve(&settings).unwrap_err().to_string();
        assert!(error.contains("config.toml.tmpl"), "{error}");
        std::fs::write(
            k3s.join("config-v3.toml.tmpl"),
            "{{ template \"base\" . }}\n",
        )
        .unwrap();
        let error = resolve(&settings).unwrap_err().to_string();
        assert!(error.contains("Go template"), "{error}");
        assert!(error.contains("config-v3.toml.tmpl"), "{error}");
        std::fs::write(k3s.join("config-v3.toml.tmpl"), "version = 3\n").unwrap();
        let target = resolve(&settings).unwrap();
        assert_eq!(target.flavour, Flavour::K3s);
        assert_eq!(target.config, k3s.join("config-v3.toml.tmpl"));
        assert_eq!(target.drop_in, Some(false));
        assert_eq!(
            target.restarter.socket,
            dir.join("run/k3s/containerd/containerd.sock")
        );
        std::fs::remove_dir_all(dir.join("var")).unwrap();

        let k0s = dir.join(K0S_DROP_INS);
        std::fs::create_dir_all(&k0s).unwrap();
        let target = resolve(&settings).unwrap();
        assert_eq!(target.flavour, Flavour::K0s);
        assert_eq!(target.config, k0s.join("nvidia.toml"));
        assert_eq!(target.restarter.mode, RestartMode::None);
        std::fs::remove_dir_all(dir.join("etc")).unwrap();

        let microk8s = dir.join(MICROK8S_TEMPLATE);
        std::fs::create_dir_all(microk8s.parent().unwrap()).unwrap();
        std::fs::write(&microk8s, "version = 2\n").unwrap();
        let target = resolve(&settings).unwrap();
        assert_eq!(target.flavour, Flavour::Microk8s);
        assert_eq!(
            target.restarter.socket,
            dir.join("var/snap/microk8s/common/run/containerd.sock")
        );
        assert_eq!(target.restarter.unit, "snap.microk8s.daemon-containerd");
        std::fs::remove_dir_all(dir.join("var")).unwrap();

        assert_eq!(resolve(&settings).unwrap().flavour, Flavour::Plain);
    }

    #[test]
    fn the_check_runs_on_the_hosts_path_of_the_config() {
        let mut settings = Settings::for_tests(Engine::Containerd, Path::new("/host"));
        settings.runtime_executable = None;
        let args = |command: &Command| -> Vec<String> {
            std::iter::once(command.get_program())
                .chain(command.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let command =
            dump_command(&settings, Path::new("/host/etc/containerd/config.toml")).unwrap();
        assert_eq!(
            args(&command),
            [
                "chroot",
                "/host",
                "containerd",
                "--config",
                "/etc/containerd/config.toml",
                "config",
                "dump"
            ]
        );
        let container_path = Path::new("/runtime/config-dir/config.toml");
        assert_eq!(
            dump_command(&settings, container_path).unwrap_err(),
            Unchecked::NoHostPath(container_path.to_path_buf())
        );
        settings.config_host_path = Some(PathBuf::from("/etc/containerd/config.toml"));
        let command = dump_command(&settings, container_path).unwrap();
        assert_eq!(args(&command)[4], "/etc/containerd/config.toml");
        settings.runtime_executable = Some(PathBuf::from("/usr/bin/containerd"));
        let command = dump_command(&settings, container_path).unwrap();
        assert_eq!(
            args(&command)[..3],
            [
                "/usr/bin/containerd",
                "--config",
                "/runtime/config-dir/config.toml"
            ]
        );
    }

    /// toolkit#1328, gpu-operator#188: the admin's own default runtime
    /// (here `crun`, in a version 1 file that is edited in place) is back
    /// after the cleanup, byte for byte, with no backup of ours left.
    #[test]
    fn restore_brings_back_the_admins_default_runtime() {
        let tmp = crate::testing::TempDir::new("restore");
        let dir = tmp.path().to_path_buf();
        let config = dir.join("config.toml");
        let before = "# v1, edited in place\n[plugins.cri.containerd]\n  default_runtime_name = \"crun\"\n[plugins.cri.containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        std::fs::write(&config, before).unwrap();
        let mut settings = Settings::for_tests(Engine::Containerd, &dir);
        settings.config = Some(config.clone());
        let target = resolve(&settings).unwrap();
        let options = options(&settings, &target, Path::new("/t"));
        let plan = configure::plan(&options).unwrap();
        let registration = apply_plan(&plan).unwrap();
        let written = std::fs::read_to_string(&config).unwrap();
        assert!(
            written.contains("default_runtime_name = \"nvidia\""),
            "{written}"
        );
        assert!(written.contains("runtimes.nvidia-legacy]"), "{written}");
        restore(&registration).unwrap();
        assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
        assert!(!configure::backup_path(&config).exists());
    }
}
