// The main shared by src/bin/nvidia-ctk-installer.rs and
// src/bin/nvidia-toolkit.rs, included by both (cargo makes no target of a
// file in a src/bin subdir that is not main.rs).

fn nvidia_container_runtime_installer_main() -> ExitCode {
    use anyhow::Context as _;
    use clap::Parser as _;
    use nvidia_container_runtime::installer::{self, Cli, Outcome, Settings};

    let cli = Cli::parse();
    let self_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    let settings = Settings::resolve(cli, &|key| std::env::var(key).ok(), &self_dir);
    let say = |line: &str| eprintln!("nvidia-ctk-installer: {line}");
    let result = installer::run(&settings, &say).context("the node installer failed");
    match result {
        Ok(Outcome::Installed) => {
            say("installed (NO_DAEMON: not waiting, no cleanup)");
            ExitCode::SUCCESS
        }
        Ok(Outcome::CleanedUp { signal }) => {
            say(&format!("cleaned up after {signal}"));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("nvidia-ctk-installer: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
