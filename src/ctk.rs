//! `nvidia-ctk`'s command line: the clap definitions, in the library so that
//! the binary (src/bin/nvidia-ctk.rs, which runs them) and the man page and
//! completion generator (src/bin/nvidia-ctk-docgen.rs, run by the package
//! build) share one source of truth. Doc comments on the items below are
//! clap's help text; the structs without one have none on purpose (clap
//! would turn it into an `about`).

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::configure::{self, Engine};

/// The whole `nvidia-ctk` command, for generators (man pages, completions).
pub fn command() -> clap::Command {
    Cli::command()
}

#[derive(Debug, Parser)]
#[command(name = "nvidia-ctk", version, about = "NVIDIA container toolkit CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register the NVIDIA runtime with a container engine.
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
    /// Container Device Interface specs: generate one for this host, list
    /// the devices of the spec dirs.
    Cdi {
        #[command(subcommand)]
        command: CdiCommand,
    },
    /// What this host offers and what a container would get: driver, CUDA
    /// version, GPUs and MIG devices, device nodes, libraries, the engines
    /// that have us registered, the CDI specs.
    Info(InfoArgs),
    /// Check for the failures users hit most; prints ok, warn or fail with
    /// the fix for each, and exits 1 on any fail.
    Doctor(DoctorArgs),
    /// The hooks of CDI specs (NVIDIA's subcommands: update-ldcache,
    /// create-symlinks, create-soname-symlinks, enable-cuda-compat, chmod,
    /// disable-device-node-modification), run by the engine with the OCI
    /// state on stdin. Also installed as nvidia-cdi-hook.
    Hook(CdiHookArgs),
}

#[derive(Debug, clap::Args)]
pub struct CdiHookArgs {
    /// The subcommand.
    pub subcommand: String,
    /// Its flags, as NVIDIA's take them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Print JSON, for machines.
    #[arg(long)]
    pub json: bool,
    /// An image's root filesystem: report its CUDA forward-compatibility
    /// libraries (/usr/local/cuda/compat) and whether they would be used.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The runtime's config.toml (see `cdi generate --help`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the engines' configs, /proc and /sys under this dir (a mounted
    /// host root) [default: /].
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The runtime's config.toml (see `cdi generate --help`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Read the engines' configs, /proc and /sys under this dir (a mounted
    /// host root) [default: /].
    #[arg(long, default_value = "/")]
    pub host_root: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CdiCommand {
    /// Write a CDI spec for this host's GPUs and driver: one device per GPU,
    /// `all`, and the edits every device needs.
    Generate(GenerateArgs),
    /// Print every qualified device name in the spec dirs, one a line.
    List(ListArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Yaml,
    Json,
}

/// `--mode`, with NVIDIA's names; `auto` and `nvml` are the GPU spec.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    Nvml,
    Management,
    Imex,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StrategyArg {
    Index,
    Uuid,
    Both,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The spec file to write (atomically, mode 0644; left untouched when
    /// it already holds the same spec), e.g. /var/run/cdi/nvidia.yaml
    /// [default: stdout].
    #[arg(long, env = "NVIDIA_CTK_CDI_OUTPUT_FILE_PATH")]
    pub output: Option<PathBuf>,
    /// [default: json for an --output ending in .json, else yaml]
    #[arg(long, value_enum, env = "NVIDIA_CTK_CDI_GENERATE_OUTPUT_FORMAT")]
    pub format: Option<FormatArg>,
    /// What the spec holds: GPUs and their MIG devices (auto, nvml), every
    /// device node for monitoring agents (management), or the IMEX
    /// channels (imex).
    #[arg(
        long,
        visible_alias = "discovery-mode",
        value_enum,
        default_value = "auto",
        env = "NVIDIA_CTK_CDI_GENERATE_MODE"
    )]
    pub mode: ModeArg,
    /// [default: management.nvidia.com with --mode management, else
    /// nvidia.com]
    #[arg(long, env = "NVIDIA_CTK_CDI_GENERATE_VENDOR")]
    pub vendor: Option<String>,
    /// [default: imex-channel with --mode imex, else gpu]
    #[arg(
        long,
        visible_alias = "cdi-class",
        env = "NVIDIA_CTK_CDI_GENERATE_CLASS"
    )]
    pub class: Option<String>,
    /// Device names: the GPU index, its UUID, or both.
    #[arg(long, value_enum, default_value = "index")]
    pub device_name_strategy: StrategyArg,
    /// Where the driver's files are [default: root in [nvidia-container-cli]
    /// of config.toml, else /].
    #[arg(long)]
    pub driver_root: Option<PathBuf>,
    /// Where /dev/nvidia* are [default: dev-root of config.toml, else the
    /// driver root].
    #[arg(long)]
    pub dev_root: Option<PathBuf>,
    /// The runtime's config.toml [default: $NVIDIA_CTK_CONFIG_FILE_PATH,
    /// $XDG_CONFIG_HOME/nvidia-container-runtime/config.toml,
    /// /etc/nvidia-container-runtime/config.toml].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The nvidia-container-runtime-hook the spec's hook entry runs
    /// [default: the one next to this program, else on PATH].
    #[arg(long)]
    pub hook_path: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// A spec dir to search, repeatable, later ones overriding earlier ones
    /// [default: spec-dirs of config.toml, else /etc/cdi, /var/run/cdi].
    #[arg(long)]
    pub spec_dir: Vec<PathBuf>,
    /// The runtime's config.toml (see `cdi generate --help`).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Add (or with --uninstall remove) the NVIDIA runtime in an engine's
    /// config, merging into the existing file.
    Configure(ConfigureArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EngineArg {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl From<EngineArg> for Engine {
    fn from(engine: EngineArg) -> Engine {
        match engine {
            EngineArg::Docker => Engine::Docker,
            EngineArg::Containerd => Engine::Containerd,
            EngineArg::Crio => Engine::Crio,
            EngineArg::Podman => Engine::Podman,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConfigureArgs {
    /// The engine to register with.
    #[arg(long, value_enum)]
    pub runtime: EngineArg,
    /// The engine's config file [default: /etc/docker/daemon.json,
    /// /etc/containerd/config.toml, /etc/crio/crio.conf,
    /// /etc/containers/containers.conf].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the resulting files; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The name of our runtime entry (docker --runtime=NAME, the Kubernetes
    /// RuntimeClass handler).
    #[arg(long, default_value = configure::DEFAULT_RUNTIME_NAME)]
    pub nvidia_runtime_name: String,
    /// The runtime binary [default: the nvidia-container-runtime installed
    /// next to this program, else on PATH, else
    /// /usr/bin/nvidia-container-runtime].
    #[arg(long)]
    pub nvidia_runtime_path: Option<PathBuf>,
    /// Also make it the engine's default runtime.
    #[arg(long)]
    pub set_as_default: bool,
    /// containerd, CRI-O: write our entry to a drop-in file (containerd:
    /// conf.d/99-nvidia.toml next to the config, plus its `imports` line)
    /// [default: true, but false for containerd config version 1].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub drop_in: Option<bool>,
    /// The drop-in file.
    #[arg(long)]
    pub drop_in_path: Option<PathBuf>,
    /// containerd: the config version of a new (or empty) config file: 2 for
    /// containerd 1.x, 3 for containerd 2.x.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3))]
    pub config_version: Option<i64>,
    /// Take our entry (and a default-runtime naming it) out again.
    #[arg(long, alias = "remove")]
    pub uninstall: bool,
    /// Let the engine resolve CDI names itself: containerd's `enable_cdi`
    /// (the CRI's CDIDevices), dockerd's `features.cdi`.
    #[arg(long = "cdi.enabled", alias = "enable-cdi")]
    pub cdi_enabled: bool,
    /// containerd: the pod annotations passed to our runtime
    /// (`container_annotations`); repeat it, or give an empty value for none.
    #[arg(long = "container-annotation", value_name = "GLOB", default_values_t = configure::DEFAULT_CONTAINER_ANNOTATIONS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    pub container_annotations: Vec<String>,
}
