//! Integration tests of `nvidia-container-runtime-hook`: real runc, our
//! runtime binary and the fake driver (tests/common), and images built the
//! way an attacker would build them (security.md rule 6).
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nvidia_container_runtime::hook::build_masked_tree;
use serde_json::{json, Value};

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");
/// argv[0] of the hook, as the hook entries' args give it.
const ARG0: &str = "nvidia-container-runtime-hook";

impl World {
    /// Two fake GPUs, the default config.
    fn new(prefix: &str) -> World {
        World::build(prefix, &FakeDriverOptions::two_gpus(), "", "")
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A bundle asking for GPU 0 with compute and utility.
    fn gpu_bundle(&self, name: &str, kind: RootfsKind, args: &[&str], env: &[&str]) -> Bundle {
        let mut all_env = vec![
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        ];
        all_env.extend_from_slice(env);
        Bundle::new(&self.dir(name), kind, args, &all_env)
    }

    /// `nvidia-container-runtime run`; on failure the message carries the
    /// runtime's (and the hook's) debug log.
    fn run(&self, bundle: &Bundle, prefix: &str) -> RunOutput {
        run_container(
            Path::new(RUNTIME),
            &self.state_root,
            bundle,
            &unique_id(prefix),
            &self.config_env(),
        )
    }

    fn debug_log(&self) -> String {
        fs::read_to_string(self.driver.debug_log_path()).unwrap_or_default()
    }

    fn assert_ran(&self, out: &RunOutput, what: &str) {
        if !out.success() {
            panic!(
                "{what} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- debug log ---\n{}",
                out.status,
                out.stdout,
                out.stderr,
                self.debug_log()
            );
        }
    }
}

/// The cache line of an injected library: its SONAME names the file
/// mounted at its own name (`libcuda.so.1 => .../libcuda.so.550.54.15`).
fn injected_line(soname: &str, lib_dir: &str) -> String {
    let stem = soname.split(".so").next().unwrap_or(soname);
    format!("{soname} (libc6,x86-64) => {lib_dir}/{stem}.so.{DRIVER_VERSION}")
}

#[test]
fn glibc_image_with_ldconfig_lists_injected_libraries() {
    if !require_root() {
        return;
    }
    let setup = World::new("hook-ldconfig");
    let script = "ldconfig -p; echo ---; nvidia-smi -L; echo ---; use-image-lib";
    let bundle = setup.gpu_bundle(
        "b",
        RootfsKind::Glibc { ldconfig: true },
        &["sh", "-c", script],
        &[],
    );
    let out = setup.run(&bundle, "ldc");
    setup.assert_ran(&out, "ldconfig -p / nvidia-smi in a glibc image");
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 3, "{out:?}");
    let lib_dir = "/usr/lib/x86_64-linux-gnu";
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        assert!(
            parts[0].contains(&injected_line(soname, lib_dir)),
            "{}",
            parts[0]
        );
    }
    // The image's own entries stay.
    assert!(
        parts[0].contains("libimage.so.1 (libc6,x86-64) => "),
        "{}",
        parts[0]
    );
    assert!(
        parts[0].contains("libc.so.6 (libc6,x86-64) => "),
        "{}",
        parts[0]
    );
    assert_eq!(parts[1], setup.driver.smi_output(&[0]));
    assert_eq!(parts[2], "hello from libimage\n");

    // Seen from the host: a regular file, mode 0644, that glibc's own
    // ldconfig reads.
    let cache = bundle.rootfs.join("etc/ld.so.cache");
    let meta = fs::symlink_metadata(&cache).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    let listing = ldconfig_print(&cache);
    assert!(
        listing.contains(&injected_line("libcuda.so.1", lib_dir)),
        "{listing}"
    );
    // No temp file left behind.
    let leftovers: Vec<_> = fs::read_dir(bundle.rootfs.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("nvidia-hook"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn images_without_ldconfig_and_busybox_start() {
    if !require_root() {
        return;
    }
    let setup = World::new("hook-plain");

    // glibc without ldconfig or ld.so.cache: the hook writes a cache of the
    // injected libraries; nvidia-smi (glibc) runs.
    let bundle = setup.gpu_bundle(
        "glibc",
        RootfsKind::Glibc { ldconfig: false },
        &["sh", "-c", "nvidia-smi -L && use-image-lib"],
        &[],
    );
    let out = setup.run(&bundle, "noldc");
    setup.assert_ran(&out, "nvidia-smi in a glibc image without ldconfig");
    assert_eq!(
        out.stdout,
        format!("{}hello from libimage\n", setup.driver.smi_output(&[0]))
    );
    let listing = ldconfig_print(&bundle.rootfs.join("etc/ld.so.cache"));
    assert!(
        listing.contains(&injected_line(
            "libnvidia-ml.so.1",
            "/usr/lib/x86_64-linux-gnu"
        )),
        "{listing}"
    );

    // busybox (static, no libc, not Debian): starts; the libraries are in
    // /usr/lib64 and listed in the cache the hook wrote.
    let bundle = setup.gpu_bundle(
        "busybox",
        RootfsKind::Busybox,
        &[
            "sh",
            "-c",
            "test -e /usr/lib64/libcuda.so.1 && test -x /usr/bin/nvidia-smi && echo ok",
        ],
        &[],
    );
    let out = setup.run(&bundle, "bb");
    setup.assert_ran(&out, "busybox GPU container");
    assert_eq!(out.stdout, "ok\n");
    let listing = ldconfig_print(&bundle.rootfs.join("etc/ld.so.cache"));
    assert!(
        listing.contains(&injected_line("libcuda.so.1", "/usr/lib64")),
        "{listing}"
    );

    // An image without /etc (scratch-like): starts, and no /etc is made.
    let bundle = setup.gpu_bundle("noetc", RootfsKind::Busybox, &["true"], &[]);
    fs::remove_dir_all(bundle.rootfs.join("etc")).unwrap();
    let out = setup.run(&bundle, "noetc");
    setup.assert_ran(&out, "GPU container of an image without /etc");
    assert!(!bundle.rootfs.join("etc").exists());
}

/// Compiles a library whose constructor appends its pid to `marker`.
fn build_marker_library(out: &Path, marker: &Path) {
    let source = out.with_extension("c");
    fs::write(
        &source,
        r#"#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void)
{
    char line[32];
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
        if (write(fd, line, n) < 0) {}
        close(fd);
    }
}
"#,
    )
    .unwrap();
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-shared", "-fPIC", "-o"])
        .arg(out)
        .arg(format!("-DMARKER=\"{}\"", marker.display()))
        .arg(&source)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc {}", source.display());
}

#[test]
fn nvidiascape_image_ld_preload_never_reaches_the_hook() {
    if !require_root() {
        return;
    }
    let setup = World::new("hook-nvscape");
    let host_dir = TempDir::new("hook-nvscape-host");
    let marker = host_dir.path().join("pwned");
    let evil = setup.dir("evil.so");
    build_marker_library(&evil, &marker);

    // Control: the library does write the marker when a host process loads it.
    let status = Command::new("/bin/true")
        .env("LD_PRELOAD", &evil)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        marker.exists(),
        "the attacker library must work on the host"
    );
    fs::remove_file(&marker).unwrap();

    for (name, preload) in [("cwd", "/proc/self/cwd/evil.so"), ("abs", "/evil.so")] {
        let env = format!("LD_PRELOAD={preload}");
        let bundle = setup.gpu_bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            &["sh", "-c", "nvidia-smi -L"],
            &[&env],
        );
        // The image carries the library at its root, as in the 3-line
        // Dockerfile; a copy in the bundle dir covers a hook whose cwd is
        // the bundle (runc's) rather than the rootfs.
        fs::copy(&evil, bundle.rootfs.join("evil.so")).unwrap();
        fs::copy(&evil, bundle.dir.join("evil.so")).unwrap();
        let out = create_start_delete(
            Path::new(RUNTIME),
            &setup.state_root,
            &bundle,
            &unique_id("nvscape"),
            &setup.config_env(),
        );
        setup.assert_ran(&out, &format!("container with {env}"));
        assert_eq!(out.stdout, setup.driver.smi_output(&[0]), "{out:?}");
        assert!(
            !marker.exists(),
            "{env}: the image's library ran on the host: {}",
            fs::read_to_string(&marker).unwrap_or_default()
        );
        // The hook entry the runtime wrote carries its own minimal env.
        let config = bundle.read_config();
        let hooks = config["hooks"]["prestart"]
            .as_array()
            .expect("prestart hooks");
        let ours = hooks
            .iter()
            .find(|h| h["path"] == HOOK)
            .expect("our hook entry");
        let hook_env: Vec<&str> = ours["env"]
            .as_array()
            .expect("explicit hook env")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            hook_env.iter().all(|e| !e.starts_with("LD_")),
            "{hook_env:?}"
        );
    }
}

/// `../` enough times to climb out of any rootfs, then `target`.
fn dotdot(target: &Path) -> PathBuf {
    PathBuf::from(format!("{}{}", "../".repeat(24), target.display()).replace("//", "/"))
}

#[test]
fn image_symlinks_never_reach_the_host() {
    if !require_root() {
        return;
    }
    let setup = World::new("hook-escape");
    let host = TempDir::new("hook-escape-host");
    fs::write(host.path().join("canary.txt"), "host file\n").unwrap();
    fs::write(host.path().join("ld.so.cache"), "the host's own cache\n").unwrap();
    fs::create_dir_all(host.path().join("nvidia")).unwrap();
    fs::write(host.path().join("nvidia/params"), "ModifyDeviceFiles: 1\n").unwrap();
    let before = tree_snapshot(host.path());

    // (what the image replaces, the link's target), each absolute and `..`.
    let host_cache = host.path().join("ld.so.cache");
    let cases: Vec<(&str, PathBuf)> = vec![
        ("usr/lib/x86_64-linux-gnu", host.path().to_path_buf()),
        ("usr/lib/x86_64-linux-gnu", dotdot(host.path())),
        ("etc", host.path().to_path_buf()),
        ("etc", dotdot(host.path())),
        ("etc/ld.so.cache", host_cache.clone()),
        ("etc/ld.so.cache", dotdot(&host_cache)),
        ("proc/driver", host.path().to_path_buf()),
        ("proc/driver", dotdot(host.path())),
    ];
    for (i, (link, target)) in cases.iter().enumerate() {
        let bundle = setup.gpu_bundle(
            &format!("b{i}"),
            RootfsKind::Glibc { ldconfig: true },
            &["sh", "-c", "echo started"],
            &[],
        );
        let at = bundle.rootfs.join(link);
        if at.is_dir() {
            fs::remove_dir_all(&at).unwrap();
        } else if at.exists() {
            fs::remove_file(&at).unwrap();
        }
        symlink(target, &at).unwrap();
        let out = setup.run(&bundle, "escape");
        let what = format!("/{link} -> {}", target.display());
        if out.success() {
            assert_eq!(out.stdout, "started\n", "{what}: {out:?}");
        } else {
            // Refusing is fine, as long as it says why in one place.
            let message = format!(
                "{}{}",
                out.stderr,
                fs::read_to_string(bundle.runtime_log_path()).unwrap_or_default()
            );
            assert!(
                !message.trim().is_empty(),
                "{what}: failed without a message"
            );
            eprintln!("{what}: refused: {message}");
        }
        assert_eq!(
            tree_snapshot(host.path()),
            before,
            "{what}: the host dir changed"
        );
        if *link == "etc/ld.so.cache" {
            // The link itself was replaced by the new cache.
            assert!(
                fs::symlink_metadata(&at).unwrap().file_type().is_file(),
                "{what}"
            );
        }
    }

    // A FIFO where the cache should be: not opened for a blocking read,
    // replaced by a regular cache.
    let bundle = setup.gpu_bundle(
        "fifo",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &[],
    );
    let fifo = bundle.rootfs.join("etc/ld.so.cache");
    let _ = fs::remove_file(&fifo);
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let started = Instant::now();
    let out = setup.run(&bundle, "fifo");
    setup.assert_ran(&out, "a FIFO at /etc/ld.so.cache");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(out.stdout, setup.driver.smi_output(&[0]));
    assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_file());
}

/// `(name -> content)` of the regular files under `dir`, recursively.
fn files_under(dir: &Path) -> BTreeMap<String, String> {
    tree_snapshot(dir)
        .into_iter()
        .filter(|(_, d)| d.starts_with("file"))
        .map(|(path, _)| {
            let text = fs::read_to_string(dir.join(&path)).unwrap();
            (path.to_string_lossy().into_owned(), text)
        })
        .collect()
}

#[test]
fn masked_proc_tree_from_the_fake_driver() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("hook-mask");
    let driver = FakeDriver::build(
        &tmp.path().join("driver"),
        &FakeDriverOptions::with_gpu_count(3),
    );
    let source = driver.proc_root.join("driver/nvidia");
    fs::write(source.join("registry"), "Binary: \"\"\n").unwrap();
    let source_params = fs::read_to_string(source.join("params")).unwrap();
    assert!(source_params.contains("ModifyDeviceFiles: 1\n"));

    for selected in [vec![1usize], vec![0, 2]] {
        let destination = tmp.path().join(format!("masked-{selected:?}"));
        fs::create_dir(&destination).unwrap();
        let dirs: Vec<String> = selected
            .iter()
            .map(|&i| driver.gpus[i].bus_id.clone())
            .collect();
        build_masked_tree(&source, &destination, &dirs).unwrap();

        let mut expected = BTreeMap::new();
        for name in ["version", "registry"] {
            expected.insert(
                name.to_string(),
                fs::read_to_string(source.join(name)).unwrap(),
            );
        }
        expected.insert(
            "params".to_string(),
            source_params.replace("ModifyDeviceFiles: 1\n", "ModifyDeviceFiles: 0\n"),
        );
        for dir in &dirs {
            let name = format!("gpus/{dir}/information");
            expected.insert(
                name.clone(),
                fs::read_to_string(source.join(&name)).unwrap(),
            );
        }
        let actual = files_under(&destination);
        assert_eq!(actual, expected, "selected {selected:?}");

        // Every other params line as it was, in order.
        let masked: Vec<&str> = actual["params"].lines().collect();
        let original: Vec<&str> = source_params.lines().collect();
        assert_eq!(masked.len(), original.len());
        for (m, o) in masked.iter().zip(&original) {
            if o.starts_with("ModifyDeviceFiles:") {
                assert_eq!(*m, "ModifyDeviceFiles: 0");
            } else {
                assert_eq!(m, o);
            }
        }
        let gpus: Vec<String> = fs::read_dir(destination.join("gpus"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut want = dirs.clone();
        want.sort();
        assert_eq!(gpus, want);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&destination.join("params")), 0o444);
        assert_eq!(mode(&destination.join("gpus")), 0o555);
    }

    // A GPU dir the driver does not have is an error naming the path.
    let destination = tmp.path().join("masked-missing");
    fs::create_dir(&destination).unwrap();
    let error =
        build_masked_tree(&source, &destination, &["0000:ff:00.0".to_string()]).unwrap_err();
    assert!(error.to_string().contains("0000:ff:00.0"), "{error}");
}

/// Runs the hook binary directly with `args` (after argv[0]), `stdin` and
/// extra env; returns (status, stderr).
fn run_hook(args: &[&str], stdin: &[u8], env: &[(&str, &Path)]) -> (i32, String) {
    let mut cmd = Command::new(HOOK);
    cmd.arg0(ARG0)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn hook");
    // A hook that exits before reading stdin closes the pipe: ignore EPIPE.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn other_stages_exit_zero_and_loader_variables_are_scrubbed() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("hook-stages");
    for stage in ["poststart", "poststop", "createRuntime", "frobnicate"] {
        let (status, stderr) = run_hook(&[stage, "--whatever"], b"", &[]);
        assert_eq!(status, 0, "{stage}: {stderr}");
        assert!(stderr.is_empty(), "{stage}: {stderr}");
    }

    // LD_PRELOAD in the hook's own env: a dynamically linked hook cannot stop
    // the loader from running the library once, before main; the scrub
    // re-exec makes sure that the process that goes on has nothing preloaded.
    let marker = tmp.path().join("loaded");
    let lib = tmp.path().join("marker.so");
    build_marker_library(&lib, &marker);
    let (status, stderr) = run_hook(&["poststop"], b"", &[("LD_PRELOAD", &lib)]);
    assert_eq!(status, 0, "{stderr}");
    let loads = fs::read_to_string(&marker).unwrap_or_default();
    assert!(
        loads.lines().count() <= 1,
        "loaded again after the scrub: {loads:?}"
    );

    // Watch the live process: while it waits for the state on stdin, it must
    // have re-executed itself without LD_PRELOAD / LD_AUDIT / LD_LIBRARY_PATH.
    let mut child = Command::new(HOOK)
        .arg0(ARG0)
        .args(["prestart", "--injected-by-runtime"])
        .env("LD_PRELOAD", &lib)
        .env("LD_LIBRARY_PATH", tmp.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    // Wait for exactly what is asserted below: the re-executed process
    // (scrubbed environment) sitting in "/". Each read is one observation of
    // the live process; all three come from the same iteration.
    let (environ, maps, cwd) = loop {
        let environ = fs::read(proc_dir.join("environ")).unwrap_or_default();
        let maps = fs::read_to_string(proc_dir.join("maps")).unwrap_or_default();
        let cwd = fs::read_link(proc_dir.join("cwd")).unwrap_or_default();
        let scrubbed = !environ.is_empty() && !environ.windows(3).any(|w| w == b"LD_");
        if (scrubbed && cwd == Path::new("/")) || Instant::now() > deadline {
            break (environ, maps, cwd);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("LD_PRELOAD="), "{environ}");
    assert!(!environ.contains("LD_LIBRARY_PATH="), "{environ}");
    assert!(!maps.contains("marker.so"), "{maps}");
    assert_eq!(cwd, Path::new("/"));
    // Empty stdin: one clear line, exit 1.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("container state on stdin"), "{stderr}");
}

#[test]
fn docker_gpus_on_a_host_without_a_driver_says_what_to_do() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("hook-docker");
    let runc = runc_path();
    let state = tmp.path().join("state");
    // What docker's --gpus writes when the engine's runtime is plain runc.
    // The hook injects the GPUs itself (tests/hook_only.rs); on this host,
    // whose default config names no driver root with a driver, it refuses
    // the container with what to do.
    let docker_hook = json!({"path": HOOK, "args": ["nvidia-container-runtime-hook", "prestart"]});

    let bundle = Bundle::new(
        &tmp.path().join("gpu"),
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=all"],
    );
    bundle.edit_config(|c| c["hooks"] = json!({"prestart": [docker_hook.clone()]}));
    let out = run_container(&runc, &state, &bundle, &unique_id("docker"), &[]);
    assert_ne!(out.status, 0, "{out:?}");
    let message = format!(
        "{}{}",
        out.stderr,
        fs::read_to_string(bundle.runtime_log_path()).unwrap_or_default()
    );
    assert!(
        message.contains("the NVIDIA kernel module is not loaded")
            && message.contains("modprobe nvidia"),
        "{message}"
    );

    // Not a GPU container (no NVIDIA_VISIBLE_DEVICES, or void): the entry is
    // harmless.
    for (name, env) in [
        ("plain", &[][..]),
        ("void", &["NVIDIA_VISIBLE_DEVICES=void"][..]),
    ] {
        let bundle = Bundle::new(
            &tmp.path().join(name),
            RootfsKind::Busybox,
            &["sh", "-c", "echo fine"],
            env,
        );
        bundle.edit_config(|c| c["hooks"] = json!({"prestart": [docker_hook.clone()]}));
        let out = run_container(&runc, &state, &bundle, &unique_id("docker"), &[]);
        out.assert_success(name);
        assert_eq!(out.stdout, "fine\n");
    }
}

/// What the hook masked in a container's namespace, and whether the tree
/// refused a write.
struct MaskedView {
    status: i32,
    stderr: String,
    seen: BTreeMap<String, String>,
    write_error: Option<std::io::Error>,
    rootfs: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

/// Runs the hook with `args` (after `prestart --injected-by-runtime
/// --config ...`) for a container whose config.json has `devices` as
/// `linux.devices`, without runc: a process in its own mount namespace
/// stands in for the container's init, and the fake rootfs has a
/// `/proc/driver/nvidia` (as a GPU host's procfs would show it).
fn masked_view(setup: &World, name: &str, devices: Value, args: &[&str]) -> MaskedView {
    let bundle = setup.dir(name);
    let rootfs = bundle.join("rootfs");
    let visible = rootfs.join("proc/driver/nvidia");
    fs::create_dir_all(visible.join("gpus/0000:3b:00.0")).unwrap();
    fs::write(visible.join("params"), "ModifyDeviceFiles: 1\n").unwrap();
    fs::write(visible.join("gpus/0000:3b:00.0/information"), "other GPU\n").unwrap();
    fs::create_dir_all(rootfs.join("etc")).unwrap();
    fs::write(
        bundle.join("config.json"),
        json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"env": []},
               "linux": {"devices": devices}})
        .to_string(),
    )
    .unwrap();
    let before = tree_snapshot(&rootfs.join("proc"));

    let mut init = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = init.id();
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns(&pid.to_string()) == ns("self") {
        assert!(
            Instant::now() < deadline,
            "unshare did not make a mount namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let state = json!({"ociVersion": "1.0.2", "id": "x", "status": "creating", "pid": pid, "bundle": bundle});
    let config = setup.config.to_str().unwrap();
    let mut argv = vec!["prestart", "--injected-by-runtime", "--config", config];
    argv.extend_from_slice(args);
    let (status, stderr) = run_hook(&argv, state.to_string().as_bytes(), &[]);
    let inside =
        PathBuf::from(format!("/proc/{pid}/root")).join(visible.strip_prefix("/").unwrap());
    let seen = if status == 0 {
        files_under(&inside)
    } else {
        BTreeMap::new()
    };
    let write_error = fs::write(inside.join("params"), "ModifyDeviceFiles: 1\n").err();
    let _ = init.kill();
    let _ = init.wait();
    MaskedView {
        status,
        stderr,
        seen,
        write_error,
        rootfs,
        before,
    }
}

/// The files a masked tree holds: version, params masked, the GPU's
/// information, and `extra` (paths below the driver's procfs).
fn expected_mask(source: &Path, gpu: &str, extra: &[String]) -> BTreeMap<String, String> {
    let information = format!("gpus/{gpu}/information");
    let mut expected: BTreeMap<String, String> = [
        (
            "version".to_string(),
            fs::read_to_string(source.join("version")).unwrap(),
        ),
        (
            "params".to_string(),
            fs::read_to_string(source.join("params"))
                .unwrap()
                .replace("ModifyDeviceFiles: 1", "ModifyDeviceFiles: 0"),
        ),
        (
            information.clone(),
            fs::read_to_string(source.join(&information)).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    for file in extra {
        expected.insert(file.clone(), fs::read_to_string(source.join(file)).unwrap());
    }
    expected
}

#[test]
fn hook_masks_proc_driver_nvidia_in_the_container_namespace() {
    if !require_root() {
        return;
    }
    if require_tool("unshare").is_none() {
        return;
    }
    let setup = World::new("hook-maskns");
    let selected = setup.driver.gpus[0].bus_id.clone();
    // A MIG capability file the runtime asks the mask to keep.
    let source = setup.driver.proc_root.join("driver/nvidia");
    let mig_config = "capabilities/mig/config";
    if !source.join(mig_config).exists() {
        fs::create_dir_all(source.join("capabilities/mig")).unwrap();
        fs::write(source.join(mig_config), "DeviceFileMinor: 1\n").unwrap();
    }
    let library = "libcuda.so.1=/usr/lib64/libcuda.so.550.54.15";
    let view = masked_view(
        &setup,
        "bundle",
        json!([]),
        &[
            "--library",
            library,
            "--gpu",
            &selected,
            "--proc-file",
            mig_config,
        ],
    );
    assert_eq!(view.status, 0, "{}\n{}", view.stderr, setup.debug_log());
    assert_eq!(
        view.seen,
        expected_mask(&source, &selected, &[mig_config.to_string()])
    );
    let write_error = view.write_error.expect("the masked tree must be read-only");
    assert_eq!(
        write_error.raw_os_error(),
        Some(30),
        "EROFS expected: {write_error}"
    );
    // The host's view of the rootfs is untouched: the tmpfs exists only in
    // the container's namespace.
    assert_eq!(tree_snapshot(&view.rootfs.join("proc")), view.before);
    // The cache went to the rootfs' /etc.
    let listing = ldconfig_print(&view.rootfs.join("etc/ld.so.cache"));
    assert!(
        listing.contains(&injected_line("libcuda.so.1", "/usr/lib64")),
        "{listing}"
    );
}

/// A CDI spec's shared hook entry names no GPU and no file: the mask shows
/// the GPU whose node the container has and the MIG capability files of
/// its `nvidia-caps` nodes (found through mig-minors), nothing of the
/// other GPU or the other MIG devices.
#[test]
fn hook_masks_by_the_nodes_of_a_cdi_container() {
    if !require_root() {
        return;
    }
    if require_tool("unshare").is_none() {
        return;
    }
    let setup = World::build(
        "hook-maskcdi",
        &FakeDriverOptions::two_gpus().with_mig(vec![FakeMig::new(1, 1, 0), FakeMig::new(1, 2, 0)]),
        "",
        "",
    );
    let gpu = &setup.driver.gpus[1];
    let mig = &setup.driver.mig_devices(1)[1];
    let gi = FakeDriver::mig_minor(gpu.minor, mig.gi, None);
    let ci = FakeDriver::mig_minor(gpu.minor, mig.gi, Some(mig.ci));
    let node = |path: String| json!({"path": path, "type": "c", "major": 0, "minor": 0});
    let devices = json!([
        node("/dev/nvidiactl".to_string()),
        node(format!("/dev/nvidia{}", gpu.minor)),
        node(format!("/dev/nvidia-caps/nvidia-cap{gi}")),
        node(format!("/dev/nvidia-caps/nvidia-cap{ci}")),
    ]);
    let view = masked_view(&setup, "bundle", devices, &[]);
    assert_eq!(view.status, 0, "{}\n{}", view.stderr, setup.debug_log());
    let source = setup.driver.proc_root.join("driver/nvidia");
    let extra = [
        format!("capabilities/gpu{}/mig/gi{}/access", gpu.minor, mig.gi),
        format!(
            "capabilities/gpu{}/mig/gi{}/ci{}/access",
            gpu.minor, mig.gi, mig.ci
        ),
    ];
    assert_eq!(view.seen, expected_mask(&source, &gpu.bus_id, &extra));
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The hook's cost per container start (`cargo test --test hook -- --ignored
/// --nocapture`): medians of `run true` in a glibc image with one GPU.
#[test]
#[ignore]
fn measure_hook_cost() {
    if !require_root() {
        return;
    }
    const RUNS: usize = 30;
    let setup = World::new("hook-measure");
    let runc = runc_path();
    let bundle = setup.gpu_bundle("with", RootfsKind::Glibc { ldconfig: true }, &["true"], &[]);
    setup.assert_ran(&setup.run(&bundle, "warm"), "warm-up run");
    let patched = bundle.read_config();
    let without = setup.gpu_bundle(
        "without",
        RootfsKind::Glibc { ldconfig: true },
        &["true"],
        &[],
    );
    let mut unhooked = patched.clone();
    unhooked["root"]["path"] = json!(without.rootfs);
    unhooked["hooks"]["prestart"]
        .as_array_mut()
        .unwrap()
        .retain(|h| h["path"] != HOOK);
    without.write_config(&unhooked);

    let time = |f: &dyn Fn() -> RunOutput| {
        let start = Instant::now();
        let out = f();
        let elapsed = start.elapsed();
        setup.assert_ran(&out, "measured run");
        elapsed
    };
    let (mut runtime, mut hooked, mut bare) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        runtime.push(time(&|| setup.run(&bundle, "m")));
        hooked.push(time(&|| {
            run_container(&runc, &setup.state_root, &bundle, &unique_id("m"), &[])
        }));
        bare.push(time(&|| {
            run_container(&runc, &setup.state_root, &without, &unique_id("m"), &[])
        }));
    }
    let (runtime, hooked, bare) = (median(runtime), median(hooked), median(bare));
    eprintln!(
        "median of {RUNS} `run true` (glibc image, 1 GPU): nvidia-container-runtime + runc + hook {runtime:?}; \
         runc + hook on the patched bundle {hooked:?}; runc on the patched bundle without the hook {bare:?}; \
         hook cost {:?}",
        hooked.saturating_sub(bare)
    );
}

#[test]
fn a_state_with_megabytes_of_annotations_starts_through_runc() {
    if !require_root() {
        return;
    }
    // runc copies the annotations into the state it pipes to the hook: 60,000
    // of them make a state of about 6 MiB, past the 1 MiB the hook once read.
    let setup = World::new("hook-big-state");
    let bundle = setup.gpu_bundle(
        "bundle",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &[],
    );
    bundle.edit_config(|spec| {
        let annotations: serde_json::Map<String, Value> = (0..60_000)
            .map(|i| {
                (
                    format!("example.com/annotation-{i:06}"),
                    json!("v".repeat(80)),
                )
            })
            .collect();
        spec["annotations"] = Value::Object(annotations);
    });
    let size = fs::metadata(bundle.config_path()).unwrap().len();
    assert!(size > 6 << 20, "{size}");
    let out = setup.run(&bundle, "big-state");
    setup.assert_ran(&out, "a container with 6 MiB of annotations");
    assert_eq!(out.stdout, setup.driver.smi_output(&[0]), "{out:?}");
}

#[test]
fn a_state_over_the_limit_is_reported_as_a_limit() {
    if !require_root() {
        return;
    }
    // One byte past the limit, in a state that is valid JSON up to there: the
    // message names the limit and the usual cause, not a parse error.
    let limit = nvidia_container_runtime::bounded::HOOK_STATE.bytes as usize;
    let head = br#"{"ociVersion":"1.2.0","id":"c","pid":1,"bundle":"/b","annotations":{"a":""#;
    let mut state = head.to_vec();
    state.resize(limit + 1, b'x');
    let (status, stderr) = run_hook(&["prestart", "--injected-by-runtime"], &state, &[]);
    assert_eq!(status, 1, "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("the container state on stdin is larger than 256 MiB"),
        "{stderr}"
    );
    assert!(stderr.contains("annotations"), "{stderr}");
    assert!(!stderr.contains("not valid"), "{stderr}");
    // At the limit exactly, the state is read (and then found wanting:
    // the annotation is never closed), which is a parse error, not a limit.
    state.truncate(limit);
    let (status, stderr) = run_hook(&["prestart", "--injected-by-runtime"], &state, &[]);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("is not valid"), "{stderr}");
}

/// The CUDA compat libcuda an image carries: a real shared object with
/// the SONAME libcuda.so.1 whose cuDriverGetVersion says 12.6, so a program
/// shows which libcuda its loader picked.
const COMPAT_LIBCUDA_C: &str = "int cuDriverGetVersion(int *v) { *v = 12060; return 0; }\n";
/// dlopens libcuda.so.1 and prints the file dladdr names and its version.
const WHICH_CUDA_C: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
int main(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("dlopen failed: %s\n", dlerror()); return 1; }
    int (*get)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    Dl_info info;
    int version = 0;
    if (!get || !dladdr((void *)get, &info)) { printf("no cuDriverGetVersion\n"); return 1; }
    get(&version);
    printf("%s %d\n", info.dli_fname, version);
    return 0;
}
"#;

fn gcc(args: &[&str]) {
    let out = Command::new("gcc").args(args).output().unwrap();
    assert!(out.status.success(), "gcc {args:?}: {out:?}");
}

#[test]
fn cuda_forward_compatibility_uses_only_newer_compat_libraries() {
    if !require_root() {
        return;
    }
    let setup = World::new("hook-compat");
    let work = setup.dir("compat-build");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("compat.c"), COMPAT_LIBCUDA_C).unwrap();
    fs::write(work.join("which.c"), WHICH_CUDA_C).unwrap();
    let compat_lib = work.join("libcuda-compat.so");
    gcc(&[
        "-shared",
        "-fPIC",
        "-Wl,-soname,libcuda.so.1",
        "-o",
        compat_lib.to_str().unwrap(),
        work.join("compat.c").to_str().unwrap(),
    ]);
    let which = work.join("which-cuda");
    gcc(&[
        "-o",
        which.to_str().unwrap(),
        work.join("which.c").to_str().unwrap(),
        "-ldl",
    ]);
    // A host dir and a host file that hostile images point their compat
    // dir and their compat libcuda at.
    let host_dir = setup.dir("host-compat");
    fs::create_dir_all(&host_dir).unwrap();
    fs::copy(&compat_lib, host_dir.join("libcuda.so.560.35.03")).unwrap();
    symlink("libcuda.so.560.35.03", host_dir.join("libcuda.so.1")).unwrap();
    let host_file = setup.dir("host-libcuda.so");
    fs::copy(&compat_lib, &host_file).unwrap();
    let host_before = (tree_snapshot(&host_dir), fs::read(&host_file).unwrap());

    let host_lib = "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15 12040";
    let compat_used = "/usr/local/cuda/compat/libcuda.so.1 12060";
    // (case, compat libcuda version or how the compat dir is made, extra
    // config, what the program must print)
    let cases: &[(&str, &str, &str, &str)] = &[
        ("newer", "560.35.03", "", compat_used),
        ("same-major", "550.90.07", "", host_lib),
        ("older", "535.183.01", "", host_lib),
        ("dir-symlink-to-host", "dir-link", "", host_lib),
        ("lib-symlink-to-host", "lib-link", "", host_lib),
        (
            "feature-off",
            "560.35.03",
            "\n[features]\ndisable-cuda-compat-lib-hook = true\n",
            host_lib,
        ),
        (
            "mode-disabled",
            "560.35.03",
            "\n[nvidia-container-runtime.modes.legacy]\ncuda-compat-mode = \"disabled\"\n",
            host_lib,
        ),
    ];
    let good_config = fs::read_to_string(&setup.config).unwrap();
    for (case, version, extra_config, expected) in cases {
        fs::write(&setup.config, format!("{good_config}{extra_config}")).unwrap();
        let bundle = setup.gpu_bundle(
            &format!("compat-{case}"),
            RootfsKind::Glibc { ldconfig: true },
            &["sh", "-c", "which-cuda; ldconfig -p | grep 'libcuda.so.1 '"],
            &[],
        );
        let rootfs = bundle.dir.join("rootfs");
        fs::copy(&which, rootfs.join("usr/bin/which-cuda")).unwrap();
        let compat = rootfs.join("usr/local/cuda/compat");
        fs::create_dir_all(compat.parent().unwrap()).unwrap();
        match *version {
            "dir-link" => symlink(&host_dir, &compat).unwrap(),
            "lib-link" => {
                fs::create_dir_all(&compat).unwrap();
                symlink(&host_file, compat.join("libcuda.so.560.35.03")).unwrap();
                symlink("libcuda.so.560.35.03", compat.join("libcuda.so.1")).unwrap();
            }
            version => {
                fs::create_dir_all(&compat).unwrap();
                let file = format!("libcuda.so.{version}");
                fs::copy(&compat_lib, compat.join(&file)).unwrap();
                symlink(&file, compat.join("libcuda.so.1")).unwrap();
            }
        }
        let out = setup.run(&bundle, &format!("compat-{case}"));
        setup.assert_ran(&out, case);
        let mut lines = out.stdout.lines();
        assert_eq!(lines.next(), Some(*expected), "{case}: {}", out.stdout);
        // The image's own ldconfig reads the cache the hook wrote: the
        // first libcuda.so.1 entry is the one the loader takes.
        let first = lines.next().unwrap_or_default();
        let expected_path = expected.split(' ').next().unwrap();
        assert!(
            first.trim_end().ends_with(expected_path),
            "{case}: ldconfig -p lists {first:?} first"
        );
    }
    fs::write(&setup.config, good_config).unwrap();
    assert_eq!(
        (tree_snapshot(&host_dir), fs::read(&host_file).unwrap()),
        host_before,
        "a host file changed"
    );
}
