//! `nvidia-ctk`: the admin's tool. One enum of subcommands, each delegating
//! to a library function; add a subcommand (`cdi generate`, `cdi list`) as a
//! variant of [`Command`] and a function below, nothing else changes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use nvidia_container_runtime::configure::{self, Applied, Engine, Options};
use nvidia_container_runtime::runtime::lookup_executable;

#[derive(Debug, Parser)]
#[command(name = "nvidia-ctk", version, about = "NVIDIA container toolkit CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register the NVIDIA runtime with a container engine.
    Runtime {
        #[command(subcommand)]
        command: RuntimeCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Add (or with --uninstall remove) the NVIDIA runtime in an engine's
    /// config, merging into the existing file.
    Configure(ConfigureArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EngineArg {
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
struct ConfigureArgs {
    /// The engine to register with.
    #[arg(long, value_enum)]
    runtime: EngineArg,
    /// The engine's config file [default: /etc/docker/daemon.json,
    /// /etc/containerd/config.toml, /etc/crio/crio.conf,
    /// /etc/containers/containers.conf].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the resulting files; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The name of our runtime entry (docker --runtime=NAME, the Kubernetes
    /// RuntimeClass handler).
    #[arg(long, default_value = configure::DEFAULT_RUNTIME_NAME)]
    nvidia_runtime_name: String,
    /// The runtime binary [default: the nvidia-container-runtime installed
    /// next to this program, else on PATH, else
    /// /usr/bin/nvidia-container-runtime].
    #[arg(long)]
    nvidia_runtime_path: Option<PathBuf>,
    /// Also make it the engine's default runtime.
    #[arg(long)]
    set_as_default: bool,
    /// containerd, CRI-O: write our entry to a drop-in file (containerd:
    /// conf.d/99-nvidia.toml next to the config, plus its `imports` line)
    /// [default: true, but false for containerd config version 1].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    drop_in: Option<bool>,
    /// The drop-in file.
    #[arg(long)]
    drop_in_path: Option<PathBuf>,
    /// containerd: the config version of a new (or empty) config file: 2 for
    /// containerd 1.x, 3 for containerd 2.x.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=3))]
    config_version: Option<i64>,
    /// Take our entry (and a default-runtime naming it) out again.
    #[arg(long, alias = "remove")]
    uninstall: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Runtime {
            command: RuntimeCommand::Configure(args),
        } => runtime_configure(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nvidia-ctk: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime_configure(args: ConfigureArgs) -> anyhow::Result<()> {
    let mut options = Options::new(args.runtime.into());
    options.config = args.config;
    options.runtime_name = args.nvidia_runtime_name;
    options.runtime_path = match args.nvidia_runtime_path {
        Some(path) => path,
        None => installed_runtime(),
    };
    options.set_as_default = args.set_as_default;
    options.drop_in = args.drop_in;
    options.drop_in_path = args.drop_in_path;
    options.containerd_config_version = args.config_version;
    options.uninstall = args.uninstall;

    let plan = configure::plan(&options)?;
    if args.dry_run {
        if plan.is_noop() {
            println!("# nothing to change");
        }
        print!("{}", plan.dry_run_text());
        return Ok(());
    }
    if plan.is_noop() {
        let what = if options.uninstall {
            "not registered"
        } else {
            "already registered"
        };
        println!(
            "nothing to change: the {} runtime is {what} in {}",
            options.runtime_name,
            plan.files
                .iter()
                .map(|f| f.path.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        return Ok(());
    }
    if !options.uninstall && !options.runtime_path.exists() {
        eprintln!(
            "warning: {} does not exist (yet); the engine will fail to start containers with this runtime until it is installed",
            options.runtime_path.display()
        );
    }
    for applied in configure::apply(&plan).context("nothing after this file was written")? {
        match applied {
            Applied::Written { path, backup } => match backup {
                Some(backup) => println!(
                    "wrote {} (previous file: {})",
                    path.display(),
                    backup.display()
                ),
                None => println!("wrote {}", path.display()),
            },
            Applied::Removed { path, backup } => {
                println!(
                    "removed {} (previous file: {})",
                    path.display(),
                    backup.display()
                )
            }
        }
    }
    if !plan.next_steps.is_empty() {
        println!("next:");
        for step in &plan.next_steps {
            println!("  - {step}");
        }
    }
    Ok(())
}

/// The runtime next to this program (a package installs both in one dir),
/// else on PATH, else where the packages put it.
fn installed_runtime() -> PathBuf {
    const NAME: &str = "nvidia-container-runtime";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)))
        .filter(|path| path.is_file());
    beside
        .or_else(|| lookup_executable(NAME, std::env::var("PATH").ok().as_deref()))
        .and_then(|path| std::fs::canonicalize(&path).ok().or(Some(path)))
        .unwrap_or_else(|| Path::new(configure::DEFAULT_RUNTIME_PATH).to_path_buf())
}
