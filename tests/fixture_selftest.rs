//! Self-tests of the test fixtures (tests/common): the fake driver, the
//! root filesystems and bundles, checked with plain runc.
mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn ldconfig_print(cache: &Path) -> String {
    let out = Command::new("ldconfig")
        .arg("-p")
        .arg("-C")
        .arg(cache)
        .output()
        .expect("run ldconfig -p");
    assert!(
        out.status.success(),
        "ldconfig -p -C {}: {:?}",
        cache.display(),
        out
    );
    String::from_utf8(out.stdout).unwrap()
}

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
