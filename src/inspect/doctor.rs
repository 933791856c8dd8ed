//! `nvidia-ctk doctor`: the failures users hit most, each checked and
//! printed as `ok`, `warn` or `fail` with its fix in the same line. Any
//! `fail` makes the command exit 1.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::driver::{Driver, DriverError, Roots};
use crate::request::{Capabilities, Capability};
use crate::runtime::{find_hook, find_runtime};

use super::engines::{registration, EngineRegistration};
use super::info::stale_parts;
use super::{ConfigReport, HostRoot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub message: String,
    /// What to do (only for warn and fail).
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "fail",
        };
        write!(f, "{level} {}: {}", self.check, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "; fix: {fix}")?;
        }
        Ok(())
    }
}

fn ok(check: &'static str, message: impl Into<String>) -> Finding {
    Finding {
        level: Level::Ok,
        check,
        message: message.into(),
        fix: None,
    }
}

fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Warn,
        check,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding {
        level: Level::Fail,
        check,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

/// What the checks need besides the config and the host root.
pub struct Context<'a> {
    pub config: &'a ConfigReport,
    pub host: &'a HostRoot,
    /// `PATH` of the caller, for the low-level runtime and the hook.
    pub path_env: Option<&'a str>,
    /// This program, to find the hook installed next to it.
    pub self_exe: &'a Path,
}

/// Every check, in the order a support engineer would look.
pub fn run(context: &Context<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let config = context.config.effective();
    findings.push(match &context.config.error {
        Some(error) => fail(
            "config",
            error.clone(),
            "fix the file (the package's config.toml lists every key at its default); until then only GPU containers fail",
        ),
        None => ok("config", context.config.describe()),
    });
    findings.push(
        match find_runtime(
            &config.nvidia_container_runtime.runtimes,
            context.path_env,
            context.self_exe,
        ) {
            Ok(path) => ok("low-level runtime", path.display().to_string()),
            Err(error) => fail(
                "low-level runtime",
                crate::logging::error_chain(&error),
                "install runc, or name an installed one in runtimes of config.toml",
            ),
        },
    );
    if let Some(config_file) = context.config.config() {
        let source = match &context.config.file {
            Some(file) => crate::config::Source::File(file.clone()),
            None => crate::config::Source::Defaults,
        };
        findings.push(
            match find_hook(config_file, &source, context.path_env, context.self_exe) {
                Ok(hook) => ok("hook", hook.path.display().to_string()),
                Err(error) => fail(
                    "hook",
                    crate::logging::error_chain(&error),
                    "install nvidia-container-runtime-hook next to the runtime",
                ),
            },
        );
    }
    driver_checks(&config, &mut findings);
    docker_checks(context, &config, &mut findings);
    containerd_checks(context, &mut findings);
    cdi_checks(&config, &mut findings);
    kubernetes_checks(context, &config, &mut findings);
    findings
}

fn driver_checks(config: &Config, findings: &mut Vec<Finding>) {
    let driver =
        match Driver::discover(Roots::from_config(config)) {
            Ok(driver) => driver,
            Err(DriverError::NotLoaded { path }) => {
                findings.push(fail(
                "driver",
                format!("no NVIDIA driver is loaded ({} does not exist)", path.display()),
                "install the driver and load it (modprobe nvidia), or set proc-root in config.toml",
            ));
                return;
            }
            Err(error) => {
                findings.push(fail(
                    "driver",
                    crate::logging::error_chain(&error),
                    "reinstall the driver",
                ));
                return;
            }
        };
    findings.push(ok(
        "driver",
        format!("{} loaded, {} GPUs", driver.version, driver.gpus.len()),
    ));
    let control = driver.roots.dev_root.join("dev/nvidiactl");
    findings.push(match driver.device_node("nvidiactl") {
        Ok(Some(_)) => ok("device nodes", control.display().to_string()),
        _ => fail(
            "device nodes",
            format!("{} is missing", control.display()),
            "create the nodes with nvidia-modprobe (or nvidia-smi once), or set dev-root in config.toml",
        ),
    });
    let all: Capabilities = Capability::ALL.into_iter().collect();
    match driver.libraries(all) {
        Err(error @ DriverError::VersionMismatch { .. }) => findings.push(fail(
            "libraries",
            format!(
                "Driver/library version mismatch: {}",
                crate::logging::error_chain(&error)
            ),
            "reboot, or reload the nvidia kernel modules, to finish the driver upgrade",
        )),
        Err(error) => findings.push(fail(
            "libraries",
            crate::logging::error_chain(&error),
            "install the driver's user-space libraries, or set root in [nvidia-container-cli]",
        )),
        Ok(libraries) => {
            let missing: Vec<&str> = ["libnvidia-ml.so.1", "libcuda.so.1"]
                .into_iter()
                .filter(|soname| !libraries.iter().any(|l| l.soname == *soname))
                .collect();
            findings.push(if missing.is_empty() {
                ok(
                    "libraries",
                    format!("{} driver libraries under {}", libraries.len(), driver.roots.driver_root.display()),
                )
            } else {
                fail(
                    "libraries",
                    format!(
                        "{} not found under the driver root {}",
                        missing.join(" and "),
                        driver.roots.driver_root.display()
                    ),
                    "install the driver's user-space libraries (NVML, libcuda), or set root in [nvidia-container-cli] to where they are",
                )
            });
        }
    }
}

/// `PATH` of the running dockerd, from the host's procfs.
fn dockerd_path(host: &HostRoot) -> Option<String> {
    let proc = host.path(Path::new("/proc"));
    for entry in std::fs::read_dir(proc).ok()?.flatten() {
        let dir = entry.path();
        let is_pid = entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit());
        if !is_pid {
            continue;
        }
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != "dockerd" {
            continue;
        }
        let environ = std::fs::read(dir.join("environ")).unwrap_or_default();
        let path = environ
            .split(|b| *b == 0)
            .find_map(|entry| entry.strip_prefix(b"PATH="))
            .map(|value| String::from_utf8_lossy(value).into_owned());
        // dockerd started without PATH uses Go's default search path.
        return Some(path.unwrap_or_else(|| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        }));
    }
    None
}

fn on_path(host: &HostRoot, path: &str, name: &str) -> Option<PathBuf> {
    path.split(':')
        .filter(|dir| dir.starts_with('/'))
        .map(|dir| host.path(&Path::new(dir).join(name)))
        .find(|candidate| candidate.is_file())
}

fn docker_checks(context: &Context<'_>, config: &Config, findings: &mut Vec<Finding>) {
    let host = context.host;
    let daemon_json = host.path(Path::new("/etc/docker/daemon.json"));
    let docker = registration(crate::configure::Engine::Docker, &daemon_json);
    let installed = host.path(Path::new("/usr/bin/dockerd")).exists()
        || host.path(Path::new("/usr/sbin/dockerd")).exists()
        || !docker.missing;
    if !installed {
        return;
    }
    if let Some(problem) = &docker.problem {
        findings.push(fail(
            "docker",
            format!(
                "{} is {problem}: dockerd will not start",
                daemon_json.display()
            ),
            "fix the JSON (nvidia-ctk runtime configure never writes a broken file)",
        ));
        return;
    }
    findings.push(match &docker.entry {
        Some(entry) => ok("docker", format!("nvidia registered ({})", entry.path)),
        None => warn(
            "docker",
            format!("nvidia is not registered in {}", daemon_json.display()),
            "nvidia-ctk runtime configure --runtime=docker, then kill -s HUP $(pidof dockerd)",
        ),
    });
    if let Some(default) = &docker.default_runtime {
        let known = docker.runtimes.iter().any(|r| r == default)
            || matches!(default.as_str(), "runc" | "io.containerd.runc.v2");
        if !known {
            findings.push(fail(
                "docker default runtime",
                format!("default-runtime \"{default}\" is not in runtimes of {}: dockerd will not start", daemon_json.display()),
                format!("register it (nvidia-ctk runtime configure --runtime=docker{}) or remove default-runtime", if default == "nvidia" { " --set-as-default" } else { "" }),
            ));
        }
    }
    if let Some(path) = dockerd_path(host) {
        let hook = &config.nvidia_container_runtime_hook.path;
        let name = Path::new(hook)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(hook);
        findings.push(match on_path(host, &path, name) {
            Some(found) => ok("docker --gpus", format!("{} is on dockerd's PATH", found.display())),
            None => warn(
                "docker --gpus",
                format!("{name} is not on dockerd's PATH ({path}): `docker run --gpus` fails with `could not select device driver`"),
                "install it in /usr/bin (the package does), then restart docker",
            ),
        });
    }
    cgroup_checks(host, &docker, findings);
}

/// cgroup v2 with the systemd driver: device rules that a hook adds out of
/// band (docker `--gpus` on plain runc) are dropped by `systemctl
/// daemon-reload`; the runtime's own rules (in config.json) are not.
fn cgroup_checks(host: &HostRoot, docker: &EngineRegistration, findings: &mut Vec<Finding>) {
    let cgroup = host.path(Path::new("/sys/fs/cgroup"));
    let v2 = cgroup.join("cgroup.controllers").exists();
    if !(v2 && docker.systemd_cgroup && !docker.default) {
        return;
    }
    findings.push(warn(
        "cgroup v2 + systemd",
        "docker uses the systemd cgroup driver on cgroup v2 and nvidia is not its default runtime: device rules added outside the runtime (docker --gpus on plain runc) are lost at the next `systemctl daemon-reload`, and the containers lose their GPUs",
        "make nvidia docker's default runtime (nvidia-ctk runtime configure --runtime=docker --set-as-default, restart docker) or request GPUs by CDI",
    ));
}

fn containerd_checks(context: &Context<'_>, findings: &mut Vec<Finding>) {
    let path = context.host.path(Path::new("/etc/containerd/config.toml"));
    let containerd = registration(crate::configure::Engine::Containerd, &path);
    if containerd.missing {
        return;
    }
    if let Some(problem) = &containerd.problem {
        findings.push(fail(
            "containerd",
            problem.clone(),
            "fix the file; use version 2 (containerd 1.x) or 3 (containerd 2.x)",
        ));
        return;
    }
    if let Some(drop_in) = &containerd.drop_in_not_imported {
        findings.push(fail(
            "containerd",
            format!("{} exists but {} does not import it: containerd never reads our runtime", drop_in.display(), path.display()),
            "nvidia-ctk runtime configure --runtime=containerd (adds the imports line), then restart containerd",
        ));
        return;
    }
    findings.push(match &containerd.entry {
        Some(entry) => ok(
            "containerd",
            format!("nvidia registered in {}", entry.file.display()),
        ),
        None => warn(
            "containerd",
            format!(
                "nvidia is not registered with containerd ({})",
                path.display()
            ),
            "nvidia-ctk runtime configure --runtime=containerd, then restart containerd",
        ),
    });
}

fn cdi_checks(config: &Config, findings: &mut Vec<Finding>) {
    let version = Driver::discover(Roots::from_config(config))
        .ok()
        .map(|d| d.version);
    let registry = crate::cdi::Registry::load(&config.cdi_spec_dirs());
    for broken in &registry.broken {
        findings.push(warn(
            "cdi",
            format!(
                "{} is not a valid CDI spec: {}",
                broken.path.display(),
                broken.problem
            ),
            "fix or remove it",
        ));
    }
    for loaded in &registry.specs {
        let stale = stale_parts(&loaded.spec, version.as_deref());
        findings.push(if stale.is_empty() {
            ok(
                "cdi",
                format!("{} matches the driver", loaded.path.display()),
            )
        } else {
            fail(
                "cdi",
                format!("{} is stale: {}", loaded.path.display(), stale.join("; ")),
                format!(
                    "regenerate it: nvidia-ctk cdi generate --output {}",
                    loaded.path.display()
                ),
            )
        });
    }
}

fn kubernetes_checks(context: &Context<'_>, config: &Config, findings: &mut Vec<Finding>) {
    let is_node = ["/var/lib/kubelet", "/etc/kubernetes"]
        .iter()
        .any(|dir| context.host.path(Path::new(dir)).is_dir());
    if !is_node {
        return;
    }
    if config.accept_nvidia_visible_devices_envvar_when_unprivileged {
        findings.push(warn(
            "kubernetes",
            "this is a Kubernetes node and accept-nvidia-visible-devices-envvar-when-unprivileged = true: any pod can set NVIDIA_VISIBLE_DEVICES=all and get every GPU, bypassing the device plugin",
            "set it to false and accept-nvidia-visible-devices-as-volume-mounts = true, with the device plugin's volume-mounts strategy",
        ));
    } else {
        findings.push(ok(
            "kubernetes",
            "unprivileged pods cannot pick GPUs by environment",
        ));
    }
}

/// The exit status: 1 on any `fail`.
pub fn exit_code(findings: &[Finding]) -> u8 {
    u8::from(findings.iter().any(|f| f.level == Level::Fail))
}
