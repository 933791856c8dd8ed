//! End to end under real engines from Debian's archive: dockerd, containerd
//! (`ctr` and the Kubernetes CRI path) and podman, each registered with
//! `nvidia-ctk runtime configure` and pointed at the fake driver through
//! `NVIDIA_CTK_CONFIG_FILE_PATH` in the daemon's environment (engines pass
//! their environment down to the runtime). Every test starts its own daemon
//! with its own sockets, state and data dirs under a temp dir, so they run
//! beside a system daemon and beside each other. Images are imported from
//! a local rootfs; no registry, `--network=none` (or host networking).
//!
//! Each test runs once per engine generation (tests/common/generation.rs):
//! Debian 12's packages on the host (docker 20.10, containerd 1.6, podman
//! 4.3) and Debian sid's in the rig's root (docker 28, containerd 2.1,
//! podman 5.8), the same body with the checks only one generation can do
//! gated on it; each prints its engine's version and fails on an unexpected
//! major. What a generation cannot do here is printed as "not possible
//! here", with the engine's own error.
//!
//! Skips (loudly) only when not root; with `CI` set a missing engine fails.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");
const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");
const NVIDIA_DOCKER: &str = env!("CARGO_BIN_EXE_nvidia-docker");

/// The packages that hold the tools these tests run.
const INSTALL: &str = "apt-get install -y docker.io containerd podman runc busybox-static";

/// Root and the tools. Not root: a loud skip (a failure in CI). Root
/// without a tool: a failure that says what to install (issue 5: these
/// tests skip only when not running as root).
fn require(generation: Generation, tools: &[&str]) -> Option<Vec<PathBuf>> {
    if !require_generation(generation) {
        return None;
    }
    if generation.engines == Engines::Sid {
        // In the rig's root, which the rig checked when it built it.
        return Some(tools.iter().map(PathBuf::from).collect());
    }
    let found = tools
        .iter()
        .map(|tool| {
            find_in_path(tool).unwrap_or_else(|| panic!("`{tool}` is not installed: {INSTALL}"))
        })
        .collect();
    Some(found)
}

/// The fake driver and a config.toml pointing at it.
struct Gpus {
    driver: FakeDriver,
    config: PathBuf,
}

impl Gpus {
    fn new(dir: &Path) -> Gpus {
        let driver = FakeDriver::build(&dir.join("driver"), &FakeDriverOptions::two_gpus());
        let config = driver.write_config(&dir.join("ncr-config.toml"), "");
        Gpus { driver, config }
    }

    /// The environment a daemon needs: our config, and the dir of our
    /// binaries first on PATH (dockerd offers `--gpus` only when it finds
    /// nvidia-container-runtime-hook there).
    fn daemon_env(&self) -> Vec<(String, String)> {
        let bin_dir = Path::new(HOOK).parent().unwrap().display().to_string();
        let path = format!(
            "{bin_dir}:{}",
            std::env::var("PATH").unwrap_or_else(|_| CONTAINER_PATH.to_string())
        );
        vec![
            (
                "NVIDIA_CTK_CONFIG_FILE_PATH".to_string(),
                self.config.display().to_string(),
            ),
            ("PATH".to_string(), path),
        ]
    }

    /// Asserts that `stdout` of [`GPU_SCRIPT`] shows exactly GPU `index`.
    fn assert_sees_only(&self, stdout: &str, index: usize, what: &str) {
        assert_sees_only_gpu(&self.driver, stdout, index, &[], what);
    }

    /// [`Gpus::assert_sees_only`] for a container given GPU `index` from the
    /// generated CDI spec, whose common edits also hold `nvidia-modeset`
    /// (as NVIDIA's spec does).
    fn assert_sees_only_from_spec(&self, stdout: &str, index: usize, what: &str) {
        assert_sees_only_gpu(&self.driver, stdout, index, &["nvidia-modeset"], what);
    }

    fn debug_log(&self) -> String {
        fs::read_to_string(self.driver.debug_log_path()).unwrap_or_default()
    }

    /// `nvidia-ctk cdi generate --output <spec_dir>/nvidia.yaml` for the
    /// fake driver (the engines' own CDI reads that dir); the spec's path.
    fn generate_cdi_spec(&self, spec_dir: &Path) -> PathBuf {
        fs::create_dir_all(spec_dir).unwrap();
        let spec = spec_dir.join("nvidia.yaml");
        run(Command::new(CTK)
            .args(["cdi", "generate", "--output"])
            .arg(&spec)
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &self.config)
            // The fake NVML finds the fake GPUs here.
            .env("FAKE_NVML_DEV_ROOT", &self.driver.dev_root));
        spec
    }

    /// A copy of the generated spec as one made before a driver upgrade
    /// would be: kind `nvidia.com/stale`, every driver file named with a
    /// version no longer installed.
    fn write_stale_spec(&self, spec: &Path) -> PathBuf {
        let text = fs::read_to_string(spec).unwrap();
        assert!(text.contains(DRIVER_VERSION), "{text}");
        let stale = text
            .replace("kind: nvidia.com/gpu", "kind: nvidia.com/stale")
            .replace(DRIVER_VERSION, "999.1.2");
        let path = spec.with_file_name("nvidia-stale.yaml");
        fs::write(&path, stale).unwrap();
        path
    }
}

/// Prints a cell of the engine x feature table that cannot run here, with
/// the engine's own words.
fn not_possible(generation: Generation, what: &str, why: &str) {
    eprintln!("{generation}: {what}: not possible here: {why}");
}

/// A rootfs (see tests/common) as a tar for `docker import`/`podman import`.
fn rootfs_tar(dir: &Path, kind: RootfsKind) -> PathBuf {
    let build = dir.join(format!("{kind:?}").replace(['{', '}', ' ', ':'], "_"));
    let rootfs = build_rootfs(&build, kind);
    let tar = build.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    tar
}

/// Runs `cmd` to completion; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `nvidia-ctk runtime configure ARGS` with our runtime's path.
fn configure(args: &[&str]) -> String {
    run(Command::new(CTK)
        .args(["runtime", "configure"])
        .args(args)
        .arg(format!("--nvidia-runtime-path={RUNTIME}")))
}

// ---------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------

per_generation!(dockerd_end_to_end: debian12 = Generation::DEBIAN12,
    sid = Generation::SID,
    debian12_cgroup_v2 = Generation::DEBIAN12.on_cgroup_v2(),
    sid_cgroup_v2 = Generation::SID.on_cgroup_v2()
);

/// dockerd in a cgroup v2 namespace (it warns that it cannot find the cpu
/// and memory controllers: only hugetlb is free for v2 here).
fn dockerd_end_to_end(generation: Generation) {
    let Some(_) = require(generation, &["dockerd", "containerd", "runc"]) else {
        return;
    };
    generation.check_version("dockerd");
    generation.check_version_at("docker", &docker_cli(generation));
    let tmp = TempDir::new("e2e-docker");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    let env = gpus.daemon_env();
    // Docker's own CDI (docker 25+, on by default from 28) reads the spec
    // dirs of daemon.json; docker 20.10 refuses an unknown key there.
    let docker_has_cdi = generation.engines == Engines::Sid;
    let spec_dir = dir.join("cdi");

    // The admin's daemon.json before we come: configure merges into it.
    let daemon_json = dir.join("daemon.json");
    let admins = match docker_has_cdi {
        true => json!({"log-level": "warn", "cdi-spec-dirs": [spec_dir]}),
        false => json!({"log-level": "warn"}),
    };
    fs::write(&daemon_json, serde_json::to_string_pretty(&admins).unwrap()).unwrap();
    let mut docker = Docker::start(generation, dir, &daemon_json, &env);
    let image_tar = rootfs_tar(dir, RootfsKind::Glibc { ldconfig: false });
    docker
        .run(&["import", &image_tar.display().to_string(), "ncr-gpu:latest"])
        .assert_success("docker import");

    // A stock Docker (runc its only runtime) with our package's hook on its
    // PATH: `--gpus` works through the hook alone (the hook-only mode).
    for (flag, indices) in [("device=0", &[0usize][..]), ("all", &[0, 1][..])] {
        let out = docker.run(&[
            "run",
            "--rm",
            "--network=none",
            "--gpus",
            flag,
            "ncr-gpu",
            "nvidia-smi",
            "-L",
        ]);
        out.assert_success(&format!("docker run --gpus {flag} on plain runc"));
        assert_eq!(
            out.stdout,
            gpus.driver.smi_output(indices),
            "docker run --gpus {flag} on plain runc\n{}",
            gpus.debug_log()
        );
    }

    // Docker's own CDI with the spec `nvidia-ctk cdi generate` wrote: plain
    // runc, the devices and our hooks from the spec.
    if docker_has_cdi {
        let spec = gpus.generate_cdi_spec(&spec_dir);
        gpus.write_stale_spec(&spec);
        for (device, indices) in [
            ("nvidia.com/gpu=0", &[0usize][..]),
            ("nvidia.com/gpu=all", &[0, 1][..]),
        ] {
            let out = docker.run(&[
                "run",
                "--rm",
                "--network=none",
                "--device",
                device,
                "ncr-gpu",
                "nvidia-smi",
                "-L",
            ]);
            out.assert_success(&format!("docker run --device {device} ({generation})"));
            assert_eq!(
                out.stdout,
                gpus.driver.smi_output(indices),
                "--device {device}"
            );
        }
        // What a user sees for a GPU the spec does not have, and for a spec
        // left from a driver that is gone.
        let unknown = docker.run(&[
            "run",
            "--rm",
            "--network=none",
            "--device",
            "nvidia.com/gpu=9",
            "ncr-gpu",
            "true",
        ]);
        assert!(!unknown.success(), "{unknown:?}");
        assert!(
            unknown
                .stderr
                .contains("unresolvable CDI devices nvidia.com/gpu=9"),
            "{}",
            unknown.stderr
        );
        eprintln!(
            "{generation}: docker run --device nvidia.com/gpu=9: {}",
            unknown.stderr.trim()
        );
        let stale = docker.run(&[
            "run",
            "--rm",
            "--network=none",
            "--device",
            "nvidia.com/stale=0",
            "ncr-gpu",
            "true",
        ]);
        assert!(!stale.success(), "{stale:?}");
        assert!(
            stale.stderr.contains("999.1.2"),
            "the error names the missing file: {}",
            stale.stderr
        );
        eprintln!(
            "{generation}: docker run --device nvidia.com/stale=0 (a spec of a removed driver): {}",
            stale.stderr.trim()
        );
    } else {
        let out = docker.run(&[
            "run",
            "--rm",
            "--network=none",
            "--device",
            "nvidia.com/gpu=0",
            "ncr-gpu",
            "true",
        ]);
        assert!(!out.success(), "docker 20.10 has no CDI, yet: {out:?}");
        not_possible(
            generation,
            "docker run --device nvidia.com/gpu=0 (Docker's CDI)",
            out.stderr.trim(),
        );
    }

    // Registration: `runtimes` reloads on SIGHUP, as the next steps say.
    let config_arg = format!("--config={}", daemon_json.display());
    let out = configure(&["--runtime=docker", &config_arg]);
    assert!(out.contains("kill -s HUP"), "{out}");
    let written: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&daemon_json).unwrap()).unwrap();
    assert_eq!(written["log-level"], "warn");
    docker.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker.runtimes().contains("\"nvidia\"") {
        assert!(
            Instant::now() < deadline,
            "dockerd did not load the runtime on SIGHUP: {}\n{}",
            docker.runtimes(),
            docker.daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A bad request fails `docker run` with our message in its output.
    let bad = docker.run(&[
        "run",
        "--rm",
        "--network=none",
        "--runtime=nvidia",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=9",
        "ncr-gpu",
        "true",
    ]);
    assert!(!bad.success(), "NVIDIA_VISIBLE_DEVICES=9 ran: {bad:?}");
    assert!(
        bad.stderr.contains("NVIDIA_VISIBLE_DEVICES names GPU 9"),
        "our message is not in docker's output: {}",
        bad.stderr
    );

    // --runtime=nvidia with a request: exactly GPU 1.
    let gpu1 = docker.run(&[
        "run",
        "--rm",
        "--network=none",
        "--runtime=nvidia",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        "ncr-gpu",
        "sh",
        "-c",
        GPU_SCRIPT,
    ]);
    gpu1.assert_success("docker run --runtime=nvidia");
    gpus.assert_sees_only(
        &gpu1.stdout,
        1,
        "docker run --runtime=nvidia -e NVIDIA_VISIBLE_DEVICES=1",
    );

    // nvidia-docker 2's wrapper, for real: NV_GPU and --runtime=nvidia.
    let mut wrapper = Command::new(NVIDIA_DOCKER);
    wrapper
        .args([
            "run",
            "--rm",
            "--network=none",
            "ncr-gpu",
            "sh",
            "-c",
            GPU_SCRIPT,
        ])
        .env(
            "NV_DOCKER",
            match generation.engines {
                Engines::Debian12 => format!("{} --host {}", docker.cli.display(), docker.host),
                Engines::Sid => format!(
                    "{RIG} enter -- {} --host {}",
                    docker.cli.display(),
                    docker.host
                ),
            },
        )
        .env("NV_GPU", "1")
        .env("DOCKER_CONFIG", &docker.client_config);
    let wrapped = output(wrapper);
    wrapped.assert_success("nvidia-docker run");
    gpus.assert_sees_only(&wrapped.stdout, 1, "NV_GPU=1 nvidia-docker run");

    // default-runtime needs a restart.
    let out = configure(&["--runtime=docker", &config_arg, "--set-as-default"]);
    assert!(out.contains("systemctl restart docker"), "{out}");
    docker.daemon.stop();
    drop(docker);
    let docker = Docker::start(generation, dir, &daemon_json, &env);
    assert!(
        docker.runtimes().trim_end().ends_with(" nvidia"),
        "{}",
        docker.runtimes()
    );
    // The library's Engine API client (what the node installer checks a
    // dockerd reload with) reads what the docker CLI reads.
    let info = nvidia_container_runtime::engine_api::docker::info(
        &dir.join("docker.sock"),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(info.default_runtime, "nvidia", "{info:?}");
    let cli: serde_json::Value = serde_json::from_str(
        docker
            .run(&["info", "--format", "{{json .Runtimes}}"])
            .stdout
            .trim(),
    )
    .unwrap();
    let mut listed: Vec<String> = cli.as_object().unwrap().keys().cloned().collect();
    listed.sort();
    let mut ours = info.runtimes.clone();
    ours.sort();
    assert_eq!(ours, listed);
    assert!(ours.iter().any(|r| r == "nvidia"), "{info:?}");
    let version = docker
        .run(&["version", "--format", "{{.Server.Version}}"])
        .stdout;
    assert_eq!(info.server_version, version.trim());

    // A container that asks for nothing runs exactly as under runc. The
    // device list without times (`ls -l` prints each node's mtime, which
    // is the container's start, so two runs a minute apart differed).
    let probe = "stat -c '%n %A %u:%g %t:%T' /dev/* /dev/pts/*; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; \
                 mount | grep -v ' / '; env | grep -v HOSTNAME | sort";
    let id = unique_id("plain");
    let plain = docker.run(&[
        "run",
        "--name",
        &id,
        "--network=none",
        "ncr-gpu",
        "sh",
        "-c",
        probe,
    ]);
    plain.assert_success("default runtime, no request");
    let container_id = docker.run(&["inspect", "--format", "{{.Id}}", &id]).stdout;
    docker.run(&["rm", &id]).assert_success("docker rm");
    let runc = docker.run(&[
        "run",
        "--rm",
        "--runtime=runc",
        "--network=none",
        "ncr-gpu",
        "sh",
        "-c",
        probe,
    ]);
    runc.assert_success("--runtime=runc");
    assert_eq!(
        plain.stdout, runc.stdout,
        "no-request container differs from runc's"
    );
    assert!(!plain.stdout.contains("nvidia"), "{}", plain.stdout);
    assert!(
        plain.stdout.contains("/dev/null crw-rw-rw- 0:0 1:3\n"),
        "{}",
        plain.stdout
    );
    let log = gpus.debug_log();
    assert!(
        log.lines()
            .any(|l| l.contains(container_id.trim()) && l.contains("no GPU requested")),
        "the default runtime did not see container {container_id}: {log}"
    );

    // docker --gpus: dockerd adds its hook and NVIDIA_VISIBLE_DEVICES; we
    // drop that hook and inject GPU 0 once.
    let gpus_flag = docker.run(&[
        "run",
        "--rm",
        "--network=none",
        "--gpus",
        "device=0",
        "ncr-gpu",
        "sh",
        "-c",
        GPU_SCRIPT,
    ]);
    gpus_flag.assert_success("docker run --gpus device=0");
    gpus.assert_sees_only(&gpus_flag.stdout, 0, "docker run --gpus device=0");

    // --uninstall takes us out again; dockerd starts with the result.
    configure(&["--runtime=docker", &config_arg, "--uninstall"]);
    let text = fs::read_to_string(&daemon_json).unwrap();
    assert!(!text.contains("nvidia"), "{text}");
}

// ---------------------------------------------------------------------------
// containerd: ctr and the Kubernetes CRI path
// ---------------------------------------------------------------------------

per_generation!(containerd_reads_our_drop_in_with_the_admins_settings);

fn containerd_reads_our_drop_in_with_the_admins_settings(generation: Generation) {
    let Some(_) = require(generation, &["containerd"]) else {
        return;
    };
    generation.check_version("containerd");
    let tmp = TempDir::new("e2e-ctd-dump");
    let config = tmp.path().join("config.toml");
    fs::write(
        &config,
        containerd_config(generation, tmp.path(), &tmp.path().join("cdi")),
    )
    .unwrap();
    configure(&[
        "--runtime=containerd",
        &format!("--config={}", config.display()),
    ]);
    let mut dump = generation.command("containerd");
    dump.arg("--config").arg(&config).args(["config", "dump"]);
    // containerd 2 prints single-quoted keys and strings.
    let dump = run(&mut dump).replace('\'', "\"");
    let plugin = cri_runtime_plugin(generation);
    let runtime = format!("BinaryName = \"{RUNTIME}\"");
    let ours = format!("[plugins.\"{plugin}\".containerd.runtimes.nvidia.options]");
    let runc = format!("[plugins.\"{plugin}\".containerd.runtimes.runc.options]");
    for expected in [
        runtime.as_str(),
        ours.as_str(),
        runc.as_str(),
        "container_annotations = [\"cdi.k8s.io/*\"]",
        PAUSE_IMAGE,
        "stream_server_port = \"0\"",
        "restrict_oom_score_adj = true",
    ] {
        assert!(
            dump.contains(expected),
            "{expected} missing from containerd's view ({generation}):\n{dump}"
        );
    }
}

struct Containerd {
    daemon: Daemon,
    generation: Generation,
    socket: PathBuf,
}

impl Containerd {
    fn start(
        generation: Generation,
        dir: &Path,
        config: &Path,
        env: &[(String, String)],
    ) -> Containerd {
        let mut cmd = generation.command("containerd");
        cmd.arg("--config").arg(config);
        let mut daemon = Daemon::start("containerd", cmd, dir.join("containerd.log"), env);
        let socket = dir.join("containerd.sock");
        let probe_socket = socket.clone();
        daemon.wait_ready(|| cri::answers(&probe_socket));
        Containerd {
            daemon,
            generation,
            socket,
        }
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = self.generation.command("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args);
        cmd
    }
}

/// The library's CRI client (src/engine_api, what the node installer
/// checks a restart with) against containerd, read beside tonic's
/// generated client: the same Version, RuntimeReady, the same verbose
/// config, and our handler among the ones it names (1.6 and 1.7
/// have no `runtime_handlers`: their CRI config's runtimes stand in).
fn assert_our_cri_client_reads_what_kubelet_reads(generation: Generation, socket: &Path) {
    use nvidia_container_runtime::engine_api::cri as ours;
    let timeout = Duration::from_secs(30);
    let version = ours::version(socket, timeout).unwrap();
    let status = ours::status(socket, true, timeout).unwrap();
    let (their_version, their_status) = cri::version_and_status(socket).unwrap();
    println!(
        "our CRI client ({generation}): {version:?}, handlers {:?}",
        status.handlers()
    );
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_name, their_version.runtime_name);
    assert_eq!(version.runtime_version, their_version.runtime_version);
    assert_eq!(
        version.runtime_api_version,
        their_version.runtime_api_version
    );
    assert!(
        version
            .runtime_version
            .starts_with(match generation.engines {
                Engines::Debian12 => "1.6.",
                Engines::Sid => "2.",
            })
            || version.runtime_version.starts_with('v'),
        "{version:?}"
    );
    let ready = status.condition("RuntimeReady").expect("RuntimeReady");
    assert!(ready.status, "{ready:?}");
    let their_ready = their_status
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert_eq!(ready.status, their_ready.status);
    assert_eq!(
        status.info("config"),
        their_status.info.get("config").map(String::as_str)
    );
    let their_handlers: Vec<String> = their_status
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(status.runtime_handlers, their_handlers);
    let handlers = status.handlers().expect("containerd names its handlers");
    // `runtime configure` adds the one handler (the installer all three).
    for name in ["runc", "nvidia"] {
        assert!(
            handlers.iter().any(|h| h == name),
            "{name} not in {handlers:?}"
        );
    }
    if generation.engines == Engines::Sid {
        assert!(
            !status.runtime_handlers.is_empty(),
            "containerd 2 fills runtime_handlers"
        );
    }
}

per_generation!(containerd_ctr_and_cri_end_to_end);

fn containerd_ctr_and_cri_end_to_end(generation: Generation) {
    let Some(_) = require(generation, &["containerd", "ctr", "runc"]) else {
        return;
    };
    generation.check_version("containerd");
    // containerd resolves CRI CDIDevices itself from 1.7 on (2.x: enable_cdi
    // on by default); 1.6's CRI has no CDI at all.
    let containerd_has_cdi = generation.engines == Engines::Sid;
    let tmp = TempDir::new("e2e-ctd");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    // Our runtime's CDI mode reads the same spec dir as containerd's.
    let spec_dir = dir.join("cdi");
    let text = fs::read_to_string(&gpus.config).unwrap();
    fs::write(
        &gpus.config,
        format!(
            "{text}\n[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
            spec_dir.display()
        ),
    )
    .unwrap();
    gpus.generate_cdi_spec(&spec_dir);
    let config = dir.join("config.toml");
    let admins = containerd_config(generation, dir, &dir.join("cdi"));
    fs::write(&config, &admins).unwrap();
    // The drop-in and the imports line, as an admin would run it.
    let config_arg = format!("--config={}", config.display());
    let mut args = vec!["--runtime=containerd", config_arg.as_str()];
    if containerd_has_cdi {
        args.push("--cdi.enabled");
    }
    let out = configure(&args);
    assert!(out.contains("systemctl restart containerd"), "{out}");
    assert!(dir.join("conf.d/99-nvidia.toml").exists());

    let containerd = Containerd::start(generation, dir, &config, &gpus.daemon_env());
    assert_our_cri_client_reads_what_kubelet_reads(generation, &containerd.socket);
    for (kind, name, entrypoint) in [
        (
            RootfsKind::Glibc { ldconfig: false },
            GPU_IMAGE,
            &["sh"][..],
        ),
        (RootfsKind::Busybox, PAUSE_IMAGE, &["sleep", "1000000"][..]),
    ] {
        let archive = oci_archive(dir, kind, name, entrypoint);
        let archive = archive.display().to_string();
        run(&mut containerd.ctr(&["image", "import", "--snapshotter", "overlayfs", &archive]));
    }

    // Without CRI: ctr run --runc-binary <our runtime>.
    let id = unique_id("ctr");
    // ctr's fifos in the test's dir: under the rig every command has its
    // own /run, and containerd's shim must find them.
    let fifo_dir = dir.join("fifo").display().to_string();
    let ctr = output(containerd.ctr(&[
        "run",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        "--snapshotter",
        "overlayfs",
        "--runc-binary",
        RUNTIME,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=1",
        GPU_IMAGE,
        &id,
        "sh",
        "-c",
        GPU_SCRIPT,
    ]));
    ctr.assert_success("ctr run --runc-binary");
    gpus.assert_sees_only(&ctr.stdout, 1, "ctr run --runc-binary");

    // Kubernetes: the runtime handler `nvidia` that configure wrote, which
    // the CRI's status lists (kubelet's node.status.runtimeHandlers).
    let handlers = cri::runtime_handlers(&containerd.socket)
        .unwrap_or_else(|e| panic!("CRI Status: {e}\n{}", containerd.daemon.log_text()));
    if generation.engines == Engines::Sid {
        assert!(handlers.iter().any(|h| h == "nvidia"), "{handlers:?}");
    } else {
        assert!(handlers.is_empty(), "{handlers:?}");
        not_possible(
            generation,
            "the CRI status's runtime handlers",
            "containerd 1.6's Status has no runtime_handlers (CRI API 1.30)",
        );
    }
    let logs = dir.join("pod-logs");
    let pod = |name: &str, pod: cri::Pod| {
        let log_dir = logs.join(name);
        fs::create_dir_all(&log_dir).unwrap();
        cri::run(&containerd.socket, &log_dir, &pod)
            .unwrap_or_else(|e| panic!("CRI {name}: {e}\n{}", containerd.daemon.log_text()))
    };
    let output = pod(
        "envvar",
        cri::Pod::new(GPU_IMAGE, "nvidia").env(&["NVIDIA_VISIBLE_DEVICES=1"]),
    );
    gpus.assert_sees_only(
        &output,
        1,
        "CRI RunPodSandbox(runtime_handler=nvidia) + container",
    );

    // A CDI request as a pod annotation: containerd passes it to our runtime
    // through the entry's container_annotations.
    let mut annotated = cri::Pod::new(GPU_IMAGE, "nvidia");
    annotated
        .annotations
        .push(("cdi.k8s.io/ncr-test".into(), "nvidia.com/gpu=1".into()));
    let output = pod("annotation", annotated);
    gpus.assert_sees_only_from_spec(
        &output,
        1,
        "CRI annotation cdi.k8s.io/ncr-test=nvidia.com/gpu=1",
    );

    // CRI CDIDevices (the device plugin's cdi-cri strategy), under plain
    // runc: containerd itself applies the spec.
    let mut cdi_pod = cri::Pod::new(GPU_IMAGE, "");
    cdi_pod.cdi_devices.push("nvidia.com/gpu=0".into());
    cdi_pod.command = ["sh", "-c", "ls /dev | grep -c '^nvidia[0-9]' || true"]
        .map(String::from)
        .to_vec();
    let output = pod("cdi-devices", cdi_pod.clone());
    if containerd_has_cdi {
        cdi_pod.command.clear();
        let output = pod("cdi-devices-smi", cdi_pod);
        gpus.assert_sees_only_from_spec(&output, 0, "CRI CDIDevices nvidia.com/gpu=0 on runc");
    } else {
        assert_eq!(
            output.trim(),
            "0",
            "containerd 1.6 applied CDIDevices: {output}"
        );
        not_possible(
            generation,
            "CRI CDIDevices",
            "containerd 1.6's CRI ignores the field (the container got no GPU node)",
        );
    }

    // --uninstall gives the admin's config back, byte for byte.
    drop(containerd);
    let out = configure(&["--runtime=containerd", &config_arg, "--uninstall"]);
    assert!(out.contains("restart containerd"), "{out}");
    assert_eq!(fs::read_to_string(&config).unwrap(), admins);
    assert!(!dir.join("conf.d/99-nvidia.toml").exists());
}

per_generation!(containerd_on_cgroup_v2: debian12 = Generation::DEBIAN12.on_cgroup_v2(), sid = Generation::SID.on_cgroup_v2());

/// containerd in a cgroup v2 namespace: `ctr run` works once it asks for no
/// CPU shares (only hugetlb is free for v2 here), the CRI does not (its
/// sandbox writes cpu.weight): the test prints the CRI's error, and fails if
/// the CRI starts working, so that the cell gets tested then.
fn containerd_on_cgroup_v2(generation: Generation) {
    let Some(_) = require(generation, &["containerd", "ctr", "runc"]) else {
        return;
    };
    generation.check_version("containerd");
    let tmp = TempDir::new("e2e-ctd-v2");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    let config = dir.join("config.toml");
    fs::write(
        &config,
        containerd_config(generation, dir, &dir.join("cdi")),
    )
    .unwrap();
    configure(&[
        "--runtime=containerd",
        &format!("--config={}", config.display()),
    ]);
    let containerd = Containerd::start(generation, dir, &config, &gpus.daemon_env());
    for (kind, name, entrypoint) in [
        (
            RootfsKind::Glibc { ldconfig: false },
            GPU_IMAGE,
            &["sh"][..],
        ),
        (RootfsKind::Busybox, PAUSE_IMAGE, &["sleep", "1000000"][..]),
    ] {
        let archive = oci_archive(dir, kind, name, entrypoint)
            .display()
            .to_string();
        run(&mut containerd.ctr(&["image", "import", "--snapshotter", "overlayfs", &archive]));
    }
    let fifo_dir = dir.join("fifo").display().to_string();
    let id = unique_id("ctr-v2");
    let ctr = output(containerd.ctr(&[
        "run",
        "--rm",
        "--fifo-dir",
        &fifo_dir,
        "--snapshotter",
        "overlayfs",
        "--cpu-shares",
        "0",
        "--runc-binary",
        RUNTIME,
        "--env",
        "NVIDIA_VISIBLE_DEVICES=1",
        GPU_IMAGE,
        &id,
        "sh",
        "-c",
        GPU_SCRIPT,
    ]));
    ctr.assert_success(&format!("ctr run --runc-binary ({generation})"));
    gpus.assert_sees_only(&ctr.stdout, 1, "ctr run --runc-binary on cgroup v2");

    let logs = dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let pod = cri::Pod::new(GPU_IMAGE, "nvidia").env(&["NVIDIA_VISIBLE_DEVICES=1"]);
    match cri::run(&containerd.socket, &logs, &pod) {
        Ok(output) => panic!(
            "the CRI now runs pods on this machine's cgroup v2: make this cell a real test\n{output}"
        ),
        Err(error) => not_possible(generation, "a CRI pod on cgroup v2", &error.to_string()),
    }
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

per_generation!(podman_end_to_end: debian12 = Generation::DEBIAN12,
    sid = Generation::SID,
    debian12_cgroup_v2 = Generation::DEBIAN12.on_cgroup_v2(),
    sid_cgroup_v2 = Generation::SID.on_cgroup_v2()
);

fn podman_end_to_end(generation: Generation) {
    let Some(_) = require(generation, &["podman", "runc"]) else {
        return;
    };
    generation.check_version("podman");
    // podman 5's containers.conf names CDI spec dirs (4.3 reads only the
    // system dirs: tests/cdi_hooks.rs runs it there), and its --gpus is CDI.
    let podman_5 = generation.engines == Engines::Sid;
    let tmp = TempDir::new("e2e-podman");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    let spec_dir = dir.join("cdi");
    // podman does not pass its environment to the runtime (conmon gets
    // only LC_*, XDG_RUNTIME_DIR, HOME, ...), unlike dockerd and
    // containerd: a two-line wrapper points our runtime at the fake driver.
    let wrapper = dir.join("nvidia-container-runtime");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexport NVIDIA_CTK_CONFIG_FILE_PATH='{}'\nexec '{RUNTIME}' \"$@\"\n",
            gpus.config.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper_path = wrapper.display().to_string();
    // containers.conf written by configure, read by podman through
    // CONTAINERS_CONF: `--runtime nvidia` names our entry.
    let containers_conf = dir.join("containers.conf");
    let cdi_dirs = match podman_5 {
        true => format!("cdi_spec_dirs = [\"{}\"]\n", spec_dir.display()),
        false => String::new(),
    };
    fs::write(
        &containers_conf,
        format!("# the admin's settings\n[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n{cdi_dirs}"),
    )
    .unwrap();
    run(Command::new(CTK).args([
        "runtime",
        "configure",
        "--runtime=podman",
        &format!("--config={}", containers_conf.display()),
        &format!("--nvidia-runtime-path={wrapper_path}"),
    ]));
    // In cgroup v2 mode only hugetlb is free here: no pids controller for
    // podman's default limit (testing.md).
    let run_flags: Vec<&str> = match generation.cgroup {
        CgroupMode::V1 => PODMAN_RUN.to_vec(),
        CgroupMode::V2 => [&PODMAN_RUN[..], &["--pids-limit=0"]].concat(),
    };
    let podman = |args: &[&str]| {
        let mut cmd = podman_command_in(generation, dir, &containers_conf);
        cmd.args(args);
        for (key, value) in gpus.daemon_env() {
            cmd.env(key, value);
        }
        cmd
    };
    let _reset = PodmanReset(&podman);
    let image_tar = rootfs_tar(dir, RootfsKind::Glibc { ldconfig: false });
    run(&mut podman(&[
        "import",
        &image_tar.display().to_string(),
        "localhost/ncr-gpu:latest",
    ]));
    // run_flags (PODMAN_RUN) ask for ulimits this machine allows.
    for runtime in [wrapper_path.as_str(), "nvidia"] {
        let out = output(podman(
            &[
                &run_flags[..],
                &[
                    "--runtime",
                    runtime,
                    "-e",
                    "NVIDIA_VISIBLE_DEVICES=1",
                    "localhost/ncr-gpu:latest",
                    "sh",
                    "-c",
                    GPU_SCRIPT,
                ],
            ]
            .concat(),
        ));
        out.assert_success(&format!("podman run --runtime {runtime}"));
        gpus.assert_sees_only(&out.stdout, 1, &format!("podman run --runtime {runtime}"));
    }

    // CDI with the spec `nvidia-ctk cdi generate` wrote: `--device`, and
    // podman 5's `--gpus`, which asks CDI for nvidia.com/gpu=<list>.
    if podman_5 {
        gpus.generate_cdi_spec(&spec_dir);
        for (flags, indices) in [
            (&["--device", "nvidia.com/gpu=0"][..], &[0usize][..]),
            (&["--gpus", "all"][..], &[0, 1][..]),
        ] {
            let args = [
                &run_flags[..],
                flags,
                &["localhost/ncr-gpu:latest", "nvidia-smi", "-L"],
            ]
            .concat();
            let out = output(podman(&args));
            out.assert_success(&format!("podman run {flags:?} ({generation})"));
            assert_eq!(
                out.stdout,
                gpus.driver.smi_output(indices),
                "podman run {flags:?}"
            );
        }
    } else {
        let args = [
            &run_flags[..],
            &[
                "--runtime=runc",
                "--gpus",
                "all",
                "localhost/ncr-gpu:latest",
            ],
            &["sh", "-c", "ls /dev | grep -c nvidia || true"],
        ]
        .concat();
        let out = output(podman(&args));
        out.assert_success("podman 4.3 run --gpus all");
        assert_eq!(
            out.stdout.trim(),
            "0",
            "podman 4.3 gave a GPU for --gpus: {out:?}"
        );
        not_possible(
            generation,
            "podman run --gpus all",
            "podman 4.3 accepts --gpus and ignores it (the container has no GPU node); CDI --device works there (tests/cdi_hooks.rs)",
        );
    }

    // hooks.d: the package's file (precreate, gated on the annotation), with
    // our hook's path and the fake driver's config: plain runc, the GPU from
    // the annotation; an image's NVIDIA_VISIBLE_DEVICES alone asks for none.
    let hooks_dir = dir.join("hooks.d");
    fs::create_dir_all(&hooks_dir).unwrap();
    let shipped: serde_json::Value =
        serde_json::from_str(include_str!("../packaging/hooks.d/oci-nvidia-hook.json")).unwrap();
    let mut hook = shipped.clone();
    hook["hook"]["path"] = serde_json::json!(HOOK);
    hook["hook"]["env"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!(format!(
            "NVIDIA_CTK_CONFIG_FILE_PATH={}",
            gpus.config.display()
        )));
    fs::write(hooks_dir.join("oci-nvidia-hook.json"), hook.to_string()).unwrap();
    let hooks_arg = format!("--hooks-dir={}", hooks_dir.display());
    let podman_run = |extra: &[&str], script: &str| {
        let mut args = vec![hooks_arg.as_str()];
        args.extend_from_slice(&run_flags);
        args.push("--runtime=runc");
        args.extend_from_slice(extra);
        args.extend_from_slice(&["localhost/ncr-gpu:latest", "sh", "-c", script]);
        output(podman(&args))
    };
    let out = podman_run(&["--annotation", "nvidia.com/gpus=0"], GPU_SCRIPT);
    out.assert_success("podman --hooks-dir run --annotation nvidia.com/gpus=0");
    gpus.assert_sees_only(&out.stdout, 0, "podman hooks.d, nvidia.com/gpus=0");
    let out = podman_run(
        &["-e", "NVIDIA_VISIBLE_DEVICES=all"],
        "ls /dev | grep -c nvidia; command -v nvidia-smi || echo no-nvidia-smi",
    );
    out.assert_success("podman --hooks-dir run -e NVIDIA_VISIBLE_DEVICES=all");
    assert_eq!(out.stdout, "0\nno-nvidia-smi\n", "no annotation, no GPU");
}
