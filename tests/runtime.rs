//! The runtime end to end: real runc, the fake driver, real containers.
mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");

impl World {
    fn new(name: &str) -> World {
        World::with_config(name, "")
    }

    fn with_config(name: &str, extra_runtime_keys: &str) -> World {
        World::build(name, &FakeDriverOptions::two_gpus(), "", extra_runtime_keys)
    }

    fn run(&self, bundle: &Bundle) -> RunOutput {
        run_container(
            Path::new(RUNTIME),
            &self.state_root,
            bundle,
            &unique_id("rt"),
            &self.config_env(),
        )
    }

    /// Our runtime with arbitrary args, the world's config in its env.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = generation().command(RUNTIME);
        command
            .arg("--root")
            .arg(&self.state_root)
            .args(args)
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &self.config)
            // This world's own state dir: the runtimes a create remembers
            // (what a later call with a broken config falls back to) must
            // not come from another test running at the same time.
            .env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", &self.runtime_state)
            .stdin(Stdio::null());
        command
    }
}

fn output(command: Command) -> RunOutput {
    command_output(command)
}

/// The `/dev/nvidia*` names a container sees, sorted.
fn nvidia_nodes(listing: &str) -> Vec<String> {
    let mut nodes: Vec<String> = listing
        .split_whitespace()
        .filter(|n| n.starts_with("nvidia"))
        .map(str::to_string)
        .collect();
    nodes.sort();
    nodes
}

#[test]
fn no_request_and_void_leave_config_json_byte_identical() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-void");
    for (name, env) in [
        ("none-set", vec![]),
        ("empty", vec!["NVIDIA_VISIBLE_DEVICES="]),
        ("void", vec!["NVIDIA_VISIBLE_DEVICES=void"]),
    ] {
        let bundle = world.bundle(name, RootfsKind::Busybox, &["sh", "-c", "ls /dev"], &env);
        let before = file_snapshot(&bundle.config_path());
        let out = world.run(&bundle);
        out.assert_success(name);
        assert_eq!(
            file_snapshot(&bundle.config_path()),
            before,
            "{name}: config.json changed"
        );
        assert!(
            nvidia_nodes(&out.stdout).is_empty(),
            "{name}: {}",
            out.stdout
        );
    }
}

#[test]
fn all_gpus_get_every_node_library_and_a_working_nvidia_smi() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-all");
    let bundle = world.bundle(
        "all",
        RootfsKind::Glibc { ldconfig: false },
        &[
            "sh",
            "-c",
            "ls /dev; echo ---; ls /usr/lib/x86_64-linux-gnu; echo ---; nvidia-smi -L",
        ],
        &["NVIDIA_VISIBLE_DEVICES=all"],
    );
    let out = world.run(&bundle);
    out.assert_success("all");
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(
        nvidia_nodes(parts[0]),
        [
            "nvidia-uvm",
            "nvidia-uvm-tools",
            "nvidia0",
            "nvidia1",
            "nvidiactl"
        ]
    );
    let libs = parts[1];
    for name in [
        "libcuda.so",
        "libcuda.so.1",
        "libcuda.so.550.54.15",
        "libnvidia-ml.so.1",
        "libnvidia-ml.so.550.54.15",
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-cfg.so.1",
    ] {
        assert!(
            libs.split_whitespace().any(|l| l == name),
            "{name} missing: {libs}"
        );
    }
    // Video and graphics libraries were not asked for; the stale 535 never.
    assert!(!libs.contains("libnvidia-encode"), "{libs}");
    assert!(!libs.contains("libnvidia-eglcore"), "{libs}");
    assert!(!libs.contains("535.00.00"), "{libs}");
    assert_eq!(parts[2], world.driver.smi_output(&[0, 1]));
}

#[test]
fn index_uuid_and_bus_id_select_exactly_the_right_minor() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-select");
    let gpu0 = world.driver.gpus[0].clone();
    let gpu1 = world.driver.gpus[1].clone();
    assert_ne!(
        gpu0.minor, 0,
        "the fixture must have minors that differ from indices"
    );
    let cases = [
        ("index0", "0".to_string(), &gpu0, 0),
        ("index1", "1".to_string(), &gpu1, 1),
        ("uuid", gpu1.uuid.to_lowercase(), &gpu1, 1),
        ("bus16", gpu0.bus_id.clone(), &gpu0, 0),
        ("bus32", gpu1.nvml_bus_id().to_uppercase(), &gpu1, 1),
    ];
    for (name, value, gpu, index) in cases {
        let env = format!("NVIDIA_VISIBLE_DEVICES={value}");
        let bundle = world.bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            &["sh", "-c", "ls /dev; echo ---; nvidia-smi -L"],
            &[&env],
        );
        let out = world.run(&bundle);
        out.assert_success(name);
        let (nodes, smi) = out.stdout.split_once("---\n").unwrap();
        let expected_gpu_node = format!("nvidia{}", gpu.minor);
        let gpu_nodes: Vec<String> = nvidia_nodes(nodes)
            .into_iter()
            .filter(|n| n[6..].bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(gpu_nodes, [expected_gpu_node], "{name}");
        // The fake NVML numbers visible GPUs from 0, like real NVML does.
        assert_eq!(smi, gpu.smi_line(0) + "\n", "{name} (GPU {index})");
    }
}

#[test]
fn none_gets_driver_files_but_no_gpu_node() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-none");
    let bundle = world.bundle(
        "none",
        RootfsKind::Glibc { ldconfig: false },
        &[
            "sh",
            "-c",
            "ls /dev; echo ---; nvidia-smi -L; echo status=$?",
        ],
        &["NVIDIA_VISIBLE_DEVICES=none"],
    );
    let out = world.run(&bundle);
    out.assert_success("none");
    let (nodes, smi) = out.stdout.split_once("---\n").unwrap();
    assert_eq!(
        nvidia_nodes(nodes),
        ["nvidia-uvm", "nvidia-uvm-tools", "nvidiactl"]
    );
    assert!(smi.contains("No devices were found"), "{smi}");
    assert!(smi.contains("status=6"), "{smi}");
}

#[test]
fn capabilities_change_what_is_mounted() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-caps");
    let listing = "ls /dev /usr/lib/x86_64-linux-gnu /usr/bin";
    let run = |name: &str, capabilities: &str| {
        let env = format!("NVIDIA_DRIVER_CAPABILITIES={capabilities}");
        let bundle = world.bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            &["sh", "-c", listing],
            &["NVIDIA_VISIBLE_DEVICES=0", &env],
        );
        let out = world.run(&bundle);
        out.assert_success(name);
        out.stdout
    };
    let utility = run("utility", "utility");
    assert!(utility.contains("libnvidia-ml.so.1"), "{utility}");
    assert!(utility.contains("nvidia-smi"), "{utility}");
    assert!(!utility.contains("libcuda"), "{utility}");
    assert!(!utility.contains("nvidia-uvm"), "{utility}");
    assert!(!utility.contains("nvidia-cuda-mps-control"), "{utility}");
    let compute = run("compute", "compute");
    assert!(compute.contains("libcuda.so.1"), "{compute}");
    assert!(compute.contains("nvidia-uvm"), "{compute}");
    assert!(compute.contains("nvidia-cuda-mps-control"), "{compute}");
    assert!(!compute.contains("libnvidia-ml"), "{compute}");
    assert!(!compute.contains("nvidia-smi"), "{compute}");
    let video = run("video", "video");
    assert!(video.contains("libnvidia-encode.so.1"), "{video}");
    assert!(
        video.contains("libcuda.so.1"),
        "video implies compute libraries: {video}"
    );
}

#[test]
fn device_cgroup_allows_injected_nodes_and_denies_the_others() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-cgroup");
    let gpu0 = world.driver.gpus[0].clone();
    let gpu1 = world.driver.gpus[1].clone();
    let bundle = world.bundle(
        "cgroup",
        RootfsKind::Busybox,
        &[
            "sh",
            "-c",
            &format!(
                "cat /dev/nvidia{} 2>&1; cat /dev/nvidiactl 2>&1; cat /dev/nvidia{} 2>&1; \
                 awk '$5 == \"/sys/fs/cgroup\" {{ for (i = 7; i <= NF; i++) if ($i == \"-\") print $(i + 1) }}' /proc/self/mountinfo; \
                 true",
                gpu0.minor, gpu1.minor
            ),
        ],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    // The other GPU's node exists in the container, but no rule allows it.
    bundle.add_char_device(&gpu1.device_path(), 195, gpu1.minor, false);
    let out = world.run(&bundle);
    out.assert_success("cgroup");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].contains("No such device or address"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("No such device or address"),
        "{}",
        lines[1]
    );
    // The container is in the cgroup version this run is for: runc mounts
    // the cgroup2 hierarchy at /sys/fs/cgroup on v2, a tmpfs holding one
    // mount per controller on v1.
    let generation = generation();
    let expected_type = match generation.cgroup {
        CgroupMode::V2 => "cgroup2",
        CgroupMode::V1 => "tmpfs",
    };
    assert_eq!(lines[3], expected_type, "{generation}: {}", out.stdout);
    if generation.enforces_device_rules() {
        assert!(lines[2].contains("Operation not permitted"), "{}", lines[2]);
    } else {
        eprintln!("{generation}: no device rules here (crun cannot load its BPF filter on this machine), the EPERM check is not possible");
    }
}

#[test]
fn spec_edits_survive_unknown_fields_and_a_second_patch_is_a_no_op() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-idem");
    let bundle = world.bundle(
        "idem",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=1"],
    );
    bundle.edit_config(|config| {
        config["x-future-field"] = json!({"keep": [1, 2, 3]});
        config["process"]["x-process-extra"] = json!("kept");
        config["hooks"] = json!({"prestart": [
            {"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"]}
        ]});
    });
    let id = unique_id("idem");
    let create = |id: &str| {
        output({
            // The container's init inherits create's stdio and holds it
            // until start: a pipe here would never see EOF.
            let mut c = world.command(&["create", "--bundle", bundle.dir.to_str().unwrap(), id]);
            c.stdout(Stdio::null()).stderr(Stdio::null());
            c
        })
    };
    create(&id).assert_success("first create");
    let patched = bundle.read_config();
    assert_eq!(patched["x-future-field"], json!({"keep": [1, 2, 3]}));
    assert_eq!(patched["process"]["x-process-extra"], json!("kept"));
    let prestart = patched["hooks"]["prestart"].as_array().unwrap();
    assert_eq!(
        prestart.len(),
        1,
        "docker's hook must be replaced by ours: {prestart:?}"
    );
    assert!(prestart[0]["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--injected-by-runtime")));
    assert_eq!(
        prestart[0]["env"].as_array().unwrap().len(),
        1,
        "explicit minimal env"
    );
    let devices = patched["linux"]["devices"].as_array().unwrap();
    let gpu_minor = world.driver.gpus[1].minor;
    assert!(devices
        .iter()
        .any(|d| d["path"] == format!("/dev/nvidia{gpu_minor}")));
    let rules = patched["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(rules.contains(
        &json!({"allow": true, "type": "c", "major": 195, "minor": gpu_minor, "access": "rwm"})
    ));
    output(world.command(&["delete", "--force", &id])).assert_success("delete");

    // A second create of the already patched bundle changes nothing.
    let before = file_snapshot(&bundle.config_path());
    let id2 = unique_id("idem2");
    create(&id2).assert_success("second create");
    assert_eq!(file_snapshot(&bundle.config_path()), before);
    output(world.command(&["delete", "--force", &id2])).assert_success("delete");
}

/// Creates through our runtime, expecting failure: exit 1, the message on
/// stderr and as a runc JSON error line in --log, config.json untouched, no
/// container created.
fn assert_refused(world: &World, bundle: &Bundle, extra_env: &[(&str, &str)], expected: &[&str]) {
    let before = fs::read(bundle.config_path()).ok();
    let id = unique_id("bad");
    let log = bundle.dir.join("bad-log.json");
    let mut command = world.command(&[]);
    command
        .args(["--log", log.to_str().unwrap(), "--log-format", "json"])
        .args(["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let out = output(command);
    assert_eq!(out.status, 1, "{out:?}");
    for needle in expected {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    let log_text = fs::read_to_string(&log).unwrap();
    let line: Value = serde_json::from_str(log_text.lines().last().unwrap()).unwrap();
    assert_eq!(line["level"], "error");
    for needle in expected {
        assert!(line["msg"].as_str().unwrap().contains(needle), "{line}");
    }
    assert_eq!(
        fs::read(bundle.config_path()).ok(),
        before,
        "config.json changed"
    );
    let state = output(world.command(&["state", &id]));
    assert_ne!(state.status, 0, "a container was created: {state:?}");
}

#[test]
fn bad_requests_are_refused_with_a_clear_message() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-bad");
    let unknown_gpu = world.bundle(
        "gpu7",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=7"],
    );
    assert_refused(
        &world,
        &unknown_gpu,
        &[],
        &["NVIDIA_VISIBLE_DEVICES names GPU 7, but this host has GPUs 0-1"],
    );
    let unknown_uuid = world.bundle(
        "uuid",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=GPU-nope"],
    );
    assert_refused(
        &world,
        &unknown_uuid,
        &[],
        &["GPU-nope", &world.driver.gpus[0].uuid],
    );
    let bad_cap = world.bundle(
        "cap",
        RootfsKind::Busybox,
        &["true"],
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,gpus",
        ],
    );
    assert_refused(
        &world,
        &bad_cap,
        &[],
        &["unknown driver capability \"gpus\""],
    );
    let malformed = world.bundle("malformed", RootfsKind::Busybox, &["true"], &[]);
    // A GPU request in a file that does not parse. (A malformed file that
    // mentions no request at all is handed to runc unread, which reports it.)
    fs::write(
        malformed.config_path(),
        b"{\"ociVersion\": \"1.0.2\", \"process\": {\"env\": [\"NVIDIA_VISIBLE_DEVICES=0\"",
    )
    .unwrap();
    assert_refused(&world, &malformed, &[], &["config.json is not valid JSON"]);
}

#[test]
fn half_upgraded_driver_is_refused() {
    if !require_root() {
        return;
    }
    // Kernel module 470 while libcuda.so.1 points at a newer (535) file.
    let mut options = FakeDriverOptions::two_gpus();
    options.version = "470.223.02".into();
    options.kernel_version = "470.223.02".into();
    let world = World::build("rt-upgrade", &options, "", "");
    let bundle = world.bundle(
        "b",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    assert_refused(
        &world,
        &bundle,
        &[],
        &[
            "are version 535.00.00",
            "the loaded kernel module is 470.223.02",
            "half-upgraded",
        ],
    );
}

#[test]
fn missing_or_self_runtime_is_refused() {
    if !require_root() {
        return;
    }
    let missing = World::with_config("rt-missing", "runtimes = [\"no-such-runc\"]");
    let bundle = missing.bundle(
        "b",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    assert_refused(
        &missing,
        &bundle,
        &[],
        &["no low-level runtime found", "no-such-runc"],
    );

    let tmp = TempDir::new("rt-self-link");
    let link = tmp.path().join("runc");
    std::os::unix::fs::symlink(RUNTIME, &link).unwrap();
    let itself = World::with_config("rt-self", &format!("runtimes = [\"{}\"]", link.display()));
    let bundle = itself.bundle("b", RootfsKind::Busybox, &["true"], &[]);
    assert_refused(&itself, &bundle, &[], &["resolves to this program"]);
    // Pass-through commands are refused the same way instead of recursing.
    let out = output(itself.command(&["state", "x"]));
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("resolves to this program"),
        "{}",
        out.stderr
    );
}

#[test]
fn bundle_flag_without_value_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-flag");
    let log = world.tmp.path().join("log.json");
    let out = output({
        let mut c = world.command(&[
            "--log",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "create",
            "id",
            "--bundle",
        ]);
        c.current_dir(world.tmp.path());
        c
    });
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("--bundle flag has no value"),
        "{}",
        out.stderr
    );
    assert!(fs::read_to_string(&log)
        .unwrap()
        .contains("--bundle flag has no value"));
}

#[test]
fn config_syntax_error_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-config");
    fs::write(&world.config, "[nvidia-container-cli\nroot = ").unwrap();
    // A GPU container: one that asks for none goes on without the config
    // (a_broken_config_toml_stops_only_gpu_creates).
    let bundle = world.bundle(
        "b",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    assert_refused(
        &world,
        &bundle,
        &[],
        &["is not valid TOML", world.config.to_str().unwrap()],
    );
}

#[test]
fn pass_through_behaves_exactly_like_runc() {
    if !require_root() {
        return;
    }
    let world = World::new("rt-pass");
    let runc = runc_path();
    let compare = |args: &[&str]| {
        let ours = output(world.command(args));
        let theirs = output({
            let mut c = generation().command(&runc);
            c.arg("--root")
                .arg(&world.state_root)
                .args(args)
                .stdin(Stdio::null());
            c
        });
        assert_eq!(
            ours.status, theirs.status,
            "{args:?}: {ours:?} vs {theirs:?}"
        );
        assert_eq!(ours.stdout, theirs.stdout, "{args:?}");
        ours
    };
    assert_ne!(compare(&["state", "missing"]).status, 0);
    compare(&["delete", "missing"]);
    compare(&["kill", "missing", "KILL"]);
    compare(&["list"]);
    compare(&["no-such-subcommand"]);

    // A live container: state, kill and delete through us.
    let bundle = world.bundle("live", RootfsKind::Busybox, &["sleep", "30"], &[]);
    let id = unique_id("live");
    output({
        let mut c = world.command(&["create", "--bundle", bundle.dir.to_str().unwrap(), &id]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    })
    .assert_success("create");
    let state: Value = serde_json::from_str(&compare(&["state", &id]).stdout).unwrap();
    assert_eq!(state["status"], "created");
    // kill and delete change the state, so they go through us alone and the
    // state (compared) shows their effect.
    output(world.command(&["kill", &id, "KILL"])).assert_success("kill");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let state: Value = serde_json::from_str(&compare(&["state", &id]).stdout).unwrap();
        if state["status"] == "stopped" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not stopped: {state}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    output(world.command(&["delete", &id])).assert_success("delete");
    assert_ne!(compare(&["state", &id]).status, 0);
    assert_ne!(compare(&["delete", &id]).status, 0);
}

#[test]
fn version_prints_ours_then_runcs() {
    let mut command = generation().command(RUNTIME);
    command
        .arg("--version")
        .env("NVIDIA_CTK_CONFIG_FILE_PATH", "/nonexistent");
    let out = output(command);
    assert_eq!(out.status, 0, "{out:?}");
    let ours = out
        .stdout
        .find("NVIDIA Container Runtime version")
        .expect("ours");
    let theirs = out.stdout.find("runc version").expect("runc's");
    assert!(ours < theirs, "{}", out.stdout);
}

/// A low-level runtime that logs each call to `<dir>/lowlevel-calls`, then
/// execs runc: shows which runtime our runtime picked.
fn recording_runc(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let calls = dir.join("lowlevel-calls");
    let wrapper = dir.join("lowlevel");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            calls.display(),
            runc_path().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    (wrapper, calls)
}

#[test]
fn a_broken_config_toml_stops_only_gpu_creates() {
    if !require_root() {
        return;
    }
    let scratch = TempDir::new("rt-broken-config-bin");
    let (lowlevel, calls) = recording_runc(scratch.path());
    let world = World::with_config(
        "rt-broken-config",
        &format!("runtimes = [\"{}\"]", lowlevel.display()),
    );
    let state_dir = world.tmp.path().join("runtime-state");
    let good = fs::read_to_string(&world.config).unwrap();
    let env = [
        (
            "NVIDIA_CTK_CONFIG_FILE_PATH",
            world.config.to_str().unwrap(),
        ),
        (
            "NVIDIA_CONTAINER_RUNTIME_STATE_DIR",
            state_dir.to_str().unwrap(),
        ),
    ];
    let runtime = Path::new(RUNTIME);
    // stdout and stderr to files, not pipes: a created container's init
    // holds them open until it exits.
    let command = |bundle: &Bundle, args: &[&str]| {
        let out = bundle.dir.join("command.stdout");
        let err = bundle.dir.join("command.stderr");
        let status = runtime_command(runtime, &world.state_root, bundle, &env)
            .args(args)
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        RunOutput {
            status: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&out).unwrap(),
            stderr: fs::read_to_string(&err).unwrap(),
        }
    };
    for (kind, expected) in [
        ("malformed", "is not valid TOML"),
        ("unreadable", "it is not a regular file"),
        ("fifo", "it is not a regular file"),
    ] {
        // A container created while the config is good: the runtime
        // remembers the low-level runtime the config names.
        let _ = fs::remove_dir_all(&world.config);
        let _ = fs::remove_file(&world.config);
        fs::write(&world.config, &good).unwrap();
        let running = world.bundle(
            &format!("{kind}-running"),
            RootfsKind::Busybox,
            &["sleep", "60"],
            &[],
        );
        let id = unique_id(&format!("{kind}-a"));
        command(
            &running,
            &["create", "--bundle", running.dir.to_str().unwrap(), &id],
        )
        .assert_success("create with the good config");
        command(&running, &["start", &id]).assert_success("start");

        fs::remove_file(&world.config).unwrap();
        match kind {
            "malformed" => fs::write(&world.config, "runtimes = [\"runc\"\n[oops").unwrap(),
            "unreadable" => fs::create_dir(&world.config).unwrap(),
            _ => {
                let status = Command::new("mkfifo").arg(&world.config).status().unwrap();
                assert!(status.success());
            }
        }
        fs::write(&calls, "").unwrap();

        // Every command on the running container still works, through the
        // low-level runtime it was created with; each logs the fault.
        let state = command(&running, &["state", &id]);
        state.assert_success(&format!("{kind}: state"));
        let status: Value = serde_json::from_str(&state.stdout).unwrap();
        assert_eq!(status["status"], "running", "{kind}: {}", state.stdout);
        assert!(state.stderr.is_empty(), "{kind}: {}", state.stderr);
        command(&running, &["kill", &id, "KILL"]).assert_success(&format!("{kind}: kill"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while container_status(runtime, &world.state_root, &running, &id, &env).as_deref()
            != Some("stopped")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind}: never stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        command(&running, &["delete", &id]).assert_success(&format!("{kind}: delete"));
        let recorded = fs::read_to_string(&calls).unwrap();
        for subcommand in ["state", "kill", "delete"] {
            assert!(
                recorded
                    .lines()
                    .any(|l| l.contains(&format!(" {subcommand} ")) && l.contains(&id)),
                "{kind}: {subcommand} did not go to the remembered runtime:\n{recorded}"
            );
        }
        let log = fs::read_to_string(running.runtime_log_path()).unwrap_or_default();
        assert!(
            log.lines()
                .any(|l| l.contains("\"level\":\"warning\"") && l.contains(expected)),
            "{kind}: no warning in the runtime log:\n{log}"
        );

        // A new container that asks for no GPU runs its whole life.
        let plain = world.bundle(
            &format!("{kind}-plain"),
            RootfsKind::Busybox,
            &["echo", "ok"],
            &[],
        );
        let out = create_start_delete(
            runtime,
            &world.state_root,
            &plain,
            &unique_id(&format!("{kind}-b")),
            &env,
        );
        out.assert_success(&format!("{kind}: a container without GPUs"));
        assert_eq!(out.stdout, "ok\n");
        assert!(
            out.stderr.contains("warning:") && out.stderr.contains(expected),
            "{kind}: {}",
            out.stderr
        );

        // A GPU container is refused with the config's own error, before
        // the low-level runtime is called.
        fs::write(&calls, "").unwrap();
        let gpu = world.bundle(
            &format!("{kind}-gpu"),
            RootfsKind::Busybox,
            &["true"],
            &["NVIDIA_VISIBLE_DEVICES=0"],
        );
        let before = fs::read(gpu.config_path()).unwrap();
        let id = unique_id(&format!("{kind}-c"));
        let out = command(
            &gpu,
            &["create", "--bundle", gpu.dir.to_str().unwrap(), &id],
        );
        assert_eq!(out.status, 1, "{kind}: {out:?}");
        assert!(out.stderr.contains(expected), "{kind}: {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
        assert_eq!(fs::read(gpu.config_path()).unwrap(), before);
        assert_eq!(fs::read_to_string(&calls).unwrap(), "", "{kind}");

        // So is one whose config.json is over the size limit and mentions
        // a request (sparse: only its head is real).
        let huge = world.bundle(&format!("{kind}-huge"), RootfsKind::Busybox, &["true"], &[]);
        let file = fs::File::create(huge.config_path()).unwrap();
        std::io::Write::write_all(
            &mut &file,
            br#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#,
        )
        .unwrap();
        file.set_len(nvidia_container_runtime::bounded::CONFIG_JSON.bytes + 1)
            .unwrap();
        let id = unique_id(&format!("{kind}-d"));
        let out = command(
            &huge,
            &["create", "--bundle", huge.dir.to_str().unwrap(), &id],
        );
        assert_eq!(out.status, 1, "{kind}: {out:?}");
        assert!(out.stderr.contains(expected), "{kind}: {}", out.stderr);
        assert_eq!(fs::read_to_string(&calls).unwrap(), "", "{kind}");
    }
    let _ = fs::remove_dir_all(&world.config);
    let _ = fs::remove_file(&world.config);
}

#[test]
fn a_broken_config_keeps_crun_for_the_containers_crun_created() {
    if !require_root() {
        return;
    }
    let Some(crun) = require_tool("crun") else {
        return;
    };
    // crun 1.8 refuses this machine's hybrid cgroup v1 layout; in a private
    // mount namespace with cgroup2 at /sys/fs/cgroup it runs containers
    // without cgroups (testing.md), which is all this test needs. The
    // configured runtime is crun; after the config breaks, runc (the
    // default) would not know crun's containers.
    let scratch = TempDir::new("rt-broken-crun-bin");
    let calls = scratch.path().join("lowlevel-calls");
    let wrapper = scratch.path().join("crun-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' --cgroup-manager=disabled \"$@\"\n",
            calls.display(),
            crun.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let world = World::with_config(
        "rt-broken-crun",
        &format!("runtimes = [\"{}\"]", wrapper.display()),
    );
    let bundle = world.bundle("running", RootfsKind::Busybox, &["sleep", "60"], &[]);
    let id = unique_id("crun");
    let script = format!(
        r#"set -e
mount --make-rprivate /
[ "$(stat -f -c %T /sys/fs/cgroup)" = cgroup2fs ] || mount -t cgroup2 none /sys/fs/cgroup
rt() {{ '{runtime}' --root '{root}' "$@"; }}
rt create --bundle '{bundle}' '{id}' >/dev/null 2>&1 </dev/null
rt start '{id}'
printf 'runtimes = [oops\n' > '{config}'
echo "state: $(rt state '{id}' 2>/dev/null | tr -d '\n ')"
rt kill '{id}' KILL
for i in $(seq 200); do
  rt state '{id}' 2>/dev/null | tr -d '\n ' | grep -q '"status":"stopped"' && break
  sleep 0.05
done
rt delete '{id}' && echo deleted
"#,
        runtime = RUNTIME,
        root = world.state_root.display(),
        bundle = bundle.dir.display(),
        id = id,
        config = world.config.display(),
    );
    let mut command = generation().command("unshare");
    command
        .args(["-m", "sh", "-c", &script])
        .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
        .env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", &world.runtime_state)
        .stdin(Stdio::null());
    let out = output_with_timeout(command, std::time::Duration::from_secs(60))
        .expect("the crun scenario hung");
    out.assert_success("crun scenario");
    assert!(
        out.stdout.contains(r#""status":"running""#),
        "state through the broken config: {}",
        out.stdout
    );
    assert!(out.stdout.contains("deleted"), "{}", out.stdout);
    let recorded = fs::read_to_string(&calls).unwrap();
    for subcommand in ["create", "start", "state", "kill", "delete"] {
        assert!(
            recorded
                .lines()
                .any(|l| l.contains(&format!(" {subcommand} "))),
            "{subcommand} did not go to crun:\n{recorded}"
        );
    }
}

#[test]
fn the_hook_finds_the_rootfs_when_the_runtime_runs_chrooted() {
    if !require_root() {
        return;
    }
    // An engine started from a chroot (a sid root, an installer container):
    // runc's paths are the chroot's, and the hook, once in the container's
    // mount namespace, must resolve root.path from runc's root, not from the
    // namespace's `/`. The bundle lives at /jailonly/..., a path that exists
    // only inside the chroot.
    // runc by name: the low-level runtime under test may be named by a
    // path (the sid root's, a wrapper) that the jail does not have.
    let world = World::with_config("rt-chroot", "runtimes = [\"runc\"]");
    let bundle = world.bundle(
        "bundle",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &["NVIDIA_VISIBLE_DEVICES=1"],
    );
    let jail = world.tmp.path().join("jail");
    fs::create_dir_all(&jail).unwrap();
    let binaries = Path::new(RUNTIME).parent().unwrap();
    let mut binds = String::new();
    for dir in [
        "/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc", "/proc", "/sys", "/dev", "/tmp",
    ] {
        if Path::new(dir).is_symlink() {
            binds.push_str(&format!("ln -sfn \"$(readlink {dir})\" \"$J{dir}\"\n"));
        } else if Path::new(dir).is_dir() {
            binds.push_str(&format!(
                "mkdir -p \"$J{dir}\" && mount --rbind {dir} \"$J{dir}\"\n"
            ));
        }
    }
    let script = format!(
        r#"set -e
J='{jail}'
mount --make-rprivate /
mount --bind "$J" "$J"
{binds}mkdir -p "$J{bin_dir}" && mount --bind '{bin_dir}' "$J{bin_dir}"
mkdir -p "$J/jailonly" && mount --bind '{bundle_parent}' "$J/jailonly"
exec chroot "$J" '{runtime}' --root /jailonly/state-chroot run --bundle /jailonly/bundle '{id}'
"#,
        jail = jail.display(),
        bin_dir = binaries.display(),
        bundle_parent = bundle.dir.parent().unwrap().display(),
        runtime = RUNTIME,
        id = unique_id("chroot"),
    );
    assert!(!Path::new("/jailonly").exists());
    let mut command = generation().command("unshare");
    command
        .args(["-m", "sh", "-c", &script])
        .envs(world.config_env())
        .stdin(Stdio::null());
    let out = output_with_timeout(command, std::time::Duration::from_secs(60))
        .expect("the chrooted runtime hung");
    out.assert_success("a GPU container through a chrooted runtime");
    assert_eq!(out.stdout, world.driver.smi_output(&[1]), "{out:?}");
}

/// The start path syncs nothing: config.json is replaced atomically by a
/// rename, without fsync (a bundle does not outlive a crash of the
/// machine), while engine configs and CDI specs keep theirs.
#[test]
fn a_gpu_create_rewrites_config_json_without_syncing() {
    if !require_root() {
        return;
    }
    let Some(strace) = require_tool("strace") else {
        return;
    };
    let world = World::with_config("rt-nosync", "runtimes = [\"/bin/true\"]");
    let bundle = world.bundle(
        "gpu",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    // `command` under strace, following children; what it synced.
    let sync_calls = |name: &str, command: &Command| {
        let log = world.tmp.path().join(format!("{name}.strace"));
        let traced = strace_command(
            &strace,
            "trace=fsync,fdatasync,syncfs,sync,sync_file_range,msync",
            &log,
            command,
        );
        let out = command_output(traced);
        out.assert_success(name);
        fs::read_to_string(&log).unwrap()
    };
    // The trace sees a sync when there is one.
    let mut control = Command::new("sh");
    control.args(["-c", "sync; true"]);
    assert!(sync_calls("control", &control).contains("sync("));

    let mut create = runtime_command(
        Path::new(RUNTIME),
        &world.state_root,
        &bundle,
        &world.config_env(),
    );
    create
        .args(["create", "--bundle"])
        .arg(&bundle.dir)
        .arg(unique_id("nosync"));
    let calls = sync_calls("create", &create);
    assert!(
        bundle.read_config().to_string().contains("/dev/nvidiactl"),
        "config.json was patched"
    );
    assert!(
        calls.trim().is_empty(),
        "sync calls on the start path:\n{calls}"
    );
}
