//! The installer's settings: its command line, where every flag also reads
//! NVIDIA's variable with NVIDIA's default, and [`Settings`], what a run
//! uses once the aliases and defaults are resolved.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// `RUNTIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeArg {
    Docker,
    Containerd,
    Crio,
}

/// The command line; every flag also reads NVIDIA's variable. Variables
/// that have aliases (`CONTAINERD_CONFIG` for `RUNTIME_CONFIG`, ...) are
/// read by [`Settings::resolve`].
#[derive(Debug, clap::Parser)]
#[command(
    name = "nvidia-ctk-installer",
    version,
    about = "Installs the NVIDIA container toolkit on a node and registers it with the node's engine"
)]
pub struct Cli {
    #[arg(long, value_enum, env = "RUNTIME", default_value = "docker")]
    pub runtime: RuntimeArg,
    /// The engine's config file [aliases: CONTAINERD_CONFIG, DOCKER_CONFIG, CRIO_CONFIG].
    #[arg(long, env = "RUNTIME_CONFIG")]
    pub config: Option<PathBuf>,
    /// The engine's socket [aliases: CONTAINERD_SOCKET, DOCKER_SOCKET].
    #[arg(long, env = "RUNTIME_SOCKET")]
    pub socket: Option<PathBuf>,
    #[arg(long, env = "RUNTIME_DROP_IN_CONFIG")]
    pub drop_in_config: Option<PathBuf>,
    #[arg(long, env = "RUNTIME_DROP_IN_CONFIG_HOST_PATH")]
    pub drop_in_config_host_path: Option<PathBuf>,
    /// [aliases: CONTAINERD_RUNTIME_CLASS, DOCKER_RUNTIME_NAME] [default: nvidia]
    #[arg(long, env = "NVIDIA_RUNTIME_NAME")]
    pub nvidia_runtime_name: Option<String>,
    /// [alias: CONTAINERD_SET_AS_DEFAULT] [default: true]
    #[arg(long, env = "NVIDIA_RUNTIME_SET_AS_DEFAULT")]
    pub set_as_default: Option<String>,
    #[arg(long, value_enum, env = "RUNTIME_RESTART_MODE")]
    pub restart_mode: Option<RestartMode>,
    #[arg(long, env = "RUNTIME_EXECUTABLE_PATH")]
    pub runtime_executable_path: Option<PathBuf>,
    /// Ours: the engine's config as the host sees it, for the check run in
    /// the host's root [default: RUNTIME_CONFIG less the HOST_ROOT_MOUNT
    /// prefix].
    #[arg(long, env = "RUNTIME_CONFIG_HOST_PATH")]
    pub runtime_config_host_path: Option<PathBuf>,
    #[arg(long, env = "HOST_ROOT_MOUNT", default_value = "/host")]
    pub host_root_mount: PathBuf,
    /// [alias: TOOLKIT_INSTALL_DIR] [default: /usr/local/nvidia]
    #[arg(long, env = "ROOT")]
    pub root: Option<PathBuf>,
    #[arg(
        long,
        env = "TOOLKIT_PID_FILE",
        default_value = "/run/nvidia/toolkit/toolkit.pid"
    )]
    pub pid_file: PathBuf,
    #[arg(long, env = "NO_DAEMON")]
    pub no_daemon: bool,
    #[arg(long, env = "NO_RUNTIME_CONFIG")]
    pub no_runtime_config: bool,
    /// [alias: NVIDIA_DRIVER_ROOT] [default: /run/nvidia/driver]
    #[arg(long, env = "DRIVER_ROOT")]
    pub driver_root: Option<PathBuf>,
    #[arg(long, env = "DRIVER_ROOT_CTR_PATH")]
    pub driver_root_ctr_path: Option<PathBuf>,
    /// [alias: NVIDIA_DEV_ROOT]
    #[arg(long, env = "DEV_ROOT")]
    pub dev_root: Option<PathBuf>,
    #[arg(long, env = "DEV_ROOT_CTR_PATH")]
    pub dev_root_ctr_path: Option<PathBuf>,
    #[arg(long, env = "CDI_ENABLED")]
    pub cdi_enabled: bool,
    #[arg(long, env = "RUNTIME_ENABLE_CDI")]
    pub runtime_enable_cdi: bool,
    #[arg(long, env = "CDI_KIND", default_value = "management.nvidia.com/gpu")]
    pub cdi_kind: String,
    #[arg(long, env = "CDI_OUTPUT_DIR", default_value = "/var/run/cdi")]
    pub cdi_output_dir: PathBuf,
    #[arg(long, env = "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED", default_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub accept_envvar_when_unprivileged: bool,
    #[arg(long, env = "ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS", default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    pub accept_as_volume_mounts: bool,
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_MODE")]
    pub nvidia_container_runtime_mode: Option<String>,
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND")]
    pub nvidia_container_runtime_modes_cdi_default_kind: Option<String>,
    /// Comma-separated.
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_MODES_CDI_ANNOTATION_PREFIXES")]
    pub nvidia_container_runtime_modes_cdi_annotation_prefixes: Option<String>,
    /// Comma-separated [default: the engine's default runtime, runc, crun].
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_RUNTIMES")]
    pub nvidia_container_runtime_runtimes: Option<String>,
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_DEBUG")]
    pub nvidia_container_runtime_debug: Option<String>,
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_LOG_LEVEL")]
    pub nvidia_container_runtime_log_level: Option<String>,
    /// Ours: config.toml's proc-root (and the wrappers' `modules` check).
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_PROC_ROOT")]
    pub nvidia_container_runtime_proc_root: Option<String>,
    /// Ours: config.toml's sys-root.
    #[arg(long, env = "NVIDIA_CONTAINER_RUNTIME_SYS_ROOT")]
    pub nvidia_container_runtime_sys_root: Option<String>,
    /// Ours: where the binaries to install are [default: this program's dir].
    #[arg(long, env = "TOOLKIT_SOURCE_DIR")]
    pub toolkit_source_dir: Option<PathBuf>,
    /// Ours: how long the engine has, after a restart, to listen again and
    /// answer its API with our handlers (CRI Version and Status; dockerd's
    /// /info), in seconds.
    #[arg(long, env = "RUNTIME_READY_TIMEOUT", default_value_t = 60)]
    pub runtime_ready_timeout: u64,
}

/// config.toml's pass-through keys.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConfigKeys {
    pub accept_envvar_when_unprivileged: bool,
    pub accept_as_volume_mounts: bool,
    pub mode: Option<String>,
    pub default_kind: Option<String>,
    pub annotation_prefixes: Option<Vec<String>>,
    pub runtimes: Option<Vec<String>>,
    pub debug: Option<String>,
    pub log_level: Option<String>,
    pub proc_root: Option<String>,
    pub sys_root: Option<String>,
}

/// Everything resolved: defaults applied, aliases read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub engine: Engine,
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub drop_in_config: Option<PathBuf>,
    pub drop_in_config_host_path: Option<PathBuf>,
    pub runtime_name: String,
    pub set_as_default: bool,
    pub restart_mode: Option<RestartMode>,
    pub runtime_executable: Option<PathBuf>,
    pub config_host_path: Option<PathBuf>,
    pub host_root: PathBuf,
    pub root: PathBuf,
    pub pid_file: PathBuf,
    pub no_daemon: bool,
    pub no_runtime_config: bool,
    pub driver_root: PathBuf,
    pub driver_root_ctr_path: PathBuf,
    pub dev_root: Option<PathBuf>,
    pub dev_root_ctr_path: Option<PathBuf>,
    pub cdi_enabled: bool,
    pub runtime_enable_cdi: bool,
    pub cdi_kind: String,
    pub cdi_output_dir: PathBuf,
    pub runtime_config: RuntimeConfigKeys,
    pub source_dir: PathBuf,
    pub ready_timeout: Duration,
}

fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// NVIDIA's boolean env values (Go's strconv.ParseBool, plus yes/no).
fn truthy(text: &str) -> bool {
    matches!(
        text.trim().to_ascii_lowercase().as_str(),
        "1" | "t" | "true" | "yes" | "y" | "on"
    )
}

impl Settings {
    /// `cli` with the aliases read through `env` and the defaults set.
    /// `self_dir` is where this program is (the default source dir).
    pub fn resolve(cli: Cli, env: &dyn Fn(&str) -> Option<String>, self_dir: &Path) -> Settings {
        let first = |names: &[&str]| -> Option<String> {
            names
                .iter()
                .find_map(|name| env(name).filter(|v| !v.is_empty()))
        };
        let engine = match cli.runtime {
            RuntimeArg::Docker => Engine::Docker,
            RuntimeArg::Containerd => Engine::Containerd,
            RuntimeArg::Crio => Engine::Crio,
        };
        let engine_config = match engine {
            Engine::Docker => "DOCKER_CONFIG",
            Engine::Containerd => "CONTAINERD_CONFIG",
            _ => "CRIO_CONFIG",
        };
        let config = cli
            .config
            .or_else(|| first(&[engine_config]).map(PathBuf::from));
        let engine_socket = match engine {
            Engine::Docker => "DOCKER_SOCKET",
            Engine::Containerd => "CONTAINERD_SOCKET",
            _ => "CRIO_SOCKET",
        };
        let socket = cli
            .socket
            .or_else(|| first(&[engine_socket]).map(PathBuf::from));
        let runtime_name = cli
            .nvidia_runtime_name
            .or_else(|| first(&["CONTAINERD_RUNTIME_CLASS", "DOCKER_RUNTIME_NAME"]))
            .unwrap_or_else(|| crate::configure::DEFAULT_RUNTIME_NAME.to_string());
        let set_as_default = cli
            .set_as_default
            .or_else(|| first(&["CONTAINERD_SET_AS_DEFAULT"]))
            .is_none_or(|v| truthy(&v));
        let root = cli
            .root
            .or_else(|| first(&["TOOLKIT_INSTALL_DIR"]).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/usr/local/nvidia"));
        let driver_root = cli
            .driver_root
            .or_else(|| first(&["NVIDIA_DRIVER_ROOT"]).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/run/nvidia/driver"));
        // NVIDIA's default is /driver-root, where the DaemonSet mounts the
        // driver container's root; a host driver (or a test) has none.
        let driver_root_ctr_path = cli.driver_root_ctr_path.unwrap_or_else(|| {
            let mounted = Path::new("/driver-root");
            if mounted.is_dir() {
                mounted.to_path_buf()
            } else {
                driver_root.clone()
            }
        });
        let dev_root = cli
            .dev_root
            .or_else(|| first(&["NVIDIA_DEV_ROOT"]).map(PathBuf::from));
        Settings {
            engine,
            config,
            socket,
            drop_in_config: cli.drop_in_config,
            drop_in_config_host_path: cli.drop_in_config_host_path,
            runtime_name,
            set_as_default,
            restart_mode: cli.restart_mode,
            runtime_executable: cli.runtime_executable_path,
            config_host_path: cli.runtime_config_host_path,
            host_root: cli.host_root_mount,
            root,
            pid_file: cli.pid_file,
            no_daemon: cli.no_daemon,
            no_runtime_config: cli.no_runtime_config,
            driver_root,
            driver_root_ctr_path,
            dev_root,
            dev_root_ctr_path: cli.dev_root_ctr_path,
            cdi_enabled: cli.cdi_enabled,
            runtime_enable_cdi: cli.runtime_enable_cdi,
            cdi_kind: cli.cdi_kind,
            cdi_output_dir: cli.cdi_output_dir,
            runtime_config: RuntimeConfigKeys {
                accept_envvar_when_unprivileged: cli.accept_envvar_when_unprivileged,
                accept_as_volume_mounts: cli.accept_as_volume_mounts,
                mode: cli.nvidia_container_runtime_mode,
                default_kind: cli.nvidia_container_runtime_modes_cdi_default_kind,
                annotation_prefixes: cli
                    .nvidia_container_runtime_modes_cdi_annotation_prefixes
                    .as_deref()
                    .map(list),
                runtimes: cli.nvidia_container_runtime_runtimes.as_deref().map(list),
                debug: cli.nvidia_container_runtime_debug,
                log_level: cli.nvidia_container_runtime_log_level,
                proc_root: cli.nvidia_container_runtime_proc_root,
                sys_root: cli.nvidia_container_runtime_sys_root,
            },
            source_dir: cli
                .toolkit_source_dir
                .unwrap_or_else(|| self_dir.to_path_buf()),
            ready_timeout: Duration::from_secs(cli.runtime_ready_timeout),
        }
    }

    /// Settings whose every path lies under `dir` (unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests(engine: Engine, dir: &Path) -> Settings {
        use clap::Parser as _;
        let runtime = match engine {
            Engine::Docker => "docker",
            Engine::Containerd => "containerd",
            _ => "crio",
        };
        let cli = Cli::parse_from([
            "nvidia-ctk-installer".to_string(),
            format!("--runtime={runtime}"),
            format!("--host-root-mount={}", dir.display()),
            format!("--root={}", dir.join("usr/local/nvidia").display()),
            format!("--config={}", dir.join("etc/engine.conf").display()),
            format!("--socket={}", dir.join("engine.sock").display()),
        ]);
        Settings::resolve(cli, &|_| None, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn nvidia_defaults_and_aliases() {
        let cli = Cli::parse_from(["nvidia-toolkit", "--runtime=containerd"]);
        let env = |name: &str| match name {
            "CONTAINERD_CONFIG" => Some("/runtime/config-dir/config.toml".to_string()),
            "CONTAINERD_RUNTIME_CLASS" => Some("gpu".to_string()),
            "CONTAINERD_SET_AS_DEFAULT" => Some("false".to_string()),
            "NVIDIA_DRIVER_ROOT" => Some("/".to_string()),
            _ => None,
        };
        let settings = Settings::resolve(cli, &env, Path::new("/work"));
        assert_eq!(
            settings.config.as_deref(),
            Some(Path::new("/runtime/config-dir/config.toml"))
        );
        assert_eq!(settings.runtime_name, "gpu");
        assert!(!settings.set_as_default);
        assert_eq!(settings.driver_root, Path::new("/"));
        assert_eq!(settings.root, Path::new("/usr/local/nvidia"));
        assert_eq!(settings.host_root, Path::new("/host"));
        assert_eq!(
            settings.pid_file,
            Path::new("/run/nvidia/toolkit/toolkit.pid")
        );
        assert_eq!(settings.cdi_output_dir, Path::new("/var/run/cdi"));
        assert_eq!(settings.source_dir, Path::new("/work"));
        assert!(settings.runtime_config.accept_envvar_when_unprivileged);
        assert!(!settings.runtime_config.accept_as_volume_mounts);

        let cli = Cli::parse_from(["nvidia-toolkit"]);
        let settings = Settings::resolve(cli, &|_| None, Path::new("/work"));
        assert_eq!(settings.engine, Engine::Docker);
        assert!(settings.set_as_default);
        assert_eq!(settings.driver_root, Path::new("/run/nvidia/driver"));
        assert_eq!(settings.runtime_name, "nvidia");
    }
}
