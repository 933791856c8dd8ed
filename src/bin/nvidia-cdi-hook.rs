//! `nvidia-cdi-hook <subcommand>`: the name under which NVIDIA's CDI specs
//! (and its Kubernetes device plugin's) call their hooks. Thin: the logic
//! is in [`nvidia_container_runtime::hook::cdi_hooks`], shared with
//! `nvidia-ctk hook`.

use std::ffi::OsString;

use nvidia_container_runtime::hook::cdi_hooks;
use nvidia_container_runtime::logging;

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let strings: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(subcommand) = strings.get(1) else {
        eprintln!(
            "nvidia-cdi-hook: no subcommand: use one of {}",
            cdi_hooks::SUBCOMMANDS.join(", ")
        );
        std::process::exit(2);
    };
    if let Err(error) = cdi_hooks::main(&argv, subcommand, &strings[2..]) {
        // The engine shows a failing hook's stderr whole: one line.
        let message = logging::error_chain(&error);
        tracing::error!("{message}");
        eprintln!("nvidia-cdi-hook {subcommand}: {message}");
        std::process::exit(1);
    }
}
