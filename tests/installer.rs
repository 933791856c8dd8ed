//! The node installer on a simulated Kubernetes node: a temp dir tree
//! stands for the host's root (`HOST_ROOT_MOUNT`, with `$ROOT`, the pid
//! file and the CDI dir inside it), the fake driver stands for the GPUs,
//! and a real containerd runs on its own config, socket, root and state
//! dirs: Debian 12's 1.6 and sid's 2.1 (tests/common/generation.rs), each
//! test once per generation. The installer runs as a plain process with the
//! environment the GPU Operator's DaemonSet gives it; CRI pods (what
//! kubelet asks for a pod with `runtimeClassName: nvidia` after the device
//! plugin's Allocate) check that what it registered works.
//!
//! The test plays systemd: containerd exits on the installer's SIGHUP
//! (containerd#13285; 1.6 and 2.1 do not handle the signal, so Go's
//! default ends it: seen here, exit status 129), and [`Supervised`] starts it again on the same config, as
//! `Restart=always` does for containerd.service. The supervisor records
//! every pid it started, which is how a test knows whether (and how often)
//! containerd was restarted.
//!
//! Skips (loudly) only when not root; with `CI` set a missing tool fails.
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

const INSTALLER: &str = env!("CARGO_BIN_EXE_nvidia-ctk-installer");
/// The name the GPU Operator execs: the same program.
const NVIDIA_TOOLKIT: &str = env!("CARGO_BIN_EXE_nvidia-toolkit");
const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");
const DEADLINE: Duration = Duration::from_secs(90);
/// A container script that lists what it got and never fails, for pods
/// that must get no GPU (there is no nvidia-smi in them then).
const NO_GPU_SCRIPT: &str = "ls /dev; echo ---; nvidia-smi -L 2>&1 || true";

/// Root, the tools, and for sid the rig's root. Returns the containerd the
/// installer runs for its check (RUNTIME_EXECUTABLE_PATH): the host's, or
/// for sid a two-line wrapper that runs the sid root's (written in `dir`).
fn tools(generation: Generation) -> Option<Generation> {
    if !require_generation(generation) {
        return None;
    }
    if generation.engines == Engines::Debian12 {
        for tool in ["ctr", "runc", "containerd"] {
            require_tool(tool)?;
        }
    }
    Some(generation)
}

fn containerd_executable(generation: Generation, dir: &Path) -> PathBuf {
    match generation.engines {
        Engines::Debian12 => find_in_path("containerd").expect("containerd"),
        Engines::Sid => {
            let wrapper = dir.join("containerd-sid");
            fs::write(
                &wrapper,
                format!("#!/bin/sh\nexec '{RIG}' enter -- containerd \"$@\"\n"),
            )
            .unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
            wrapper
        }
    }
}

/// containerd under a restart-always supervisor (systemd's part).
struct Supervised {
    pids: Arc<Mutex<Vec<u32>>>,
    /// The config the next start runs on (a unit's `--config`).
    config: Arc<Mutex<PathBuf>>,
    stop: Arc<AtomicBool>,
    /// While set, an exited containerd is not started again (a supervisor
    /// that gave up, or a node whose containerd crash-loops).
    hold: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    socket: PathBuf,
    log: PathBuf,
}

impl Supervised {
    fn start(
        generation: Generation,
        config: &Path,
        dir: &Path,
        env: Vec<(String, String)>,
    ) -> Supervised {
        let pids = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(AtomicBool::new(false));
        let log = dir.join("containerd.log");
        let config = Arc::new(Mutex::new(config.to_path_buf()));
        let log_path = log.clone();
        let (thread_pids, thread_stop, thread_hold) = (pids.clone(), stop.clone(), hold.clone());
        let thread_config = config.clone();
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                let log = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .expect("containerd log");
                // Under the rig the chain execs down to containerd: the
                // child's pid is containerd's.
                let config = thread_config.lock().unwrap().clone();
                let mut child: Child = generation
                    .command("containerd")
                    .arg("--config")
                    .arg(&config)
                    .envs(env.iter().cloned())
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log fd"))
                    .stderr(log)
                    .spawn()
                    .expect("start containerd");
                thread_pids.lock().unwrap().push(child.id());
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if thread_stop.load(Ordering::SeqCst) {
                        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
                        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                        let deadline = Instant::now() + Duration::from_secs(20);
                        while Instant::now() < deadline {
                            if let Ok(Some(_)) = child.try_wait() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                // systemd's RestartSec, shortened.
                std::thread::sleep(Duration::from_millis(100));
                while thread_hold.load(Ordering::SeqCst) && !thread_stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Supervised {
            pids,
            config,
            stop,
            hold,
            thread: Some(thread),
            socket: dir.join("containerd.sock"),
            log,
        }
    }

    /// From the next start on, containerd runs on `config`.
    fn run_on(&self, config: &Path) {
        *self.config.lock().unwrap() = config.to_path_buf();
    }

    fn hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }

    fn started(&self) -> Vec<u32> {
        self.pids.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until containerd's CRI answers a Version call.
    fn wait_answers(&self) {
        let deadline = Instant::now() + DEADLINE;
        while !cri::answers(&self.socket) {
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not answer within {DEADLINE:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The simulated node.
struct Node {
    _tmp: TempDir,
    dir: PathBuf,
    host: PathBuf,
    driver: FakeDriver,
    config: PathBuf,
    generation: Generation,
    containerd_binary: PathBuf,
    containerd: Supervised,
}

impl Node {
    /// The node of one test, or `None` (a loud skip) without root or the
    /// generation's tools.
    fn for_test(name: &str, generation: Generation) -> Option<Node> {
        Some(Node::start(name, tools(generation)?))
    }

    fn start(name: &str, generation: Generation) -> Node {
        let tmp = TempDir::new(name);
        let dir = tmp.path().to_path_buf();
        generation.check_version("containerd");
        let containerd_binary = containerd_executable(generation, &dir);
        let host = dir.join("host");
        let driver = FakeDriver::build(&dir.join("driver"), &FakeDriverOptions::two_gpus());
        // The driver container has loaded its module: the runtime wrappers
        // check for it before using our runtime.
        fs::write(
            driver.proc_root.join("modules"),
            "nvidia 56823808 0 - Live 0x0000000000000000 (POE)\n",
        )
        .unwrap();
        let config = host.join("etc/containerd/config.toml");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        let cdi_dir = host.join("var/run/cdi");
        fs::write(&config, containerd_config(generation, &dir, &cdi_dir)).unwrap();
        let env = vec![
            (
                "NVIDIA_CONTAINER_RUNTIME_STATE_DIR".to_string(),
                dir.join("ncr-state").display().to_string(),
            ),
            // Under the rig: one /run for every containerd this node
            // starts, as a host has, so a restarted containerd finds the
            // shims of the containers that outlived its previous run.
            (
                "NCR_RIG_RUN".to_string(),
                dir.join("run").display().to_string(),
            ),
        ];
        let containerd = Supervised::start(generation, &config, &dir, env);
        containerd.wait_answers();
        let node = Node {
            _tmp: tmp,
            dir,
            host,
            driver,
            config,
            generation,
            containerd_binary,
            containerd,
        };
        for (kind, name, entrypoint) in [
            (
                RootfsKind::Glibc { ldconfig: false },
                GPU_IMAGE,
                &["sh"][..],
            ),
            (RootfsKind::Busybox, PAUSE_IMAGE, &["sleep", "1000000"][..]),
        ] {
            let archive = oci_archive(&node.dir, kind, name, entrypoint);
            let out = command_output(node.ctr(&[
                "image",
                "import",
                "--snapshotter",
                "overlayfs",
                &archive.display().to_string(),
            ]));
            out.assert_success("ctr image import");
        }
        node
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut cmd = self.generation.command("ctr");
        cmd.env("NCR_RIG_RUN", self.dir.join("run"));
        cmd.arg("--address")
            .arg(&self.containerd.socket)
            .args(["--namespace", "k8s.io"])
            .args(args);
        cmd
    }

    fn root(&self) -> PathBuf {
        self.host.join("usr/local/nvidia")
    }

    fn cdi_dir(&self) -> PathBuf {
        self.host.join("var/run/cdi")
    }

    fn drop_in(&self) -> PathBuf {
        self.host.join("etc/containerd/conf.d/99-nvidia.toml")
    }

    /// The installer with what the DaemonSet sets (RUNTIME, the config and
    /// socket pairs, ROOT, the driver root of a host driver), pointed into
    /// the node's tree and at the fake driver.
    fn installer(&self, program: &str, extra: &[(&str, &str)]) -> Command {
        let d = &self.driver;
        let mut cmd = Command::new(program);
        let path = |p: &Path| p.display().to_string();
        let mut env: Vec<(String, String)> = vec![
            ("RUNTIME".into(), "containerd".into()),
            ("RUNTIME_CONFIG".into(), path(&self.config)),
            ("RUNTIME_SOCKET".into(), path(&self.containerd.socket)),
            (
                "RUNTIME_EXECUTABLE_PATH".into(),
                path(&self.containerd_binary),
            ),
            ("HOST_ROOT_MOUNT".into(), path(&self.host)),
            ("ROOT".into(), path(&self.root())),
            (
                "TOOLKIT_PID_FILE".into(),
                path(&self.host.join("run/nvidia/toolkit/toolkit.pid")),
            ),
            ("DRIVER_ROOT".into(), path(&d.driver_root)),
            ("DEV_ROOT".into(), path(&d.dev_root)),
            (
                "NVIDIA_CONTAINER_RUNTIME_PROC_ROOT".into(),
                path(&d.proc_root),
            ),
            (
                "NVIDIA_CONTAINER_RUNTIME_SYS_ROOT".into(),
                path(&d.sys_root),
            ),
            (
                "NVIDIA_CONTAINER_RUNTIME_DEBUG".into(),
                path(&d.debug_log_path()),
            ),
            ("NVIDIA_CONTAINER_RUNTIME_LOG_LEVEL".into(), "debug".into()),
            ("CDI_OUTPUT_DIR".into(), path(&self.cdi_dir())),
            (
                "NVIDIA_CONTAINER_RUNTIME_STATE_DIR".into(),
                path(&self.dir.join("ncr-state")),
            ),
            // Our binaries are next to the test's copy of the installer.
            (
                "TOOLKIT_SOURCE_DIR".into(),
                path(Path::new(INSTALLER).parent().unwrap()),
            ),
        ];
        if !generation().runtimes_key().is_empty() {
            env.push((
                "NVIDIA_CONTAINER_RUNTIME_RUNTIMES".into(),
                path(&generation().low_level_path()),
            ));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        cmd.envs(env).stdin(Stdio::null());
        cmd
    }

    /// Runs the installer to its end (NO_DAEMON) and returns its output.
    fn install_once(&self, extra: &[(&str, &str)]) -> RunOutput {
        let mut env = vec![("NO_DAEMON", "true")];
        env.extend_from_slice(extra);
        output_with_timeout(self.installer(INSTALLER, &env), DEADLINE)
            .expect("the installer did not finish in time")
    }

    fn pod(&self, pod: &cri::Pod) -> String {
        // A dir per pod: the CRI appends to a container's log file.
        let logs = self.dir.join(unique_id("pod-logs"));
        fs::create_dir_all(&logs).unwrap();
        cri::run(&self.containerd.socket, &logs, pod).unwrap_or_else(|e| {
            panic!(
                "CRI pod {pod:?}: {e}\n--- runtime debug log ---\n{}\n--- containerd ---\n{}",
                fs::read_to_string(self.driver.debug_log_path()).unwrap_or_default(),
                self.containerd.log_text()
            )
        })
    }
}

fn assert_no_gpu(stdout: &str, what: &str) {
    assert!(
        !stdout.contains("nvidia0") && !stdout.contains("nvidia1") && !stdout.contains("UUID"),
        "{what}: the container got a GPU:\n{stdout}"
    );
}

/// Waits until `path` holds `needle` (the installer's log line); panics
/// with the log if `child` exits first or the deadline passes.
fn wait_for_line(path: &Path, needle: &str, child: &mut Child) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the installer exited ({status}) before `{needle}`:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` within {DEADLINE:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

per_generation!(daemonset_installs_serves_pods_and_cleans_up_on_sigterm);

/// The DaemonSet's life: `nvidia-toolkit` installs and waits; pods of every
/// device plugin strategy and the operator's validator run; a second
/// installer is refused; SIGTERM puts the config back byte for byte.
fn daemonset_installs_serves_pods_and_cleans_up_on_sigterm(generation: Generation) {
    let Some(node) = Node::for_test("installer-daemon", generation) else {
        return;
    };
    let before = fs::read(&node.config).unwrap();
    let log = node.dir.join("installer.log");
    let mut installer = node
        .installer(NVIDIA_TOOLKIT, &[])
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start nvidia-toolkit");
    wait_for_line(&log, "waiting for SIGTERM", &mut installer);
    let installed_log = fs::read_to_string(&log).unwrap();
    println!("--- nvidia-toolkit ---\n{installed_log}");
    assert!(
        installed_log.contains("containerd config dump lists our runtimes"),
        "{installed_log}"
    );
    // After the restart the installer asked the CRI itself, as kubelet
    // will: it answers and serves our three handlers.
    assert!(
        installed_log.contains(
            "answers on its CRI and serves runtime handlers nvidia, nvidia-cdi, nvidia-legacy"
        ),
        "{installed_log}"
    );
    // SIGHUP ended the first containerd; the supervisor started another.
    assert_eq!(node.containerd.started().len(), 2, "{installed_log}");
    node.containerd.wait_answers();
    // So does kubelet's client (runtime_handlers: containerd 2 only).
    if generation.engines == Engines::Sid {
        let handlers = cri::runtime_handlers(&node.containerd.socket).unwrap();
        for handler in ["nvidia", "nvidia-cdi", "nvidia-legacy"] {
            assert!(handlers.iter().any(|h| h == handler), "{handlers:?}");
        }
    }
    let toolkit = node.root().join("toolkit");
    for file in [
        "nvidia-container-runtime",
        "nvidia-container-runtime.real",
        "nvidia-container-runtime.cdi",
        "nvidia-container-runtime.legacy",
        "nvidia-ctk",
        "nvidia-container-runtime-hook",
        "nvidia-container-toolkit",
        "nvidia-cdi-hook",
        ".config/nvidia-container-runtime/config.toml",
    ] {
        assert!(toolkit.join(file).exists(), "{file} not installed");
    }
    let drop_in = fs::read_to_string(node.drop_in()).unwrap();
    for handler in ["nvidia", "nvidia-cdi", "nvidia-legacy"] {
        assert!(
            drop_in.contains(&format!("runtimes.{handler}]")),
            "{drop_in}"
        );
    }
    assert!(drop_in.contains("cdi.k8s.io/*"), "{drop_in}");
    assert!(
        drop_in.contains("default_runtime_name = \"nvidia\""),
        "{drop_in}"
    );

    // envvar: the device plugin's default strategy.
    let uuid = node.driver.gpus[1].uuid.clone();
    let out = node
        .pod(&cri::Pod::new(GPU_IMAGE, "nvidia").env(&[&format!("NVIDIA_VISIBLE_DEVICES={uuid}")]));
    assert_sees_only_gpu(&node.driver, &out, 1, &[], "envvar strategy");

    // The nvidia-legacy handler: its wrapper's config forces mode legacy.
    let out = node.pod(
        &cri::Pod::new(GPU_IMAGE, "nvidia-legacy")
            .env(&[&format!("NVIDIA_VISIBLE_DEVICES={uuid}")]),
    );
    assert_sees_only_gpu(&node.driver, &out, 1, &[], "nvidia-legacy handler");

    // cdi-annotations: the plugin's own spec (its kind, uuid names) and
    // its annotation, which reaches our runtime through
    // container_annotations.
    let spec = node.cdi_dir().join("k8s.device-plugin.nvidia.com-gpu.yaml");
    let out = command_output({
        let mut cmd = Command::new(CTK);
        cmd.args([
            "cdi",
            "generate",
            "--vendor=k8s.device-plugin.nvidia.com",
            "--class=gpu",
        ])
        .args(["--device-name-strategy", "uuid"])
        .arg("--config")
        .arg(toolkit.join(".config/nvidia-container-runtime/config.toml"))
        .arg("--hook-path")
        .arg(toolkit.join("nvidia-container-runtime-hook"))
        .arg("--output")
        .arg(&spec);
        cmd
    });
    out.assert_success("nvidia-ctk cdi generate (the device plugin's spec)");
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia");
    pod.annotations = vec![(
        format!("cdi.k8s.io/nvidia-device-plugin_{uuid}"),
        format!("k8s.device-plugin.nvidia.com/gpu={uuid}"),
    )];
    let out = node.pod(&pod);
    // A generated spec's common edits carry nvidia-modeset too (as
    // NVIDIA's do).
    assert_sees_only_gpu(
        &node.driver,
        &out,
        1,
        &["nvidia-modeset"],
        "cdi-annotations strategy",
    );

    // cdi-cri: containerd 2.x resolves CRI CDIDevices itself (enable_cdi,
    // on by default, with the node's CDI dir); 1.6's CRI has no such field
    // (1.7 added it), so the request is dropped before it reaches any
    // runtime and the container gets nothing.
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia");
    pod.cdi_devices = vec![format!("k8s.device-plugin.nvidia.com/gpu={uuid}")];
    if node.generation.engines == Engines::Sid {
        let out = node.pod(&pod);
        assert_sees_only_gpu(
            &node.driver,
            &out,
            1,
            &["nvidia-modeset"],
            "cdi-cri strategy on containerd 2",
        );
    } else {
        pod.command = vec!["sh".into(), "-c".into(), NO_GPU_SCRIPT.into()];
        let out = node.pod(&pod);
        assert_no_gpu(&out, "cdi-cri strategy on containerd 1.6");
        println!("cdi-cri on containerd 1.6: CRI CDIDevices ignored; the container saw:\n{out}");
    }

    // The operator's toolkit-validation: runtimeClassName nvidia,
    // NVIDIA_VISIBLE_DEVICES=all, nvidia-smi.
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia").env(&["NVIDIA_VISIBLE_DEVICES=all"]);
    pod.command = vec!["nvidia-smi".into(), "-L".into()];
    let out = node.pod(&pod);
    assert_eq!(
        out,
        node.driver.smi_output(&[0, 1]),
        "the validator's nvidia-smi"
    );

    // One installer per node.
    let second = node.install_once(&[]);
    assert!(
        !second.success(),
        "a second installer ran:\n{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("another installer holds the lock"),
        "{}",
        second.stderr
    );

    // SIGTERM: the previous bytes, no drop-in, containerd restarted and
    // answering.
    let pid = nix::unistd::Pid::from_raw(installer.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_with_deadline(&mut installer, DEADLINE).unwrap_or_else(|| {
        panic!(
            "the installer did not exit after SIGTERM:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(
        status.success(),
        "installer after SIGTERM: {status}\n{log_text}"
    );
    assert_eq!(
        fs::read(&node.config).unwrap(),
        before,
        "config.toml after cleanup\n{log_text}"
    );
    assert!(!node.drop_in().exists(), "the drop-in is still there");
    assert!(
        !node.host.join("etc/containerd/config.toml.bak").exists(),
        "the backup made while installing is still there"
    );
    assert!(!node.host.join("run/nvidia/toolkit/toolkit.pid").exists());
    assert_eq!(node.containerd.started().len(), 3, "{log_text}");
    node.containerd.wait_answers();
}

per_generation!(secure_pair_idempotent_rerun_rollback_and_cdi);

/// The secure device-list pair, a second run that changes nothing, a
/// config containerd refuses, and the CDI mode.
fn secure_pair_idempotent_rerun_rollback_and_cdi(generation: Generation) {
    let Some(node) = Node::for_test("installer-once", generation) else {
        return;
    };
    let secure = [
        (
            "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED",
            "false",
        ),
        ("ACCEPT_NVIDIA_VISIBLE_DEVICES_AS_VOLUME_MOUNTS", "true"),
    ];
    let out = node.install_once(&secure);
    out.assert_success("installer with the secure pair");
    assert_eq!(node.containerd.started().len(), 2, "{}", out.stderr);
    node.containerd.wait_answers();

    // volume-mounts: /dev/null mounts name the device.
    let uuid = node.driver.gpus[0].uuid.clone();
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia")
        .env(&["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"]);
    pod.mounts = vec![(
        "/dev/null".into(),
        format!("/var/run/nvidia-container-devices/{uuid}"),
    )];
    let out = node.pod(&pod);
    assert_sees_only_gpu(&node.driver, &out, 0, &[], "volume-mounts strategy");
    // ... and an unprivileged pod's own NVIDIA_VISIBLE_DEVICES=all is ignored.
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia").env(&["NVIDIA_VISIBLE_DEVICES=all"]);
    pod.command = vec!["sh".into(), "-c".into(), NO_GPU_SCRIPT.into()];
    let out = node.pod(&pod);
    assert_no_gpu(
        &out,
        "unprivileged NVIDIA_VISIBLE_DEVICES=all under the secure pair",
    );

    // Nothing changed: no restart. Meanwhile the toolkit is installed
    // again, and the path every shim execs never goes missing (the new
    // tree is swapped in with one rename, NVIDIA's runs rm -rf first).
    let pids = node.containerd.started();
    let wrapper = node.root().join("toolkit/nvidia-container-runtime");
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (wrapper, watching) = (wrapper.clone(), watching.clone());
        std::thread::spawn(move || {
            let (mut looks, mut missing) = (0u64, 0u64);
            while watching.load(Ordering::SeqCst) {
                looks += 1;
                if fs::metadata(&wrapper).is_err() {
                    missing += 1;
                }
            }
            (looks, missing)
        })
    };
    let again = node.install_once(&secure);
    watching.store(false, Ordering::SeqCst);
    let (looks, missing) = watcher.join().unwrap();
    assert_eq!(
        missing, 0,
        "{wrapper:?} was missing {missing} of {looks} looks during a reinstall"
    );
    assert!(looks > 0);
    again.assert_success("second run");
    assert!(again.stderr.contains("not restarting"), "{}", again.stderr);
    assert_eq!(
        node.containerd.started(),
        pids,
        "containerd restarted on a no-op run"
    );

    // A broken admin drop-in that our imports glob makes containerd read:
    // containerd's own dump refuses it, the previous bytes come back and
    // the running containerd is never touched.
    let broken = node.host.join("etc/containerd/conf.d/50-admin.toml");
    fs::write(
        &broken,
        "[plugins.\"io.containerd.grpc.v1.cri\"\nbroken = \n",
    )
    .unwrap();
    let config_before = fs::read(&node.config).unwrap();
    let drop_in_before = fs::read(node.drop_in()).unwrap();
    let refused = node.install_once(&[("CDI_ENABLED", "true")]);
    assert!(
        !refused.success(),
        "a refused config was kept:\n{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("refused"), "{}", refused.stderr);
    assert_eq!(fs::read(&node.config).unwrap(), config_before);
    assert_eq!(fs::read(node.drop_in()).unwrap(), drop_in_before);
    assert_eq!(
        node.containerd.started(),
        pids,
        "containerd restarted on a refused config"
    );
    node.containerd.wait_answers();
    fs::remove_file(&broken).unwrap();

    // CDI on, as the operator's chart default sets it: the management
    // spec, enable_cdi, and the nvidia-cdi handler resolving the
    // validator's NVIDIA_VISIBLE_DEVICES=all through default-kind.
    let cdi = node.install_once(&[
        ("CDI_ENABLED", "true"),
        ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "false"),
        (
            "NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND",
            "management.nvidia.com/gpu",
        ),
    ]);
    cdi.assert_success("installer with CDI_ENABLED");
    assert_eq!(
        node.containerd.started().len(),
        pids.len() + 1,
        "{}",
        cdi.stderr
    );
    node.containerd.wait_answers();
    let spec = fs::read_to_string(node.cdi_dir().join("management.nvidia.com-gpu.yaml")).unwrap();
    assert!(spec.contains("management.nvidia.com/gpu"), "{spec}");
    assert!(
        spec.contains(
            &node
                .root()
                .join("toolkit/nvidia-container-runtime-hook")
                .display()
                .to_string()
        ),
        "{spec}"
    );
    let drop_in = fs::read_to_string(node.drop_in()).unwrap();
    assert!(drop_in.contains("enable_cdi = true"), "{drop_in}");
    assert!(
        !drop_in.contains("default_runtime_name = \"nvidia\""),
        "{drop_in}"
    );
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia-cdi").env(&["NVIDIA_VISIBLE_DEVICES=all"]);
    pod.command = vec!["nvidia-smi".into(), "-L".into()];
    let out = node.pod(&pod);
    assert_eq!(
        out,
        node.driver.smi_output(&[0, 1]),
        "nvidia-cdi: management.nvidia.com/gpu=all"
    );

    // Before the driver's module is loaded (a driver container still
    // starting), the runtime wrappers exec the low-level runtime: a pod
    // still starts, without GPUs, as under NVIDIA's wrappers.
    fs::remove_file(node.driver.proc_root.join("modules")).unwrap();
    let mut pod = cri::Pod::new(GPU_IMAGE, "nvidia").env(&["NVIDIA_VISIBLE_DEVICES=all"]);
    pod.command = vec!["sh".into(), "-c".into(), NO_GPU_SCRIPT.into()];
    let out = node.pod(&pod);
    assert_no_gpu(&out, "no nvidia module: the wrapper's fallback to runc");

    // An installer killed before its cleanup leaves our entries behind;
    // the next one finds nothing to change, and its SIGTERM must still
    // take them out (there are no previous bytes of its own to restore).
    let pids = node.containerd.started();
    let log = node.dir.join("installer-again.log");
    let mut installer = node
        .installer(
            INSTALLER,
            &[
                ("CDI_ENABLED", "true"),
                ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "false"),
                (
                    "NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND",
                    "management.nvidia.com/gpu",
                ),
            ],
        )
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the installer");
    wait_for_line(&log, "waiting for SIGTERM", &mut installer);
    assert_eq!(node.containerd.started(), pids, "restarted on a no-op run");
    let pid = nix::unistd::Pid::from_raw(installer.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_with_deadline(&mut installer, DEADLINE).expect("installer exit");
    let log_text = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}\n{log_text}");
    assert!(!node.drop_in().exists(), "{log_text}");
    assert_eq!(
        fs::read_to_string(&node.config).unwrap(),
        containerd_config(node.generation, &node.dir, &node.cdi_dir()),
        "{log_text}"
    );
    assert_eq!(
        node.containerd.started().len(),
        pids.len() + 1,
        "{log_text}"
    );
    node.containerd.wait_answers();
}

per_generation!(an_engine_that_does_not_come_back_gets_its_old_config);

/// containerd exits on the SIGHUP and does not come back in time: the
/// installer puts the previous bytes back (so that the engine's next
/// start, whenever its supervisor makes it, reads the config it ran on)
/// and fails.
fn an_engine_that_does_not_come_back_gets_its_old_config(generation: Generation) {
    let Some(node) = Node::for_test("installer-silent", generation) else {
        return;
    };
    let before = fs::read(&node.config).unwrap();
    node.containerd.hold(true);
    let out = node.install_once(&[("RUNTIME_READY_TIMEOUT", "3")]);
    assert!(
        !out.success(),
        "installed with a silent engine:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("did not answer"), "{}", out.stderr);
    assert!(
        out.stderr.contains("previous config was put back"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read(&node.config).unwrap(), before);
    assert!(!node.drop_in().exists());
    node.containerd.hold(false);
    node.containerd.wait_answers();
    assert_eq!(node.containerd.started().len(), 2);
}

per_generation!(an_engine_on_another_config_is_rolled_back);

/// The installer edits one file and the node's containerd runs on
/// another (a unit whose `--config` names a copy): `config dump` of the
/// edited file lists our runtimes, containerd restarts and answers, and
/// only its CRI shows that it serves none of them. The installer says so,
/// puts the previous bytes back, restarts containerd again and fails.
fn an_engine_on_another_config_is_rolled_back(generation: Generation) {
    let Some(node) = Node::for_test("installer-elsewhere", generation) else {
        return;
    };
    let before = fs::read(&node.config).unwrap();
    let elsewhere = node.host.join("etc/containerd/config-of-the-unit.toml");
    fs::write(&elsewhere, &before).unwrap();
    node.containerd.run_on(&elsewhere);
    let out = node.install_once(&[]);
    assert!(
        !out.success(),
        "installed for a containerd that does not read it:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("containerd config dump lists our runtimes"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "answers after its restart but serves no runtime handler nvidia, nvidia-cdi, nvidia-legacy (it serves runc): it does not read {}",
            node.config.display()
        )),
        "{}",
        out.stderr
    );
    // 1.6 names its handlers through its verbose CRI config, 2.x in
    // runtime_handlers: the message names the engine either way.
    let version = match generation.engines {
        Engines::Debian12 => "1.6.",
        Engines::Sid => "2.",
    };
    let line = out
        .stderr
        .lines()
        .find(|line| line.contains("answers after its restart"))
        .unwrap();
    assert!(
        line.starts_with(&format!("nvidia-ctk-installer: containerd {version}")),
        "{line}"
    );
    assert!(
        out.stderr.contains("previous config was put back"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read(&node.config).unwrap(), before);
    assert!(!node.drop_in().exists());
    // Restarted for the install, then for the rollback.
    assert_eq!(node.containerd.started().len(), 3, "{}", out.stderr);
    node.containerd.wait_answers();

    // Back on the edited file, with an admin's drop-in (read once our
    // imports glob is in) that disables the CRI plugin. containerd 1.6's
    // `config dump` then has no CRI section, so the check before the
    // restart refuses it; 2.1's dump still has it, containerd starts and
    // listens, and its CRI never answers: the installer waits for it, then
    // rolls back.
    node.containerd.run_on(&node.config);
    let admin = node.host.join("etc/containerd/conf.d/50-admin.toml");
    fs::write(
        &admin,
        format!(
            "version = {}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            match generation.engines {
                Engines::Debian12 => 2,
                Engines::Sid => 3,
            }
        ),
    )
    .unwrap();
    let out = node.install_once(&[("RUNTIME_READY_TIMEOUT", "5")]);
    println!("--- installer, CRI disabled ---\n{}", out.stderr);
    assert!(!out.success(), "{}", out.stderr);
    assert!(
        out.stderr.contains("previous config was put back"),
        "{}",
        out.stderr
    );
    assert_eq!(fs::read(&node.config).unwrap(), before);
    assert!(!node.drop_in().exists());
    match generation.engines {
        Engines::Debian12 => {
            assert!(
                out.stderr.contains("its dump has no CRI plugin"),
                "{}",
                out.stderr
            );
            assert_eq!(node.containerd.started().len(), 3, "{}", out.stderr);
        }
        Engines::Sid => {
            assert!(
                out.stderr
                    .contains("again, but its API did not answer within 5s"),
                "{}",
                out.stderr
            );
            // The cause: no CRI service at all.
            assert!(out.stderr.contains("Unimplemented"), "{}", out.stderr);
            assert_eq!(node.containerd.started().len(), 5, "{}", out.stderr);
        }
    }
    node.containerd.wait_answers();
    fs::remove_file(&admin).unwrap();
}

/// dockerd reloads `runtimes` on SIGHUP in place (same pid): the installer
/// registers our three runtimes in daemon.json, `docker run --runtime=nvidia`
/// gets the GPU, and SIGTERM puts daemon.json back byte for byte.
#[test]
fn docker_signal_reload_and_cleanup() {
    let Some(_) = tools(Generation::DEBIAN12) else {
        return;
    };
    for tool in ["dockerd", "docker"] {
        if require_tool(tool).is_none() {
            return;
        }
    }
    let tmp = TempDir::new("installer-docker");
    let dir = tmp.path();
    let host = dir.join("host");
    let driver = FakeDriver::build(&dir.join("driver"), &FakeDriverOptions::two_gpus());
    fs::write(driver.proc_root.join("modules"), "nvidia 1 0 - Live 0x0\n").unwrap();
    let daemon_json = host.join("etc/docker/daemon.json");
    fs::create_dir_all(daemon_json.parent().unwrap()).unwrap();
    let before = "{\n  \"log-level\": \"warn\"\n}\n";
    fs::write(&daemon_json, before).unwrap();
    let socket = dir.join("docker.sock");
    let env = [(
        "NVIDIA_CONTAINER_RUNTIME_STATE_DIR".to_string(),
        dir.join("ncr-state").display().to_string(),
    )];
    let docker = Docker::start(Generation::DEBIAN12, dir, &daemon_json, &env);
    let dockerd_pid = docker.daemon.child.id();
    let rootfs = build_rootfs(&dir.join("rootfs"), RootfsKind::Glibc { ldconfig: false });
    let tar = dir.join("rootfs.tar");
    let out = command_output({
        let mut cmd = Command::new("tar");
        cmd.arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg(".");
        cmd
    });
    out.assert_success("tar");
    docker
        .run(&["import", &tar.display().to_string(), "ncr-gpu:latest"])
        .assert_success("docker import");

    let path = |p: &Path| p.display().to_string();
    let installer = || {
        let mut cmd = Command::new(INSTALLER);
        cmd.envs([
            ("RUNTIME", "docker".to_string()),
            ("DOCKER_CONFIG", path(&daemon_json)),
            ("DOCKER_SOCKET", path(&socket)),
            ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "false".to_string()),
            ("HOST_ROOT_MOUNT", path(&host)),
            ("ROOT", path(&host.join("usr/local/nvidia"))),
            (
                "TOOLKIT_PID_FILE",
                path(&host.join("run/nvidia/toolkit/toolkit.pid")),
            ),
            ("DRIVER_ROOT", path(&driver.driver_root)),
            ("DEV_ROOT", path(&driver.dev_root)),
            (
                "NVIDIA_CONTAINER_RUNTIME_PROC_ROOT",
                path(&driver.proc_root),
            ),
            ("NVIDIA_CONTAINER_RUNTIME_SYS_ROOT", path(&driver.sys_root)),
            ("CDI_OUTPUT_DIR", path(&host.join("var/run/cdi"))),
            (
                "TOOLKIT_SOURCE_DIR",
                path(Path::new(INSTALLER).parent().unwrap()),
            ),
        ])
        .stdin(Stdio::null());
        cmd
    };
    let runtimes = || {
        docker
            .run(&["info", "--format", "{{json .Runtimes}}"])
            .stdout
    };

    // A pending edit of the admin's that dockerd's reload refuses (a
    // directive both a flag and in the file): SIGHUP leaves the daemon on
    // its old runtimes, the installer sees that through /info, puts the
    // previous bytes back, signals again and fails.
    let pending = "{\n  \"log-level\": \"warn\",\n  \"iptables\": false\n}\n";
    fs::write(&daemon_json, pending).unwrap();
    let mut refused = installer();
    refused.envs([("NO_DAEMON", "true"), ("RUNTIME_READY_TIMEOUT", "5")]);
    let refused = output_with_timeout(refused, DEADLINE).expect("the installer did not finish");
    println!("--- installer, reload refused ---\n{}", refused.stderr);
    assert!(!refused.success(), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!(
            "did not load runtime nvidia, nvidia-cdi, nvidia-legacy from {}",
            daemon_json.display()
        )),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("previous config was put back"),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read_to_string(&daemon_json).unwrap(), pending);
    assert!(!runtimes().contains("nvidia"), "{}", runtimes());
    assert_eq!(docker.daemon.child.id(), dockerd_pid);
    fs::write(&daemon_json, before).unwrap();

    let log_path = dir.join("installer.log");
    let mut installer = installer()
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start the installer");
    wait_for_line(&log_path, "waiting for SIGTERM", &mut installer);
    // The installer waited for the reload itself (/info lists them).
    let installed_log = fs::read_to_string(&log_path).unwrap();
    assert!(
        installed_log.contains("lists runtimes nvidia, nvidia-cdi, nvidia-legacy"),
        "{installed_log}"
    );
    for runtime in ["nvidia", "nvidia-cdi", "nvidia-legacy"] {
        assert!(
            runtimes().contains(&format!("\"{runtime}\"")),
            "{}",
            runtimes()
        );
    }
    // Reloaded, not restarted.
    assert_eq!(docker.daemon.child.id(), dockerd_pid);
    let uuid = &driver.gpus[1].uuid;
    let out = docker.run(&[
        "run",
        "--rm",
        "--network=none",
        "--runtime=nvidia",
        "-e",
        &format!("NVIDIA_VISIBLE_DEVICES={uuid}"),
        "ncr-gpu",
        "sh",
        "-c",
        GPU_SCRIPT,
    ]);
    out.assert_success("docker run --runtime=nvidia");
    assert_sees_only_gpu(&driver, &out.stdout, 1, &[], "docker run --runtime=nvidia");

    let pid = nix::unistd::Pid::from_raw(installer.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = wait_with_deadline(&mut installer, DEADLINE).expect("installer exit");
    let log_text = fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{status}\n{log_text}");
    assert_eq!(
        fs::read_to_string(&daemon_json).unwrap(),
        before,
        "{log_text}"
    );
    assert_eq!(log_text.matches("sending SIGHUP").count(), 2, "{log_text}");
    // dockerd's reload applies only the keys the file sets: a daemon.json
    // without `runtimes` leaves the running daemon's list as it was until
    // dockerd restarts (the entries point at the toolkit, which stays, as
    // NVIDIA's does: toolkit#494).
    assert!(docker.run(&["version"]).success());
    assert_eq!(docker.daemon.child.id(), dockerd_pid);
    println!(
        "dockerd's runtimes after the cleanup's SIGHUP: {}",
        runtimes()
    );
}

per_generation!(the_installer_image_runs_as_the_daemonset);

/// The installer's image (deploy/kubernetes/image/build.sh, from this
/// build's binaries) run the way the DaemonSet has kubelet run it: a
/// container of the node's own containerd, privileged, in the host's pid
/// namespace (hostPID: the installer finds containerd's pid through the
/// socket), with the DaemonSet's host mounts pointing into the node's tree
/// (deploy/kubernetes/daemonset.yaml: /host, /runtime/config-dir,
/// /runtime/config-dir.d, /runtime/sock-dir). Its container outlives the
/// containerd restarts it causes, as a pod's does. Paths the host's
/// containerd and runtime read ($ROOT, the driver, the CDI dir, the pid
/// file) are mounted at the same path, as the DaemonSet mounts
/// /usr/local/nvidia and /var/run/cdi.
fn the_installer_image_runs_as_the_daemonset(generation: Generation) {
    let Some(node) = Node::for_test("installer-image", generation) else {
        return;
    };
    let before = fs::read(&node.config).unwrap();

    // The image, without a registry.
    let image_dir = node.dir.join("image");
    let build = command_output({
        let mut cmd = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/kubernetes/image/build.sh"
        ));
        cmd.arg(&image_dir)
            .env("BINARIES", Path::new(INSTALLER).parent().unwrap())
            .stdin(Stdio::null());
        cmd
    });
    build.assert_success("deploy/kubernetes/image/build.sh");
    let image = build.stdout.lines().next().unwrap().trim().to_string();
    let archive = image_dir.join("installer-oci.tar").display().to_string();
    command_output(node.ctr(&["image", "import", "--snapshotter", "overlayfs", &archive]))
        .assert_success("ctr image import (the installer's image)");

    // The DaemonSet's environment; the node's paths where the host's
    // containerd must find them.
    let drop_in_dir = node.host.join("etc/containerd/conf.d");
    fs::create_dir_all(&drop_in_dir).unwrap();
    let base = node.installer(INSTALLER, &[]);
    let mut env: Vec<(String, String)> = base
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
        .filter(|(k, _)| !matches!(k.as_str(), "RUNTIME_EXECUTABLE_PATH" | "TOOLKIT_SOURCE_DIR"))
        .collect();
    let set = |env: &mut Vec<(String, String)>, key: &str, value: String| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value));
    };
    set(&mut env, "HOST_ROOT_MOUNT", "/host".into());
    set(
        &mut env,
        "RUNTIME_CONFIG",
        "/runtime/config-dir/config.toml".into(),
    );
    set(
        &mut env,
        "RUNTIME_DROP_IN_CONFIG",
        "/runtime/config-dir.d/99-nvidia.toml".into(),
    );
    set(
        &mut env,
        "RUNTIME_DROP_IN_CONFIG_HOST_PATH",
        node.drop_in().display().to_string(),
    );
    set(
        &mut env,
        "RUNTIME_SOCKET",
        "/runtime/sock-dir/containerd.sock".into(),
    );
    set(
        &mut env,
        "RUNTIME_CONFIG_HOST_PATH",
        node.config.display().to_string(),
    );
    let log = node.dir.join("installer-container.log");
    let mut args: Vec<String> = ["run", "-d", "--snapshotter", "overlayfs", "--privileged"]
        .map(String::from)
        .to_vec();
    // hostPID: the pid namespace of this test (this machine's pid 1 is not
    // ours to read).
    args.push("--with-ns".into());
    args.push(format!("pid:/proc/{}/ns/pid", std::process::id()));
    args.push("--log-uri".into());
    args.push(format!("file://{}", log.display()));
    let dir = node.dir.display().to_string();
    for (source, target, options) in [
        (
            node.host.display().to_string(),
            "/host".to_string(),
            "rbind:ro",
        ),
        (
            node.host.join("etc/containerd").display().to_string(),
            "/runtime/config-dir".to_string(),
            "rbind:rw",
        ),
        (
            drop_in_dir.display().to_string(),
            "/runtime/config-dir.d".to_string(),
            "rbind:rw",
        ),
        (dir.clone(), "/runtime/sock-dir".to_string(), "rbind:rw"),
        (dir.clone(), dir.clone(), "rbind:rw"),
    ] {
        args.push("--mount".into());
        args.push(format!(
            "type=bind,src={source},dst={target},options={options}"
        ));
    }
    for (key, value) in &env {
        args.push("--env".into());
        args.push(format!("{key}={value}"));
    }
    args.push(image);
    let id = unique_id("toolkit");
    args.push(id.clone());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    command_output(node.ctr(&arg_refs)).assert_success("ctr run -d (the installer's container)");

    // Up: registered, containerd restarted once and answering.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("waiting for SIGTERM") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the installer's container did not get ready:\n{text}\n--- containerd ---\n{}",
            node.containerd.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.containerd.wait_answers();
    assert!(
        node.containerd.started().len() >= 2,
        "containerd was not restarted"
    );
    // The image's static installer asked the CRI through the socket the
    // DaemonSet mounts, as kubelet will.
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(
            "answers on its CRI and serves runtime handlers nvidia, nvidia-cdi, nvidia-legacy"
        ),
        "{text}"
    );
    assert!(node
        .root()
        .join("toolkit/nvidia-container-runtime.real")
        .is_file());
    let uuid = node.driver.gpus[1].uuid.clone();
    let out = node
        .pod(&cri::Pod::new(GPU_IMAGE, "nvidia").env(&[&format!("NVIDIA_VISIBLE_DEVICES={uuid}")]));
    assert_sees_only_gpu(
        &node.driver,
        &out,
        1,
        &[],
        "a pod after the installer's container",
    );

    // SIGTERM to the container (a DaemonSet deleted): the config comes
    // back byte for byte, and containerd answers again.
    let retry = |what: &str, args: &[&str], ok: &dyn Fn(&RunOutput) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = command_output(node.ctr(args));
            if ok(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {out:?}\n--- the installer ---\n{}\n--- containerd ---\n{}",
                fs::read_to_string(&log).unwrap_or_default(),
                node.containerd.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // The cleanup restarts containerd, which may cut ctr's call short: a
    // retry then finds the task finished, which the log below must explain.
    retry(
        "ctr task kill",
        &["task", "kill", "--signal", "SIGTERM", &id],
        &|o| o.success() || o.stderr.contains("already finished"),
    );
    retry("the installer's task to stop", &["task", "ls"], &|o| {
        o.success()
            && o.stdout
                .lines()
                .any(|line| line.starts_with(&id) && line.contains("STOPPED"))
    });
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("got SIGTERM: cleaning up"), "{text}");
    assert_eq!(fs::read(&node.config).unwrap(), before, "{text}");
    assert!(!node.drop_in().exists(), "{text}");
    node.containerd.wait_answers();
    retry("ctr task delete", &["task", "delete", &id], &|o| {
        o.success()
    });
    retry(
        "ctr container delete",
        &["container", "delete", &id],
        &|o| o.success(),
    );
}
