//! CDI: `nvidia-ctk cdi generate` against the fake driver (golden file,
//! determinism, our parser, podman as a consumer we did not write),
//! `nvidia-ctk cdi list`, and the runtime's CDI mode with real runc (a
//! hand-written spec of another vendor; env, annotation and mount requests;
//! an unknown device; a broken spec file next to a good one).
//!
//! `UPDATE_GOLDEN=1 cargo test --test cdi` rewrites the golden files under
//! tests/golden/cdi/ (review the diff).
mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use nvidia_container_runtime::cdi::{Format, Registry, Spec};
use serde_json::{json, Value};

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");
const HOOK: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime-hook");
const CTK: &str = env!("CARGO_BIN_EXE_nvidia-ctk");
/// What GPU containers run: the nodes they see, then the fake nvidia-smi.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cdi")
}

/// `text` with the temp dir as `@DIR@` and our binaries' dir as `@BIN@`:
/// the only host-specific parts of a spec generated from the fake driver.
fn normalise(text: &str, dir: &Path) -> String {
    let bin_dir = Path::new(HOOK).parent().unwrap();
    text.replace(&dir.display().to_string(), "@DIR@")
        .replace(&bin_dir.display().to_string(), "@BIN@")
}

fn assert_golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(golden_dir()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual, expected,
        "{name} differs from the golden file\n--- actual ---\n{actual}"
    );
}

/// A fake driver (two GPUs, DRM nodes) and a config.toml for it.
impl World {
    fn new(name: &str, top_level: &str, runtime_keys: &str) -> World {
        World::build(
            name,
            &FakeDriverOptions::two_gpus().with_drm(),
            top_level,
            runtime_keys,
        )
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn ctk(&self, args: &[&str]) -> RunOutput {
        let out = Command::new(CTK)
            .args(args)
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &self.config)
            // The fake NVML finds the fake GPUs (and their MIG devices) here.
            .env("FAKE_NVML_DEV_ROOT", &self.driver.dev_root)
            .stdin(Stdio::null())
            .output()
            .expect("spawn nvidia-ctk");
        RunOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, bundle: &Bundle) -> RunOutput {
        let config = self.config.to_str().unwrap();
        run_container(
            Path::new(RUNTIME),
            &self.state_root,
            bundle,
            &unique_id("cdi"),
            &[("NVIDIA_CTK_CONFIG_FILE_PATH", config)],
        )
    }

    /// Asserts that `stdout` of [`GPU_SCRIPT`] shows exactly GPU `index`.
    fn assert_sees_only(&self, stdout: &str, index: usize, what: &str) {
        // nvidia-modeset: the spec's common edits hold every capability's
        // nodes (display included), whatever the container asks for.
        assert_sees_only_gpu(&self.driver, stdout, index, &["nvidia-modeset"], what);
    }
}

// ---------------------------------------------------------------------------
// generate
// ---------------------------------------------------------------------------

#[test]
fn generate_is_golden_deterministic_and_parses() {
    if !require_root() {
        return;
    }
    let world = World::new("cdi-generate", "", "");
    let generate = |extra: &[&str]| {
        let mut args = vec!["cdi", "generate"];
        args.extend_from_slice(extra);
        let out = world.ctk(&args);
        out.assert_success("nvidia-ctk cdi generate");
        out.stdout
    };
    let yaml = generate(&["--device-name-strategy", "both"]);
    assert_eq!(
        generate(&["--device-name-strategy", "both"]),
        yaml,
        "same host, same bytes"
    );
    assert_golden("both.yaml", &normalise(&yaml, world.dir()));

    // Our parser reads it back, and renders the same bytes.
    let spec = Spec::parse(&yaml, Format::Yaml).expect("the generated spec parses");
    assert_eq!(spec.render(Format::Yaml).unwrap(), yaml);
    assert_eq!(spec.cdi_version, "0.5.0");
    assert_eq!(spec.kind, "nvidia.com/gpu");
    let names: Vec<&str> = spec.devices.iter().map(|d| d.name.as_str()).collect();
    let (uuid0, uuid1) = (&world.driver.gpus[0].uuid, &world.driver.gpus[1].uuid);
    assert_eq!(names, ["0", uuid0.as_str(), "1", uuid1.as_str(), "all"]);
    // GPU 1's device: its node and its DRM nodes, at their host paths.
    let gpu1 = &spec.devices[2].container_edits;
    let node = &gpu1.device_nodes[0];
    assert_eq!(node.path, world.driver.gpus[1].device_path());
    assert_eq!(
        node.host_path.as_deref(),
        Some(
            world
                .driver
                .dev_path(&format!("nvidia{}", world.driver.gpus[1].minor))
                .to_str()
                .unwrap()
        )
    );
    assert!(
        gpu1.device_nodes
            .iter()
            .any(|n| n.path.starts_with("/dev/dri/")),
        "{gpu1:?}"
    );
    // The common edits: control nodes, the libraries and tools (host
    // paths inside the driver root), our hook, and NVIDIA_VISIBLE_DEVICES=void.
    let common = &spec.container_edits;
    assert_eq!(common.env, ["NVIDIA_VISIBLE_DEVICES=void"]);
    assert!(common
        .device_nodes
        .iter()
        .any(|n| n.path == "/dev/nvidiactl"));
    let smi = common
        .mounts
        .iter()
        .find(|m| m.container_path == "/usr/bin/nvidia-smi")
        .expect("nvidia-smi mounted");
    assert_eq!(
        Path::new(&smi.host_path),
        world.driver.bin_path("nvidia-smi")
    );
    assert_eq!(common.hooks.len(), 1);
    assert_eq!(common.hooks[0].hook_name, "prestart");
    assert!(common.hooks[0]
        .args
        .iter()
        .any(|a| a == "--injected-by-runtime"));
    assert!(!common.hooks[0].args.iter().any(|a| a == "--gpu"));

    // JSON to a file: atomic, 0644, the same spec.
    let output = world.dir().join("out/nvidia.json");
    let out = world.ctk(&[
        "cdi",
        "generate",
        "--device-name-strategy=both",
        "--output",
        output.to_str().unwrap(),
    ]);
    out.assert_success("generate --output x.json");
    let mode = fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let json_text = fs::read_to_string(&output).unwrap();
    assert_eq!(Spec::parse(&json_text, Format::Json).unwrap(), spec);
    assert!(serde_json::from_str::<Value>(&json_text).is_ok());
    let leftovers: Vec<_> = fs::read_dir(output.parent().unwrap()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");

    // index and uuid strategies, vendor and class.
    let uuid = Spec::parse(
        &generate(&[
            "--device-name-strategy",
            "uuid",
            "--vendor",
            "example.com",
            "--class",
            "acc",
        ]),
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(uuid.kind, "example.com/acc");
    let names: Vec<&str> = uuid.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, [uuid0.as_str(), uuid1.as_str(), "all"]);
    let bad = world.ctk(&["cdi", "generate", "--vendor=-bad"]);
    assert_ne!(bad.status, 0);
    assert!(bad.stderr.contains("-bad/gpu"), "{}", bad.stderr);

    // --driver-root / --dev-root override the config.
    let moved = world.dir().join("moved");
    fs::create_dir_all(&moved).unwrap();
    let out = world.ctk(&["cdi", "generate", "--dev-root", moved.to_str().unwrap()]);
    assert_ne!(out.status, 0, "no device nodes under the other dev root");
    assert!(
        out.stderr.contains(moved.to_str().unwrap()),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// podman reads our spec
// ---------------------------------------------------------------------------

#[test]
fn podman_runs_a_container_with_the_generated_spec() {
    if !require_root() {
        return;
    }
    let Some(_) = require_tool("podman") else {
        return;
    };
    // MIG devices on GPU 0 and IMEX channels, for the second run.
    let world = World::build(
        "cdi-podman",
        &FakeDriverOptions::two_gpus()
            .with_drm()
            .with_mig(vec![FakeMig::new(0, 1, 0), FakeMig::new(0, 2, 0)])
            .with_imex_channels(2),
        "",
        "",
    );
    // The device is GPU 1 whichever vendor the spec has.
    let vendor = system_spec_vendor();
    let spec = SystemSpecFile::new("spec");
    let imex_spec = SystemSpecFile::new("imex");
    world
        .ctk(&[
            "cdi",
            "generate",
            "--vendor",
            vendor,
            "--output",
            spec.path(),
        ])
        .assert_success("nvidia-ctk cdi generate --output /var/run/cdi/...");
    world
        .ctk(&[
            "cdi",
            "generate",
            "--mode",
            "imex",
            "--vendor",
            vendor,
            "--output",
            imex_spec.path(),
        ])
        .assert_success("nvidia-ctk cdi generate --mode imex");
    let device = format!("{vendor}/gpu=1");

    let podman = Podman::new(world.dir());
    podman.import(
        RootfsKind::Glibc { ldconfig: false },
        "localhost/ncr-cdi:latest",
    );
    // runc, not podman's default crun: crun refuses this VM's hybrid cgroup
    // layout.
    let out = podman.run(&[
        "--runtime=runc",
        "--device",
        &device,
        "localhost/ncr-cdi:latest",
        "sh",
        "-c",
        &format!("{PODMAN_HOOK_CHECK}; {GPU_SCRIPT}"),
    ]);
    out.assert_success(&format!("podman run --device {device}"));
    world.assert_sees_only(&out.stdout, 1, &format!("podman run --device {device}"));
    assert!(
        out.stderr.contains("ldcache-written"),
        "podman ran the spec's hook, which wrote the image's ld.so.cache\n{}",
        out.stderr
    );

    // A MIG device (GPU 0's second, by index) and an IMEX channel.
    let mig = format!("{vendor}/gpu=0:1");
    let channel = format!("{vendor}/imex-channel=1");
    let out = podman.run(&[
        "--runtime=runc",
        "--device",
        &mig,
        "--device",
        &channel,
        "localhost/ncr-cdi:latest",
        "sh",
        "-c",
        "ls /dev; echo ---; ls /dev/nvidia-caps /dev/nvidia-caps-imex-channels",
    ]);
    out.assert_success(&format!("podman run --device {mig} --device {channel}"));
    let (dev, caps) = out.stdout.split_once("---\n").unwrap();
    let gpu0 = &world.driver.gpus[0];
    let second = &world.driver.mig_devices(0)[1];
    let gpu_nodes: Vec<&str> = dev
        .split_whitespace()
        .filter(|n| n.starts_with("nvidia") && n[6..].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(
        gpu_nodes,
        [format!("nvidia{}", gpu0.minor)],
        "{}",
        out.stdout
    );
    for node in [
        format!(
            "nvidia-cap{}",
            FakeDriver::mig_minor(gpu0.minor, second.gi, None)
        ),
        format!(
            "nvidia-cap{}",
            FakeDriver::mig_minor(gpu0.minor, second.gi, Some(second.ci))
        ),
        "channel1".to_string(),
    ] {
        assert!(caps.split_whitespace().any(|n| n == node), "{node}: {caps}");
    }
    assert!(!caps.contains("channel0"), "{caps}");
}

/// The image has no /etc/ld.so.cache: only our hook, run by podman from
/// the spec, can have written one that lists the driver's libraries.
const PODMAN_HOOK_CHECK: &str =
    "grep -q libnvidia-ml.so.1 /etc/ld.so.cache && echo ldcache-written >&2";

// ---------------------------------------------------------------------------
// The runtime in CDI mode
// ---------------------------------------------------------------------------

/// A spec dir with example.com/device=foo: a node (/dev/foo, the host's
/// /dev/null), a mount and an env var; and a second file with `bar`.
fn write_vendor_specs(spec_dir: &Path, data_file: &Path) {
    fs::create_dir_all(spec_dir).unwrap();
    fs::write(data_file, "hello from the host\n").unwrap();
    let spec = format!(
        r#"cdiVersion: 0.6.0
kind: example.com/device
devices:
- name: foo
  containerEdits:
    env:
    - FOO_DEVICE=foo
    deviceNodes:
    - path: /dev/foo
      hostPath: /dev/null
      permissions: rw
    mounts:
    - hostPath: {}
      containerPath: /opt/foo/data
      options: [ro, nosuid, nodev, bind]
containerEdits:
  env:
  - FOO_COMMON=1
"#,
        data_file.display()
    );
    fs::write(spec_dir.join("example.yaml"), spec).unwrap();
}

const FOO_SCRIPT: &str =
    "echo FOO_DEVICE=$FOO_DEVICE FOO_COMMON=$FOO_COMMON; cat /opt/foo/data; ls -l /dev/foo";

fn assert_foo_applied(out: &RunOutput, bundle: &Bundle, what: &str) {
    out.assert_success(what);
    assert!(
        out.stdout.contains("FOO_DEVICE=foo FOO_COMMON=1"),
        "{what}: env\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("hello from the host"),
        "{what}: mount\n{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("1,") && out.stdout.contains("3 ") && out.stdout.contains("/dev/foo"),
        "{what}: /dev/foo is the 1:3 char device\n{}",
        out.stdout
    );
    let config = bundle.read_config();
    let rules = config["linux"]["resources"]["devices"].as_array().unwrap();
    assert!(
        rules
            .contains(&json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rw"})),
        "{what}: cgroup rule with the spec's permissions\n{rules:?}"
    );
}

#[test]
fn runtime_applies_another_vendors_spec_in_cdi_mode() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("cdi-vendor-probe");
    let spec_dir = tmp.path().join("cdi");
    let keys = format!(
        "mode = \"cdi\"\n[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
        spec_dir.display()
    );
    let world = World::new("cdi-vendor", "", &keys);
    write_vendor_specs(&spec_dir, &world.dir().join("foo-data"));
    let bundle = world.bundle(
        "env",
        RootfsKind::Busybox,
        &["sh", "-c", FOO_SCRIPT],
        &["NVIDIA_VISIBLE_DEVICES=example.com/device=foo"],
    );
    let out = world.run(&bundle);
    assert_foo_applied(
        &out,
        &bundle,
        "NVIDIA_VISIBLE_DEVICES=example.com/device=foo",
    );
    // No NVIDIA driver edits: only what the spec says.
    let config = bundle.read_config();
    let devices = config["linux"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    let prestart = config
        .pointer("/hooks/prestart")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    assert!(prestart.is_empty(), "{prestart:?}");
}

#[test]
fn runtime_resolves_env_annotation_and_mount_requests() {
    if !require_root() {
        return;
    }
    // mode = auto: qualified names switch to CDI.
    let tmp = TempDir::new("cdi-channels-specs");
    let spec_dir = tmp.path().join("cdi");
    let keys = format!(
        "[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
        spec_dir.display()
    );
    let world = World::new(
        "cdi-channels",
        "accept-nvidia-visible-devices-as-volume-mounts = true",
        &keys,
    );
    write_vendor_specs(&spec_dir, &world.dir().join("foo-data"));

    let env = world.bundle(
        "env",
        RootfsKind::Busybox,
        &["sh", "-c", FOO_SCRIPT],
        &["NVIDIA_VISIBLE_DEVICES=example.com/device=foo"],
    );
    assert_foo_applied(&world.run(&env), &env, "env request");

    let annotated = world.bundle(
        "annotation",
        RootfsKind::Busybox,
        &["sh", "-c", FOO_SCRIPT],
        &[],
    );
    annotated.edit_config(|c| {
        c["annotations"] = json!({"cdi.k8s.io/test": "example.com/device=foo"});
    });
    assert_foo_applied(&world.run(&annotated), &annotated, "annotation request");

    let mounted = world.bundle("mount", RootfsKind::Busybox, &["sh", "-c", FOO_SCRIPT], &[]);
    mounted.add_bind_mount(
        Path::new("/dev/null"),
        "/var/run/nvidia-container-devices/cdi/example.com/device/foo",
    );
    assert_foo_applied(&world.run(&mounted), &mounted, "mount request");

    // A mix of GPU ids and CDI names under auto is refused, clearly.
    let mixed = world.bundle(
        "mixed",
        RootfsKind::Busybox,
        &["true"],
        &["NVIDIA_VISIBLE_DEVICES=0,example.com/device=foo"],
    );
    let before = fs::read(mixed.config_path()).unwrap();
    let out = world.run(&mixed);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("mode = \"cdi\""), "{}", out.stderr);
    assert_eq!(fs::read(mixed.config_path()).unwrap(), before);
}

#[test]
fn runtime_runs_the_generated_spec_by_cdi_name_and_by_index() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("cdi-generated-specs");
    let spec_dir = tmp.path().join("cdi");
    let keys = format!(
        "mode = \"cdi\"\n[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
        spec_dir.display()
    );
    let world = World::new("cdi-generated", "", &keys);
    let spec_path = spec_dir.join("nvidia.yaml");
    world
        .ctk(&["cdi", "generate", "--output", spec_path.to_str().unwrap()])
        .assert_success("generate");
    // By CDI name, and (mode = cdi) by index through default-kind.
    for value in ["nvidia.com/gpu=1", "1"] {
        let bundle = world.bundle(
            &format!("gpu-{}", value.replace('/', "_")),
            RootfsKind::Glibc { ldconfig: true },
            &["sh", "-c", GPU_SCRIPT],
            &[&format!("NVIDIA_VISIBLE_DEVICES={value}")],
        );
        let out = world.run(&bundle);
        let what = format!("NVIDIA_VISIBLE_DEVICES={value}");
        out.assert_success(&what);
        world.assert_sees_only(&out.stdout, 1, &what);
        // Our hook ran from the spec and wrote the image's ld.so.cache.
        let ls = Command::new("/sbin/ldconfig")
            .args(["-p", "-C"])
            .arg(bundle.rootfs.join("etc/ld.so.cache"))
            .output()
            .unwrap();
        let cache = String::from_utf8_lossy(&ls.stdout);
        assert!(
            cache.contains("libnvidia-ml.so.1"),
            "{what}: ld.so.cache\n{cache}"
        );
        let config = bundle.read_config();
        let env = config["process"]["env"].as_array().unwrap();
        assert!(
            env.contains(&json!("NVIDIA_VISIBLE_DEVICES=void")),
            "{env:?}"
        );
    }
}

/// Sorted words of `text`.
fn sorted_words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    words.sort();
    words
}

/// Two GPUs, MIG devices gi1/ci0 + gi2/ci0 on GPU 0 and gi1/ci0 on GPU 1,
/// two IMEX channels, graphics files; the runtime in CDI mode reading
/// `<tmp>/cdi`.
fn mig_world(name: &str) -> (World, PathBuf) {
    let world = World::build(
        name,
        &FakeDriverOptions::two_gpus()
            .with_mig(vec![
                FakeMig::new(0, 1, 0),
                FakeMig::new(0, 2, 0),
                FakeMig::new(1, 1, 0),
            ])
            .with_imex_channels(2)
            .with_graphics(),
        "",
        "mode = \"cdi\"",
    );
    let spec_dir = world.use_cdi_spec_dir();
    (world, spec_dir)
}

#[test]
fn generated_mig_imex_and_management_devices_run() {
    if !require_root() {
        return;
    }
    let (world, spec_dir) = mig_world("cdi-mig");
    let gpu_spec = spec_dir.join("nvidia.yaml");
    let generate_gpu_spec = [
        "cdi",
        "generate",
        "--device-name-strategy",
        "both",
        "--output",
        gpu_spec.to_str().unwrap(),
    ];
    world.ctk(&generate_gpu_spec).assert_success("generate");
    for mode in ["imex", "management"] {
        let output = spec_dir.join(format!("{mode}.yaml"));
        world
            .ctk(&[
                "cdi",
                "generate",
                "--mode",
                mode,
                "--output",
                output.to_str().unwrap(),
            ])
            .assert_success(&format!("generate --mode {mode}"));
    }

    // The graphics parts every device shares: the X server's modules, and
    // the GBM backend link our hook creates.
    let text = fs::read_to_string(&gpu_spec).unwrap();
    for part in [
        "/usr/lib/xorg/modules/drivers/nvidia_drv.so",
        "libnvidia-egl-wayland.so.1.1.13",
        "../libnvidia-allocator.so.1::/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so",
    ] {
        assert!(text.contains(part), "{part} in the spec:\n{text}");
    }

    // The names: GPUs, then each GPU's MIG devices by `<gpu>:<mig>` and UUID.
    let driver = &world.driver;
    let mut expected = Vec::new();
    for (index, gpu) in driver.gpus.iter().enumerate() {
        expected.push(format!("nvidia.com/gpu={index}"));
        expected.push(format!("nvidia.com/gpu={}", gpu.uuid));
        for (mig_index, mig) in driver.mig_devices(index).into_iter().enumerate() {
            expected.push(format!("nvidia.com/gpu={index}:{mig_index}"));
            expected.push(format!("nvidia.com/gpu={}", mig.uuid));
        }
    }
    expected.push("nvidia.com/gpu=all".to_string());
    expected.extend(["0", "1", "all"].map(|n| format!("nvidia.com/imex-channel={n}")));
    expected.push("management.nvidia.com/gpu=all".to_string());
    expected.sort();
    let registry = Registry::load(std::slice::from_ref(&spec_dir));
    assert!(registry.broken.is_empty(), "{:?}", registry.broken);
    let mut names = registry.device_names().to_vec();
    names.sort();
    assert_eq!(names, expected);

    let run = |name: &str, value: &str, script: &str| {
        let bundle = world.bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            &["sh", "-c", script],
            &[&format!("NVIDIA_VISIBLE_DEVICES={value}")],
        );
        let out = world.run(&bundle);
        out.assert_success(value);
        out.stdout
    };

    // A MIG device, by index and by UUID: its parent's node, its two
    // capability nodes, and the parent in nvidia-smi. (The capability files
    // CUDA reads are kept in the hook's /proc/driver/nvidia mask; this
    // host's procfs has no driver dir to mask, so the hook test
    // `hook_masks_by_the_nodes_of_a_cdi_container` shows them.)
    let gpu0 = &driver.gpus[0];
    let gpu1 = &driver.gpus[1];
    let second_of_gpu0 = driver.mig_devices(0)[1].clone();
    let first_of_gpu1 = driver.mig_devices(1)[0].clone();
    let cases = [
        ("nvidia.com/gpu=0:1".to_string(), gpu0, &second_of_gpu0),
        (
            format!("nvidia.com/gpu={}", first_of_gpu1.uuid),
            gpu1,
            &first_of_gpu1,
        ),
    ];
    for (value, parent, mig) in cases {
        let stdout = run(
            &format!("mig-{}", value.replace(['/', '=', ':'], "_")),
            &value,
            "ls /dev; echo ---; ls /dev/nvidia-caps; echo ---; nvidia-smi -L",
        );
        let parts: Vec<&str> = stdout.split("---\n").collect();
        assert_eq!(parts.len(), 3, "{value}: {stdout}");
        let gpu_nodes: Vec<String> = sorted_words(parts[0])
            .into_iter()
            .filter(|n| n.starts_with("nvidia") && n[6..].bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(gpu_nodes, [format!("nvidia{}", parent.minor)], "{value}");
        let gi_minor = FakeDriver::mig_minor(parent.minor, mig.gi, None);
        let ci_minor = FakeDriver::mig_minor(parent.minor, mig.gi, Some(mig.ci));
        assert_eq!(
            sorted_words(parts[1]),
            sorted_words(&format!("nvidia-cap{gi_minor} nvidia-cap{ci_minor}")),
            "{value}"
        );
        assert!(parts[2].contains(&parent.uuid), "{value}: {}", parts[2]);
    }

    // `all` holds every MIG device's capability nodes too.
    let stdout = run("mig-all", "nvidia.com/gpu=all", "ls /dev/nvidia-caps");
    let mut expected_caps = Vec::new();
    for (index, gpu) in driver.gpus.iter().enumerate() {
        for mig in driver.mig_devices(index) {
            expected_caps.push(format!(
                "nvidia-cap{}",
                FakeDriver::mig_minor(gpu.minor, mig.gi, None)
            ));
            expected_caps.push(format!(
                "nvidia-cap{}",
                FakeDriver::mig_minor(gpu.minor, mig.gi, Some(mig.ci))
            ));
        }
    }
    expected_caps.sort();
    expected_caps.dedup();
    assert_eq!(sorted_words(&stdout), expected_caps, "nvidia.com/gpu=all");

    // An IMEX channel: that channel's node alone.
    let stdout = run(
        "imex-1",
        "nvidia.com/imex-channel=1",
        "ls /dev/nvidia-caps-imex-channels",
    );
    assert_eq!(sorted_words(&stdout), ["channel1"], "imex-channel=1");

    // The management device: every GPU, every capability node (MIG
    // config and monitor included) and channel, and the driver's tools,
    // without naming a GPU.
    let stdout = run(
        "management",
        "management.nvidia.com/gpu=all",
        "ls /dev; echo ---; ls /dev/nvidia-caps; echo ---; ls /dev/nvidia-caps-imex-channels; \
         echo ---; nvidia-smi -L",
    );
    let parts: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "management: {stdout}");
    for gpu in &driver.gpus {
        assert!(
            sorted_words(parts[0]).contains(&format!("nvidia{}", gpu.minor)),
            "management: {}",
            parts[0]
        );
    }
    let mut management_caps = expected_caps.clone();
    management_caps.extend(["nvidia-cap1".to_string(), "nvidia-cap2".to_string()]);
    management_caps.sort();
    assert_eq!(sorted_words(parts[1]), management_caps, "management");
    assert_eq!(
        sorted_words(parts[2]),
        ["channel0", "channel1"],
        "management"
    );
    assert_eq!(
        parts[3],
        driver.smi_output(&[0, 1]),
        "management: nvidia-smi -L"
    );

    // Regenerating an unchanged host leaves the file alone (same inode).
    use std::os::unix::fs::MetadataExt;
    let before = fs::metadata(&gpu_spec).unwrap();
    let out = world.ctk(&generate_gpu_spec);
    out.assert_success("generate again");
    assert!(out.stdout.starts_with("unchanged "), "{}", out.stdout);
    let after = fs::metadata(&gpu_spec).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
}

#[test]
fn unknown_devices_and_broken_specs() {
    if !require_root() {
        return;
    }
    let tmp = TempDir::new("cdi-broken-specs");
    let spec_dir = tmp.path().join("cdi");
    let keys = format!(
        "mode = \"cdi\"\n[nvidia-container-runtime.modes.cdi]\nspec-dirs = [\"{}\"]\n",
        spec_dir.display()
    );
    let world = World::new("cdi-broken", "", &keys);
    write_vendor_specs(&spec_dir, &world.dir().join("foo-data"));
    // Valid YAML, but not a valid spec (an unknown field): it names `baz`.
    fs::write(
        spec_dir.join("broken.yaml"),
        "cdiVersion: 0.5.0\nkind: example.com/device\ndevices:\n- name: baz\n  containerEdits:\n    envv: [X=1]\n",
    )
    .unwrap();
    // Not even YAML.
    fs::write(spec_dir.join("garbage.json"), "{ not json").unwrap();

    // The good file still works next to the broken ones.
    let good = world.bundle(
        "good",
        RootfsKind::Busybox,
        &["sh", "-c", FOO_SCRIPT],
        &["NVIDIA_VISIBLE_DEVICES=example.com/device=foo"],
    );
    assert_foo_applied(&world.run(&good), &good, "foo next to broken files");

    let failing = |name: &str, value: &str| {
        let bundle = world.bundle(
            name,
            RootfsKind::Busybox,
            &["true"],
            &[&format!("NVIDIA_VISIBLE_DEVICES={value}")],
        );
        let before = fs::read(bundle.config_path()).unwrap();
        let out = world.run(&bundle);
        assert_eq!(out.status, 1, "{value}: {out:?}");
        assert_eq!(
            fs::read(bundle.config_path()).unwrap(),
            before,
            "{value}: config.json untouched"
        );
        let line = out
            .stderr
            .lines()
            .find(|l| l.starts_with("nvidia-container-runtime: "))
            .unwrap_or_else(|| panic!("{value}: no error line\n{}", out.stderr))
            .to_string();
        line
    };
    // Unknown: one line naming it and the dirs searched.
    let line = failing("unknown", "example.com/device=nope");
    assert!(line.contains("example.com/device=nope"), "{line}");
    assert!(line.contains(spec_dir.to_str().unwrap()), "{line}");
    assert!(
        line.contains("example.com/device=foo"),
        "offers what exists: {line}"
    );
    assert!(
        line.contains("garbage.json"),
        "the unreadable file may define it: {line}"
    );
    // Only in the broken file: says so.
    let line = failing("only-broken", "example.com/device=baz");
    assert!(
        line.contains("broken.yaml") && line.contains("envv"),
        "{line}"
    );
    // A malformed name.
    let line = failing("malformed", "example.com/device=");
    assert!(line.contains("example.com/device="), "{line}");

    // cdi list: the good devices, and each broken file by name.
    let out = world.ctk(&["cdi", "list", "--spec-dir", spec_dir.to_str().unwrap()]);
    out.assert_success("cdi list");
    assert_eq!(out.stdout, "example.com/device=foo\n");
    assert!(
        out.stderr.contains("broken.yaml") && out.stderr.contains("garbage.json"),
        "{}",
        out.stderr
    );
    // Without --spec-dir: the config's spec-dirs.
    let out = world.ctk(&["cdi", "list"]);
    out.assert_success("cdi list (config)");
    assert_eq!(out.stdout, "example.com/device=foo\n");
}

#[test]
fn list_orders_dirs_and_reports_conflicts() {
    // No root needed: only files.
    let tmp = TempDir::new("cdi-list");
    let (etc, run) = (tmp.path().join("etc"), tmp.path().join("run"));
    fs::create_dir_all(&etc).unwrap();
    fs::create_dir_all(&run).unwrap();
    let spec = |devices: &[&str], env: &str| {
        let devices: Vec<Value> = devices
            .iter()
            .map(|d| json!({"name": d, "containerEdits": {"env": [env]}}))
            .collect();
        json!({"cdiVersion": "0.5.0", "kind": "example.com/x", "devices": devices}).to_string()
    };
    fs::write(etc.join("a.json"), spec(&["one", "two"], "FROM=etc")).unwrap();
    fs::write(run.join("a.json"), spec(&["two"], "FROM=run")).unwrap();
    fs::write(run.join("b.json"), spec(&["three"], "FROM=b")).unwrap();
    fs::write(run.join("c.json"), spec(&["three"], "FROM=c")).unwrap();
    fs::write(run.join("ignored.txt"), "not a spec").unwrap();
    let registry = Registry::load(&[etc.clone(), run.clone()]);
    assert_eq!(
        registry.device_names(),
        [
            "example.com/x=one",
            "example.com/x=two",
            "example.com/x=three"
        ]
    );
    // The later dir wins.
    let two = registry
        .resolve(&["example.com/x=two".to_string()])
        .unwrap();
    assert_eq!(two.edits.env, ["FROM=run"]);
    // Two files of one dir: a conflict, named.
    let error = registry
        .resolve(&["example.com/x=three".to_string()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("b.json") && error.contains("c.json"),
        "{error}"
    );
    assert_eq!(registry.conflicts().len(), 1);

    let out = Command::new(CTK)
        .args(["cdi", "list", "--spec-dir"])
        .arg(&etc)
        .arg("--spec-dir")
        .arg(&run)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "example.com/x=one\nexample.com/x=two\nexample.com/x=three\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("defined twice"));
}

// ---------------------------------------------------------------------------
// The refresh unit
// ---------------------------------------------------------------------------

/// The `Environment=` and the nvidia-ctk `ExecStart=` lines of the shipped
/// nvidia-cdi-refresh.service (no systemd runs here to start it).
fn refresh_unit() -> (Vec<(String, String)>, Vec<Vec<String>>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/nvidia-cdi-refresh.service");
    let text = fs::read_to_string(&path).unwrap();
    let mut environment = Vec::new();
    let mut commands = Vec::new();
    for line in text.lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let (key, value) = assignment.split_once('=').unwrap();
            environment.push((key.to_string(), value.to_string()));
        } else if let Some(command) = line.strip_prefix("ExecStart=/usr/bin/nvidia-ctk ") {
            commands.push(command.split_whitespace().map(str::to_string).collect());
        }
    }
    (environment, commands)
}

/// The service's regeneration, as systemd would run it at boot and on a
/// driver change: it writes the spec named by its environment, leaves an
/// unchanged one alone, and follows a driver upgrade (another version,
/// another GPU) on its next run.
#[test]
fn the_refresh_unit_follows_the_driver() {
    if !require_root() {
        return;
    }
    let (environment, commands) = refresh_unit();
    assert_eq!(
        environment,
        [(
            "NVIDIA_CTK_CDI_OUTPUT_FILE_PATH".to_string(),
            "/var/run/cdi/nvidia.yaml".to_string()
        )]
    );
    assert_eq!(commands, [["cdi", "generate"]]);
    let world = World::new("cdi-refresh", "", "");
    // An override file's job: the spec goes to this test's dir.
    let spec = world.dir().join("run-cdi/nvidia.yaml");
    let run = |world: &World| {
        let out = Command::new(CTK)
            .args(&commands[0])
            .env("NVIDIA_CTK_CONFIG_FILE_PATH", &world.config)
            .env("NVIDIA_CTK_CDI_OUTPUT_FILE_PATH", &spec)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = run(&world);
    assert!(stdout.starts_with("wrote "), "{stdout}");
    let first = fs::read_to_string(&spec).unwrap();
    assert!(first.contains("libcuda.so.550.54.15"), "{first}");
    assert_eq!(
        fs::metadata(&spec).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let stdout = run(&world);
    assert!(stdout.starts_with("unchanged "), "{stdout}");

    // The upgrade: the config now points at a driver of another version
    // with a third GPU, as the host's files would after the installer ran.
    let mut options = FakeDriverOptions::with_gpu_count(3).with_drm();
    options.version = "570.86.15".to_string();
    options.kernel_version = options.version.clone();
    let upgraded = FakeDriver::build(&world.dir().join("driver-570"), &options);
    upgraded.write_config(&world.config, "");
    let stdout = run(&world);
    assert!(stdout.starts_with("wrote "), "{stdout}");
    assert!(stdout.contains("nvidia.com/gpu=2"), "{stdout}");
    let second = fs::read_to_string(&spec).unwrap();
    assert!(second.contains("libcuda.so.570.86.15"), "{second}");
    assert!(!second.contains("550.54.15"), "{second}");
}
