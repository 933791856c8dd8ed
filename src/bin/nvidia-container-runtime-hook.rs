//! `nvidia-container-runtime-hook`: the GPU prestart hook.
//! Thin: the logic is in [`nvidia_container_runtime::hook`].

use std::ffi::OsString;

use nvidia_container_runtime::hook::{self, HookArgs, Stage};
use nvidia_container_runtime::logging;
use nvidia_container_runtime::oci::State;
use nvidia_container_runtime::system::{FaultySystem, RealSystem, FAULT_INJECTION_ENV};

fn main() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if let Err(error) = run(&args) {
        // runc shows a failing hook's stderr whole in its own error line, so
        // this is the one line the user reads.
        let message = logging::error_chain(&error);
        tracing::error!("{message}");
        eprintln!("nvidia-container-runtime-hook: {message}");
        std::process::exit(1);
    }
}

fn run(args: &[OsString]) -> Result<(), hook::HookError> {
    // First act: the process that does the work has no loader variables.
    hook::scrub_loader_environment(args)?;
    hook::harden_process()?;

    let args = HookArgs::parse(args)?;
    if args.stage == Stage::Precreate {
        let config = hook::load_config(args.config.as_deref(), |key| std::env::var(key).ok())?;
        logging::init_debug_log(
            &config.nvidia_container_runtime.debug,
            &config.nvidia_container_runtime.log_level,
        );
        let spec = hook::read_proposed_spec(&mut std::io::stdin().lock())?;
        let self_exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
        let file = hook::config_file(args.config.as_deref(), |key| std::env::var(key).ok());
        let patched = hook::precreate(&spec, &config, file, &self_exe)?;
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer(&mut stdout, &patched).map_err(|e| hook::HookError::Inject {
            action: "write the patched config.json to stdout".to_string(),
            source: e.into(),
        })?;
        std::io::Write::flush(&mut stdout).map_err(|source| hook::HookError::Inject {
            action: "write the patched config.json to stdout".to_string(),
            source,
        })?;
        return Ok(());
    }
    if args.stage != Stage::Prestart {
        return Ok(());
    }
    let state = State::read(&mut std::io::stdin().lock())?;
    let config = hook::load_config(args.config.as_deref(), |key| std::env::var(key).ok())?;
    // Opened here, on the host, before the hook enters the container's mount
    // namespace, where the log path could mean something else.
    logging::init_debug_log(
        &config.nvidia_container_runtime.debug,
        &config.nvidia_container_runtime.log_level,
    );
    tracing::debug!(id = %state.id, pid = state.pid, bundle = %state.bundle.display(), "prestart hook");
    let fault_at = std::env::var(FAULT_INJECTION_ENV)
        .ok()
        .and_then(|n| n.parse::<usize>().ok());
    let report = match fault_at {
        Some(n) => hook::prestart(&args, &state, &config, &FaultySystem::new(n))?,
        None => hook::prestart(&args, &state, &config, &RealSystem)?,
    };
    tracing::info!(?report, "prestart hook done");
    Ok(())
}
