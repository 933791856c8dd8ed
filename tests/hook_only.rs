//! The hook-only mode: `docker run --gpus` on a stock Docker, where plain
//! runc runs the container and dockerd's prestart hook (ours, found on its
//! PATH) is the only edit. Bundles shaped as dockerd writes them, run by
//! real runc on this machine's cgroup v1 and, in a private mount namespace,
//! on cgroup v2 (testing.md), and the attacks of hook-mode.md section 7.
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

const HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");

/// What a container runs: list the NVIDIA nodes, open the selected GPU's
/// node and a node of another GPU made by hand (`/other/nvidia<N>`), show
/// the GPUs, the loader's libcuda and the masked `params`.
const SCRIPT: &str = "ls /dev | grep nvidia | sort | tr '\\n' ' '; echo; \
     cat /dev/nvidia$SELECTED 2>&1 | head -1; \
     cat /other/nvidia$OTHER 2>&1 | head -1; \
     nvidia-smi -L; \
     ldconfig -p | grep -c 'libcuda.so.1 '; \
     grep ModifyDeviceFiles /proc/driver/nvidia/params 2>/dev/null || echo no-kernel-module";

impl World {
    fn new(name: &str) -> World {
        World::build(name, &FakeDriverOptions::two_gpus(), "", "")
    }

    /// A bundle as dockerd 20.10-28 writes it for `--gpus <gpus>` on plain
    /// runc: the image env, then dockerd's own `NVIDIA_VISIBLE_DEVICES`
    /// appended, and the prestart hook `[nvidia-container-runtime-hook,
    /// prestart]` with dockerd's environment (which names our config).
    fn docker_bundle(&self, name: &str, gpus: &str, selected: usize, other: usize) -> Bundle {
        let selected_minor = self.driver.gpus[selected].minor;
        let other_minor = self.driver.gpus[other].minor;
        let bundle = self.bundle(
            name,
            RootfsKind::Glibc { ldconfig: true },
            &["sh", "-c", SCRIPT],
            &[
                // An image that asks for all GPUs itself: dockerd's value,
                // appended after it, wins.
                "NVIDIA_VISIBLE_DEVICES=all",
                &format!("SELECTED={selected_minor}"),
                &format!("OTHER={other_minor}"),
                &format!("NVIDIA_VISIBLE_DEVICES={gpus}"),
            ],
        );
        // A node of another GPU, made where runc's /dev does not cover it:
        // the device rules must refuse it.
        let other_dir = bundle.dir.join("rootfs/other");
        fs::create_dir_all(&other_dir).unwrap();
        let status = Command::new("mknod")
            .arg(other_dir.join(format!("nvidia{other_minor}")))
            .args(["c", "195", &other_minor.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let config = self.config.to_str().unwrap().to_string();
        bundle.edit_config(|spec| {
            spec["hooks"] = json!({"prestart": [{
                "path": HOOK,
                "args": ["nvidia-container-runtime-hook", "prestart"],
                "env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    format!("NVIDIA_CTK_CONFIG_FILE_PATH={config}"),
                    "HOME=/root",
                ],
            }]});
        });
        bundle
    }

    /// `runc run` of the bundle, no runtime of ours in between.
    fn run_plain(&self, bundle: &Bundle, id: &str) -> RunOutput {
        run_container(&runc_path(), &self.state_root, bundle, id, &[])
    }
}

/// Asserts what the container printed for GPU `selected`.
fn assert_injected(world: &World, out: &RunOutput, selected: usize, what: &str) {
    assert!(
        out.success(),
        "{what}: failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- debug log ---\n{}",
        out.status,
        out.stdout,
        out.stderr,
        fs::read_to_string(world.driver.debug_log_path()).unwrap_or_default()
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    let minor = world.driver.gpus[selected].minor;
    let nodes: Vec<&str> = lines[0].split_whitespace().collect();
    let gpu = format!("nvidia{minor}");
    let mut expected = vec![gpu.as_str(), "nvidia-uvm", "nvidia-uvm-tools", "nvidiactl"];
    expected.sort();
    assert_eq!(nodes, expected, "{what}: /dev\n{}", out.stdout);
    // The GPU's node is allowed (the fake driver has no kernel module
    // behind it: ENXIO); the other GPU's node is refused by the cgroup.
    assert!(
        lines[1].contains("No such device or address"),
        "{what}: {}",
        out.stdout
    );
    assert!(
        lines[2].contains("Operation not permitted"),
        "{what}: {}",
        out.stdout
    );
    let smi = world.driver.smi_output(&[selected]);
    let smi_lines = smi.lines().count();
    assert_eq!(
        lines[3..3 + smi_lines].join("\n") + "\n",
        smi,
        "{what}: nvidia-smi -L\n{}",
        out.stdout
    );
    assert_eq!(
        lines[3 + smi_lines],
        "1",
        "{what}: ldconfig -p lists libcuda.so.1 once"
    );
    // /proc/driver/nvidia is the kernel module's: masked where there is one
    // (the GPU acceptance script checks that on a real GPU), absent here.
    let expected = if Path::new("/proc/driver/nvidia").exists() {
        "ModifyDeviceFiles: 0"
    } else {
        "no-kernel-module"
    };
    assert_eq!(lines[4 + smi_lines], expected, "{what}");
}

#[test]
fn docker_gpus_on_plain_runc_gets_the_selected_gpu_on_cgroup_v1() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-v1");
    let bundle = world.docker_bundle("device0", "0", 0, 1);
    let out = world.run_plain(&bundle, &unique_id("hook-only"));
    assert_injected(&world, &out, 0, "--gpus device=0 (cgroup v1)");
    let bundle = world.docker_bundle("device1", "1", 1, 0);
    let out = world.run_plain(&bundle, &unique_id("hook-only"));
    assert_injected(&world, &out, 1, "--gpus device=1 (cgroup v1)");
}

#[test]
fn docker_gpus_on_plain_runc_gets_the_selected_gpu_on_cgroup_v2() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-v2");
    let bundle = world.docker_bundle("device0", "0", 0, 1);
    // runc in a private mount namespace with cgroup2 at /sys/fs/cgroup:
    // the container lands in 0::/<id> with runc's device eBPF program,
    // which the hook must widen.
    let id = unique_id("hook-only-v2");
    let script = format!(
        "mount --make-rprivate / && mount -t cgroup2 none /sys/fs/cgroup && exec '{}' --root '{}' run --bundle '{}' '{}'",
        runc_path().display(),
        world.tmp.path().join("state-v2").display(),
        bundle.dir.display(),
        id
    );
    let mut command = Command::new("unshare");
    command
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null());
    let out = output_with_timeout(command, RUN_TIMEOUT).expect("runc (cgroup v2) hung");
    assert_injected(&world, &out, 0, "--gpus device=0 (cgroup v2)");
}

#[test]
fn a_container_that_asks_for_no_gpu_is_left_alone() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-none");
    let bundle = world.docker_bundle("void", "void", 0, 1);
    bundle.edit_config(|spec| {
        spec["process"]["args"] = json!(["sh", "-c", "ls /dev | grep -c nvidia; true"]);
    });
    let out = world.run_plain(&bundle, &unique_id("hook-only-void"));
    out.assert_success("NVIDIA_VISIBLE_DEVICES=void");
    assert_eq!(out.stdout.trim(), "0", "{}", out.stdout);
}
