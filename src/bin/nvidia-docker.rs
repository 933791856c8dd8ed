//! `nvidia-docker`: nvidia-docker 2's wrapper around `docker` (the argv
//! rewrite is [`nvidia_container_runtime::nvidia_docker`]).

use std::os::unix::process::CommandExt as _;

use nvidia_container_runtime::nvidia_docker;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let nv_docker = std::env::var_os("NV_DOCKER");
    let nv_gpu = std::env::var_os("NV_GPU");
    let command = nvidia_docker::command(&args, nv_docker.as_deref(), nv_gpu.as_deref());
    if command.print_version {
        println!("NVIDIA Docker: {}", env!("CARGO_PKG_VERSION"));
    }
    // exec: docker's exit code, stdio, terminal and signals are the user's.
    let error = std::process::Command::new(&command.program)
        .args(&command.args)
        .exec();
    eprintln!(
        "nvidia-docker: cannot run {}: {error} (set NV_DOCKER to the docker command)",
        command.program.to_string_lossy()
    );
    std::process::exit(127);
}
