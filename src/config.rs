//! The runtime's `config.toml`: where it is, what it says, and the defaults.
//!
//! Key names are the anchor's (contract.md §4) so users keep their files. Three
//! keys are ours: `dev-root`, `proc-root` and `sys-root` in `[nvidia-container-runtime]`,
//! which say where device nodes are stat'ed and where the driver's procfs lives
//! (a driver container, a toolkit running with the host at `/host`, or tests);
//! `sys-root` likewise for sysfs.
//! Unknown keys are ignored: the anchors' files carry many we do not use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The environment variable naming the config file, highest priority.
pub const CONFIG_PATH_ENV: &str = "NVIDIA_CTK_CONFIG_FILE_PATH";
/// The system-wide config file.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/nvidia-container-runtime/config.toml";
const RELATIVE_CONFIG_PATH: &str = "nvidia-container-runtime/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML ({message}): fix the file or point {CONFIG_PATH_ENV} at a valid one")]
    Parse { path: PathBuf, message: String },
}

/// How device requests are resolved (`[nvidia-container-runtime] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Auto,
    Legacy,
    Cdi,
    /// Accepted for compatibility with the anchor's files; treated like `legacy`.
    Csv,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct Config {
    pub disable_require: bool,
    pub supported_driver_capabilities: String,
    pub swarm_resource: String,
    pub accept_nvidia_visible_devices_envvar_when_unprivileged: bool,
    pub accept_nvidia_visible_devices_as_volume_mounts: bool,
    pub nvidia_container_cli: CliConfig,
    pub nvidia_container_runtime: RuntimeConfig,
    pub nvidia_container_runtime_hook: HookConfig,
    pub nvidia_ctk: CtkConfig,
    pub features: FeaturesConfig,
    /// Keys we do not know, kept only to log them at debug level.
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CliConfig {
    /// The driver root: where the driver's files are found. `""` means `/`.
    pub root: String,
    /// The anchor's ldconfig setting (`@` = host binary). We write the
    /// container's ld.so.cache ourselves and never run an ldconfig; the key is
    /// accepted so existing files keep working.
    pub ldconfig: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct RuntimeConfig {
    pub debug: String,
    pub log_level: String,
    pub mode: Mode,
    pub runtimes: Vec<String>,
    /// Ours: where device nodes are stat'ed. Empty: the driver root.
    pub dev_root: String,
    /// Ours: where the driver's procfs is read. Empty: `/proc`.
    pub proc_root: String,
    /// Ours: where sysfs is read (a GPU's DRM nodes). Empty: `/sys`.
    pub sys_root: String,
    pub modes: ModesConfig,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub struct ModesConfig {
    pub cdi: CdiModeConfig,
    pub legacy: LegacyModeConfig,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CdiModeConfig {
    pub default_kind: String,
    pub annotation_prefixes: Vec<String>,
    pub spec_dirs: Vec<String>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// `[nvidia-container-runtime.modes.legacy]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub struct LegacyModeConfig {
    pub cuda_compat_mode: CudaCompatMode,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

/// How an image's CUDA forward-compatibility libraries
/// (`/usr/local/cuda/compat`) are used, NVIDIA's `cuda-compat-mode` values.
/// Ours never mounts nor opens them: `ldconfig` (the default), `hook` and
/// `mount` all mean that the hook lists them first in the container's
/// ld.so.cache when they are newer than the host's driver; `disabled` turns
/// that off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CudaCompatMode {
    #[default]
    Ldconfig,
    Hook,
    Mount,
    Disabled,
}

/// `[features]`, NVIDIA's feature flags that this runtime reads.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case")]
pub struct FeaturesConfig {
    /// Turns the CUDA forward-compatibility handling off, as NVIDIA's flag
    /// of that name turns off its `enable-cuda-compat` hook.
    pub disable_cuda_compat_lib_hook: bool,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct HookConfig {
    /// The hook binary: a name searched next to the runtime and on PATH, or
    /// an absolute path.
    pub path: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CtkConfig {
    pub path: String,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            disable_require: false,
            supported_driver_capabilities: "compat32,compute,display,graphics,ngx,utility,video"
                .to_string(),
            swarm_resource: String::new(),
            accept_nvidia_visible_devices_envvar_when_unprivileged: true,
            accept_nvidia_visible_devices_as_volume_mounts: false,
            nvidia_container_cli: CliConfig::default(),
            nvidia_container_runtime: RuntimeConfig::default(),
            nvidia_container_runtime_hook: HookConfig::default(),
            nvidia_ctk: CtkConfig::default(),
            features: FeaturesConfig::default(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for CliConfig {
    fn default() -> Self {
        CliConfig {
            root: String::new(),
            ldconfig: "@/sbin/ldconfig".to_string(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            debug: "/dev/null".to_string(),
            log_level: "info".to_string(),
            mode: Mode::Auto,
            runtimes: vec!["runc".to_string(), "crun".to_string()],
            dev_root: String::new(),
            proc_root: String::new(),
            sys_root: String::new(),
            modes: ModesConfig::default(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for CdiModeConfig {
    fn default() -> Self {
        CdiModeConfig {
            default_kind: "nvidia.com/gpu".to_string(),
            annotation_prefixes: vec!["cdi.k8s.io/".to_string()],
            spec_dirs: vec!["/etc/cdi".to_string(), "/var/run/cdi".to_string()],
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            path: "nvidia-container-runtime-hook".to_string(),
            unknown: BTreeMap::new(),
        }
    }
}

impl Default for CtkConfig {
    fn default() -> Self {
        CtkConfig {
            path: "nvidia-ctk".to_string(),
            unknown: BTreeMap::new(),
        }
    }
}

/// Where the config was found, for logs and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl Config {
    /// Parses a config file's text. `path` is only used in the error.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            // toml's message spans several lines (it quotes the source); keep
            // it on one line so `docker run` shows it whole.
            message: crate::logging::one_line(&error.to_string()),
        })
    }

    /// Loads the first config file found (contract.md §4), or the defaults
    /// when there is none. `env` is the lookup for environment variables, so
    /// that callers (and tests) decide where the environment comes from.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<(Config, Source), ConfigError> {
        for candidate in candidate_paths(&env) {
            match Config::from_file(&candidate) {
                Ok(config) => return Ok((config, Source::File(candidate))),
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(error) => return Err(error),
            }
        }
        Ok((Config::default(), Source::Defaults))
    }

    /// Reads and parses one config file: the one loader behind every
    /// binary's `--config` and the search of [`Config::load`].
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = crate::bounded::read_regular_file(path, crate::bounded::CONFIG_TOML)
            .map_err(read_error)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            ))
        })?;
        Config::parse(&text, path)
    }

    /// The CDI spec dirs, in priority order (later overrides earlier).
    pub fn cdi_spec_dirs(&self) -> Vec<PathBuf> {
        self.nvidia_container_runtime
            .modes
            .cdi
            .spec_dirs
            .iter()
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// The driver root as a path (`""` means `/`).
    pub fn driver_root(&self) -> PathBuf {
        non_empty_path(&self.nvidia_container_cli.root, "/")
    }

    /// Where device nodes are stat'ed: `dev-root`, else the driver root.
    pub fn dev_root(&self) -> PathBuf {
        if self.nvidia_container_runtime.dev_root.is_empty() {
            self.driver_root()
        } else {
            PathBuf::from(&self.nvidia_container_runtime.dev_root)
        }
    }

    /// Where the driver's procfs is read: `proc-root`, else `/proc`.
    pub fn proc_root(&self) -> PathBuf {
        non_empty_path(&self.nvidia_container_runtime.proc_root, "/proc")
    }

    /// Where sysfs is read: `sys-root`, else `/sys`.
    pub fn sys_root(&self) -> PathBuf {
        non_empty_path(&self.nvidia_container_runtime.sys_root, "/sys")
    }

    /// Whether the hook uses an image's newer CUDA compat libraries.
    pub fn cuda_compat_enabled(&self) -> bool {
        self.nvidia_container_runtime.modes.legacy.cuda_compat_mode != CudaCompatMode::Disabled
            && !self.features.disable_cuda_compat_lib_hook
    }

    /// Every key we ignored, dotted, for a debug log line.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut add = |prefix: &str, table: &BTreeMap<String, toml::Value>| {
            keys.extend(table.keys().map(|key| format!("{prefix}{key}")));
        };
        add("", &self.unknown);
        add("nvidia-container-cli.", &self.nvidia_container_cli.unknown);
        add(
            "nvidia-container-runtime.",
            &self.nvidia_container_runtime.unknown,
        );
        add(
            "nvidia-container-runtime.modes.",
            &self.nvidia_container_runtime.modes.unknown,
        );
        add(
            "nvidia-container-runtime.modes.cdi.",
            &self.nvidia_container_runtime.modes.cdi.unknown,
        );
        add(
            "nvidia-container-runtime-hook.",
            &self.nvidia_container_runtime_hook.unknown,
        );
        add("nvidia-ctk.", &self.nvidia_ctk.unknown);
        add(
            "nvidia-container-runtime.modes.legacy.",
            &self.nvidia_container_runtime.modes.legacy.unknown,
        );
        add("features.", &self.features.unknown);
        keys
    }
}

fn non_empty_path(value: &str, default: &str) -> PathBuf {
    PathBuf::from(if value.is_empty() { default } else { value })
}

/// The config file candidates, first found wins.
pub fn candidate_paths(env: &impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut paths = Vec::with_capacity(3);
    if let Some(path) = env(CONFIG_PATH_ENV).filter(|p| !p.is_empty()) {
        paths.push(PathBuf::from(path));
    }
    if let Some(dir) = env("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        paths.push(Path::new(&dir).join(RELATIVE_CONFIG_PATH));
    }
    paths.push(PathBuf::from(SYSTEM_CONFIG_PATH));
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let config = Config::default();
        assert!(config.accept_nvidia_visible_devices_envvar_when_unprivileged);
        assert!(!config.accept_nvidia_visible_devices_as_volume_mounts);
        assert_eq!(config.nvidia_container_runtime.runtimes, ["runc", "crun"]);
        assert_eq!(config.driver_root(), PathBuf::from("/"));
        assert_eq!(config.dev_root(), PathBuf::from("/"));
        assert_eq!(config.proc_root(), PathBuf::from("/proc"));
        assert_eq!(config.nvidia_container_runtime.mode, Mode::Auto);
    }

    #[test]
    fn anchor_file_parses_and_unknown_keys_are_listed() {
        let text = r#"
disable-require = true
swarm-resource = "DOCKER_RESOURCE_GPU"
accept-nvidia-visible-devices-envvar-when-unprivileged = false
#accept-nvidia-visible-devices-as-volume-mounts = false
supported-driver-capabilities = "compute,utility"

[nvidia-container-cli]
environment = []
load-kmods = true
ldconfig = "@/sbin/ldconfig.real"
root = "/run/nvidia/driver"

[nvidia-container-runtime]
debug = "/var/log/nvidia-container-runtime.log"
log-level = "debug"
mode = "cdi"
runtimes = ["docker-runc", "runc"]
dev-root = "/"

[nvidia-container-runtime.modes.csv]
mount-spec-path = "/etc/nvidia-container-runtime/host-files-for-container.d"

[nvidia-container-runtime.modes.cdi]
annotation-prefixes = ["cdi.k8s.io/", "example.com/"]

[nvidia-container-runtime-hook]
path = "/usr/bin/nvidia-container-runtime-hook"
skip-mode-detection = false
"#;
        let config = Config::parse(text, Path::new("/x")).unwrap();
        assert!(config.disable_require);
        assert!(!config.accept_nvidia_visible_devices_envvar_when_unprivileged);
        assert_eq!(config.driver_root(), PathBuf::from("/run/nvidia/driver"));
        assert_eq!(config.dev_root(), PathBuf::from("/"));
        assert_eq!(config.nvidia_container_runtime.mode, Mode::Cdi);
        assert_eq!(
            config
                .nvidia_container_runtime
                .modes
                .cdi
                .annotation_prefixes,
            ["cdi.k8s.io/", "example.com/"]
        );
        // Defaults survive next to a partial table.
        assert_eq!(
            config.nvidia_container_runtime.modes.cdi.spec_dirs,
            ["/etc/cdi", "/var/run/cdi"]
        );
        let unknown = config.unknown_keys();
        assert!(unknown.contains(&"nvidia-container-cli.load-kmods".to_string()));
        assert!(unknown.contains(&"nvidia-container-runtime.modes.csv".to_string()));
        assert!(unknown.contains(&"nvidia-container-runtime-hook.skip-mode-detection".to_string()));
    }

    #[test]
    fn dev_root_defaults_to_driver_root() {
        let config =
            Config::parse("[nvidia-container-cli]\nroot = \"/d\"\n", Path::new("/x")).unwrap();
        assert_eq!(config.dev_root(), PathBuf::from("/d"));
    }

    #[test]
    fn syntax_error_is_one_line_and_names_the_file() {
        let error = Config::parse(
            "[nvidia-container-cli\nroot = 1\n",
            Path::new("/etc/c.toml"),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/etc/c.toml"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn candidate_order() {
        let env = |key: &str| match key {
            CONFIG_PATH_ENV => Some("/a.toml".to_string()),
            "XDG_CONFIG_HOME" => Some("/xdg".to_string()),
            _ => None,
        };
        assert_eq!(
            candidate_paths(&env),
            [
                PathBuf::from("/a.toml"),
                PathBuf::from("/xdg/nvidia-container-runtime/config.toml"),
                PathBuf::from(SYSTEM_CONFIG_PATH)
            ]
        );
        let dir = std::env::temp_dir().join(format!("ncr-config-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("nvidia-container-runtime")).unwrap();
        std::fs::write(
            dir.join(RELATIVE_CONFIG_PATH),
            "[nvidia-container-runtime]\nruntimes = [\"crun\"]\n",
        )
        .unwrap();
        let xdg = dir.to_string_lossy().into_owned();
        let (config, source) =
            Config::load(|key| (key == "XDG_CONFIG_HOME").then(|| xdg.clone())).unwrap();
        assert_eq!(source, Source::File(dir.join(RELATIVE_CONFIG_PATH)));
        assert_eq!(config.nvidia_container_runtime.runtimes, ["crun"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
