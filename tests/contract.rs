//! The full request contract end to end (contract.md §2, §3): MIG devices
//! and capabilities, DRM nodes of the selected GPUs, graphics vendor files,
//! IMEX channels, feature devices, compat32, privileged containers and the
//! unprivileged trust setting. Real runc, the fake driver with every optional
//! feature on, NVML (for MIG) loaded from the fake driver root.
mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::{json, Value};

const RUNTIME: &str = env!("CARGO_BIN_EXE_nvidia-container-runtime");

impl World {
    fn new(name: &str, top_level_keys: &str) -> World {
        let options = FakeDriverOptions::two_gpus().with_all_features();
        World::build(name, &options, top_level_keys, "")
    }

    /// A bundle whose process is `sh -c <script>`.
    fn shell_bundle(&self, name: &str, kind: RootfsKind, script: &str, env: &[&str]) -> Bundle {
        self.bundle(name, kind, &["sh", "-c", script], env)
    }

    fn run(&self, bundle: &Bundle) -> RunOutput {
        run_container(
            Path::new(RUNTIME),
            &self.state_root,
            bundle,
            &unique_id("contract"),
            &[
                ("NVIDIA_CTK_CONFIG_FILE_PATH", self.config.to_str().unwrap()),
                // The fake NVML looks for GPU nodes here when the runtime
                // loads it on the host (MIG lookups).
                ("FAKE_NVML_DEV_ROOT", self.driver.dev_root.to_str().unwrap()),
            ],
        )
    }
}

fn privileged(bundle: &Bundle) {
    bundle.edit_config(|config| {
        for set in ["bounding", "effective", "permitted"] {
            let caps = config["process"]["capabilities"][set]
                .as_array_mut()
                .unwrap();
            caps.push(json!("CAP_SYS_ADMIN"));
        }
    });
}

fn words(text: &str) -> Vec<String> {
    let mut words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    words.sort();
    words.dedup();
    words
}

fn hook_args(config: &Value) -> Vec<String> {
    config["hooks"]["prestart"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn mig_devices_by_index_and_uuid_get_parent_and_capability_nodes() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-mig", "");
    let gpu0 = world.driver.gpus[0].clone();
    let gpu1 = world.driver.gpus[1].clone();
    // `0:1` is GPU 0's second MIG device in NVML order: gi2/ci0.
    let by_index = world.driver.mig_devices(0)[1].clone();
    assert_eq!((by_index.gi, by_index.ci), (2, 0));
    let by_uuid = world.driver.mig_devices(1)[0].clone();
    let cases = [
        ("index", "0:1".to_string(), &gpu0, &by_index),
        ("uuid", by_uuid.uuid.clone(), &gpu1, &by_uuid),
    ];
    for (name, value, parent, mig) in cases {
        let env = format!("NVIDIA_VISIBLE_DEVICES={value}");
        let bundle = world.shell_bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            "ls /dev; echo ---; ls /dev/nvidia-caps; echo ---; cat /dev/nvidia-caps/* 2>&1; echo ---; nvidia-smi -L",
            &[&env],
        );
        let out = world.run(&bundle);
        out.assert_success(name);
        let parts: Vec<&str> = out.stdout.split("---\n").collect();
        let gpu_nodes: Vec<String> = words(parts[0])
            .into_iter()
            .filter(|n| n.starts_with("nvidia") && n[6..].bytes().all(|b| b.is_ascii_digit()))
            .collect();
        assert_eq!(gpu_nodes, [format!("nvidia{}", parent.minor)], "{name}");
        let gi_minor = FakeDriver::mig_minor(parent.minor, mig.gi, None);
        let ci_minor = FakeDriver::mig_minor(parent.minor, mig.gi, Some(mig.ci));
        assert_eq!(
            words(parts[1]),
            words(&format!("nvidia-cap{gi_minor} nvidia-cap{ci_minor}")),
            "{name}"
        );
        // Both capability nodes are allowed by the device cgroup.
        assert_eq!(
            parts[2].matches("No such device or address").count(),
            2,
            "{name}: {}",
            parts[2]
        );
        assert!(parts[3].contains(&parent.uuid), "{name}: {}", parts[3]);
        // The hook is told to keep the MIG capability files visible.
        let args = hook_args(&bundle.read_config());
        let access = format!(
            "capabilities/gpu{}/mig/gi{}/ci{}/access",
            parent.minor, mig.gi, mig.ci
        );
        assert!(args.contains(&access), "{name}: {args:?}");
    }
}

#[test]
fn unknown_mig_device_is_refused() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-mig-bad", "");
    for (value, needle) in [
        ("0:5", "GPU 0 has no MIG device 5"),
        ("MIG-0000", "MIG-0000"),
    ] {
        let env = format!("NVIDIA_VISIBLE_DEVICES={value}");
        let bundle = world.shell_bundle(value, RootfsKind::Busybox, "true", &[&env]);
        let before = fs::read(bundle.config_path()).unwrap();
        let out = world.run(&bundle);
        assert_eq!(out.status, 1, "{value}: {out:?}");
        assert!(out.stderr.contains(needle), "{value}: {}", out.stderr);
        assert!(out.stderr.contains("nvidia-smi -L"), "{}", out.stderr);
        assert!(fs::read(bundle.config_path()).unwrap() == before);
    }
}

#[test]
fn mig_config_and_monitor_only_for_privileged_containers() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-mig-caps", "");
    let env = [
        "NVIDIA_VISIBLE_DEVICES=0",
        "NVIDIA_MIG_CONFIG_DEVICES=all",
        "NVIDIA_MIG_MONITOR_DEVICES=all",
    ];
    let unprivileged = world.shell_bundle(
        "unprivileged",
        RootfsKind::Busybox,
        "ls /dev/nvidia-caps",
        &env,
    );
    let out = world.run(&unprivileged);
    assert_eq!(out.status, 1);
    assert!(
        out.stderr.contains("only a privileged container"),
        "{}",
        out.stderr
    );

    let privileged_bundle = world.shell_bundle(
        "privileged",
        RootfsKind::Busybox,
        "ls /dev/nvidia-caps",
        &env,
    );
    privileged(&privileged_bundle);
    let out = world.run(&privileged_bundle);
    out.assert_success("privileged");
    // mig-minors: config 1, monitor 2.
    assert_eq!(words(&out.stdout), ["nvidia-cap1", "nvidia-cap2"]);
}

#[test]
fn drm_nodes_only_of_the_selected_gpu_and_graphics_files() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-drm", "");
    let bundle = world.shell_bundle(
        "drm",
        RootfsKind::Busybox,
        "ls /dev/dri; echo ---; ls /dev; echo ---; cat /usr/share/glvnd/egl_vendor.d/10_nvidia.json; ls /usr/lib64; \
         echo ---; cd /dev/dri/by-path && for l in *; do echo \"$l $(readlink $l)\"; done; \
         echo ---; readlink /usr/lib64/gbm/nvidia-drm_gbm.so; cat /usr/lib64/gbm/nvidia-drm_gbm.so >/dev/null && echo gbm-resolves; \
         echo ---; cd /usr/lib/xorg/modules && ls drivers extensions; readlink extensions/libglxserver_nvidia.so; \
         ls /usr/share/X11/xorg.conf.d",
        &["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_DRIVER_CAPABILITIES=graphics,display"],
    );
    let out = world.run(&bundle);
    out.assert_success("drm");
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    let card = FakeDriver::drm_card(1);
    assert_eq!(
        words(parts[0]),
        words(&format!("by-path card{card} renderD{}", 128 + card)),
        "only GPU 1's DRM nodes, not GPU 0's nor the BMC's card0"
    );
    assert!(
        words(parts[1]).contains(&"nvidia-modeset".to_string()),
        "display: {}",
        parts[1]
    );
    assert!(parts[2].contains("libEGL_nvidia.so.0"), "{}", parts[2]);
    assert!(
        parts[2].contains("libGLX_nvidia.so.0"),
        "graphics libraries: {}",
        parts[2]
    );
    // Compute was not asked for.
    assert!(!parts[2].contains("libcuda"), "{}", parts[2]);
    // The EGL external platform library, versioned on its own.
    assert!(
        parts[2].contains("libnvidia-egl-wayland.so.1.1.13")
            && parts[2].contains("libnvidia-egl-wayland.so.1\n"),
        "{}",
        parts[2]
    );
    // The DRM nodes' by-path links, as udev names them on the host: GPU 1's
    // only.
    let bus = &world.driver.gpus[1].bus_id;
    assert_eq!(
        parts[3],
        format!(
            "pci-{bus}-card ../card{card}\npci-{bus}-render ../renderD{}\n",
            128 + card
        ),
        "by-path links"
    );
    // The GBM backend Mesa's libgbm loads for nvidia-drm.
    assert_eq!(
        parts[4], "../libnvidia-allocator.so.1\ngbm-resolves\n",
        "gbm backend link"
    );
    // The X server's driver module and GLX extension, and its link.
    let version = &world.driver.version;
    assert_eq!(
        words(parts[5]),
        words(&format!(
            "drivers: nvidia_drv.so extensions: libglxserver_nvidia.so libglxserver_nvidia.so.{version} \
             libglxserver_nvidia.so.{version} 10-nvidia.conf"
        )),
        "xorg modules"
    );
}

#[test]
fn imex_channels_and_feature_devices() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-imex", "");
    let bundle = world.shell_bundle(
        "imex",
        RootfsKind::Busybox,
        "ls /dev/nvidia-caps-imex-channels; echo ---; ls /dev /dev/infiniband 2>/dev/null; echo ---; cat /dev/nvidia-caps-imex-channels/channel1 /dev/nvidia-fs0 /dev/gdrdrv 2>&1; true",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_IMEX_CHANNELS=1",
            "NVIDIA_GDS=enabled",
            "NVIDIA_GDRCOPY=enabled",
            "NVIDIA_MOFED=disabled",
        ],
    );
    let out = world.run(&bundle);
    out.assert_success("imex");
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(words(parts[0]), ["channel1"]);
    let dev = words(parts[1]);
    for node in ["nvidia-fs0", "nvidia-fs1", "gdrdrv"] {
        assert!(dev.contains(&node.to_string()), "{node}: {dev:?}");
    }
    assert!(
        !dev.contains(&"uverbs0".to_string()),
        "MOFED was not enabled: {dev:?}"
    );
    assert!(
        !dev.iter().any(|n| n.starts_with("nvidia-nvswitch")),
        "{dev:?}"
    );
    assert_eq!(
        parts[2].matches("No such device or address").count(),
        3,
        "{}",
        parts[2]
    );

    let all = world.shell_bundle(
        "imex-all",
        RootfsKind::Busybox,
        "ls /dev/nvidia-caps-imex-channels /dev/infiniband",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_IMEX_CHANNELS=all",
            "NVIDIA_MOFED=enabled",
        ],
    );
    let out = world.run(&all);
    out.assert_success("imex all");
    let listed = words(&out.stdout);
    for node in ["channel0", "channel1", "uverbs0", "rdma_cm"] {
        assert!(listed.contains(&node.to_string()), "{node}: {listed:?}");
    }

    let missing = world.shell_bundle(
        "imex-missing",
        RootfsKind::Busybox,
        "true",
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=7"],
    );
    let out = world.run(&missing);
    assert_eq!(out.status, 1);
    assert!(out.stderr.contains("channel 7"), "{}", out.stderr);
}

#[test]
fn compat32_mounts_the_i386_libraries() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-compat32", "");
    let bundle = world.shell_bundle(
        "compat32",
        RootfsKind::Glibc { ldconfig: false },
        "ls /usr/lib/i386-linux-gnu; echo ---; ls /usr/lib/x86_64-linux-gnu",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=compute,utility,compat32",
        ],
    );
    let out = world.run(&bundle);
    out.assert_success("compat32");
    let (lib32, lib64) = out.stdout.split_once("---\n").unwrap();
    let lib32 = words(lib32);
    for name in ["libcuda.so.1", "libcuda.so.550.54.15", "libnvidia-ml.so.1"] {
        assert!(lib32.contains(&name.to_string()), "{name}: {lib32:?}");
    }
    assert!(lib64.contains("libcuda.so.1"), "{lib64}");

    let without = world.shell_bundle(
        "no-compat32",
        RootfsKind::Glibc { ldconfig: false },
        "ls /usr/lib/i386-linux-gnu 2>&1; true",
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let out = world.run(&without);
    out.assert_success("no compat32");
    assert!(!out.stdout.contains("libcuda"), "{}", out.stdout);
}

#[test]
fn trust_setting_both_ways() {
    if !require_root() {
        return;
    }
    let strict = World::new(
        "contract-trust",
        "accept-nvidia-visible-devices-envvar-when-unprivileged = false",
    );
    // Unprivileged: the env request is ignored, the spec untouched.
    let bundle = strict.shell_bundle(
        "unprivileged",
        RootfsKind::Busybox,
        "ls /dev",
        &["NVIDIA_VISIBLE_DEVICES=all"],
    );
    let before = fs::read(bundle.config_path()).unwrap();
    let out = strict.run(&bundle);
    out.assert_success("unprivileged");
    assert!(!out.stdout.contains("nvidia"), "{}", out.stdout);
    assert!(fs::read(bundle.config_path()).unwrap() == before);
    // Privileged: honoured.
    let bundle = strict.shell_bundle(
        "privileged",
        RootfsKind::Busybox,
        "ls /dev",
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    privileged(&bundle);
    let out = strict.run(&bundle);
    out.assert_success("privileged");
    assert!(words(&out.stdout).contains(&format!("nvidia{}", strict.driver.gpus[0].minor)));

    // The default (true): an unprivileged env request is honoured.
    let lenient = World::new("contract-trust-default", "");
    let bundle = lenient.shell_bundle(
        "default",
        RootfsKind::Busybox,
        "ls /dev",
        &["NVIDIA_VISIBLE_DEVICES=0"],
    );
    let out = lenient.run(&bundle);
    out.assert_success("default");
    assert!(words(&out.stdout).contains(&format!("nvidia{}", lenient.driver.gpus[0].minor)));
}

/// What a container shows of its driver libraries: the SONAME and dev
/// links, what dlopen("libcuda.so.1") finds, and how many mounts name the
/// library files.
const LIBRARY_SCRIPT: &str = "cd /usr/lib/x86_64-linux-gnu; \
    for l in libcuda.so.1 libcuda.so libnvidia-ml.so.1 libGLX_indirect.so.0; do \
      if [ -L $l ]; then echo \"$l -> $(readlink $l)\"; elif [ -f $l ]; then echo \"$l file\"; else echo \"$l none\"; fi; \
    done; echo ---; cuda-version; echo ---; \
    grep -c ' /usr/lib/x86_64-linux-gnu/libcuda' /proc/self/mountinfo; \
    grep -c ' /usr/lib/x86_64-linux-gnu/lib' /proc/self/mountinfo";

#[test]
fn each_library_is_mounted_once_and_linked_by_the_hook() {
    if !require_root() {
        return;
    }
    let world = World::new("contract-links", "");
    let libdir = "/usr/lib/x86_64-linux-gnu";
    let cuda_file = format!("libcuda.so.{DRIVER_VERSION}");
    let run = |name: &str, prepare: &dyn Fn(&Bundle)| {
        let bundle = world.shell_bundle(
            name,
            RootfsKind::Glibc { ldconfig: false },
            LIBRARY_SCRIPT,
            &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"],
        );
        prepare(&bundle);
        let out = world.run(&bundle);
        out.assert_success(name);
        let parts: Vec<String> = out.stdout.split("---\n").map(str::to_string).collect();
        assert_eq!(parts.len(), 3, "{name}: {}", out.stdout);
        (bundle, parts)
    };
    // The x86-64 files of the fake driver (graphics included).
    let libraries = DRIVER_LIBS.len() + GRAPHICS_LIBS.len() + GRAPHICS_OWN_VERSION_LIBS.len();

    // A plain image: the links made, each file mounted once.
    let (_, parts) = run("plain", &|_| {});
    assert_eq!(
        parts[0],
        format!(
            "libcuda.so.1 -> {cuda_file}\nlibcuda.so -> libcuda.so.1\n\
             libnvidia-ml.so.1 -> libnvidia-ml.so.{DRIVER_VERSION}\n\
             libGLX_indirect.so.0 -> libGLX_nvidia.so.0\n"
        ),
        "plain image"
    );
    // The loader takes the cache's entry: our file, by its own name.
    assert_eq!(
        parts[1],
        format!("{libdir}/{cuda_file}: {CUDA_DRIVER_VERSION}\n"),
        "plain image: dlopen"
    );
    assert_eq!(
        parts[2],
        format!("1\n{libraries}\n"),
        "one mount per library file"
    );

    // An image with its own files and links there: a regular libcuda.so.1
    // (a stub) stays, and the cache sends the loader to our file; a link to
    // another driver's libcuda is replaced; a link of the image's to
    // something else stays (the cache still finds ours).
    let (bundle, parts) = run("image-files", &|bundle: &Bundle| {
        let dir = bundle.rootfs.join(libdir.trim_start_matches('/'));
        fs::copy(dir.join("libimage.so.1.0.0"), dir.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("libcuda.so.535.104.05", dir.join("libcuda.so")).unwrap();
        std::os::unix::fs::symlink("libimage.so.1", dir.join("libnvidia-ml.so.1")).unwrap();
    });
    assert_eq!(
        parts[0],
        "libcuda.so.1 file\nlibcuda.so -> libcuda.so.1\n\
         libnvidia-ml.so.1 -> libimage.so.1\nlibGLX_indirect.so.0 -> libGLX_nvidia.so.0\n",
        "an image with its own files"
    );
    assert_eq!(
        parts[1],
        format!("{libdir}/{cuda_file}: {CUDA_DRIVER_VERSION}\n"),
        "dlopen finds our libcuda through the cache, not the image's stub"
    );
    let stub = fs::read(bundle.rootfs.join("usr/lib/x86_64-linux-gnu/libcuda.so.1")).unwrap();
    let image_lib = fs::read(
        bundle
            .rootfs
            .join("usr/lib/x86_64-linux-gnu/libimage.so.1.0.0"),
    )
    .unwrap();
    assert_eq!(stub, image_lib, "the image's own file is untouched");

    // A read-only rootfs (docker run --read-only): runc remounts it after
    // the hooks, so the links are there, and the rootfs is read-only.
    let (_, parts) = run("read-only", &|bundle: &Bundle| {
        bundle.edit_config(|config| config["root"]["readonly"] = json!(true));
    });
    assert!(
        parts[0].starts_with(&format!("libcuda.so.1 -> {cuda_file}\n")),
        "read-only rootfs: {}",
        parts[0]
    );
    assert_eq!(
        parts[1],
        format!("{libdir}/{cuda_file}: {CUDA_DRIVER_VERSION}\n"),
        "read-only rootfs: dlopen"
    );
}
