//! `nvidia-ctk info` and `nvidia-ctk doctor` against the fake driver and a
//! fake host root (engine configs, /proc, /sys): every state doctor claims
//! to detect is built here, and its line asserted.
mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");

/// A fake driver, a config.toml for it (with its own CDI spec dir) and an
/// empty host root.
struct Host {
    world: World,
    root: PathBuf,
    spec_dir: PathBuf,
}

impl Host {
    fn new(name: &str, options: FakeDriverOptions, runtime_keys: &str) -> Host {
        let world = World::build(name, &options, "", runtime_keys);
        let root = world.tmp.path().join("host");
        fs::create_dir_all(&root).unwrap();
        let spec_dir = world.use_cdi_spec_dir();
        Host {
            world,
            root,
            spec_dir,
        }
    }

    fn file(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    fn ctk(&self, args: &[&str]) -> RunOutput {
        let mut command = Command::new(CTK);
        command
            .args(args)
            .arg("--config")
            .arg(&self.world.config)
            .arg("--host-root")
            .arg(&self.root)
            // The fake NVML finds the fake GPUs through this.
            .env("FAKE_NVML_DEV_ROOT", &self.world.driver.dev_root);
        command_output(command)
    }

    fn doctor(&self) -> RunOutput {
        self.ctk(&["doctor"])
    }

    /// Writes this world's CDI spec into its spec dir.
    fn generate_spec(&self) -> PathBuf {
        let output = self.spec_dir.join("nvidia.yaml");
        let mut command = Command::new(CTK);
        command
            .args(["cdi", "generate", "--output"])
            .arg(&output)
            .arg("--config")
            .arg(&self.world.config)
            // The fake NVML lists the MIG devices of the fake GPUs.
            .env("FAKE_NVML_DEV_ROOT", &self.world.driver.dev_root);
        command_output(command).assert_success("cdi generate");
        output
    }
}

/// The one line of `check` in doctor's output.
fn line<'a>(out: &'a RunOutput, check: &str) -> &'a str {
    out.stdout
        .lines()
        .find(|l| l[5..].starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no `{check}` line:\n{}", out.stdout))
}

fn assert_line(out: &RunOutput, check: &str, level: &str, needle: &str) {
    let found = line(out, check);
    assert!(
        found.starts_with(level) && found.contains(needle),
        "expected `{level} {check}: ...{needle}...`, got `{found}`\n{}",
        out.stdout
    );
    if level == "fail" || level == "warn" {
        assert!(found.contains("; fix: "), "no fix in `{found}`");
    }
}

#[test]
fn info_reports_the_simulated_host_as_text_and_json() {
    if !require_root() {
        return;
    }
    let options = FakeDriverOptions::two_gpus().with_mig(vec![FakeMig::new(1, 2, 0)]);
    let host = Host::new("info", options, "");
    let spec = host.generate_spec();
    let out = host.ctk(&["info"]);
    out.assert_success("info");
    let text = &out.stdout;
    eprintln!("{text}");
    assert!(
        text.contains(&format!("driver: {DRIVER_VERSION}")),
        "{text}"
    );
    assert!(text.contains("cuda: 12.4"), "{text}");
    for gpu in &host.world.driver.gpus {
        assert!(text.contains(&gpu.uuid), "{text}");
        assert!(text.contains(&format!("minor {}", gpu.minor)), "{text}");
    }
    let mig = &host.world.driver.mig_devices(1)[0].uuid;
    assert!(text.contains(&format!("MIG enabled: {mig}")), "{text}");
    assert!(text.contains("MIG disabled"), "GPU 0 has none: {text}");
    assert!(text.contains("libcuda.so.1 =>"), "{text}");
    assert!(
        text.contains(&format!("libcuda.so.{STALE_DRIVER_VERSION}")),
        "the stale library is listed as left out: {text}"
    );
    assert!(text.contains("docker: no config file"), "{text}");
    assert!(
        text.contains(&format!("cdi spec {}", spec.display()))
            && text.contains("matches the driver"),
        "{text}"
    );

    let out = host.ctk(&["info", "--json"]);
    out.assert_success("info --json");
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    let driver = &json["driver"]["Ok"];
    assert_eq!(driver["version"], DRIVER_VERSION);
    assert_eq!(driver["cuda_version"]["Ok"], "12.4");
    assert_eq!(driver["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(driver["gpus"][0]["uuid"], host.world.driver.gpus[0].uuid);
    assert!(driver["device_nodes"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| !p.as_str().unwrap().ends_with("nvidiactl")));
    assert_eq!(json["engines"].as_array().unwrap().len(), 4);
}

#[test]
fn doctor_on_a_healthy_host_and_with_a_broken_driver() {
    if !require_root() {
        return;
    }
    let host = Host::new("doctor-ok", FakeDriverOptions::two_gpus(), "");
    host.generate_spec();
    let out = host.doctor();
    eprintln!("{}", out.stdout);
    assert_eq!(out.status, 0, "{}", out.stdout);
    assert_line(&out, "config", "ok", "config.toml");
    assert_line(&out, "driver", "ok", DRIVER_VERSION);
    assert_line(&out, "device nodes", "ok", "nvidiactl");
    assert_line(&out, "libraries", "ok", "driver libraries");
    assert_line(&out, "cdi", "ok", "matches the driver");

    // /dev/nvidiactl gone.
    fs::remove_file(host.world.driver.dev_path("nvidiactl")).unwrap();
    let out = host.doctor();
    assert_eq!(out.status, 1);
    assert_line(&out, "device nodes", "fail", "nvidiactl is missing");

    // NVML gone from the driver root.
    let nvml = host
        .world
        .driver
        .lib_dir()
        .join(format!("libnvidia-ml.so.{DRIVER_VERSION}"));
    fs::remove_file(&nvml).unwrap();
    let out = host.doctor();
    assert_line(&out, "libraries", "fail", "libnvidia-ml.so.1 not found");
    // ... and so the CDI spec names a file that no longer exists.
    assert_line(&out, "cdi", "fail", "no longer exists");

    // No driver loaded.
    fs::remove_dir_all(host.world.driver.proc_root.join("driver/nvidia")).unwrap();
    let out = host.doctor();
    assert_line(&out, "driver", "fail", "no NVIDIA driver is loaded");
}

#[test]
fn doctor_names_a_driver_library_version_mismatch() {
    if !require_root() {
        return;
    }
    let mut options = FakeDriverOptions::two_gpus();
    options.kernel_version = "550.54.14".to_string();
    let host = Host::new("doctor-mismatch", options, "");
    let out = host.doctor();
    assert_eq!(out.status, 1);
    assert_line(&out, "libraries", "fail", "Driver/library version mismatch");
}

#[test]
fn doctor_checks_the_config_and_what_it_names() {
    if !require_root() {
        return;
    }
    let host = Host::new(
        "doctor-config",
        FakeDriverOptions::two_gpus(),
        "runtimes = [\"/nonexistent/runc\"]",
    );
    let out = host.doctor();
    assert_line(&out, "low-level runtime", "fail", "/nonexistent/runc");
    let text = fs::read_to_string(&host.world.config).unwrap();
    fs::write(
        &host.world.config,
        text.replace("runtimes = [\"/nonexistent/runc\"]", "")
            + "\n[nvidia-container-runtime-hook]\npath = \"/nonexistent/hook\"\n",
    )
    .unwrap();
    let out = host.doctor();
    assert_line(&out, "low-level runtime", "ok", "runc");
    assert_line(&out, "hook", "fail", "/nonexistent/hook");
    fs::write(&host.world.config, "[oops").unwrap();
    let out = host.doctor();
    assert_eq!(out.status, 1);
    assert_line(&out, "config", "fail", "is not valid TOML");
}

#[test]
fn doctor_checks_docker() {
    if !require_root() {
        return;
    }
    let host = Host::new("doctor-docker", FakeDriverOptions::two_gpus(), "");
    let daemon = host.file("etc/docker/daemon.json", "{\"log-level\": \"warn\",}");
    let out = host.doctor();
    assert_line(&out, "docker", "fail", "is not valid JSON");

    fs::write(&daemon, r#"{"default-runtime": "nvidia"}"#).unwrap();
    let out = host.doctor();
    assert_line(&out, "docker", "warn", "nvidia is not registered");
    assert_line(
        &out,
        "docker default runtime",
        "fail",
        "\"nvidia\" is not in runtimes",
    );

    fs::write(
        &daemon,
        r#"{"runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": []}}, "exec-opts": ["native.cgroupdriver=systemd"]}"#,
    )
    .unwrap();
    // A running dockerd, as the host's procfs shows it, whose PATH lacks
    // the hook.
    host.file("proc/4242/comm", "dockerd\n");
    host.file("proc/4242/environ", "HOME=/root\0PATH=/opt/docker/bin\0");
    // cgroup v2 (the unified hierarchy has cgroup.controllers).
    host.file("sys/fs/cgroup/cgroup.controllers", "cpu io memory\n");
    let out = host.doctor();
    assert_line(&out, "docker", "ok", "nvidia registered");
    assert_line(
        &out,
        "docker --gpus",
        "warn",
        "is not on dockerd's PATH (/opt/docker/bin)",
    );
    assert_line(
        &out,
        "cgroup v2 + systemd",
        "warn",
        "systemctl daemon-reload",
    );

    host.file("opt/docker/bin/nvidia-container-runtime-hook", "");
    let out = host.doctor();
    assert_line(&out, "docker --gpus", "ok", "is on dockerd's PATH");
}

#[test]
fn doctor_checks_containerd() {
    if !require_root() {
        return;
    }
    let host = Host::new("doctor-containerd", FakeDriverOptions::two_gpus(), "");
    let config = host.file("etc/containerd/config.toml", "version = 2\n");
    host.file(
        "etc/containerd/conf.d/99-nvidia.toml",
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]\nruntime_type = \"io.containerd.runc.v2\"\n",
    );
    let out = host.doctor();
    assert_line(&out, "containerd", "fail", "does not import it");

    fs::write(&config, "version = 2\nimports = [\"conf.d/*.toml\"]\n").unwrap();
    let out = host.doctor();
    assert_line(&out, "containerd", "ok", "nvidia registered");

    fs::write(&config, "version = 7\n").unwrap();
    let out = host.doctor();
    assert_line(&out, "containerd", "fail", "config version 7");
}

#[test]
fn doctor_checks_cdi_specs_and_kubernetes_trust() {
    if !require_root() {
        return;
    }
    let host = Host::new("doctor-cdi", FakeDriverOptions::two_gpus(), "");
    let spec = host.generate_spec();
    // A spec written for another driver version.
    let text = fs::read_to_string(&spec).unwrap();
    let stale = host.spec_dir.join("old.yaml");
    let old_lib = host
        .world
        .driver
        .lib_dir()
        .join(format!("libcuda.so.{STALE_DRIVER_VERSION}"));
    fs::write(
        &stale,
        text.replace("kind: nvidia.com/gpu", "kind: old.nvidia.com/gpu")
            .replace(
                &host
                    .world
                    .driver
                    .lib_dir()
                    .join(format!("libcuda.so.{DRIVER_VERSION}"))
                    .display()
                    .to_string(),
                &old_lib.display().to_string(),
            ),
    )
    .unwrap();
    let out = host.doctor();
    let stale_line = out
        .stdout
        .lines()
        .find(|l| l.contains("old.yaml"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        stale_line.starts_with("fail cdi:")
            && stale_line.contains(&format!("is of driver {STALE_DRIVER_VERSION}"))
            && stale_line.contains("nvidia-ctk cdi generate"),
        "{stale_line}"
    );

    // A Kubernetes node with the default (permissive) trust setting.
    fs::create_dir_all(host.root.join("var/lib/kubelet")).unwrap();
    let out = host.doctor();
    assert_line(&out, "kubernetes", "warn", "NVIDIA_VISIBLE_DEVICES=all");
    let text = fs::read_to_string(&host.world.config).unwrap();
    fs::write(
        &host.world.config,
        format!("accept-nvidia-visible-devices-envvar-when-unprivileged = false\n{text}"),
    )
    .unwrap();
    let out = host.doctor();
    assert_line(&out, "kubernetes", "ok", "cannot pick GPUs");
}

#[test]
fn info_tells_whether_an_images_cuda_compat_libraries_would_be_used() {
    if !require_root() {
        return;
    }
    let host = Host::new("info-compat", FakeDriverOptions::two_gpus(), "");
    let rootfs = host.world.tmp.path().join("image");
    let compat = rootfs.join("usr/local/cuda/compat");
    fs::create_dir_all(&compat).unwrap();
    fs::write(compat.join("libcuda.so.560.35.03"), "").unwrap();
    std::os::unix::fs::symlink("libcuda.so.560.35.03", compat.join("libcuda.so.1")).unwrap();
    let rootfs_arg = rootfs.to_str().unwrap();
    let out = host.ctk(&["info", "--rootfs", rootfs_arg]);
    out.assert_success("info --rootfs");
    assert!(
        out.stdout.contains("cuda compat: /usr/local/cuda/compat: libcuda 560.35.03 is newer than the host's driver: listed first (libcuda.so.1)"),
        "{}",
        out.stdout
    );
    fs::remove_file(compat.join("libcuda.so.560.35.03")).unwrap();
    fs::write(compat.join("libcuda.so.535.183.01"), "").unwrap();
    let out = host.ctk(&["info", "--rootfs", rootfs_arg]);
    assert!(
        out.stdout.contains(&format!(
            "libcuda 535.183.01 is not newer than the host's driver {DRIVER_VERSION}: not used"
        )),
        "{}",
        out.stdout
    );
}
