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
    assert!(
        setup.debug_log().contains("loading NVML"),
        "NVML was not asked"
    );
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
    assert!(!log.contains("loading NVML"), "NVML was loaded: {log}");
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
