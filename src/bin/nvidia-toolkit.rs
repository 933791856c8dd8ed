//! `nvidia-toolkit`: the name the GPU Operator's DaemonSet execs
//! (assets/state-container-toolkit); the same program as
//! `nvidia-ctk-installer`.

use std::process::ExitCode;

fn main() -> ExitCode {
    nvidia_container_runtime_installer_main()
}

include!("installer/shared.rs");
