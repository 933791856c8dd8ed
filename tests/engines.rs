//! End to end under real engines from Debian's archive: dockerd, containerd
//! (`ctr` and the Kubernetes CRI path) and podman, each registered with
//! `nvidia-ctk runtime configure` and pointed at the fake driver through
//! `NVIDIA_CTK_CONFIG_FILE_PATH` in the daemon's environment (engines pass
//! their environment down to the runtime). Every test starts its own daemon
//! with its own sockets, state and data dirs under a temp dir, so they run
//! beside a system daemon and beside each other. Images are imported from
//! a local rootfs; no registry, `--network=none` (or host networking).
//!
//! Skips (loudly) only when not root; with `CI` set a missing engine fails.
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");
const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");
const NVIDIA_DOCKER: &str = env!("CARGO_BIN_EXE_nvidia-docker");
/// What GPU containers run: the nodes they see, then the fake nvidia-smi.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(90);

/// The packages that hold the tools these tests run.
const INSTALL: &str = "apt-get install -y docker.io containerd podman runc busybox-static";

/// Root and the tools. Not root: a loud skip (a failure in CI). Root
/// without a tool: a failure that says what to install (issue 5: these
/// tests skip only when not running as root).
fn require(tools: &[&str]) -> Option<Vec<PathBuf>> {
    if !require_root() {
        return None;
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

    fn debug_log(&self) -> String {
        fs::read_to_string(self.driver.debug_log_path()).unwrap_or_default()
    }
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

/// Runs `cmd` with a time limit; its output whatever the status.
fn output(mut cmd: Command) -> RunOutput {
    cmd.stdin(Stdio::null());
    let what = format!("{cmd:?}");
    output_with_timeout(cmd, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("{what} did not finish within 120 s"))
}

/// `nvidia-ctk runtime configure ARGS` with our runtime's path.
fn configure(args: &[&str]) -> String {
    run(Command::new(CTK)
        .args(["runtime", "configure"])
        .args(args)
        .arg(format!("--nvidia-runtime-path={RUNTIME}")))
}

/// A daemon we started; stopped (TERM, then KILL) on drop.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(
        name: &'static str,
        mut cmd: Command,
        log: PathBuf,
        env: &[(String, String)],
    ) -> Daemon {
        let log_file = fs::File::create(&log).expect("create daemon log");
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { name, child, log }
    }

    /// Waits until `ready` succeeds; panics with the daemon's log if it
    /// exits or takes too long.
    fn wait_ready(&mut self, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + DAEMON_TIMEOUT;
        loop {
            if ready() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {DAEMON_TIMEOUT:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// dockerd
// ---------------------------------------------------------------------------

struct Docker {
    daemon: Daemon,
    cli: PathBuf,
    host: String,
    client_config: PathBuf,
}

impl Docker {
    /// dockerd with its own data-root, exec-root and socket, and no
    /// networking of its own (engines.md: a bare machine has no iptables
    /// to spare).
    fn start(dir: &Path, daemon_json: &Path, env: &[(String, String)], cli: &Path) -> Docker {
        let socket = dir.join("docker.sock");
        let mut cmd = Command::new(find_in_path("dockerd").expect("dockerd"));
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--config-file")
            .arg(daemon_json)
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"]);
        let daemon = Daemon::start("dockerd", cmd, dir.join("dockerd.log"), env);
        let client_config = dir.join("client");
        fs::create_dir_all(&client_config).unwrap();
        let mut docker = Docker {
            daemon,
            cli: cli.to_path_buf(),
            host: format!("unix://{}", socket.display()),
            client_config,
        };
        let probe = docker.command(&["version"]);
        let probe = std::cell::RefCell::new(probe);
        docker.daemon.wait_ready(|| {
            let mut cmd = Command::new(probe.borrow().get_program());
            cmd.args(probe.borrow().get_args())
                .envs(probe.borrow().get_envs().filter_map(|(k, v)| Some((k, v?))))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.status().is_ok_and(|s| s.success())
        });
        docker
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.arg("--host")
            .arg(&self.host)
            .args(args)
            .env("DOCKER_CONFIG", &self.client_config);
        cmd
    }

    fn run(&self, args: &[&str]) -> RunOutput {
        output(self.command(args))
    }

    fn runtimes(&self) -> String {
        self.run(&["info", "--format", "{{json .Runtimes}} {{.DefaultRuntime}}"])
            .stdout
    }
}

/// The docker CLI of the docker.io package (a newer static client may be
/// first on PATH; both work, the package's is the one we test with).
fn docker_cli() -> PathBuf {
    let packaged = Path::new("/usr/bin/docker");
    if packaged.exists() {
        return packaged.to_path_buf();
    }
    find_in_path("docker").unwrap_or_else(|| panic!("`docker` is not installed: {INSTALL}"))
}

#[test]
fn dockerd_end_to_end() {
    let Some(_) = require(&["dockerd", "containerd", "runc"]) else {
        return;
    };
    let cli = docker_cli();
    let tmp = TempDir::new("e2e-docker");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    let env = gpus.daemon_env();

    // The admin's daemon.json before we come: configure merges into it.
    let daemon_json = dir.join("daemon.json");
    fs::write(&daemon_json, "{\n  \"log-level\": \"warn\"\n}\n").unwrap();
    let mut docker = Docker::start(dir, &daemon_json, &env, &cli);
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
            format!("{} --host {}", cli.display(), docker.host),
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
    let docker = Docker::start(dir, &daemon_json, &env, &cli);
    assert!(
        docker.runtimes().trim_end().ends_with(" nvidia"),
        "{}",
        docker.runtimes()
    );

    // A container that asks for nothing runs exactly as under runc.
    let probe = "ls -l /dev; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; \
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

const GPU_IMAGE: &str = "docker.io/library/ncr-gpu:latest";
const PAUSE_IMAGE: &str = "docker.io/library/ncr-pause:latest";

/// The admin's containerd config: its own root, state and sockets, the
/// sandbox image imported locally, runc with an option ours must copy.
fn containerd_config(dir: &Path) -> String {
    format!(
        r#"# the admin's containerd config (test)
version = 2
root = "{root}"
state = "{state}"

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{PAUSE_IMAGE}" # local, no registry here
    stream_server_port = "0"
    # This machine withholds CAP_SYS_RESOURCE: without it the sandbox's
    # oom_score_adj (-998) is refused, under runc alone too.
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni}/bin"
      conf_dir = "{cni}/conf"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = dir.join("containerd.sock").display(),
        cni = dir.join("cni").display(),
    )
}

#[test]
fn containerd_reads_our_drop_in_with_the_admins_settings() {
    let Some(_) = require(&["containerd"]) else {
        return;
    };
    let tmp = TempDir::new("e2e-ctd-dump");
    let config = tmp.path().join("config.toml");
    fs::write(&config, containerd_config(tmp.path())).unwrap();
    configure(&[
        "--runtime=containerd",
        &format!("--config={}", config.display()),
    ]);
    let dump = run(Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"]));
    let runtime = format!("BinaryName = \"{RUNTIME}\"");
    for expected in [
        runtime.as_str(),
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia.options]",
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]",
        PAUSE_IMAGE,
        "stream_server_port = \"0\"",
    ] {
        assert!(
            dump.contains(expected),
            "{expected} missing from containerd's view:\n{dump}"
        );
    }
}

struct Containerd {
    daemon: Daemon,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, config: &Path, env: &[(String, String)]) -> Containerd {
        let mut cmd = Command::new(find_in_path("containerd").expect("containerd"));
        cmd.arg("--config").arg(config);
        let mut daemon = Daemon::start("containerd", cmd, dir.join("containerd.log"), env);
        let socket = dir.join("containerd.sock");
        let probe_socket = socket.clone();
        daemon.wait_ready(|| {
            Command::new("ctr")
                .arg("--address")
                .arg(&probe_socket)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        Containerd { daemon, socket }
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args);
        cmd
    }
}

#[test]
fn containerd_ctr_and_cri_end_to_end() {
    let Some(_) = require(&["containerd", "ctr", "runc"]) else {
        return;
    };
    let tmp = TempDir::new("e2e-ctd");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
    let config = dir.join("config.toml");
    fs::write(&config, containerd_config(dir)).unwrap();
    // The drop-in and the imports line, as an admin would run it.
    let out = configure(&[
        "--runtime=containerd",
        &format!("--config={}", config.display()),
    ]);
    assert!(out.contains("systemctl restart containerd"), "{out}");
    assert!(dir.join("conf.d/99-nvidia.toml").exists());

    let containerd = Containerd::start(dir, &config, &gpus.daemon_env());
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
    let ctr = output(containerd.ctr(&[
        "run",
        "--rm",
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

    // Kubernetes: the runtime handler `nvidia` that configure wrote.
    let logs = dir.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let output = cri::run_pod(
        &containerd.socket,
        &logs,
        GPU_IMAGE,
        "nvidia",
        &["NVIDIA_VISIBLE_DEVICES=1"],
    )
    .unwrap_or_else(|e| panic!("CRI: {e}\n{}", containerd.daemon.log_text()));
    gpus.assert_sees_only(
        &output,
        1,
        "CRI RunPodSandbox(runtime_handler=nvidia) + container",
    );
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

#[test]
fn podman_end_to_end() {
    let Some(_) = require(&["podman", "runc"]) else {
        return;
    };
    let tmp = TempDir::new("e2e-podman");
    let dir = tmp.path();
    let gpus = Gpus::new(dir);
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
    fs::write(
        &containers_conf,
        "# the admin's settings\n[engine]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();
    run(Command::new(CTK).args([
        "runtime",
        "configure",
        "--runtime=podman",
        &format!("--config={}", containers_conf.display()),
        &format!("--nvidia-runtime-path={wrapper_path}"),
    ]));
    let podman = |args: &[&str]| {
        let mut cmd = podman_command(dir, &containers_conf);
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
    // PODMAN_RUN asks for ulimits this machine allows.
    for runtime in [wrapper_path.as_str(), "nvidia"] {
        let out = output(podman(
            &[
                &PODMAN_RUN[..],
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
        args.extend_from_slice(&PODMAN_RUN);
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
