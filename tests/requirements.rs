//! NVIDIA_REQUIRE_* end to end: the runtime loads the fake driver's real
//! libcuda (cuDriverGetVersion = 12.4) and libnvidia-ml (brand tesla, arch
//! 9.0) only when a term needs them, and refuses unmet requirements before
//! runc starts.
mod common;

use std::fs;
use std::path::Path;

use common::*;

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");

/// The requirement string of nvidia/cuda:12.6.x images.
const CUDA_12_6_IMAGE: &str = "cuda>=12.6 brand=unknown,driver>=470,driver<471 brand=grid,driver>=470,driver<471 brand=tesla,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 brand=quadro,driver>=470,driver<471 brand=quadrortx,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 brand=vapps,driver>=470,driver<471 brand=vpc,driver>=470,driver<471 brand=vcs,driver>=470,driver<471 brand=vws,driver>=470,driver<471 brand=cloudgaming,driver>=470,driver<471 brand=unknown,driver>=535,driver<536 brand=geforce,driver>=535,driver<536";

/// A world whose fake driver (kernel module and libraries) is `version`.
fn setup(name: &str, version: &str) -> World {
    let mut options = FakeDriverOptions::two_gpus();
    options.version = version.to_string();
    options.kernel_version = version.to_string();
    let world = World::build(name, &options, "", "");
    if version != DRIVER_VERSION {
        // The fixture's stale libcuda.so.535.00.00 is newer than an older
        // driver: ldconfig would point libcuda.so.1 at it and the runtime
        // would rightly call the driver half-upgraded. A host really on
        // that older driver has no such file.
        fs::remove_file(
            world
                .driver
                .lib_dir()
                .join(format!("libcuda.so.{STALE_DRIVER_VERSION}")),
        )
        .unwrap();
        let status = std::process::Command::new("ldconfig")
            .arg("-r")
            .arg(&world.driver.driver_root)
            .status()
            .unwrap();
        assert!(status.success());
    }
    world
}

impl World {
    /// Runs `echo ok` in a busybox container with `env`; the fake NVML sees
    /// the fake dev root's GPUs on the host through FAKE_NVML_DEV_ROOT.
    fn run(&self, name: &str, env: &[&str]) -> RunOutput {
        let bundle = Bundle::new(
            &self.tmp.path().join(name),
            RootfsKind::Busybox,
            &["echo", "ok"],
            env,
        );
        let before = fs::read(bundle.config_path()).unwrap();
        let out = run_container(
            Path::new(RUNTIME),
            &self.state_root,
            &bundle,
            &unique_id(name),
            &[
                ("NVIDIA_CTK_CONFIG_FILE_PATH", self.config.to_str().unwrap()),
                ("FAKE_NVML_DEV_ROOT", self.driver.dev_root.to_str().unwrap()),
                // This world's own facts cache.
                (
                    "NVIDIA_CONTAINER_RUNTIME_STATE_DIR",
                    self.runtime_state.to_str().unwrap(),
                ),
            ],
        );
        // A refused requirement must leave the bundle as it was; a start
        // that failed later (in runc) may not.
        let refused = out.stderr.contains("NVIDIA_REQUIRE") || out.stderr.contains("CUDA_VERSION");
        if out.status != 0 && refused {
            assert!(
                fs::read(bundle.config_path()).unwrap() == before,
                "config.json changed although the requirement was refused"
            );
        }
        out
    }

    fn debug_log(&self) -> String {
        fs::read_to_string(self.driver.debug_log_path()).unwrap_or_default()
    }
}

#[test]
fn cuda_requirement_satisfied_and_not() {
    if !require_root() {
        return;
    }
    let setup = setup("req-cuda", DRIVER_VERSION);
    setup
        .run(
            "ok",
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"],
        )
        .assert_success("cuda>=12.4 on CUDA 12.4");
    let out = setup.run(
        "too-new",
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.6"],
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.contains("the driver supports CUDA 12.4, the image needs cuda>=12.6: update the driver or use an older image, or set NVIDIA_DISABLE_REQUIRE=1"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("NVIDIA_REQUIRE_CUDA=\"cuda>=12.6\""),
        "{}",
        out.stderr
    );
    // The legacy rule: CUDA_VERSION without NVIDIA_REQUIRE_CUDA needs cuda>=major.minor.
    let out = setup.run("legacy", &["CUDA_VERSION=12.8.0"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("cuda>=12.8"), "{}", out.stderr);
    setup
        .run("legacy-ok", &["CUDA_VERSION=11.0.3"])
        .assert_success("legacy cuda 11.0");
}

#[test]
fn disable_require_skips_the_check() {
    if !require_root() {
        return;
    }
    let setup = setup("req-disable", DRIVER_VERSION);
    setup
        .run(
            "disabled",
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
                "NVIDIA_DISABLE_REQUIRE=1",
            ],
        )
        .assert_success("NVIDIA_DISABLE_REQUIRE=1");
    assert!(
        !setup.debug_log().contains("cuDriverGetVersion"),
        "libcuda was loaded"
    );
}

#[test]
fn cuda_12_image_on_a_470_tesla_through_nvml() {
    if !require_root() {
        return;
    }
    // A 470 driver whose libcuda reports 12.4: only `brand=tesla,driver>=470,
    // driver<471` holds, and that needs NVML's brand of the selected GPU.
    let setup = setup("req-470", "470.223.02");
    let env_value = format!("NVIDIA_REQUIRE_CUDA={CUDA_12_6_IMAGE}");
    setup
        .run("tesla", &["NVIDIA_VISIBLE_DEVICES=1", &env_value])
        .assert_success("the brand=tesla alternative");
    assert!(setup.debug_log().contains("(NVML)"), "NVML was not asked");
    // The same image needing a compute capability the GPU lacks fails,
    // naming the term and the GPU's value.
    let out = setup.run(
        "arch",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            &env_value,
            "NVIDIA_REQUIRE_ARCH=arch>=10.0",
        ],
    );
    assert_eq!(out.status, 1);
    assert!(
        out.stderr
            .contains("compute capability 9.0, the image needs arch>=10.0"),
        "{}",
        out.stderr
    );
}

#[test]
fn first_alternative_holding_never_loads_nvml() {
    if !require_root() {
        return;
    }
    let setup = setup("req-lazy", DRIVER_VERSION);
    let image =
        "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471";
    setup
        .run(
            "lazy",
            &[
                "NVIDIA_VISIBLE_DEVICES=all",
                &format!("NVIDIA_REQUIRE_CUDA={image}"),
            ],
        )
        .assert_success("cuda>=12.4 first");
    let log = setup.debug_log();
    assert!(
        log.contains("cuDriverGetVersion"),
        "libcuda was not asked: {log}"
    );
    assert!(!log.contains("(NVML)"), "NVML was asked: {log}");
}

#[test]
fn malformed_expression_is_named() {
    if !require_root() {
        return;
    }
    let setup = setup("req-bad", DRIVER_VERSION);
    let out = setup.run(
        "bad",
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda=>12"],
    );
    assert_eq!(out.status, 1);
    assert!(
        out.stderr
            .contains("NVIDIA_REQUIRE_CUDA=\"cuda=>12\" is malformed"),
        "{}",
        out.stderr
    );
}

/// A stock CUDA image's start on a warm cache opens no libcuda and no
/// NVML: the facts come from the state dir's cache, keyed by the driver
/// files' identity. Proven with strace, not with our own log; the cold
/// start, traced the same way, shows that the trace sees the loads.
#[test]
fn a_warm_cache_opens_no_driver_library() {
    if !require_root() {
        return;
    }
    let Some(strace) = require_tool("strace") else {
        return;
    };
    let setup = setup("req-warm", "470.223.02");
    let image = format!("NVIDIA_REQUIRE_CUDA={CUDA_12_6_IMAGE}");
    let env = ["NVIDIA_VISIBLE_DEVICES=1", image.as_str()];
    let config = setup.config.to_str().unwrap();
    let state = setup.runtime_state.to_str().unwrap();
    let dev_root = setup.driver.dev_root.to_str().unwrap();
    let driver_root = setup.driver.driver_root.display().to_string();
    // The driver root's libcuda and NVML opened for reading in one start,
    // as dlopen opens them (runc's O_PATH opens of mount points in the
    // rootfs are not loads).
    let loads = |name: &str| -> Vec<String> {
        let bundle = Bundle::new(
            &setup.tmp.path().join(name),
            RootfsKind::Busybox,
            &["echo", "ok"],
            &env,
        );
        let log = setup.tmp.path().join(format!("{name}.strace"));
        let mut runtime = runtime_command(
            Path::new(RUNTIME),
            &setup.state_root,
            &bundle,
            &[
                ("NVIDIA_CTK_CONFIG_FILE_PATH", config),
                ("NVIDIA_CONTAINER_RUNTIME_STATE_DIR", state),
                ("FAKE_NVML_DEV_ROOT", dev_root),
            ],
        );
        // `run`, not `create`: the container exits, and so closes the
        // pipes command_output reads to their end.
        runtime
            .args(["run", "--bundle"])
            .arg(&bundle.dir)
            .arg(unique_id(name));
        let traced = strace_command(&strace, "trace=open,openat,openat2", &log, &runtime);
        command_output(traced).assert_success(name);
        fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|line| line.contains(&driver_root))
            .filter(|line| line.contains("libcuda.so") || line.contains("libnvidia-ml.so"))
            .filter(|line| !line.contains("O_PATH") && !line.contains("ENOENT"))
            .map(str::to_string)
            .collect()
    };
    // Cold: libcuda for cuda>=, NVML for the brand= alternatives.
    let cold = loads("cold");
    for library in ["libcuda.so", "libnvidia-ml.so"] {
        assert!(
            cold.iter().any(|line| line.contains(library)),
            "the cold start loads {library}: {cold:#?}"
        );
    }
    let text = fs::read_to_string(setup.runtime_state.join("driver-facts.json")).unwrap();
    assert!(text.contains("\"cuda_version\":\"12.4\""), "{text}");
    assert!(text.contains("tesla"), "{text}");
    // Warm: neither.
    let warm = loads("warm");
    assert!(warm.is_empty(), "loads on a warm cache: {warm:#?}");
}

/// A driver upgrade invalidates the cache: a new libcuda reporting another
/// CUDA version replaces the old file, and the next start sees it.
#[test]
fn the_cache_follows_a_driver_upgrade() {
    if !require_root() {
        return;
    }
    let setup = setup("req-upgrade", DRIVER_VERSION);
    let needs_12_6 = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_REQUIRE_CUDA=cuda>=12.6"];
    let out = setup.run("before", &needs_12_6);
    assert_eq!(out.status, 1, "CUDA 12.4 refuses cuda>=12.6: {out:?}");
    assert!(out.stderr.contains("supports CUDA 12.4"), "{}", out.stderr);
    // Cached now: a second refusal loads nothing.
    let log_before = setup.debug_log().matches("cuDriverGetVersion").count();
    assert_eq!(setup.run("cached", &needs_12_6).status, 1);
    assert_eq!(
        setup.debug_log().matches("cuDriverGetVersion").count(),
        log_before,
        "the second start used the cache"
    );
    // The upgrade: a libcuda of the same driver version reporting 12.6,
    // written over the old file's name (a new inode, as a package does).
    let libcuda = setup.driver.lib_path("libcuda");
    let new = libcuda.with_extension("new");
    build_fake_libcuda(&new, 12060);
    fs::rename(&new, &libcuda).unwrap();
    setup
        .run("after", &needs_12_6)
        .assert_success("the upgraded driver's CUDA 12.6");
    let text = fs::read_to_string(setup.runtime_state.join("driver-facts.json")).unwrap();
    assert!(text.contains("\"cuda_version\":\"12.6\""), "{text}");
}
