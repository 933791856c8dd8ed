//! NVIDIA's CDI hook subcommands (`nvidia-cdi-hook ...`, `nvidia-ctk hook
//! ...`) through real runc: a spec shaped as NVIDIA's `nvidia-ctk cdi
//! generate` writes one (hooks at createContainer, libraries mounted at
//! their file names), with the fake driver's paths, resolved by our runtime
//! in CDI mode; and the symlink and escape attacks on each subcommand.
mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use common::*;
use serde_json::json;

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const CDI_HOOK: &str = env!("CARGO_BIN_EXE_nvidia-cdi-hook");
const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");

/// The fake driver, and a config.toml whose only CDI spec dir is ours.
fn world(name: &str) -> World {
    let world = World::build(name, &FakeDriverOptions::two_gpus(), "", "");
    world.use_cdi_spec_dir();
    world
}

/// A spec of `vendor`'s `gpu` class as NVIDIA's tools write it, with
/// `hooks` as given.
fn nvidia_spec(world: &World, vendor: &str, hooks: serde_json::Value) -> String {
    let driver = &world.driver;
    let lib = |name: &str| driver.lib_path(name);
    let container_lib =
        |name: &str| format!("/usr/lib/x86_64-linux-gnu/{name}.so.{DRIVER_VERSION}");
    let mount = |host: &Path, container: &str| json!({"hostPath": host, "containerPath": container, "options": ["ro", "nosuid", "nodev", "bind"]});
    let node =
        |name: &str| json!({"path": format!("/dev/{name}"), "hostPath": driver.dev_path(name)});
    let minor = driver.gpus[0].minor;
    let spec = json!({
        "cdiVersion": "0.5.0",
        "kind": format!("{vendor}/gpu"),
        "devices": [{"name": "0", "containerEdits": {"deviceNodes": [node(&format!("nvidia{minor}"))]}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node("nvidiactl"), node("nvidia-uvm"), node("nvidia-uvm-tools")],
            "hooks": hooks,
            "mounts": [
                mount(&lib("libcuda"), &container_lib("libcuda")),
                mount(&lib("libnvidia-ml"), &container_lib("libnvidia-ml")),
                mount(&driver.bin_path("nvidia-smi"), "/usr/bin/nvidia-smi"),
            ],
        }
    });
    serde_json::to_string_pretty(&spec).unwrap()
}

/// `nvidia-cdi-hook <args>` at createContainer.
fn cdi_hook(args: &[&str]) -> serde_json::Value {
    let argv: Vec<&str> = std::iter::once("nvidia-cdi-hook")
        .chain(args.iter().copied())
        .collect();
    hook(CDI_HOOK, &argv)
}

fn hook(path: &str, args: &[&str]) -> serde_json::Value {
    json!({"hookName": "createContainer", "path": path, "args": args})
}

/// Our spec dir holds NVIDIA's spec shape with `hooks`; the bundle (a glibc
/// rootfs running `args`) asks for its GPU 0 by CDI name.
fn spec_and_bundle(world: &World, hooks: serde_json::Value, name: &str, args: &[&str]) -> Bundle {
    fs::write(
        world.tmp.path().join("cdi/nvidia.json"),
        nvidia_spec(world, "nvidia.com", hooks),
    )
    .unwrap();
    world.bundle(
        name,
        RootfsKind::Glibc { ldconfig: true },
        args,
        &["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=0"],
    )
}

fn run(world: &World, bundle: &Bundle) -> RunOutput {
    run_container(
        Path::new(RUNTIME),
        &world.state_root,
        bundle,
        &unique_id("cdi-hook"),
        &world.config_env(),
    )
}

/// Every subcommand, as NVIDIA's generated specs call them (the chmod
/// through `nvidia-ctk hook`).
fn every_subcommand() -> serde_json::Value {
    json!([
        cdi_hook(&[
            "create-symlinks",
            "--link",
            &format!("libcuda.so.{DRIVER_VERSION}::/usr/lib/x86_64-linux-gnu/libcuda.so")
        ]),
        cdi_hook(&[
            "create-soname-symlinks",
            "--folder",
            "/usr/lib/x86_64-linux-gnu"
        ]),
        cdi_hook(&[
            "enable-cuda-compat",
            &format!("--host-driver-version={DRIVER_VERSION}")
        ]),
        cdi_hook(&["update-ldcache", "--folder", "/usr/lib/x86_64-linux-gnu"]),
        hook(
            CTK,
            &[
                "nvidia-ctk",
                "hook",
                "chmod",
                "--mode",
                "600",
                "--path",
                "/etc/ld.so.cache"
            ]
        ),
        cdi_hook(&["disable-device-node-modification"]),
    ])
}

/// What a container of [`every_subcommand`]'s spec shows: the links, the
/// cache's mode and entry, and GPU 0 in nvidia-smi.
const SUBCOMMANDS_SCRIPT: &str = "readlink /usr/lib/x86_64-linux-gnu/libcuda.so; readlink /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1; ls -l /etc/ld.so.cache | cut -c1-10; ldconfig -p | grep -c 'libnvidia-ml.so.1 '; nvidia-smi -L";

fn subcommands_output(world: &World) -> String {
    format!(
        "libcuda.so.{DRIVER_VERSION}\nlibnvidia-ml.so.{DRIVER_VERSION}\n-rw-------\n1\n{}",
        world.driver.smi_output(&[0])
    )
}

#[test]
fn a_spec_as_nvidias_tools_write_it_runs_with_our_hooks() {
    if !require_root() {
        return;
    }
    let world = world("cdi-hooks");
    let bundle = spec_and_bundle(
        &world,
        every_subcommand(),
        "nvidia-spec",
        &["sh", "-c", SUBCOMMANDS_SCRIPT],
    );
    let out = run(&world, &bundle);
    out.assert_success("a container from NVIDIA's spec shape");
    assert_eq!(out.stdout, subcommands_output(&world), "{out:?}");
}

/// The same spec applied by podman itself (its CDI library, plain runc):
/// our hooks, under NVIDIA's names, do the rest.
#[test]
fn podman_runs_nvidias_spec_shape_with_our_hooks() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("podman") else {
        return;
    };
    let world = world("cdi-hooks-podman");
    let vendor = system_spec_vendor();
    let spec = SystemSpecFile::new("nvidia-shape");
    fs::write(&spec.0, nvidia_spec(&world, vendor, every_subcommand())).unwrap();
    let podman = Podman::new(world.tmp.path());
    podman.import(
        RootfsKind::Glibc { ldconfig: true },
        "localhost/ncr-cdi-hooks:latest",
    );
    let device = format!("{vendor}/gpu=0");
    let out = podman.run(&[
        "--runtime=runc",
        "--device",
        &device,
        "localhost/ncr-cdi-hooks:latest",
        "sh",
        "-c",
        SUBCOMMANDS_SCRIPT,
    ]);
    out.assert_success(&format!("podman run --device {device}"));
    assert_eq!(out.stdout, subcommands_output(&world), "{out:?}");
}

#[test]
fn an_unknown_subcommand_names_the_ones_we_have() {
    let out = std::process::Command::new(CDI_HOOK)
        .arg("frobnicate")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unknown hook subcommand \"frobnicate\"")
            && stderr.contains("update-ldcache"),
        "{stderr}"
    );
}

#[test]
fn the_subcommands_never_reach_the_host() {
    if !require_root() {
        return;
    }
    let world = world("cdi-hooks-attacks");
    let decoy = world.tmp.path().join("host-decoy");
    fs::create_dir_all(&decoy).unwrap();
    fs::write(decoy.join("secret"), "host\n").unwrap();
    fs::set_permissions(decoy.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let before = tree_snapshot(&decoy);
    let decoy_text = decoy.display().to_string();
    let up = "../".repeat(24);
    let escape = format!("/{up}{}/escape", decoy_text.trim_start_matches('/'));
    let hooks = json!([
        // A link path climbing out of the rootfs, and one whose parent the
        // image made a symlink to the host.
        cdi_hook(&[
            "create-symlinks",
            "--link",
            &format!("x::{escape}"),
            "--link",
            "y::/linked/escape"
        ]),
        // A folder that is a symlink to a host dir.
        cdi_hook(&["update-ldcache", "--folder", "/linked"]),
        // A path that is a symlink to a host file.
        cdi_hook(&["chmod", "--mode", "777", "--path", "/secret-link"]),
    ]);
    let bundle = spec_and_bundle(&world, hooks, "attacks", &["true"]);
    let rootfs = bundle.dir.join("rootfs");
    symlink(&decoy, rootfs.join("linked")).unwrap();
    symlink(decoy.join("secret"), rootfs.join("secret-link")).unwrap();
    let out = run(&world, &bundle);
    eprintln!("{out:?}");
    assert_eq!(tree_snapshot(&decoy), before, "a host file changed");
    // The links landed inside the rootfs, resolved with it as `/`.
    assert!(
        rootfs
            .join(decoy_text.trim_start_matches('/'))
            .join("escape")
            .is_symlink()
            || !out.success()
    );
}
