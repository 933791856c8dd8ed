//! `nvidia-container-runtime`: registered with an engine in place of runc.
//! Thin: the logic is in [`nvidia_container_runtime::runtime`].

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use nvidia_container_runtime::logging;
use nvidia_container_runtime::runtime::{self, argv, fallback, ConfigState};

fn main() {
    let args = argv::collect_args();
    let invocation = argv::scan(&args);
    let env = |key: &str| std::env::var(key).ok();

    let config = ConfigState::load(env);
    if let ConfigState::Loaded(config, source) = &config {
        logging::init_debug_log(
            &config.nvidia_container_runtime.debug,
            &config.nvidia_container_runtime.log_level,
        );
        tracing::debug!(?source, unknown_keys = ?config.unknown_keys(), "config loaded");
    }
    let self_exe = std::fs::read_link("/proc/self/exe").unwrap_or_default();
    let path_env = std::env::var("PATH").ok();
    let result = runtime::prepare(
        &args,
        &invocation,
        config,
        path_env.as_deref(),
        &self_exe,
        &fallback::state_dir(env),
    );

    let prepared = match result {
        Ok(prepared) => prepared,
        Err(error) => {
            let message = logging::error_chain(&error);
            tracing::error!("{message}");
            fail(&invocation, &message)
        }
    };

    if let Some(warning) = &prepared.warning {
        // The fault stays visible: in the engine's log always, and on the
        // user's terminal for a create (other commands' stderr may be read
        // by the engine).
        logging::write_runtime_log(
            invocation.log_path.as_deref(),
            invocation.log_is_json(),
            "warning",
            warning,
        );
        if invocation.action() == argv::Action::Modify {
            eprintln!("nvidia-container-runtime: warning: {warning}");
        }
    }
    if prepared.print_version {
        print!("{}", runtime::version_banner());
        let _ = std::io::stdout().flush();
    }
    exec(&prepared, &invocation);
}

/// Replaces this process with the real runtime, so that its exit code,
/// stdio, terminal and signals are the engine's to see (contract.md §1).
fn exec(prepared: &runtime::Prepared, invocation: &argv::Invocation) -> ! {
    let to_cstring = |bytes: &[u8]| CString::new(bytes).ok();
    let program = to_cstring(prepared.runtime.as_os_str().as_bytes());
    let args: Option<Vec<CString>> = prepared
        .argv
        .iter()
        .map(|arg| to_cstring(arg.as_bytes()))
        .collect();
    let error = match (program, args) {
        (Some(program), Some(args)) => nix::unistd::execv(&program, &args)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default(),
        _ => "an argument contains a NUL byte".to_string(),
    };
    let mut message = format!(
        "cannot exec the low-level runtime {}: {error}: check that it is a working runc or crun, or set runtimes in [nvidia-container-runtime] of config.toml",
        prepared.runtime.display()
    );
    // Nothing may be left half-done: the engine sees a failed create, so the
    // bundle goes back to what it wrote.
    if let Some(original) = &prepared.patched {
        if let Err(restore) = original.restore() {
            message.push_str(&format!("; {}", logging::error_chain(&restore)));
        }
    }
    fail(invocation, &message)
}

/// Reports a failure before the real runtime ran the way engines read it
/// (the `--log` file, which containerd shows the user, and stderr) and
/// exits 1.
fn fail(invocation: &argv::Invocation, message: &str) -> ! {
    logging::write_runtime_log(
        invocation.log_path.as_deref(),
        invocation.log_is_json(),
        "error",
        message,
    );
    eprintln!("nvidia-container-runtime: {message}");
    std::process::exit(1);
}
