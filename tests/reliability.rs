//! Reliability under load, faults and hostile input (issue 9): real runc,
//! our runtime binary and the fake driver (tests/common). Each test prints
//! its counts as `RELIABILITY: ...` lines (`cargo test --test reliability --
//! --nocapture`), which is where RELIABILITY.md's numbers come from.
//!
//! Not repeated here (see tests/hook.rs): the NVIDIAScape image
//! (`nvidiascape_image_ld_preload_never_reaches_the_hook`) and image
//! symlinks on the hook's own paths (`image_symlinks_never_reach_the_host`:
//! the library dir, `/etc`, `/etc/ld.so.cache`, `/proc/driver`, and a FIFO
//! at `/etc/ld.so.cache`).
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nvidia_container_runtime::oci::BundleSpec;
use serde_json::{json, Value};

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");

impl World {
    fn new(name: &str, extra_runtime_keys: &str) -> World {
        World::with_driver(name, FakeDriverOptions::two_gpus(), extra_runtime_keys)
    }

    fn with_driver(name: &str, options: FakeDriverOptions, extra_runtime_keys: &str) -> World {
        World::build(name, &options, "", extra_runtime_keys)
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.config_env()
    }

    fn create_start_delete(&self, bundle: &Bundle) -> RunOutput {
        create_start_delete(
            Path::new(RUNTIME),
            &self.state_root,
            bundle,
            &unique_id("rel"),
            &self.env(),
        )
    }

    /// `<runtime> --root <state> --log <tmp>/<id>.log.json --log-format json
    /// create --bundle <bundle> <id>`, with a time limit: `None` means it
    /// hung (and was killed). stdout and stderr go to files, not pipes: a
    /// created container's init holds them open until it is started.
    fn create(&self, bundle_dir: &Path, id: &str, timeout: Duration) -> Option<RunOutput> {
        let stdout = self.tmp.path().join(format!("{id}.stdout"));
        let stderr = self.tmp.path().join(format!("{id}.stderr"));
        let mut child = generation()
            .command(RUNTIME)
            .arg("--root")
            .arg(&self.state_root)
            .arg("--log")
            .arg(self.tmp.path().join(format!("{id}.log.json")))
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle_dir)
            .arg(id)
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &self.config)
            .env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", &self.runtime_state)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let status = wait_with_deadline(&mut child, timeout)?;
        Some(RunOutput {
            status: status.code().unwrap_or(-1),
            stdout: fs::read_to_string(&stdout).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr).unwrap_or_default(),
        })
    }

    /// Whether runc knows container `id` (it must not after a failed create).
    fn container_exists(&self, id: &str) -> bool {
        generation()
            .command(runc_path())
            .arg("--root")
            .arg(&self.state_root)
            .args(["state", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn force_delete(&self, id: &str) {
        let _ = generation()
            .command(runc_path())
            .arg("--root")
            .arg(&self.state_root)
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A world whose "runc" is `/usr/bin/true`: `create` patches config.json and
/// execs `true`. For faults and inputs that are about the runtime's own
/// work, where starting a container would only add time.
fn world_without_runc(name: &str) -> World {
    World::new(name, "runtimes = [\"/usr/bin/true\"]")
}

/// A bare bundle dir (no rootfs needed when runc is `true`) with this spec.
fn bare_bundle(dir: &Path, spec: &Value) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), serde_json::to_vec(spec).unwrap()).unwrap();
    dir.to_path_buf()
}

fn gpu_spec(env: &[&str]) -> Value {
    let mut process_env = vec![format!("PATH={CONTAINER_PATH}")];
    process_env.extend(env.iter().map(|e| e.to_string()));
    json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "env": process_env, "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [],
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    })
}

/// Temp files of our atomic write left in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".config.json.nvidia-") && n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default()
}

/// The `/dev/nvidia<N>` GPU nodes (not nvidiactl, -uvm, ...) in an `ls /dev`.
fn gpu_nodes(listing: &str) -> Vec<String> {
    let mut nodes: Vec<String> = listing
        .split_whitespace()
        .filter(|n| {
            n.strip_prefix("nvidia")
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect();
    nodes.sort();
    nodes
}

/// A tmpfs mounted at `dir` for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A small xorshift generator: the delays of the kill test need no quality,
/// only a seed that is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let seed = std::env::var("RELIABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("RELIABILITY: seed {seed} (set RELIABILITY_SEED to replay)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

// ---------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------

#[test]
fn fifty_containers_created_concurrently_all_start_with_their_gpu() {
    if !require_root() {
        return;
    }
    const CONTAINERS: usize = 50;
    let world = Arc::new(World::with_driver(
        "rel-load",
        FakeDriverOptions::with_gpu_count(4),
        "",
    ));
    let gpus = world.driver.gpus.len();
    let bundles: Vec<Bundle> = (0..CONTAINERS)
        .map(|i| {
            let index = i % gpus;
            world.bundle(
                &format!("c{i}"),
                RootfsKind::Glibc { ldconfig: false },
                &["nvidia-smi", "-L"],
                &[&format!("NVIDIA_VISIBLE_DEVICES={index}")],
            )
        })
        .collect();
    let barrier = Arc::new(Barrier::new(CONTAINERS));
    let started = Instant::now();
    let handles: Vec<_> = bundles
        .into_iter()
        .enumerate()
        .map(|(i, bundle)| {
            let world = Arc::clone(&world);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                // Every create starts at once: the runtime's discovery,
                // patch and write, runc's create and the hooks all overlap.
                barrier.wait();
                (i, world.create_start_delete(&bundle))
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut right_gpu = 0;
    for handle in handles {
        let (i, out) = handle.join().unwrap();
        let expected = world.driver.smi_output(&[i % gpus]);
        if out.success() && out.stdout == expected {
            right_gpu += 1;
        } else {
            failures.push(format!("container {i}: {out:?}"));
        }
    }
    eprintln!(
        "RELIABILITY: concurrent: {right_gpu}/{CONTAINERS} started and saw exactly their GPU, {} failed, {:.1} s",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// What a create/start/delete cycle could leave behind, each scoped to this
/// test's own paths so that other tests running at the same time do not
/// count.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Leftovers {
    temp_files: usize,
    /// Host mount table lines that name this test's dir.
    mounts: usize,
    /// Processes in the test's cgroup (container processes, `runc init`).
    processes: usize,
    /// Cgroups below the test's cgroup parent.
    cgroups: usize,
    /// Container state dirs under the runc root.
    state_dirs: usize,
}

fn cgroup_dirs(parent: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![parent.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(entry.path());
                    pending.push(entry.path());
                }
            }
        }
    }
    out
}

/// Every mounted cgroup hierarchy's copy of `relative`.
fn cgroup_parents(relative: &str) -> Vec<PathBuf> {
    let mut parents = Vec::new();
    for entry in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path().join(relative);
        if path.exists() {
            parents.push(path);
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(relative);
    if unified.exists() {
        parents.push(unified);
    }
    parents
}

fn leftovers(world: &World, bundle_dir: &Path, cgroup_parent: &str) -> Leftovers {
    let marker = world.tmp.path().to_string_lossy().into_owned();
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&marker))
        .count();
    let parents = cgroup_parents(cgroup_parent);
    let mut processes = 0;
    let mut cgroups = 0;
    for parent in &parents {
        let mut dirs = cgroup_dirs(parent);
        cgroups += dirs.len();
        dirs.push(parent.clone());
        for dir in dirs {
            processes += fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .count();
        }
    }
    Leftovers {
        temp_files: temp_files(bundle_dir).len(),
        mounts,
        processes,
        cgroups,
        state_dirs: fs::read_dir(&world.state_root).unwrap().count(),
    }
}

/// The fds a process started as a child of the test (stdin null, stdout and
/// stderr files) holds, as the wrapper script below records them.
fn fd_listing(path: &Path) -> Vec<String> {
    let mut fds: Vec<String> = fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    fds.sort();
    fds
}

#[test]
fn two_hundred_create_start_delete_cycles_leak_nothing() {
    if !require_root() {
        return;
    }
    const CYCLES: usize = 200;
    // "runc" is a wrapper that records the fds it inherited from our runtime
    // (anything beyond stdio is a descriptor we leaked into runc, and from
    // there possibly into the container) and then is runc.
    let tmp = TempDir::new("rel-cycles-wrapper");
    let fd_log = tmp.path().join("fds");
    let wrapper = tmp.path().join("runc-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \" $* \" in *' create '*) ls /proc/$$/fd > '{}' ;; esac\nexec {} \"$@\"\n",
            fd_log.display(),
            runc_path().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let world = World::new(
        "rel-cycles",
        &format!("runtimes = [\"{}\"]", wrapper.display()),
    );
    // Baseline: the same kind of script (sh holds the script open on one
    // more fd) started directly by the test, same stdio.
    let baseline_log = tmp.path().join("baseline");
    let baseline_script = tmp.path().join("baseline.sh");
    fs::write(
        &baseline_script,
        format!("#!/bin/sh\nls /proc/$$/fd > '{}'\n", baseline_log.display()),
    )
    .unwrap();
    fs::set_permissions(&baseline_script, fs::Permissions::from_mode(0o755)).unwrap();
    let status = Command::new(&baseline_script)
        .stdin(Stdio::null())
        .stdout(fs::File::create(tmp.path().join("o")).unwrap())
        .stderr(fs::File::create(tmp.path().join("e")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    let baseline = fd_listing(&baseline_log);

    let cgroup_parent = format!("ncr-reliability-{}", unique_id("c"));
    let bundle = world.bundle(
        "b",
        RootfsKind::Busybox,
        &["sh", "-c", "ls /dev"],
        &["NVIDIA_VISIBLE_DEVICES=1"],
    );
    bundle.edit_config(|c| c["linux"]["cgroupsPath"] = json!(format!("/{cgroup_parent}/c")));
    let original = fs::read(bundle.config_path()).unwrap();
    let before = leftovers(&world, &bundle.dir, &cgroup_parent);
    let expected_node = format!("nvidia{}", world.driver.gpus[1].minor);

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut fd_mismatches = Vec::new();
    for cycle in 0..CYCLES {
        // The original spec each time, so that every create really rewrites
        // config.json (a patched spec is left alone).
        fs::write(bundle.config_path(), &original).unwrap();
        let out = world.create_start_delete(&bundle);
        if !out.success() || gpu_nodes(&out.stdout) != [expected_node.as_str()] {
            failures.push(format!("cycle {cycle}: {out:?}"));
        }
        let fds = fd_listing(&fd_log);
        if fds != baseline {
            fd_mismatches.push(format!("cycle {cycle}: {fds:?}"));
        }
    }
    let elapsed = started.elapsed();
    let after = leftovers(&world, &bundle.dir, &cgroup_parent);
    for parent in cgroup_parents(&cgroup_parent) {
        let _ = fs::remove_dir(parent);
    }
    eprintln!(
        "RELIABILITY: cycles: {}/{CYCLES} ok in {:.1} s; before {before:?}; after {after:?}; \
         fds runc inherited from the runtime: {baseline:?} (= a plain child's) in {}/{CYCLES} cycles",
        CYCLES - failures.len(),
        elapsed.as_secs_f64(),
        CYCLES - fd_mismatches.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        fd_mismatches.is_empty(),
        "baseline {baseline:?}: {fd_mismatches:#?}"
    );
    assert_eq!(after, before, "something was left behind");
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[test]
fn sigkill_while_rewriting_config_json_leaves_the_old_or_the_new_file() {
    const KILLS: usize = 100;
    let world = world_without_runc("rel-kill");
    // 4 MiB of annotations: the read, patch and write take long enough
    // (~0.2 s, debug build) that random kill times land in every phase.
    let mut spec = gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"]);
    let padding: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("example.com/pad-{i}"), json!("x".repeat(64 << 10))))
        .collect();
    spec["annotations"] = Value::Object(padding);
    let dir = bare_bundle(&world.tmp.path().join("b"), &spec);
    let config = dir.join("config.json");
    let old = fs::read(&config).unwrap();

    // The new document, and how long an unkilled rewrite takes.
    let mut durations = Vec::new();
    let mut new = Vec::new();
    for _ in 0..3 {
        fs::write(&config, &old).unwrap();
        let started = Instant::now();
        let out = world
            .create(&dir, &unique_id("k"), Duration::from_secs(60))
            .unwrap();
        durations.push(started.elapsed());
        out.assert_success("unkilled create");
        new = fs::read(&config).unwrap();
    }
    assert_ne!(new, old);
    serde_json::from_slice::<Value>(&new).unwrap();
    durations.sort();
    let full = durations[1];

    let mut rng = Rng::from_time();
    let (mut saw_old, mut saw_new, mut torn) = (0, 0, Vec::new());
    let mut temp_left = 0;
    for kill in 0..KILLS {
        // The old file back, atomically (the test must not tear it itself).
        let staging = dir.join("staging");
        fs::write(&staging, &old).unwrap();
        fs::rename(&staging, &config).unwrap();
        let delay = Duration::from_micros(rng.below(full.as_micros() as u64 * 12 / 10));
        let mut child = generation()
            .command(RUNTIME)
            .args(["create", "--bundle"])
            .arg(&dir)
            .arg(unique_id("k"))
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
            .env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", &world.runtime_state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = fs::read(&config).unwrap();
        if now == old {
            saw_old += 1;
        } else if now == new {
            saw_new += 1;
        } else {
            torn.push(format!("kill {kill} after {delay:?}: {} bytes", now.len()));
        }
        // A kill between the temp file's creation and the rename leaves
        // it: counted, then removed as the engine's bundle cleanup would.
        for name in temp_files(&dir) {
            temp_left += 1;
            fs::remove_file(dir.join(name)).unwrap();
        }
    }
    eprintln!(
        "RELIABILITY: sigkill: {KILLS} kills over 0..{:.0} ms ({} MiB config.json): \
         {saw_old} old, {saw_new} new, {} torn; temp files left by killed writers: {temp_left}",
        full.as_secs_f64() * 1200.0,
        old.len() >> 20,
        torn.len()
    );
    assert!(torn.is_empty(), "{torn:#?}");
    assert!(
        saw_old > 0 && saw_new > 0,
        "the kills did not span the write"
    );
}

#[test]
fn a_stale_temp_file_of_a_reused_pid_does_not_block_the_write() {
    // A runtime SIGKILLed mid-write leaves `.config.json.nvidia-<pid>.tmp`;
    // a later runtime that gets the same pid must still write.
    let tmp = TempDir::new("rel-stale-temp");
    let dir = bare_bundle(tmp.path(), &gpu_spec(&[]));
    let stale = dir.join(format!(".config.json.nvidia-{}.tmp", std::process::id()));
    fs::write(&stale, b"{\"half\": ").unwrap();
    let spec = BundleSpec::read(&dir).unwrap();
    let mut patched = spec.value.clone();
    patched["annotations"] = json!({"k": "v"});
    spec.write(&patched).expect("write over a stale temp file");
    let written: Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(written, patched);
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
}

/// A regular file's bytes, or a FIFO's/device's type and numbers (reading
/// those would block or never end).
fn contents(path: &Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).ok()?;
    if meta.is_file() {
        return fs::read(path).ok();
    }
    Some(format!("{:?} {} {}", meta.file_type(), meta.rdev(), meta.mode()).into_bytes())
}

/// Asserts a refused create: exit 1, `needles` in the one stderr line,
/// config.json as it was, no temp file, no container.
fn assert_refused(world: &World, dir: &Path, needles: &[&str]) -> RunOutput {
    let before = contents(&dir.join("config.json"));
    let id = unique_id("refused");
    let out = world
        .create(dir, &id, Duration::from_secs(15))
        .expect("the runtime hung (killed after 15 s)");
    assert_eq!(out.status, 1, "{out:?}");
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            out.stderr
        );
    }
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
    assert_eq!(
        contents(&dir.join("config.json")),
        before,
        "config.json changed"
    );
    assert!(temp_files(dir).is_empty(), "{:?}", temp_files(dir));
    assert!(!world.container_exists(&id));
    out
}

#[test]
fn full_disk_and_read_only_bundle_dirs_keep_the_old_file() {
    if !require_root() {
        return;
    }
    let world = World::new("rel-disk", "");
    let rootfs = build_rootfs(&world.tmp.path().join("image"), RootfsKind::Busybox);
    let mut spec = gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"]);
    spec["root"] = json!({"path": rootfs});
    // 600 KiB of spec in a 1 MiB tmpfs: the file fits once, not twice.
    spec["annotations"] = json!({"example.com/pad": "x".repeat(600 << 10)});

    let full_dir = world.tmp.path().join("full");
    let _full = Tmpfs::mount(&full_dir, "size=1m");
    bare_bundle(&full_dir, &spec);
    let out = assert_refused(
        &world,
        &full_dir,
        &["No space left on device", "left as it was"],
    );
    eprintln!("RELIABILITY: full disk: {}", out.stderr.trim());

    let ro_dir = world.tmp.path().join("ro");
    let ro = Tmpfs::mount(&ro_dir, "size=4m");
    bare_bundle(&ro_dir, &spec);
    ro.remount("ro");
    let out = assert_refused(
        &world,
        &ro_dir,
        &["Read-only file system", "left as it was"],
    );
    eprintln!("RELIABILITY: read-only: {}", out.stderr.trim());
}

#[test]
fn missing_or_broken_runc_is_refused_before_anything_is_written() {
    let tmp = TempDir::new("rel-runc");
    let gone = tmp.path().join("runc-gone");
    let not_executable = tmp.path().join("runc-0644");
    fs::copy(runc_path(), &not_executable).unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();
    let directory = tmp.path().join("runc-dir");
    fs::create_dir_all(&directory).unwrap();
    for candidate in [&gone, &not_executable, &directory] {
        let world = World::new(
            "rel-runc",
            &format!("runtimes = [\"{}\"]", candidate.display()),
        );
        let dir = bare_bundle(
            &world.tmp.path().join("b"),
            &gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"]),
        );
        assert_refused(
            &world,
            &dir,
            &["no low-level runtime found", candidate.to_str().unwrap()],
        );
    }
    // A runc that exists but cannot be executed: found, config.json is
    // patched, then the exec fails with a clear message, the original
    // config.json is put back byte for byte, and nothing was started.
    let garbage = tmp.path().join("runc-garbage");
    fs::write(&garbage, b"\x7fELF garbage").unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
    let world = World::new(
        "rel-runc",
        &format!("runtimes = [\"{}\"]", garbage.display()),
    );
    let dir = bare_bundle(
        &world.tmp.path().join("b"),
        &gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"]),
    );
    let before = fs::read(dir.join("config.json")).unwrap();
    let out = world.create(&dir, "x", Duration::from_secs(30)).unwrap();
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("cannot exec"), "{}", out.stderr);
    assert!(
        fs::read(dir.join("config.json")).unwrap() == before,
        "config.json not restored"
    );
    assert!(temp_files(&dir).is_empty());
    eprintln!("RELIABILITY: runc not executable: {}", out.stderr.trim());
}

#[test]
fn the_hooks_deadline_fires_on_a_hung_driver_procfs() {
    if !require_root() {
        return;
    }
    // The hook reads `<proc-root>/driver/nvidia/params` on the host before
    // it enters the container (to mask it). A FIFO there with no writer
    // blocks that read in open(2), as a hung procfs or FUSE file would: the
    // hook's own SIGALRM deadline (25 s, below runc's 30 s hook timeout) is
    // what ends it, with a message that says what to look at.
    let world = World::new("rel-hook-timeout", "");
    let params = world.driver.proc_root.join("driver/nvidia/params");
    let _ = fs::remove_file(&params);
    assert!(Command::new("mkfifo")
        .arg(&params)
        .status()
        .unwrap()
        .success());
    let bundle = world.bundle(
        "b",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let id = unique_id("hung");
    let started = Instant::now();
    let out = world
        .create(&bundle.dir, &id, Duration::from_secs(60))
        .expect("create hung past the hook's deadline");
    let elapsed = started.elapsed();
    world.force_delete(&id);
    assert_ne!(out.status, 0, "{out:?}");
    assert!(
        out.stderr.contains("gave up after 25 seconds"),
        "{}",
        out.stderr
    );
    assert!(
        elapsed >= Duration::from_secs(24) && elapsed < Duration::from_secs(30),
        "{elapsed:?}"
    );
    assert!(!world.container_exists(&id));
    eprintln!(
        "RELIABILITY: hook deadline: create failed after {:.1} s: {}",
        elapsed.as_secs_f64(),
        out.stderr
            .lines()
            .find(|l| l.contains("gave up"))
            .unwrap_or_default()
    );
}

#[test]
fn the_driver_disappearing_between_discovery_and_start() {
    if !require_root() {
        return;
    }
    // (1) A driver library removed after our runtime wrote config.json,
    // before runc bind-mounts it: "runc" is a wrapper that removes it first.
    let tmp = TempDir::new("rel-vanish");
    let wrapper = tmp.path().join("runc-wrapper");
    let victim_name = format!("libnvidia-ml.so.{}", DRIVER_VERSION);
    let script = |victim: &Path| {
        format!(
            "#!/bin/sh\ncase \" $* \" in *' create '*) rm -f '{}' ;; esac\nexec {} \"$@\"\n",
            victim.display(),
            runc_path().display()
        )
    };
    let world = World::new(
        "rel-vanish",
        &format!("runtimes = [\"{}\"]", wrapper.display()),
    );
    let victim = world.driver.lib_dir().join(&victim_name);
    assert!(victim.exists(), "{}", victim.display());
    fs::write(&wrapper, script(&victim)).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = world.bundle(
        "lib",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let marker = world.tmp.path().to_string_lossy().into_owned();
    let mounts_before = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .matches(marker.as_str())
        .count();
    let id = unique_id("vanish");
    let out = world
        .create(&bundle.dir, &id, Duration::from_secs(60))
        .unwrap();
    assert_ne!(out.status, 0, "{out:?}");
    let log =
        fs::read_to_string(world.tmp.path().join(format!("{id}.log.json"))).unwrap_or_default();
    let message = format!("{}{log}", out.stderr);
    assert!(message.contains(&victim_name), "{message}");
    assert!(
        !world.container_exists(&id),
        "runc kept a half-created container"
    );
    let mounts_after = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .matches(marker.as_str())
        .count();
    assert_eq!(mounts_after, mounts_before);
    eprintln!(
        "RELIABILITY: library removed before runc create: refused by runc: {}",
        message
            .lines()
            .find(|l| l.contains(&victim_name))
            .unwrap_or_default()
    );

    // (2) The GPU's node removed from the dev root after create, before
    // start: runc made the container's node at create time from the spec's
    // major:minor, so start succeeds and the container keeps its node; the
    // next create is refused with a message naming the missing node.
    let world = World::new("rel-node", "");
    let bundle = world.bundle(
        "node",
        RootfsKind::Busybox,
        &["sh", "-c", "ls /dev"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let node_name = format!("nvidia{}", world.driver.gpus[0].minor);
    let id = unique_id("node");
    let created = world
        .create(&bundle.dir, &id, Duration::from_secs(60))
        .unwrap();
    created.assert_success("create");
    fs::remove_file(world.driver.dev_path(&node_name)).unwrap();
    let started = output_with_timeout(
        {
            let mut c = generation().command(RUNTIME);
            c.arg("--root")
                .arg(&world.state_root)
                .args(["start", &id])
                .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
                .env("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", &world.runtime_state)
                .stdin(Stdio::null());
            c
        },
        Duration::from_secs(30),
    )
    .unwrap();
    started.assert_success("start after the node was removed");
    let listing_path = world.tmp.path().join(format!("{id}.stdout"));
    // Wait for what the assertion needs: the whole listing, which is there
    // once `ls` (the container's only process) has exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    while container_status(
        Path::new(RUNTIME),
        &world.state_root,
        &bundle,
        &id,
        &world.env(),
    )
    .as_deref()
        != Some("stopped")
    {
        assert!(Instant::now() < deadline, "the container did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let listing = fs::read_to_string(&listing_path).unwrap_or_default();
    assert_eq!(gpu_nodes(&listing), [node_name.as_str()], "{listing}");
    world.force_delete(&id);
    let again = world.bundle(
        "node-again",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let out = assert_refused(&world, &again.dir, &[&node_name]);
    eprintln!(
        "RELIABILITY: GPU node removed: next create refused: {}",
        out.stderr.trim()
    );
}

// ---------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------

/// `../` enough times to climb out of any rootfs, then `target`.
fn dotdot(target: &Path) -> PathBuf {
    PathBuf::from(format!("{}{}", "../".repeat(24), target.display()).replace("//", "/"))
}

#[test]
fn injected_paths_made_symlinks_to_the_host_never_reach_it() {
    if !require_root() {
        return;
    }
    let world = World::new("rel-links", "");
    // Which container paths get something: from a patched spec.
    let probe = world.bundle(
        "probe",
        RootfsKind::Glibc { ldconfig: false },
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"],
    );
    let id = unique_id("probe");
    world
        .create(&probe.dir, &id, Duration::from_secs(60))
        .unwrap()
        .assert_success("probe create");
    world.force_delete(&id);
    let patched = probe.read_config();
    let mut dirs: Vec<String> = patched["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "bind")
        .filter_map(|m| {
            m["source"]
                .as_str()
                .map(|_| m["destination"].as_str().unwrap())
        })
        .filter(|d| !d.starts_with("/dev") && !d.starts_with("/proc") && !d.starts_with("/sys"))
        .filter_map(|d| {
            Path::new(d)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    assert!(dirs.iter().any(|d| d.contains("lib")), "{dirs:?}");

    // Decoys on the host: an existing dir (must not change) and a path that
    // does not exist (must not be created, CVE-2024-0133).
    let host = TempDir::new("rel-links-host");
    fs::write(host.path().join("canary"), "host\n").unwrap();
    let decoy_before = tree_snapshot(host.path());
    let missing = host.path().join("missing");
    let mut cases = 0;
    let mut refused = 0;
    // kind -> (started, refused)
    let mut outcomes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for dir in &dirs {
        let targets: Vec<(&str, PathBuf)> = vec![
            ("absolute", host.path().to_path_buf()),
            ("absolute-missing", missing.clone()),
            ("relative", dotdot(host.path())),
            ("absolute-host-dir", PathBuf::from(dir)),
            ("loop", PathBuf::from("loop-b")),
        ];
        for (kind, target) in targets {
            cases += 1;
            let bundle = world.bundle(
                &format!("c{cases}"),
                RootfsKind::Glibc { ldconfig: false },
                &["sh", "-c", "echo started"],
                &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"],
            );
            let at = bundle.rootfs.join(dir.trim_start_matches('/'));
            if at.is_dir() {
                fs::remove_dir_all(&at).unwrap();
            } else if fs::symlink_metadata(&at).is_ok() {
                fs::remove_file(&at).unwrap();
            }
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            if kind == "loop" {
                let parent = at.parent().unwrap();
                symlink("loop-a", parent.join("loop-b")).unwrap();
                symlink("loop-b", parent.join("loop-a")).unwrap();
                symlink(parent.join("loop-a").file_name().unwrap(), &at).unwrap();
            } else {
                symlink(&target, &at).unwrap();
            }
            // The real host dir a link names: the injected names must not
            // appear there.
            let host_names: Vec<PathBuf> = patched["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| m["destination"].as_str())
                .filter(|d| Path::new(d).parent() == Some(Path::new(dir)))
                .map(PathBuf::from)
                .collect();
            let host_before: Vec<bool> = host_names.iter().map(|p| p.exists()).collect();
            let out = world.create_start_delete(&bundle);
            let what = format!("{dir} -> {kind} {}", target.display());
            let tally = outcomes.entry(kind).or_insert((0, 0));
            if out.success() {
                tally.0 += 1;
                assert_eq!(out.stdout, "started\n", "{what}: {out:?}");
            } else {
                tally.1 += 1;
                refused += 1;
                let message = format!(
                    "{}{}",
                    out.stderr,
                    fs::read_to_string(bundle.runtime_log_path()).unwrap_or_default()
                );
                assert!(
                    !message.trim().is_empty(),
                    "{what}: failed without a message"
                );
            }
            assert_eq!(
                tree_snapshot(host.path()),
                decoy_before,
                "{what}: the host decoy changed"
            );
            assert!(!missing.exists(), "{what}: created {}", missing.display());
            let host_after: Vec<bool> = host_names.iter().map(|p| p.exists()).collect();
            assert_eq!(
                host_after, host_before,
                "{what}: {host_names:?} on the host"
            );
        }
    }
    eprintln!(
        "RELIABILITY: symlinked mount targets: {cases} cases ({dirs:?} x 5 kinds), host unchanged in {cases}/{cases}, {} started, {refused} refused with a message; (started, refused) by kind: {outcomes:?}",
        cases - refused
    );
}

#[test]
fn a_fifo_or_a_device_where_a_file_is_expected() {
    if !require_root() {
        return;
    }
    let world = World::new("rel-fifo", "");
    // config.json itself: a FIFO would block a plain open(2) forever (and
    // dockerd with it); a device is not a spec either.
    for name in ["fifo", "char-device"] {
        let dir = world.tmp.path().join(format!("config-{name}"));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let mut make = match name {
            "fifo" => Command::new("mkfifo"),
            _ => {
                // /dev/null's numbers: reads end at once, so only the type
                // check stands between it and a parse error.
                let mut c = Command::new("mknod");
                c.args(["-m", "0666"]);
                c
            }
        };
        make.arg(&path);
        if name != "fifo" {
            make.args(["c", "1", "3"]);
        }
        assert!(make.status().unwrap().success());
        let started = Instant::now();
        let out = assert_refused(&world, &dir, &["config.json", "not a regular file"]);
        let kind = fs::symlink_metadata(&path).unwrap().file_type();
        assert!(kind.is_fifo() || kind.is_char_device());
        eprintln!(
            "RELIABILITY: config.json is a {name}: refused in {} ms: {}",
            started.elapsed().as_millis(),
            out.stderr.trim()
        );
    }

    // In the image: a FIFO and a device node where injected files go. runc
    // mounts over them; nothing opens them; the container gets the driver.
    let bundle = world.bundle(
        "image",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let smi = bundle.rootfs.join("usr/bin/nvidia-smi");
    let ml = bundle.rootfs.join(LIB_DIR).join("libnvidia-ml.so.1");
    for path in [&smi, &ml] {
        let _ = fs::remove_file(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
    }
    assert!(Command::new("mkfifo").arg(&smi).status().unwrap().success());
    assert!(Command::new("mknod")
        .arg(&ml)
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let out = world.create_start_delete(&bundle);
    out.assert_success("FIFO and device in the image");
    assert_eq!(out.stdout, world.driver.smi_output(&[0]));
    assert!(fs::symlink_metadata(&smi).unwrap().file_type().is_fifo());
    assert!(fs::symlink_metadata(&ml)
        .unwrap()
        .file_type()
        .is_char_device());
    eprintln!(
        "RELIABILITY: FIFO at /usr/bin/nvidia-smi and char device at libnvidia-ml.so.1 in the image: started in {} ms, right GPU",
        started.elapsed().as_millis()
    );
}

#[test]
fn huge_deep_and_invalid_config_json() {
    let world = world_without_runc("rel-json");

    // 100 MiB: patched like any other, in bounded time and memory.
    let dir = world.tmp.path().join("huge");
    let mut spec = gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"]);
    let padding: serde_json::Map<String, Value> = (0..1600)
        .map(|i| (format!("example.com/pad-{i}"), json!("y".repeat(64 << 10))))
        .collect();
    spec["annotations"] = Value::Object(padding);
    bare_bundle(&dir, &spec);
    let size = fs::metadata(dir.join("config.json")).unwrap().len();
    assert!(size >= 100 << 20, "{size}");
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(RUNTIME)
        .args(["create", "--bundle"])
        .arg(&dir)
        .arg("huge")
        .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let patched: Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(patched["annotations"], spec["annotations"]);
    assert!(patched["linux"]["devices"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));
    let maxrss_kb: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("maxrss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // Seconds on an idle machine (debug build); the bound is loose
    // because the rest of the suite shares the CPUs and the disk.
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
    eprintln!(
        "RELIABILITY: {} MiB config.json: patched in {:.2} s, peak RSS {} MiB",
        size >> 20,
        elapsed.as_secs_f64(),
        maxrss_kb >> 10
    );
    fs::remove_dir_all(&dir).unwrap();

    // 10,000 levels deep: refused (serde_json's recursion limit), untouched.
    let dir = world.tmp.path().join("deep");
    fs::create_dir_all(&dir).unwrap();
    let deep = format!(
        "{{\"ociVersion\":\"1.0.2\",\"process\":{{\"env\":[\"NVIDIA_VISIBLE_DEVICES=0\"]}},\"annotations\":{{\"x\":{}{}}}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    fs::write(dir.join("config.json"), &deep).unwrap();
    let out = assert_refused(&world, &dir, &["is not valid JSON", "recursion limit"]);
    eprintln!("RELIABILITY: 10,000 deep: {}", out.stderr.trim());

    // Invalid UTF-8 inside a string: refused, untouched.
    let dir = world.tmp.path().join("utf8");
    fs::create_dir_all(&dir).unwrap();
    let mut bytes = serde_json::to_vec(&gpu_spec(&["NVIDIA_VISIBLE_DEVICES=0"])).unwrap();
    let at = bytes.windows(5).position(|w| w == b"PATH=").unwrap();
    bytes.splice(at..at, [0xff, 0xfe]);
    fs::write(dir.join("config.json"), &bytes).unwrap();
    let out = assert_refused(&world, &dir, &["is not valid JSON"]);
    eprintln!("RELIABILITY: invalid UTF-8: {}", out.stderr.trim());
}

#[test]
fn a_config_json_over_the_limit_is_a_limit_for_a_gpu_container_and_runc_s_otherwise() {
    let world = world_without_runc("rel-limit");
    let limit = nvidia_container_runtime::bounded::CONFIG_JSON.bytes;
    // Sparse files one byte past the limit: the mention of a request (or
    // its absence) is all that matters, the rest is never parsed.
    let over = |name: &str, head: &[u8]| {
        let dir = world.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        let file = fs::File::create(dir.join("config.json")).unwrap();
        std::io::Write::write_all(&mut &file, head).unwrap();
        file.set_len(limit + 1).unwrap();
        dir
    };
    let gpu = over(
        "gpu",
        br#"{"process":{"env":["NVIDIA_VISIBLE_DEVICES=0"]}}"#,
    );
    let out = assert_refused(&world, &gpu, &["larger than 256 MiB", "annotations"]);
    assert!(!out.stderr.contains("not valid JSON"), "{}", out.stderr);
    eprintln!(
        "RELIABILITY: config.json over the limit: {}",
        out.stderr.trim()
    );

    // No request anywhere in it: handed to the low-level runtime untouched.
    let plain = over("plain", br#"{"process":{"env":["PATH=/bin"]}}"#);
    let before = contents(&plain.join("config.json"));
    let out = world
        .create(&plain, &unique_id("plain"), Duration::from_secs(60))
        .expect("the runtime hung (killed after 60 s)");
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(contents(&plain.join("config.json")), before);
}

#[test]
fn env_entries_without_equals_and_a_100000_entry_device_list() {
    let world = world_without_runc("rel-env");

    // Entries without `=` are not variables: ignored by the request, kept
    // where they were in the spec (runc has its own opinion about them).
    let odd = ["JUSTAKEY", "=", "", "==x"];
    let mut env: Vec<&str> = odd.to_vec();
    env.push("NVIDIA_VISIBLE_DEVICES=1");
    let dir = bare_bundle(&world.tmp.path().join("noeq"), &gpu_spec(&env));
    world
        .create(&dir, "noeq", Duration::from_secs(30))
        .unwrap()
        .assert_success("env without =");
    let patched: Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    let patched_env: Vec<&str> = patched["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for entry in odd {
        assert!(
            patched_env.contains(&entry),
            "{entry:?} dropped: {patched_env:?}"
        );
    }
    let minor = world.driver.gpus[1].minor;
    let devices = patched["linux"]["devices"].as_array().unwrap();
    assert!(devices
        .iter()
        .any(|d| d["path"] == format!("/dev/nvidia{minor}")));

    // 100,000 entries: valid ones select the two GPUs in bounded time; one
    // bad entry at the end is named alone, not with the whole list.
    let many = |last: &str| {
        let mut items: Vec<String> = (0..99_999).map(|i| (i % 2).to_string()).collect();
        items.push(last.to_string());
        format!("NVIDIA_VISIBLE_DEVICES={}", items.join(","))
    };
    let dir = bare_bundle(&world.tmp.path().join("many"), &gpu_spec(&[&many("1")]));
    let started = Instant::now();
    world
        .create(&dir, "many", Duration::from_secs(30))
        .unwrap()
        .assert_success("100,000 entries");
    let elapsed = started.elapsed();
    let patched: Value =
        serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
    let paths: Vec<&str> = patched["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["path"].as_str())
        .map(|p| p.trim_start_matches("/dev/"))
        .collect();
    let gpu_nodes_count = gpu_nodes(&paths.join(" ")).len();
    assert_eq!(gpu_nodes_count, 2);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    let dir = bare_bundle(&world.tmp.path().join("many-bad"), &gpu_spec(&[&many("7")]));
    let started = Instant::now();
    let out = assert_refused(&world, &dir, &["GPU 7"]);
    let bad_elapsed = started.elapsed();
    let bad_len = out.stderr.len();
    assert!(bad_len < 1000, "{bad_len} bytes of error");

    let dir = bare_bundle(
        &world.tmp.path().join("many-empty"),
        &gpu_spec(&[&many("")]),
    );
    let out = assert_refused(&world, &dir, &["empty device"]);
    eprintln!(
        "RELIABILITY: 100,000 device entries: 2 GPUs selected in {} ms; a bad last entry refused in {} ms ({} byte message); an empty entry: {} byte message",
        elapsed.as_millis(),
        bad_elapsed.as_millis(),
        bad_len,
        out.stderr.len()
    );
    assert!(
        out.stderr.len() < 1000,
        "{} bytes of error",
        out.stderr.len()
    );
}

#[test]
fn a_bundle_path_with_spaces_and_newlines() {
    if !require_root() {
        return;
    }
    let world = World::new("rel-path", "");
    let bundle = world.bundle(
        "a bundle\nwith  spaces\tand\nnewlines",
        RootfsKind::Glibc { ldconfig: false },
        &["nvidia-smi", "-L"],
        &["NVIDIA_VISIBLE_DEVICES=1"],
    );
    let out = world.create_start_delete(&bundle);
    out.assert_success("bundle path with spaces and newlines");
    assert_eq!(out.stdout, world.driver.smi_output(&[1]));
    eprintln!("RELIABILITY: bundle path with spaces, a tab and newlines: started, right GPU");
}
