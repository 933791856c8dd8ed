//! `nvidia-ctk-installer`: the node installer (src/installer). The GPU
//! Operator execs it as `nvidia-toolkit`, which src/bin/nvidia-toolkit.rs
//! ships as the same program.

use std::process::ExitCode;

fn main() -> ExitCode {
    nvidia_container_runtime_installer_main()
}

include!("installer/shared.rs");
