//! The main job in one run: a container started through the runtime with
//! `NVIDIA_VISIBLE_DEVICES=all` runs `nvidia-smi -L` and lists the GPUs.
//!
//! On a host with the NVIDIA driver loaded it uses the real driver; on a host
//! without one it builds the simulated driver of the test suite (real ELF
//! libraries, a real ld.so.cache, mknod'ed nodes, a fake procfs) in a temp
//! dir. Needs root, runc, busybox-static and gcc:
//!
//!     cargo build --bins --examples && sudo ./target/debug/examples/demo
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use common::*;

fn main() {
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target/debug"));
    let runtime = bin_dir.join("nvidia-container-runtime");
    if !runtime.exists() || !bin_dir.join("nvidia-container-runtime-hook").exists() {
        eprintln!(
            "demo: {} not found: run `cargo build --bins --examples` first",
            runtime.display()
        );
        std::process::exit(1);
    }
    let tmp = TempDir::new("demo");
    let config = tmp.path().join("config.toml");
    let real_driver = Path::new("/proc/driver/nvidia/version").exists();
    if real_driver {
        println!("demo: using this host's NVIDIA driver");
        std::fs::write(&config, "").expect("write config.toml");
    } else {
        println!("demo: no NVIDIA driver on this host: using the simulated driver (2 GPUs)");
        let driver = FakeDriver::build(&tmp.path().join("driver"), &FakeDriverOptions::two_gpus());
        driver.write_config(&config, "");
    }
    let bundle = Bundle::new(
        &tmp.path().join("bundle"),
        RootfsKind::Glibc { ldconfig: true },
        &["sh", "-c", "nvidia-smi -L && echo && ls -l /dev/nvidia*"],
        &["NVIDIA_VISIBLE_DEVICES=all"],
    );
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).expect("create state dir");
    println!(
        "demo: {} run --bundle {} demo   (NVIDIA_VISIBLE_DEVICES=all)\n",
        runtime.display(),
        bundle.dir.display()
    );
    let out = run_container(
        &runtime,
        &state,
        &bundle,
        &unique_id("demo"),
        &[(
            "NVIDIA_CTK_CONFIG_FILE_PATH",
            config.to_str().unwrap_or_default(),
        )],
    );
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
    std::process::exit(out.status);
}
