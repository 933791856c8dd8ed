//! `nvidia-ctk`: the admin's tool. One enum of subcommands, each delegating
//! to a library function (`runtime configure`, `cdi generate`, `cdi list`);
//! add a subcommand as a variant of [`Command`] (in src/ctk.rs, where the
//! clap definitions live, shared with the man page generator) and a function
//! below, nothing else changes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use nvidia_container_runtime::cdi::{self, Format, Registry};
use nvidia_container_runtime::config::{Config, Source};
use nvidia_container_runtime::configure::{self, Applied, Options};
use nvidia_container_runtime::ctk::{
    CdiCommand, CdiHookArgs, Cli, Command, ConfigureArgs, DoctorArgs, FormatArg, GenerateArgs,
    InfoArgs, ListArgs, ModeArg, RuntimeCommand, StrategyArg,
};
use nvidia_container_runtime::driver::{Driver, Roots};
use nvidia_container_runtime::edits::{self, GenerateMode, GenerateOptions, NameStrategy};
use nvidia_container_runtime::inspect::{self, ConfigReport, HostRoot};
use nvidia_container_runtime::runtime::{find_hook, lookup_executable};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Runtime {
            command: RuntimeCommand::Configure(args),
        } => runtime_configure(args),
        Command::Cdi {
            command: CdiCommand::Generate(args),
        } => cdi_generate(args),
        Command::Cdi {
            command: CdiCommand::List(args),
        } => cdi_list(args),
        Command::Info(args) => info(args),
        Command::Doctor(args) => return doctor(args),
        Command::Hook(args) => return cdi_hook(args),
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
    options.enable_cdi = args.cdi_enabled;
    options.container_annotations = args
        .container_annotations
        .into_iter()
        .filter(|glob| !glob.is_empty())
        .collect();

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

/// The config named by `--config`, else the runtime's usual lookup.
fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, Source)> {
    match path {
        Some(path) => Ok((Config::from_file(path)?, Source::File(path.to_path_buf()))),
        None => Ok(Config::load(|key| std::env::var(key).ok())?),
    }
}

fn cdi_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let (mut config, source) = load_config(args.config.as_deref())?;
    if let Some(root) = &args.driver_root {
        config.nvidia_container_cli.root = root.display().to_string();
    }
    if let Some(root) = &args.dev_root {
        config.nvidia_container_runtime.dev_root = root.display().to_string();
    }
    if let Some(hook) = &args.hook_path {
        let absolute = std::path::absolute(hook).unwrap_or_else(|_| hook.clone());
        config.nvidia_container_runtime_hook.path = absolute.display().to_string();
    }
    let self_exe = std::env::current_exe().unwrap_or_default();
    let hook = find_hook(
        &config,
        &source,
        std::env::var("PATH").ok().as_deref(),
        &self_exe,
    )?;
    let driver = Driver::discover(Roots::from_config(&config))?;
    let mode = match args.mode {
        ModeArg::Auto | ModeArg::Nvml => GenerateMode::Gpu,
        ModeArg::Management => GenerateMode::Management,
        ModeArg::Imex => GenerateMode::Imex,
    };
    let (default_vendor, default_class) = mode.default_vendor_and_class();
    let options = GenerateOptions {
        mode,
        vendor: args.vendor.unwrap_or_else(|| default_vendor.to_string()),
        class: args.class.unwrap_or_else(|| default_class.to_string()),
        strategy: match args.device_name_strategy {
            StrategyArg::Index => NameStrategy::Index,
            StrategyArg::Uuid => NameStrategy::Uuid,
            StrategyArg::Both => NameStrategy::Both,
        },
        hook,
    };
    let spec = edits::generate(&driver, &config, &options)?;
    let format = match (args.format, &args.output) {
        (Some(FormatArg::Yaml), _) => Format::Yaml,
        (Some(FormatArg::Json), _) => Format::Json,
        (None, Some(output)) => Format::from_path(output).unwrap_or(Format::Yaml),
        (None, None) => Format::Yaml,
    };
    let text = spec.render(format)?;
    let Some(output) = args.output else {
        print!("{text}");
        return Ok(());
    };
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let written = cdi::write_spec_file(&output, &text)?;
    let names: Vec<String> = spec
        .devices
        .iter()
        .map(|device| format!("{}={}", spec.kind, device.name))
        .collect();
    let verb = if written { "wrote" } else { "unchanged" };
    println!("{verb} {}: {}", output.display(), names.join(", "));
    if Format::from_path(&output).is_none() {
        eprintln!(
            "warning: engines read only .json and .yaml files from their spec dirs; {} will not be found there",
            output.display()
        );
    }
    Ok(())
}

fn cdi_list(args: ListArgs) -> anyhow::Result<()> {
    let dirs = if args.spec_dir.is_empty() {
        load_config(args.config.as_deref())?.0.cdi_spec_dirs()
    } else {
        args.spec_dir
    };
    let registry = Registry::load(&dirs);
    // A broken file is reported, and the devices of the others still listed.
    for broken in &registry.broken {
        eprintln!(
            "warning: {} is not a valid CDI spec and was skipped: {}",
            broken.path.display(),
            broken.problem
        );
    }
    for conflict in registry.conflicts() {
        eprintln!("warning: {conflict}");
    }
    for name in registry.device_names() {
        println!("{name}");
    }
    Ok(())
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let config = ConfigReport::load(args.config.as_deref(), |key| std::env::var(key).ok());
    let info = inspect::info::collect(&config, &HostRoot(args.host_root), args.rootfs.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", info.text());
    }
    Ok(())
}

fn doctor(args: DoctorArgs) -> ExitCode {
    let config = ConfigReport::load(args.config.as_deref(), |key| std::env::var(key).ok());
    let path_env = std::env::var("PATH").ok();
    let self_exe = std::env::current_exe().unwrap_or_default();
    let context = inspect::doctor::Context {
        config: &config,
        host: &HostRoot(args.host_root),
        path_env: path_env.as_deref(),
        self_exe: &self_exe,
    };
    let findings = inspect::doctor::run(&context);
    for finding in &findings {
        println!("{finding}");
    }
    ExitCode::from(inspect::doctor::exit_code(&findings))
}

/// `nvidia-ctk hook <subcommand>`: run by an engine as a CDI spec's hook.
fn cdi_hook(args: CdiHookArgs) -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match nvidia_container_runtime::hook::cdi_hooks::main(&argv, &args.subcommand, &args.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = nvidia_container_runtime::logging::error_chain(&error);
            tracing::error!("{message}");
            eprintln!("nvidia-ctk hook {}: {message}", args.subcommand);
            ExitCode::FAILURE
        }
    }
}
