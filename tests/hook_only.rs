//! The hook-only mode: `docker run --gpus` on a stock Docker, where plain
//! runc runs the container and dockerd's prestart hook (ours, found on its
//! PATH) is the only edit. Bundles shaped as dockerd writes them, run by
//! real runc (or crun) of the generation and cgroup mode this run is for
//! (tests/common/generation.rs; `.ci/run` runs v1 and v2, runc and crun,
//! Debian 12's and sid's), and the attacks of hook-mode.md section 7.
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
    if generation().enforces_device_rules() {
        assert!(
            lines[2].contains("Operation not permitted"),
            "{what}: {}",
            out.stdout
        );
    }
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

/// In the cgroup mode this run is for (tests/common/generation.rs): on v1
/// the hook adds rules to the devices controller, on v2 it widens runc's
/// eBPF device program of the container's cgroup.
#[test]
fn docker_gpus_on_plain_runc_gets_the_selected_gpu() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only");
    let generation = generation();
    for (gpu, other) in [(0, 1), (1, 0)] {
        let bundle = world.docker_bundle(&format!("device{gpu}"), &gpu.to_string(), gpu, other);
        let out = world.run_plain(&bundle, &unique_id("hook-only"));
        assert_injected(
            &world,
            &out,
            gpu,
            &format!("--gpus device={gpu} ({generation})"),
        );
    }
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

/// The host's mount table lines that name `dir`: what an out-of-band mount
/// that leaked would add.
fn host_mounts_under(dir: &Path) -> Vec<String> {
    let text = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains(&text))
        .map(|line| {
            line.split(' ')
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn set_hook_env(bundle: &Bundle, extra: &str) {
    let extra = extra.to_string();
    bundle.edit_config(|spec| {
        spec["hooks"]["prestart"][0]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!(extra));
    });
}

#[test]
fn a_failure_at_any_step_leaves_no_mount_and_no_file_behind() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-faults");
    let pristine = world.docker_bundle("faults", "0", 0, 1);
    let spec = fs::read_to_string(pristine.config_path()).unwrap();
    let rootfs = pristine.dir.join("rootfs");
    let tree_before = tree_snapshot(&rootfs);
    let mounts_before = host_mounts_under(world.tmp.path());
    let mut failed = 0;
    for n in 1..400 {
        fs::write(pristine.config_path(), &spec).unwrap();
        set_hook_env(&pristine, &format!("NVIDIA_CONTAINER_HOOK_FAIL_AT={n}"));
        let out = world.run_plain(&pristine, &unique_id("fault"));
        if out.success() {
            // Past the last side effect: the injection happened whole.
            assert!(failed > 10, "only {failed} steps before success");
            break;
        }
        failed += 1;
        assert!(
            out.stderr.contains("nvidia-container-runtime-hook:"),
            "step {n}: {}",
            out.stderr
        );
        assert_eq!(
            tree_snapshot(&rootfs),
            tree_before,
            "step {n} left a file in the rootfs"
        );
        assert_eq!(
            host_mounts_under(world.tmp.path()),
            mounts_before,
            "step {n} left a mount"
        );
    }
    eprintln!("RELIABILITY: hook-only injection failed at each of its {failed} steps, leaving nothing behind");
}

#[test]
fn image_links_never_reach_the_host() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-links");
    let decoy = world.tmp.path().join("host-decoy");
    fs::create_dir_all(decoy.join("etc")).unwrap();
    fs::write(decoy.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    let passwd_before = fs::read("/etc/passwd").unwrap();
    let decoy_before = tree_snapshot(&decoy);
    let mounts_before = host_mounts_under(world.tmp.path());
    let up = "../".repeat(24);
    let decoy_text = decoy.display().to_string();
    // (what the image links, to where)
    let cases: Vec<(&str, String)> = vec![
        ("usr/lib/x86_64-linux-gnu", "/".to_string()),
        ("usr/lib/x86_64-linux-gnu", decoy_text.clone()),
        (
            "usr/lib/x86_64-linux-gnu",
            format!("{up}{}", decoy_text.trim_start_matches('/')),
        ),
        ("usr/bin", decoy_text.clone()),
        ("etc", "/proc/self/root/etc".to_string()),
        ("etc/ld.so.cache", "/../../etc/passwd".to_string()),
        ("etc/ld.so.cache", format!("{decoy_text}/etc/passwd")),
    ];
    for (index, (path, target)) in cases.iter().enumerate() {
        let bundle = world.docker_bundle(&format!("link{index}"), "0", 0, 1);
        bundle.edit_config(|spec| spec["process"]["args"] = json!(["true"]));
        let rootfs = bundle.dir.join("rootfs");
        let link = rootfs.join(path);
        if link.is_dir() && !link.is_symlink() {
            fs::remove_dir_all(&link).unwrap();
        } else {
            let _ = fs::remove_file(&link);
        }
        std::os::unix::fs::symlink(target, &link).unwrap();
        let out = world.run_plain(&bundle, &unique_id("link"));
        eprintln!(
            "/{path} -> {target}: status {} {}",
            out.status,
            out.stderr.lines().last().unwrap_or("")
        );
        assert_eq!(tree_snapshot(&decoy), decoy_before, "/{path} -> {target}");
        assert_eq!(
            fs::read("/etc/passwd").unwrap(),
            passwd_before,
            "/{path} -> {target}"
        );
        assert_eq!(
            host_mounts_under(world.tmp.path()),
            mounts_before,
            "/{path} -> {target}"
        );
    }
}

#[test]
fn an_image_ld_preload_never_reaches_the_hook() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-preload");
    let marker = world.tmp.path().join("preloaded");
    let source = world.tmp.path().join("preload.c");
    fs::write(
        &source,
        format!(
            "#include <stdio.h>\n__attribute__((constructor)) static void hit(void) {{ FILE *f = fopen(\"{}\", \"a\"); if (f) {{ fputs(\"x\", f); fclose(f); }} }}\n",
            marker.display()
        ),
    )
    .unwrap();
    let library = world.tmp.path().join("preload.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = world.docker_bundle("preload", "0", 0, 1);
    let preload = format!("LD_PRELOAD={}", library.display());
    bundle.edit_config(|spec| {
        spec["process"]["env"]
            .as_array_mut()
            .unwrap()
            .push(json!(preload));
        spec["process"]["args"] = json!(["true"]);
    });
    let out = world.run_plain(&bundle, &unique_id("preload"));
    out.assert_success("a container with ENV LD_PRELOAD");
    assert!(
        !marker.exists(),
        "the image's LD_PRELOAD ran in a host process"
    );
}

#[test]
fn a_state_naming_a_foreign_pid_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-pid");
    let bundle = world.docker_bundle("pid", "0", 0, 1);
    for pid in [1, std::process::id() as i32] {
        let state = json!({"ociVersion": "1.2.0", "id": "x", "status": "creating", "pid": pid, "bundle": bundle.dir});
        let mut child = Command::new(HOOK)
            .arg("prestart")
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            state.to_string().as_bytes(),
        )
        .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "pid {pid}: {stderr}");
        assert!(
            stderr.contains("is not the container this hook runs for"),
            "pid {pid}: {stderr}"
        );
    }
}

#[test]
fn a_shared_volume_over_a_library_dir_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-shared");
    let volume = world.tmp.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    // A shared mount on the host, as `-v DIR:...:rshared` needs.
    for args in [vec!["--bind", "VOL", "VOL"], vec!["--make-shared", "VOL"]] {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace("VOL", volume.to_str().unwrap()))
            .collect();
        assert!(Command::new("mount")
            .args(&args)
            .status()
            .unwrap()
            .success());
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(volume.clone());
    let before = tree_snapshot(&volume);
    let mounts_before = host_mounts_under(&volume);
    let bundle = world.docker_bundle("shared", "0", 0, 1);
    let source = volume.display().to_string();
    bundle.edit_config(|spec| {
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/usr/lib/x86_64-linux-gnu",
            "type": "bind",
            "source": source,
            "options": ["rbind", "rshared"],
        }));
        spec["linux"]["rootfsPropagation"] = json!("shared");
        spec["process"]["args"] = json!(["true"]);
    });
    let out = world.run_plain(&bundle, &unique_id("shared"));
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("is on a shared mount"),
        "{}",
        out.stderr
    );
    assert_eq!(
        tree_snapshot(&volume),
        before,
        "a file was left in the shared volume"
    );
    assert_eq!(
        host_mounts_under(&volume),
        mounts_before,
        "a mount propagated to the host"
    );
}

#[test]
fn a_proc_that_is_not_procfs_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-proc");
    let bundle = world.docker_bundle("proc", "0", 0, 1);
    bundle.edit_config(|spec| {
        let mounts = spec["mounts"].as_array_mut().unwrap();
        for mount in mounts.iter_mut() {
            if mount["destination"] == "/proc" {
                *mount = json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]});
            }
        }
        spec["process"]["args"] = json!(["true"]);
    });
    let out = world.run_plain(&bundle, &unique_id("proc"));
    assert!(!out.success(), "{out:?}");
    // runc 1.3 checks /proc's type itself (its fix for CVE-2025-52881)
    // before any hook runs; older runc leave it to us.
    let refused_by_runc = out
        .stderr
        .contains("cannot be mounted because it is not of type proc");
    assert!(
        out.stderr.contains("is not a procfs")
            || (refused_by_runc && generation().engines == Engines::Sid),
        "{}",
        out.stderr
    );
}

#[test]
fn an_exchange_race_on_the_targets_never_reaches_the_host() {
    if !require_root() {
        return;
    }
    // A volume over an injected dir (the GSP firmware's), shared with a
    // racer that keeps swapping the target file the hook creates with a
    // symlink to a host dir (renameat2 RENAME_EXCHANGE), across many starts.
    let world = World::new("hook-only-race");
    let volume = world.tmp.path().join("volume");
    fs::create_dir_all(&volume).unwrap();
    let decoy = world.tmp.path().join("decoy");
    fs::create_dir_all(&decoy).unwrap();
    let decoy_before = tree_snapshot(&decoy);
    let mounts_before = host_mounts_under(world.tmp.path());
    let firmware = format!("/lib/firmware/nvidia/{DRIVER_VERSION}");
    let target = volume.join("gsp_ga10x.bin");
    let swap = volume.join("swap");
    std::os::unix::fs::symlink(&decoy, &swap).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (target, swap) = (target.clone(), swap.clone());
        std::thread::spawn(move || {
            let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            let (a, b) = (c(&target), c(&swap));
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: both paths are NUL-terminated and outlive the call.
                let rc = unsafe {
                    nix::libc::syscall(
                        nix::libc::SYS_renameat2,
                        nix::libc::AT_FDCWD,
                        a.as_ptr(),
                        nix::libc::AT_FDCWD,
                        b.as_ptr(),
                        nix::libc::RENAME_EXCHANGE,
                    )
                };
                swaps += u64::from(rc == 0);
            }
            swaps
        })
    };
    let mut started = 0;
    for round in 0..20 {
        let bundle = world.docker_bundle(&format!("race{round}"), "0", 0, 1);
        let source = volume.display().to_string();
        let destination = firmware.clone();
        bundle.edit_config(|spec| {
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "rprivate"],
            }));
            spec["process"]["args"] = json!(["true"]);
        });
        let out = world.run_plain(&bundle, &unique_id("race"));
        started += usize::from(out.success());
        assert_eq!(
            tree_snapshot(&decoy),
            decoy_before,
            "round {round}: the decoy changed"
        );
        assert_eq!(
            host_mounts_under(world.tmp.path()),
            mounts_before,
            "round {round}: a mount leaked"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("RELIABILITY: exchange race: 20 starts ({started} started, the rest refused), {swaps} swaps, host unchanged");
}

#[test]
fn a_gpu_node_with_the_wrong_numbers_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-rdev");
    // The host's /dev/nvidia<minor> of GPU 0 replaced by a node with other
    // numbers: not the GPU it claims to be.
    let minor = world.driver.gpus[0].minor;
    let node = world.driver.dev_path(&format!("nvidia{minor}"));
    fs::remove_file(&node).unwrap();
    let status = Command::new("mknod")
        .arg(&node)
        .args(["c", "195", "77"])
        .status()
        .unwrap();
    assert!(status.success());
    let bundle = world.docker_bundle("rdev", "0", 0, 1);
    let out = world.run_plain(&bundle, &unique_id("rdev"));
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("is not the character device"),
        "{}",
        out.stderr
    );
}

#[test]
fn injected_files_are_read_only_and_nosuid_inside() {
    if !require_root() {
        return;
    }
    let world = World::new("hook-only-flags");
    let bundle = world.docker_bundle("flags", "0", 0, 1);
    bundle.edit_config(|spec| {
        spec["process"]["args"] = json!([
            "sh",
            "-c",
            "echo x >> /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15; grep -E ' /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15 | /usr/bin/nvidia-smi ' /proc/self/mountinfo"
        ]);
    });
    let out = world.run_plain(&bundle, &unique_id("flags"));
    out.assert_success("the flags check");
    assert!(out.stdout.lines().count() >= 2, "{out:?}");
    for line in out.stdout.lines() {
        let options = line.split(' ').nth(5).unwrap();
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(
                options.split(',').any(|o| o == flag),
                "{flag} missing: {line}"
            );
        }
    }
    assert!(
        out.stderr.contains("Read-only file system"),
        "{}",
        out.stderr
    );
}
