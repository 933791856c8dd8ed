//! Self-tests of the test fixtures (tests/common): the fake driver, the
//! root filesystems and bundles, checked with plain runc.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn fake_driver_layout_and_ld_cache() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-driver");
    let driver = FakeDriver::build(tmp.path(), &FakeDriverOptions::two_gpus());
    assert_eq!(driver.gpus[0].bus_id, "0000:06:00.0");
    assert_eq!(driver.gpus[0].minor, 1);
    assert_eq!(driver.gpus[1].bus_id, "0000:3b:00.0");
    assert_eq!(driver.gpus[1].minor, 0);
    assert_ne!(driver.gpus[0].uuid, driver.gpus[1].uuid);

    let listing = ldconfig_print(&driver.ld_cache_path());
    let lib_dir = "/usr/lib/x86_64-linux-gnu";
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-cfg.so.1"] {
        assert!(
            listing.contains(&format!("{soname} (libc6,x86-64) => {lib_dir}/{soname}")),
            "{soname} missing from the driver ld.so.cache:\n{listing}"
        );
    }
    assert!(
        listing.contains(&format!(
            "libnvidia-eglcore.so.{DRIVER_VERSION} (libc6,x86-64)"
        )),
        "{listing}"
    );
    for name in ["libcuda", "libnvidia-ml"] {
        let link = driver.lib_dir().join(format!("{name}.so.1"));
        assert_eq!(
            std::fs::read_link(&link).unwrap().to_str().unwrap(),
            format!("{name}.so.{DRIVER_VERSION}"),
            "{} must point at the current version, not the stale one",
            link.display()
        );
    }
    assert!(driver.lib_dir().join("libcuda.so.535.00.00").exists());
    assert_eq!(
        std::fs::read_link(driver.lib_dir().join("libcuda.so"))
            .unwrap()
            .to_str(),
        Some("libcuda.so.1")
    );

    // The libraries are real ELF with the right SONAME.
    let out = Command::new("readelf")
        .arg("-d")
        .arg(driver.lib_path("libcuda"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Library soname: [libcuda.so.1]"));
    let out = Command::new("readelf")
        .arg("-d")
        .arg(driver.bin_path("nvidia-smi"))
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dynamic.contains("Shared library: [libnvidia-ml.so.1]"),
        "{dynamic}"
    );
    assert!(
        !dynamic.contains("RPATH") && !dynamic.contains("RUNPATH"),
        "{dynamic}"
    );

    // Dev nodes.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for (name, major, minor) in [
        ("nvidiactl", 195, 255),
        ("nvidia1", 195, 1),
        ("nvidia0", 195, 0),
        ("nvidia-uvm", 511, 0),
        ("nvidia-uvm-tools", 511, 1),
        ("nvidia-modeset", 195, 254),
    ] {
        let m = std::fs::metadata(driver.dev_path(name)).unwrap();
        assert!(m.file_type().is_char_device(), "{name}");
        assert_eq!(
            ((m.rdev() >> 8) & 0xfff, m.rdev() & 0xff),
            (major, minor),
            "{name}"
        );
        assert_eq!(m.mode() & 0o777, 0o666, "{name}");
    }

    // Procfs.
    let version = std::fs::read_to_string(driver.proc_root.join("driver/nvidia/version")).unwrap();
    assert!(version.starts_with(&format!(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {DRIVER_VERSION}  "
    )));
    let info = std::fs::read_to_string(
        driver
            .proc_root
            .join("driver/nvidia/gpus/0000:3b:00.0/information"),
    )
    .unwrap();
    let field = |key: &str| {
        info.lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| *k == key)
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap()
    };
    assert_eq!(field("Device Minor"), "0");
    assert_eq!(field("GPU UUID"), driver.gpus[1].uuid);
    assert_eq!(field("Bus Location"), "0000:3b:00.0");
    assert_eq!(field("Model"), GPU_MODEL);
    let params = std::fs::read_to_string(driver.proc_root.join("driver/nvidia/params")).unwrap();
    assert!(params.contains("DeviceFileMode: 438\n"));
    let devices = std::fs::read_to_string(driver.proc_root.join("devices")).unwrap();
    assert!(devices.contains("\n511 nvidia-uvm\n") && devices.contains("\nBlock devices:\n"));

    // Other driver files.
    assert!(driver
        .driver_root
        .join(format!(
            "lib/firmware/nvidia/{DRIVER_VERSION}/gsp_ga10x.bin"
        ))
        .is_file());
    let socket =
        std::fs::metadata(driver.driver_root.join("run/nvidia-persistenced/socket")).unwrap();
    assert!(socket.file_type().is_socket());
    assert!(driver
        .driver_root
        .join("var/run/nvidia-persistenced/socket")
        .exists());

    // The tools run on the host.
    let out = Command::new(driver.bin_path("nvidia-debugdump"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "nvidia-debugdump\n");

    // Host-side NVML through FAKE_NVML_DEV_ROOT.
    let out = Command::new(driver.bin_path("nvidia-smi"))
        .arg("-L")
        .env("LD_LIBRARY_PATH", driver.lib_dir())
        .env("FAKE_NVML_DEV_ROOT", &driver.dev_root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        driver.smi_output(&[0, 1])
    );

    let config = driver.write_config(&tmp.path().join("config.toml"), "extra-key = true");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(&format!("root = \"{}\"", driver.driver_root.display())));
    assert!(text.trim_end().ends_with("extra-key = true"));
}

#[test]
fn fake_driver_without_ld_cache() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-nocache");
    let mut options = FakeDriverOptions::with_gpu_count(5);
    options.ld_cache = false;
    let driver = FakeDriver::build(tmp.path(), &options);
    assert!(!driver.ld_cache_path().exists());
    assert_eq!(
        std::fs::read_link(driver.lib_dir().join("libcuda.so.1"))
            .unwrap()
            .to_str()
            .unwrap(),
        format!("libcuda.so.{DRIVER_VERSION}")
    );
    let buses: Vec<_> = driver.gpus.iter().map(|g| g.bus_id.as_str()).collect();
    assert_eq!(
        buses,
        [
            "0000:06:00.0",
            "0000:3b:00.0",
            "0000:70:00.0",
            "0000:a5:00.0",
            "0001:06:00.0"
        ]
    );
    for (i, gpu) in driver.gpus.iter().enumerate() {
        assert_ne!(gpu.minor as usize, i);
        assert!(driver.dev_path(&format!("nvidia{}", gpu.minor)).exists());
    }
}

fn glibc_gpu_bundle(driver: &FakeDriver, dir: &Path, args: &[&str]) -> Bundle {
    let bundle = Bundle::new(dir, RootfsKind::Glibc { ldconfig: false }, args, &[]);
    bundle.add_bind_mount(
        &driver.lib_path("libnvidia-ml"),
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    );
    bundle.add_bind_mount(&driver.bin_path("nvidia-smi"), "/usr/bin/nvidia-smi");
    bundle.add_char_device("/dev/nvidiactl", 195, 255, true);
    bundle
}

#[test]
fn nvidia_smi_in_runc_sees_only_allowed_gpu() {
    if !require_root() {
        return;
    }
    let runc = runc_path();
    let tmp = TempDir::new("fixture-smi");
    let driver = FakeDriver::build(&tmp.path().join("driver"), &FakeDriverOptions::two_gpus());
    let state = tmp.path().join("state");

    // GPU index 0 is minor 1: give /dev/nvidia1, allowed.
    let bundle = glibc_gpu_bundle(&driver, &tmp.path().join("b1"), &["nvidia-smi", "-L"]);
    bundle.add_char_device("/dev/nvidia1", 195, 1, true);
    let out = run_container(&runc, &state, &bundle, &unique_id("smi"), &[]);
    out.assert_success("nvidia-smi -L in runc");
    assert_eq!(out.stdout, driver.smi_output(&[0]));
    assert_eq!(
        out.stdout,
        format!(
            "GPU 0: NVIDIA H100 80GB HBM3 (UUID: {})\n",
            driver.gpus[0].uuid
        )
    );

    // Node of GPU 1 (minor 0) present but denied by the device cgroup: EPERM, not counted.
    let bundle = glibc_gpu_bundle(
        &driver,
        &tmp.path().join("b2"),
        &["sh", "-c", "nvidia-smi -L; echo rc=$?; cat /dev/nvidia0"],
    );
    bundle.add_char_device("/dev/nvidia1", 195, 1, true);
    bundle.add_char_device("/dev/nvidia0", 195, 0, false);
    let out = run_container(&runc, &state, &bundle, &unique_id("smi"), &[]);
    assert_eq!(
        out.stdout,
        format!("{}rc=0\n", driver.smi_output(&[0])),
        "{out:?}"
    );
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");

    // Only the denied node: no devices, exit 6.
    let bundle = glibc_gpu_bundle(&driver, &tmp.path().join("b3"), &["nvidia-smi", "-L"]);
    bundle.add_char_device("/dev/nvidia0", 195, 0, false);
    let out = run_container(&runc, &state, &bundle, &unique_id("smi"), &[]);
    assert_eq!(
        (out.status, out.stdout.as_str()),
        (6, "No devices were found\n"),
        "{out:?}"
    );

    // Both allowed: both listed in index order, through create/start/delete.
    let bundle = glibc_gpu_bundle(&driver, &tmp.path().join("b4"), &["nvidia-smi"]);
    bundle.add_char_device("/dev/nvidia0", 195, 0, true);
    bundle.add_char_device("/dev/nvidia1", 195, 1, true);
    let out = create_start_delete(&runc, &state, &bundle, &unique_id("smi"), &[]);
    out.assert_success("create/start/delete");
    assert_eq!(out.stdout, driver.smi_output(&[0, 1]));
}

#[test]
fn glibc_rootfs_runs_own_programs() {
    if !require_root() {
        return;
    }
    let runc = runc_path();
    let tmp = TempDir::new("fixture-glibc");
    let state = tmp.path().join("state");
    for ldconfig in [false, true] {
        let script = "use-image-lib && cat /etc/debian_version && test -e /sbin/ldconfig && echo has-ldconfig; test -e /etc/ld.so.cache && echo has-cache; readlink /lib";
        let bundle = Bundle::new(
            &tmp.path().join(format!("b-{ldconfig}")),
            RootfsKind::Glibc { ldconfig },
            &["sh", "-c", script],
            &["FOO=bar"],
        );
        let out = run_container(&runc, &state, &bundle, &unique_id("glibc"), &[]);
        let expected = if ldconfig {
            "hello from libimage\n12.0\nhas-ldconfig\nhas-cache\nusr/lib\n"
        } else {
            "hello from libimage\n12.0\nusr/lib\n"
        };
        assert_eq!(out.stdout, expected, "{out:?}");
        if ldconfig {
            let listing = ldconfig_print(&bundle.rootfs.join("etc/ld.so.cache"));
            assert!(
                listing.contains("libimage.so.1 (libc6,x86-64) => /"),
                "{listing}"
            );
        }
    }
}

#[test]
fn busybox_rootfs_under_runc() {
    if !require_root() {
        return;
    }
    let runc = runc_path();
    let tmp = TempDir::new("fixture-busybox");
    let driver = FakeDriver::build(&tmp.path().join("driver"), &FakeDriverOptions::two_gpus());
    let state = tmp.path().join("state");
    let bundle = Bundle::new(&tmp.path().join("b"), RootfsKind::Busybox, &["sh", "-c", "echo hi; test -e /etc/debian_version || echo not-debian; env | grep ^FOO=; cat /dev/nvidia1"], &["FOO=bar"]);
    bundle.add_char_device("/dev/nvidia1", 195, 1, true);
    let out = run_container(&runc, &state, &bundle, &unique_id("bb"), &[]);
    assert_eq!(out.stdout, "hi\nnot-debian\nFOO=bar\n", "{out:?}");
    assert!(out.stderr.contains("No such device or address"), "{out:?}");
    assert_ne!(out.status, 0);
    let _ = driver;

    let config = bundle.read_config();
    assert_eq!(config["process"]["terminal"], false);
    assert_eq!(config["root"]["readonly"], false);
    assert_eq!(
        config["linux"]["resources"]["devices"][0],
        serde_json::json!({"allow": false, "access": "rwm"})
    );
}

#[test]
fn parallel_builds_share_the_cache() {
    if !require_root() {
        return;
    }
    let runc = runc_path();
    let tmp = TempDir::new("fixture-parallel");
    std::thread::scope(|s| {
        for i in 0..8 {
            let dir = tmp.path().join(format!("t{i}"));
            let runc = &runc;
            s.spawn(move || {
                let start = std::time::Instant::now();
                let driver = FakeDriver::build(&dir.join("driver"), &FakeDriverOptions::two_gpus());
                let built = start.elapsed();
                let bundle = glibc_gpu_bundle(&driver, &dir.join("bundle"), &["nvidia-smi", "-L"]);
                bundle.add_char_device("/dev/nvidia0", 195, 0, true);
                let prepared = start.elapsed();
                let out = run_container(runc, &dir.join("state"), &bundle, &unique_id("par"), &[]);
                assert_eq!(out.stdout, driver.smi_output(&[1]), "{out:?}");
                eprintln!(
                    "thread {i}: driver {built:?}, +bundle {prepared:?}, +run {:?}",
                    start.elapsed()
                );
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Optional features of the fake driver
// ---------------------------------------------------------------------------

use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// (type is char, major, minor, permission bits) of a node.
fn node(path: &Path) -> (bool, u32, u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rdev = m.rdev();
    (
        m.file_type().is_char_device(),
        ((rdev >> 8) & 0xfff) as u32,
        ((rdev & 0xff) | ((rdev >> 12) & 0xfff00)) as u32,
        m.mode() & 0o777,
    )
}

/// Opening the node on the host gives ENXIO: no driver behind its major.
fn assert_enxio(path: &Path) {
    let err = std::fs::File::open(path).expect_err(&format!("{} opened", path.display()));
    assert_eq!(err.raw_os_error(), Some(6), "{}: {err}", path.display());
}

/// Majors of the character devices in a /proc/devices text.
fn char_majors(text: &str) -> Vec<(u32, String)> {
    text.split("\nBlock devices:")
        .next()
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (major, name) = l.trim().split_once(' ')?;
            Some((major.parse().ok()?, name.to_string()))
        })
        .collect()
}

#[test]
fn fake_majors_absent_from_host() {
    let host = std::fs::read_to_string("/proc/devices").unwrap();
    let host = char_majors(&host);
    for (major, name) in FAKE_MAJORS {
        if let Some((_, host_name)) = host.iter().find(|(m, _)| m == major) {
            if *major == 195 || *major == DRM_MAJOR {
                eprintln!("warning: this host has a real {host_name} driver at major {major} (fake {name} nodes use it too)");
            } else {
                panic!("fake major {major} ({name}) is a real device on this host ({host_name}): pick another in tests/common/mod.rs");
            }
        }
    }
    let mut majors: Vec<u32> = FAKE_MAJORS.iter().map(|(m, _)| *m).collect();
    majors.sort();
    majors.dedup();
    assert_eq!(
        majors.len(),
        FAKE_MAJORS.len(),
        "fake majors must be distinct"
    );
}

#[test]
fn optional_features_default_off() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-defaults");
    let driver = FakeDriver::build(tmp.path(), &FakeDriverOptions::two_gpus());
    assert!(driver.mig.is_empty());
    assert!(driver.sys_root.is_dir());
    assert_eq!(std::fs::read_dir(&driver.sys_root).unwrap().count(), 0);
    for absent in [
        driver.dev_path("dri"),
        driver.dev_path("nvidia-caps"),
        driver.dev_path("nvidia-caps-imex-channels"),
        driver.dev_path("nvidia-fs0"),
        driver.dev_path("infiniband"),
        driver.dev_path("gdrdrv"),
        driver.proc_root.join("driver/nvidia-caps"),
        driver.proc_root.join("driver/nvidia/capabilities"),
        driver.driver_root.join(LIB32_DIR),
        driver.driver_root.join("usr/share/vulkan"),
        driver.lib_path("libGLX_nvidia"),
    ] {
        assert!(!absent.exists(), "{} exists by default", absent.display());
    }
    let devices = std::fs::read_to_string(driver.proc_root.join("devices")).unwrap();
    assert!(
        devices.contains("\n510 nvidia-caps\n508 nvidia-caps-imex-channels\n")
            || devices.contains("\n508 nvidia-caps-imex-channels\n510 nvidia-caps\n")
    );
    assert!(!devices.contains("nvidia-fs"));
    let config = driver.write_config(&tmp.path().join("config.toml"), "");
    let text = std::fs::read_to_string(config).unwrap();
    assert!(
        text.contains(&format!("sys-root = \"{}\"\n", driver.sys_root.display())),
        "{text}"
    );
}

/// dlopens the fake libnvidia-ml and prints what its MIG functions say.
const MIG_PROBE_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef int (*fn)();
static void *lib;
static fn f(const char *name)
{
    fn p = (fn)dlsym(lib, name);
    if (!p) { fprintf(stderr, "missing %s\n", name); exit(3); }
    return p;
}
int main(int argc, char **argv)
{
    unsigned int count, i, j, v, cur, pend, max;
    char uuid[96], name[160];
    void *dev, *mig, *parent, *h;
    lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 2; }
    f("nvmlInit_v2")();
    f("nvmlDeviceGetCount_v2")(&count);
    for (i = 0; i < count; i++) {
        f("nvmlDeviceGetHandleByIndex_v2")(i, &dev);
        f("nvmlDeviceGetMinorNumber")(dev, &v);
        f("nvmlDeviceIsMigDeviceHandle")(dev, &j);
        printf("gpu %u minor %u is_mig %u", i, v, j);
        if (f("nvmlDeviceGetMigMode")(dev, &cur, &pend) != 0) { printf(" mig unsupported\n"); continue; }
        f("nvmlDeviceGetMaxMigDeviceCount")(dev, &max);
        printf(" mig %u/%u max %u\n", cur, pend, max);
        for (j = 0; j < max; j++) {
            int r = f("nvmlDeviceGetMigDeviceHandleByIndex")(dev, j, &mig);
            if (r == 6) continue;
            if (r) { printf("  index %u error %d\n", j, r); continue; }
            unsigned int gi, ci, is_mig;
            char parent_uuid[96];
            f("nvmlDeviceGetUUID")(mig, uuid, 96u);
            f("nvmlDeviceGetName")(mig, name, 160u);
            f("nvmlDeviceGetGpuInstanceId")(mig, &gi);
            f("nvmlDeviceGetComputeInstanceId")(mig, &ci);
            f("nvmlDeviceIsMigDeviceHandle")(mig, &is_mig);
            f("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")(mig, &parent);
            f("nvmlDeviceGetUUID")(parent, parent_uuid, 96u);
            printf("  mig %u %s gi %u ci %u is_mig %u parent %s name %s minor_rc %d\n", j, uuid, gi, ci,
                   is_mig, parent_uuid, name, f("nvmlDeviceGetMinorNumber")(mig, &v));
        }
    }
    for (i = 2; i < (unsigned)argc; i++) {
        int r = f("nvmlDeviceGetHandleByUUID")(argv[i], &h);
        if (r) { printf("by_uuid %s rc %d\n", argv[i], r); continue; }
        f("nvmlDeviceGetUUID")(h, uuid, 96u);
        printf("by_uuid %s -> %s\n", argv[i], uuid);
    }
    return 0;
}
"#;

#[test]
fn fake_driver_mig() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-mig");
    // Given out of order: the driver sorts them.
    let options = FakeDriverOptions::two_gpus().with_mig(vec![
        FakeMig::new(1, 2, 0),
        FakeMig::new(0, 1, 1),
        FakeMig::new(0, 1, 0),
    ]);
    let driver = FakeDriver::build(tmp.path(), &options);
    let keys: Vec<_> = driver
        .mig
        .iter()
        .map(|m| (m.gpu_index, m.gi, m.ci))
        .collect();
    assert_eq!(keys, [(0, 1, 0), (0, 1, 1), (1, 2, 0)]);
    assert!(driver
        .mig
        .iter()
        .all(|m| m.uuid.starts_with("MIG-") && m.uuid.len() == 40));
    assert_eq!(FakeDriver::mig_minor(0, 0, None), 3);
    assert_eq!(FakeDriver::mig_minor(0, 0, Some(0)), 4);
    assert_eq!(FakeDriver::mig_minor(0, 1, None), 12);
    assert_eq!(FakeDriver::mig_minor(0, 1, Some(0)), 13);

    // mig-minors: config, monitor, every gi/ci of every GPU minor, distinct minors.
    let listing =
        std::fs::read_to_string(driver.proc_root.join("driver/nvidia-caps/mig-minors")).unwrap();
    assert!(listing.starts_with("config 1\nmonitor 2\n"), "{listing}");
    let entries: Vec<(&str, u32)> = listing
        .lines()
        .map(|l| {
            let (name, minor) = l.split_once(' ').unwrap();
            (name, minor.parse().unwrap())
        })
        .collect();
    assert_eq!(entries.len(), 2 + 2 * 15 * 9);
    let mut minors: Vec<u32> = entries.iter().map(|e| e.1).collect();
    minors.sort();
    minors.dedup();
    assert_eq!(minors.len(), entries.len(), "minors must be distinct");
    for (gpu_minor, gi, ci) in [
        (1, 1, Some(0)),
        (1, 1, None),
        (0, 2, Some(0)),
        (0, 14, Some(7)),
    ] {
        let name = match ci {
            Some(ci) => format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access"),
            None => format!("gpu{gpu_minor}/gi{gi}/access"),
        };
        assert!(
            entries.contains(&(name.as_str(), FakeDriver::mig_minor(gpu_minor, gi, ci))),
            "{name}"
        );
    }

    // Capability files of the created instances only, and their nodes.
    let caps = driver.proc_root.join("driver/nvidia/capabilities");
    // GPU index 0 has minor 1, index 1 minor 0.
    let created = [
        ("mig/config", 1, 0o400),
        ("mig/monitor", 2, 0o444),
        (
            "gpu1/mig/gi1/access",
            FakeDriver::mig_minor(1, 1, None),
            0o444,
        ),
        (
            "gpu1/mig/gi1/ci0/access",
            FakeDriver::mig_minor(1, 1, Some(0)),
            0o444,
        ),
        (
            "gpu1/mig/gi1/ci1/access",
            FakeDriver::mig_minor(1, 1, Some(1)),
            0o444,
        ),
        (
            "gpu0/mig/gi2/access",
            FakeDriver::mig_minor(0, 2, None),
            0o444,
        ),
        (
            "gpu0/mig/gi2/ci0/access",
            FakeDriver::mig_minor(0, 2, Some(0)),
            0o444,
        ),
    ];
    for (path, minor, mode) in created {
        let text = std::fs::read_to_string(caps.join(path)).unwrap();
        assert_eq!(
            text,
            format!("DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"),
            "{path}"
        );
        let cap = driver.dev_path(&format!("nvidia-caps/nvidia-cap{minor}"));
        assert_eq!(node(&cap), (true, NVIDIA_CAPS_MAJOR, minor, mode), "{path}");
        assert_enxio(&cap);
    }
    assert!(!caps.join("gpu0/mig/gi1").exists());
    assert!(!caps.join("gpu1/mig/gi2").exists());
    assert_eq!(
        std::fs::read_dir(driver.dev_path("nvidia-caps"))
            .unwrap()
            .count(),
        created.len()
    );
    let devices = std::fs::read_to_string(driver.proc_root.join("devices")).unwrap();
    assert!(devices.contains(&format!("\n{NVIDIA_CAPS_MAJOR} nvidia-caps\n")));

    // nvidia-smi -L lists the MIG devices under their GPU.
    let smi = |dev_root: &Path| {
        let out = Command::new(driver.bin_path("nvidia-smi"))
            .arg("-L")
            .env("LD_LIBRARY_PATH", driver.lib_dir())
            .env("FAKE_NVML_DEV_ROOT", dev_root)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expected = format!(
        "GPU 0: {GPU_MODEL} (UUID: {})\n  MIG 1g.10gb     Device  0: (UUID: {})\n  MIG 1g.10gb     Device  1: (UUID: {})\n\
         GPU 1: {GPU_MODEL} (UUID: {})\n  MIG 1g.10gb     Device  0: (UUID: {})\n",
        driver.gpus[0].uuid, driver.mig[0].uuid, driver.mig[1].uuid, driver.gpus[1].uuid, driver.mig[2].uuid
    );
    assert_eq!(smi(&driver.dev_root), expected);
    assert_eq!(driver.smi_output(&[0, 1]), expected);

    // The MIG functions of the fake NVML.
    let probe = tmp.path().join("mig-probe");
    let src = tmp.path().join("mig-probe.c");
    std::fs::write(&src, MIG_PROBE_C).unwrap();
    let out = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&probe)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run_probe = |dev_root: &Path| {
        let out = Command::new(&probe)
            .arg(driver.lib_path("libnvidia-ml"))
            .args([
                &driver.mig[0].uuid,
                &driver.mig[2].uuid,
                &driver.gpus[1].uuid,
            ])
            .env("FAKE_NVML_DEV_ROOT", dev_root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (g0, g1) = (&driver.gpus[0].uuid, &driver.gpus[1].uuid);
    let (m0, m1, m2) = (
        &driver.mig[0].uuid,
        &driver.mig[1].uuid,
        &driver.mig[2].uuid,
    );
    let name = format!("{GPU_MODEL} MIG 1g.10gb");
    assert_eq!(
        run_probe(&driver.dev_root),
        format!(
            "gpu 0 minor 1 is_mig 0 mig 1/1 max 7\n\
             \x20 mig 0 {m0} gi 1 ci 0 is_mig 1 parent {g0} name {name} minor_rc 3\n\
             \x20 mig 1 {m1} gi 1 ci 1 is_mig 1 parent {g0} name {name} minor_rc 3\n\
             gpu 1 minor 0 is_mig 0 mig 1/1 max 7\n\
             \x20 mig 0 {m2} gi 2 ci 0 is_mig 1 parent {g1} name {name} minor_rc 3\n\
             by_uuid {m0} -> {m0}\nby_uuid {m2} -> {m2}\nby_uuid {g1} -> {g1}\n"
        )
    );

    // MIG devices follow their parent's visibility: without /dev/nvidia0
    // (GPU 1), its MIG device is gone too.
    std::fs::remove_file(driver.dev_path("nvidia0")).unwrap();
    assert_eq!(
        run_probe(&driver.dev_root),
        format!(
            "gpu 0 minor 1 is_mig 0 mig 1/1 max 7\n\
             \x20 mig 0 {m0} gi 1 ci 0 is_mig 1 parent {g0} name {name} minor_rc 3\n\
             \x20 mig 1 {m1} gi 1 ci 1 is_mig 1 parent {g0} name {name} minor_rc 3\n\
             by_uuid {m0} -> {m0}\nby_uuid {m2} rc 6\nby_uuid {g1} rc 6\n"
        )
    );
    assert_eq!(smi(&driver.dev_root), driver.smi_output(&[0]));
}

#[test]
fn fake_driver_drm_and_graphics() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-drm");
    let driver = FakeDriver::build(
        tmp.path(),
        &FakeDriverOptions::two_gpus().with_drm().with_graphics(),
    );
    // sysfs: card<N> and renderD<128+N> of each GPU, plus the BMC's card0.
    for (i, gpu) in driver.gpus.iter().enumerate() {
        let n = FakeDriver::drm_card(i);
        assert_eq!(n, i as u32 + 1);
        let drm = driver.drm_sys_dir(i);
        assert_eq!(
            drm,
            driver
                .sys_root
                .join("bus/pci/devices")
                .join(&gpu.bus_id)
                .join("drm")
        );
        let mut entries: Vec<String> = std::fs::read_dir(&drm)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        entries.sort();
        assert_eq!(entries, [format!("card{n}"), format!("renderD{}", 128 + n)]);
        for (name, minor) in [
            (format!("card{n}"), n),
            (format!("renderD{}", 128 + n), 128 + n),
        ] {
            assert!(drm.join(&name).is_dir());
            let path = driver.dev_path(&format!("dri/{name}"));
            assert_eq!(node(&path), (true, DRM_MAJOR, minor, 0o666), "{name}");
            assert_enxio(&path);
        }
        let vendor = std::fs::read_to_string(drm.parent().unwrap().join("vendor")).unwrap();
        assert_eq!(vendor, "0x10de\n");
    }
    assert!(driver
        .sys_root
        .join("bus/pci/devices/0000:02:00.0/drm/card0")
        .is_dir());
    assert_eq!(node(&driver.dev_path("dri/card0")).1, DRM_MAJOR);
    assert_eq!(
        std::fs::read_dir(driver.dev_path("dri")).unwrap().count(),
        5
    );

    // Graphics files: valid JSON, pointing at the driver's libraries.
    let icd = std::fs::read_to_string(
        driver
            .driver_root
            .join("usr/share/vulkan/icd.d/nvidia_icd.json"),
    )
    .unwrap();
    let icd: serde_json::Value = serde_json::from_str(&icd).unwrap();
    assert_eq!(icd["ICD"]["library_path"], "libGLX_nvidia.so.0");
    for (path, _) in GRAPHICS_FILES {
        let text = std::fs::read_to_string(driver.driver_root.join(path)).unwrap();
        if path.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }
    assert_eq!(
        std::fs::read_to_string(driver.driver_root.join("etc/OpenCL/vendors/nvidia.icd")).unwrap(),
        "libnvidia-opencl.so.1\n"
    );

    // Graphics libraries in the cache, by SONAME.
    let listing = ldconfig_print(&driver.ld_cache_path());
    for soname in [
        "libGLX_nvidia.so.0".to_string(),
        "libEGL_nvidia.so.0".to_string(),
        format!("libnvidia-glcore.so.{DRIVER_VERSION}"),
    ] {
        assert!(
            listing.contains(&format!(
                "{soname} (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/{soname}"
            )),
            "{soname}:\n{listing}"
        );
    }
    let out = Command::new("readelf")
        .arg("-d")
        .arg(driver.lib_path("libGLX_nvidia"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Library soname: [libGLX_nvidia.so.0]"));
}

#[test]
fn fake_driver_imex_and_feature_devices() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-features");
    let driver = FakeDriver::build(
        tmp.path(),
        &FakeDriverOptions::two_gpus()
            .with_imex_channels(3)
            .with_feature_devices(),
    );
    let mut expected = vec![
        ("nvidia-fs0".to_string(), NVIDIA_FS_MAJOR, 0),
        ("nvidia-fs1".to_string(), NVIDIA_FS_MAJOR, 1),
        (
            "infiniband/uverbs0".to_string(),
            INFINIBAND_VERBS_MAJOR,
            INFINIBAND_UVERBS0_MINOR,
        ),
        (
            "infiniband/rdma_cm".to_string(),
            RDMA_CM_MAJOR,
            RDMA_CM_MINOR,
        ),
        ("nvidia-nvswitch0".to_string(), NVIDIA_NVSWITCH_MAJOR, 0),
        ("nvidia-nvswitch1".to_string(), NVIDIA_NVSWITCH_MAJOR, 1),
        ("nvidia-nvswitchctl".to_string(), NVIDIA_NVSWITCH_MAJOR, 255),
        ("gdrdrv".to_string(), GDRDRV_MAJOR, 0),
    ];
    for n in 0..3 {
        expected.push((
            format!("nvidia-caps-imex-channels/channel{n}"),
            NVIDIA_CAPS_IMEX_CHANNELS_MAJOR,
            n,
        ));
    }
    for (name, major, minor) in &expected {
        let path = driver.dev_path(name);
        assert_eq!(node(&path), (true, *major, *minor, 0o666), "{name}");
        assert_enxio(&path);
    }
    assert_eq!(
        std::fs::read_dir(driver.dev_path("nvidia-caps-imex-channels"))
            .unwrap()
            .count(),
        3
    );
    let devices = std::fs::read_to_string(driver.proc_root.join("devices")).unwrap();
    let majors = char_majors(&devices);
    for (major, name) in [
        (NVIDIA_CAPS_IMEX_CHANNELS_MAJOR, "nvidia-caps-imex-channels"),
        (NVIDIA_FS_MAJOR, "nvidia-fs"),
        (INFINIBAND_VERBS_MAJOR, "infiniband_verbs"),
        (NVIDIA_NVSWITCH_MAJOR, "nvidia-nvswitch"),
        (GDRDRV_MAJOR, "gdrdrv"),
        (NVIDIA_UVM_MAJOR, "nvidia-uvm"),
    ] {
        assert!(
            majors.contains(&(major, name.to_string())),
            "{name}:\n{devices}"
        );
    }
    let order: Vec<u32> = majors.iter().map(|m| m.0).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{devices}");
    assert!(devices.ends_with("\nBlock devices:\n  7 loop\n  8 sd\n  9 md\n 65 sd\n259 blkext\n"));
}

#[test]
fn fake_driver_compat32() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-compat32");
    let driver = FakeDriver::build(tmp.path(), &FakeDriverOptions::two_gpus().with_compat32());
    let conf = std::fs::read_to_string(driver.driver_root.join("etc/ld.so.conf")).unwrap();
    assert_eq!(conf, "/usr/lib/x86_64-linux-gnu\n/usr/lib/i386-linux-gnu\n");
    let listing = ldconfig_print(&driver.ld_cache_path());
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        // libc6 (flags 0x0003), like real i386 driver libraries.
        assert!(
            listing.contains(&format!(
                "{soname} (libc6) => /usr/lib/i386-linux-gnu/{soname}"
            )),
            "{soname}:\n{listing}"
        );
        assert!(
            listing.contains(&format!(
                "{soname} (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/{soname}"
            )),
            "{soname}:\n{listing}"
        );
        assert_eq!(
            std::fs::read_link(driver.lib32_dir().join(soname))
                .unwrap()
                .to_str()
                .unwrap(),
            soname.replace(".so.1", &format!(".so.{DRIVER_VERSION}"))
        );
    }
    let out = Command::new("readelf")
        .args(["-h", "-d"])
        .arg(
            driver
                .lib32_dir()
                .join(format!("libcuda.so.{DRIVER_VERSION}")),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ELF32") && text.contains("Intel 80386"),
        "{text}"
    );
    assert!(
        text.contains("Library soname: [libcuda.so.1]")
            && text.contains("Shared library: [libc.so.6]"),
        "{text}"
    );

    // Without a cache: the SONAME links of every set are still made.
    let tmp2 = TempDir::new("fixture-compat32-nocache");
    let mut options = FakeDriverOptions::two_gpus()
        .with_compat32()
        .with_graphics();
    options.ld_cache = false;
    let driver = FakeDriver::build(tmp2.path(), &options);
    assert!(!driver.ld_cache_path().exists());
    assert!(driver.lib32_dir().join("libnvidia-ml.so.1").exists());
    assert!(driver.lib_dir().join("libEGL_nvidia.so.0").exists());
}

#[test]
fn all_features_together() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("fixture-all");
    let driver = FakeDriver::build(
        tmp.path(),
        &FakeDriverOptions::with_gpu_count(3).with_all_features(),
    );
    assert_eq!(driver.mig.len(), 3);
    assert!(driver.dev_path("dri/renderD131").exists());
    assert!(driver
        .dev_path("nvidia-caps-imex-channels/channel1")
        .exists());
    assert!(driver.dev_path("gdrdrv").exists());
    assert!(driver.lib32_dir().join("libcuda.so.1").exists());
    let out = Command::new(driver.bin_path("nvidia-smi"))
        .arg("-L")
        .env("LD_LIBRARY_PATH", driver.lib_dir())
        .env("FAKE_NVML_DEV_ROOT", &driver.dev_root)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        driver.smi_output(&[0, 1, 2])
    );
}
