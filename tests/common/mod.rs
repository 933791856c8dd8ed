//! Test support: a fake NVIDIA driver that is real down to the file level
//! (ELF libraries, ld.so.cache, device nodes, procfs files), container root
//! filesystems without a registry, OCI bundles and helpers to run them.
//!
//! See the project notes reference/testing.md and driver.md. Everything compiled
//! (C sources in `tests/fixtures/`) is cached per content hash under the
//! cargo target tmpdir, so tests in one process, and later test processes,
//! don't rebuild it.
#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub const DRIVER_VERSION: &str = "550.54.15";
/// Version of the stale libcuda left next to the current one.
pub const STALE_DRIVER_VERSION: &str = "535.00.00";
/// What the fake `cuDriverGetVersion` reports.
pub const CUDA_DRIVER_VERSION: i32 = 12040;
pub const GPU_MODEL: &str = "NVIDIA H100 80GB HBM3";
/// Library dir of the driver root, and of the Debian-like images.
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";
/// Major of `nvidia-uvm` in the fake `/proc/devices`.
pub const NVIDIA_UVM_MAJOR: u32 = 511;
/// Major of `nvidia-caps` (MIG access nodes `/dev/nvidia-caps/nvidia-cap<M>`).
pub const NVIDIA_CAPS_MAJOR: u32 = 510;
/// Major of `nvidia-caps-imex-channels` (`/dev/nvidia-caps-imex-channels/channel<N>`).
pub const NVIDIA_CAPS_IMEX_CHANNELS_MAJOR: u32 = 508;
/// The real DRM major (`/dev/dri/card<N>`, `renderD<N>`); used as is.
pub const DRM_MAJOR: u32 = 226;
/// Fake majors of the feature devices (`options.feature_devices`). Real hosts
/// allocate most of them dynamically (rdma_cm is a misc device, 10:dynamic;
/// infiniband_verbs is 231): these are chosen from the high dynamic range and
/// must not be in the test host's /proc/devices, so that opening the nodes
/// gives ENXIO, never a real device (`fake_majors_absent_from_host` checks it).
/// `/dev/nvidia-fs0`, `/dev/nvidia-fs1`: NVIDIA_FS_MAJOR:0, :1.
pub const NVIDIA_FS_MAJOR: u32 = 505;
/// `/dev/infiniband/uverbs0`: INFINIBAND_VERBS_MAJOR:192 (the real minor).
pub const INFINIBAND_VERBS_MAJOR: u32 = 504;
pub const INFINIBAND_UVERBS0_MINOR: u32 = 192;
/// `/dev/infiniband/rdma_cm`: RDMA_CM_MAJOR:RDMA_CM_MINOR.
pub const RDMA_CM_MAJOR: u32 = 501;
pub const RDMA_CM_MINOR: u32 = 0;
/// `/dev/nvidia-nvswitch0`, `nvidia-nvswitch1`: :0, :1; `/dev/nvidia-nvswitchctl`: :255.
pub const NVIDIA_NVSWITCH_MAJOR: u32 = 503;
/// `/dev/gdrdrv`: GDRDRV_MAJOR:0.
pub const GDRDRV_MAJOR: u32 = 502;
/// Every major the fake driver's nodes use, with its name; 195 and 226 are
/// the real fixed NVIDIA and DRM majors, the others are fake.
pub const FAKE_MAJORS: &[(u32, &str)] = &[
    (195, "nvidia"),
    (DRM_MAJOR, "drm"),
    (NVIDIA_UVM_MAJOR, "nvidia-uvm"),
    (NVIDIA_CAPS_MAJOR, "nvidia-caps"),
    (NVIDIA_CAPS_IMEX_CHANNELS_MAJOR, "nvidia-caps-imex-channels"),
    (NVIDIA_FS_MAJOR, "nvidia-fs"),
    (INFINIBAND_VERBS_MAJOR, "infiniband_verbs"),
    (RDMA_CM_MAJOR, "rdma_cm"),
    (NVIDIA_NVSWITCH_MAJOR, "nvidia-nvswitch"),
    (GDRDRV_MAJOR, "gdrdrv"),
];
/// Library dir of the i386 copies (`options.compat32`).
pub const LIB32_DIR: &str = "usr/lib/i386-linux-gnu";
/// The MIG profile of every fake MIG device (an H100 80GB 1-slice profile).
pub const MIG_PROFILE: &str = "1g.10gb";
pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const SRC_CUDA: &str = include_str!("../fixtures/fake_cuda.c");
const SRC_NVML: &str = include_str!("../fixtures/fake_nvml.c");
const SRC_SMI: &str = include_str!("../fixtures/fake_smi.c");
const SRC_TOOL: &str = include_str!("../fixtures/fake_tool.c");
const SRC_LIB: &str = include_str!("../fixtures/fake_lib.c");
const SRC_IMAGE_LIB: &str = include_str!("../fixtures/image_lib.c");
const SRC_USE_IMAGE_LIB: &str = include_str!("../fixtures/use_image_lib.c");

/// Libraries of the fake driver: (name, soname major suffix or None when the
/// soname is the full file name).
pub const DRIVER_LIBS: &[(&str, Option<&str>)] = &[
    ("libcuda", Some("1")),
    ("libnvidia-ml", Some("1")),
    ("libnvidia-cfg", Some("1")),
    ("libnvidia-ptxjitcompiler", Some("1")),
    ("libnvidia-encode", Some("1")),
    ("libnvidia-eglcore", None),
];
pub const DRIVER_BINS: &[&str] = &["nvidia-smi", "nvidia-debugdump", "nvidia-cuda-mps-control"];
pub const FIRMWARE_FILES: &[&str] = &["gsp_ga10x.bin", "gsp_tu10x.bin"];
/// Graphics libraries (`options.graphics`), same form as `DRIVER_LIBS`.
pub const GRAPHICS_LIBS: &[(&str, Option<&str>)] = &[
    ("libGLX_nvidia", Some("0")),
    ("libEGL_nvidia", Some("0")),
    ("libnvidia-glcore", None),
];
/// i386 copies in `LIB32_DIR` (`options.compat32`), same form as `DRIVER_LIBS`.
pub const COMPAT32_LIBS: &[(&str, Option<&str>)] =
    &[("libcuda", Some("1")), ("libnvidia-ml", Some("1"))];
/// Vendor/ICD files of `options.graphics`: (path under the driver root, content).
pub const GRAPHICS_FILES: &[(&str, &str)] = &[
    (
        "usr/share/glvnd/egl_vendor.d/10_nvidia.json",
        "{\n    \"file_format_version\" : \"1.0.0\",\n    \"ICD\" : {\n        \"library_path\" : \"libEGL_nvidia.so.0\"\n    }\n}\n",
    ),
    (
        "usr/share/vulkan/icd.d/nvidia_icd.json",
        "{\n    \"file_format_version\" : \"1.0.1\",\n    \"ICD\": {\n        \"library_path\": \"libGLX_nvidia.so.0\",\n        \"api_version\" : \"1.3.277\"\n    }\n}\n",
    ),
    (
        "usr/share/vulkan/implicit_layer.d/nvidia_layers.json",
        "{\n    \"file_format_version\" : \"1.0.1\",\n    \"layer\": {\n        \"name\": \"VK_LAYER_NV_optimus\",\n        \"type\": \"INSTANCE\",\n        \"library_path\": \"libGLX_nvidia.so.0\",\n        \"api_version\" : \"1.3.277\",\n        \"implementation_version\" : \"1\",\n        \"description\" : \"NVIDIA Optimus layer\",\n        \"functions\": {\n            \"vkGetInstanceProcAddr\": \"vk_optimusGetInstanceProcAddr\",\n            \"vkGetDeviceProcAddr\": \"vk_optimusGetDeviceProcAddr\"\n        },\n        \"enable_environment\": {\n            \"__NV_PRIME_RENDER_OFFLOAD\": \"1\"\n        },\n        \"disable_environment\": {\n            \"DISABLE_LAYER_NV_OPTIMUS_1\": \"\"\n        }\n    }\n}\n",
    ),
    (
        "usr/share/egl/egl_external_platform.d/15_nvidia_gbm.json",
        "{\n    \"file_format_version\" : \"1.0.0\",\n    \"ICD\" : {\n        \"library_path\" : \"libnvidia-egl-gbm.so.1\"\n    }\n}\n",
    ),
    ("etc/OpenCL/vendors/nvidia.icd", "libnvidia-opencl.so.1\n"),
];

// ---------------------------------------------------------------------------
// Fake driver
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FakeGpu {
    /// procfs form, 16-bit domain: "0000:06:00.0"
    pub bus_id: String,
    pub minor: u32,
    pub uuid: String,
    pub model: String,
}

impl FakeGpu {
    /// NVML form of the bus id, 32-bit domain: "00000000:06:00.0".
    pub fn nvml_bus_id(&self) -> String {
        let (domain, bus, device, function) = parse_bus_id(&self.bus_id);
        format!("{domain:08X}:{bus:02X}:{device:02X}.{function:X}")
    }

    /// `/dev/nvidia<minor>`
    pub fn device_path(&self) -> String {
        format!("/dev/nvidia{}", self.minor)
    }

    /// The line the fake `nvidia-smi -L` prints for it at `index`.
    pub fn smi_line(&self, index: usize) -> String {
        format!("GPU {index}: {} (UUID: {})", self.model, self.uuid)
    }
}

fn parse_bus_id(bus_id: &str) -> (u32, u32, u32, u32) {
    let parse = |s: &str| u32::from_str_radix(s, 16).expect("hex in bus id");
    let (rest, function) = bus_id.rsplit_once('.').expect("bus id has .function");
    let parts: Vec<&str> = rest.split(':').collect();
    assert_eq!(
        parts.len(),
        3,
        "bus id {bus_id} is domain:bus:device.function"
    );
    (
        parse(parts[0]),
        parse(parts[1]),
        parse(parts[2]),
        parse(function),
    )
}

/// A deterministic GPU UUID for index `i`; index 0 is the one of driver.md.
pub fn fake_uuid(i: usize) -> String {
    if i == 0 {
        return "GPU-edfee158-11c1-52b8-0517-92f30e7fac88".to_string();
    }
    let mut h = DefaultHasher::new();
    ("fake-gpu-uuid", i).hash(&mut h);
    let a = h.finish();
    let mut h = DefaultHasher::new();
    (a, i).hash(&mut h);
    let b = h.finish();
    format!(
        "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// A created MIG device (GPU instance `gi`, compute instance `ci`) of the GPU
/// at `gpu_index` (index order = sorted bus id, as in `FakeDriver::gpus`).
/// Its profile is `MIG_PROFILE`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FakeMig {
    pub gpu_index: usize,
    pub gi: u32,
    pub ci: u32,
    /// "MIG-<uuid-like>"
    pub uuid: String,
}

impl FakeMig {
    /// With a deterministic UUID (`fake_mig_uuid`).
    pub fn new(gpu_index: usize, gi: u32, ci: u32) -> FakeMig {
        FakeMig {
            gpu_index,
            gi,
            ci,
            uuid: fake_mig_uuid(gpu_index, gi, ci),
        }
    }

    /// The line the fake (and real) `nvidia-smi -L` prints for it under its
    /// GPU's line, `mig_index` being its index among that GPU's MIG devices.
    pub fn smi_line(&self, mig_index: usize) -> String {
        format!(
            "  MIG {MIG_PROFILE:<11} Device {mig_index:>2}: (UUID: {})",
            self.uuid
        )
    }
}

/// A deterministic MIG UUID ("MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx").
pub fn fake_mig_uuid(gpu_index: usize, gi: u32, ci: u32) -> String {
    let mut h = DefaultHasher::new();
    ("fake-mig-uuid", gpu_index, gi, ci).hash(&mut h);
    let a = h.finish();
    let mut h = DefaultHasher::new();
    (a, gi, ci).hash(&mut h);
    let b = h.finish();
    format!(
        "MIG-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

#[derive(Clone, Debug)]
pub struct FakeDriverOptions {
    pub gpus: Vec<FakeGpu>,
    pub version: String,
    /// Version of the kernel module in `/proc/driver/nvidia/version`;
    /// normally equal to `version` (differs for a half-upgraded driver).
    pub kernel_version: String,
    /// Write `driver-root/etc/ld.so.cache` with `ldconfig -r`.
    pub ld_cache: bool,
    /// Created MIG devices (default none). Non-empty: `proc-root/driver/
    /// nvidia-caps/mig-minors`, capability files of the created instances
    /// and of mig/config, mig/monitor, their `dev-root/dev/nvidia-caps/
    /// nvidia-cap<M>` nodes, and MIG devices in the fake NVML / nvidia-smi.
    pub mig: Vec<FakeMig>,
    /// DRM nodes `dev-root/dev/dri/card<N>`, `renderD<128+N>` (N = index + 1;
    /// plus a non-NVIDIA `card0`, a BMC VGA at 0000:02:00.0) and their
    /// `sys-root/bus/pci/devices/<bus>/drm/` entries (default off).
    pub drm: bool,
    /// Graphics libraries (`GRAPHICS_LIBS`) and vendor files
    /// (`GRAPHICS_FILES`) in the driver root (default off).
    pub graphics: bool,
    /// IMEX channel nodes `dev-root/dev/nvidia-caps-imex-channels/channel<N>`
    /// for N in 0..imex_channels (default 0).
    pub imex_channels: u32,
    /// nvidia-fs0/1, infiniband/uverbs0 and rdma_cm, nvidia-nvswitch0/1 and
    /// nvidia-nvswitchctl, gdrdrv nodes (default off).
    pub feature_devices: bool,
    /// i386 copies of libcuda and libnvidia-ml in `LIB32_DIR`, in ld.so.conf
    /// and the cache (default off).
    pub compat32: bool,
}

impl FakeDriverOptions {
    /// index 0: bus 0000:06:00.0, minor 1; index 1: bus 0000:3b:00.0, minor 0.
    pub fn two_gpus() -> Self {
        Self::with_gpu_count(2)
    }

    /// `n` GPUs (n <= 64) in ascending bus order; minors are the indices
    /// rotated by one (index i has minor (i+1) % n), so no index equals its
    /// minor when n >= 2. Buses 06, 3b, 70, a5 in domains 0000, 0001, ...
    pub fn with_gpu_count(n: usize) -> Self {
        assert!(n <= 64, "at most 64 fake GPUs");
        const BUSES: [u32; 4] = [0x06, 0x3b, 0x70, 0xa5];
        let gpus = (0..n)
            .map(|i| FakeGpu {
                bus_id: format!("{:04x}:{:02x}:00.0", i / 4, BUSES[i % 4]),
                minor: ((i + 1) % n) as u32,
                uuid: fake_uuid(i),
                model: GPU_MODEL.to_string(),
            })
            .collect();
        FakeDriverOptions {
            gpus,
            version: DRIVER_VERSION.to_string(),
            kernel_version: DRIVER_VERSION.to_string(),
            ld_cache: true,
            mig: Vec::new(),
            drm: false,
            graphics: false,
            imex_channels: 0,
            feature_devices: false,
            compat32: false,
        }
    }

    /// Builder: these MIG devices (`FakeMig::new(gpu_index, gi, ci)`).
    pub fn with_mig(mut self, mig: Vec<FakeMig>) -> Self {
        self.mig = mig;
        self
    }

    pub fn with_drm(mut self) -> Self {
        self.drm = true;
        self
    }

    pub fn with_graphics(mut self) -> Self {
        self.graphics = true;
        self
    }

    pub fn with_imex_channels(mut self, count: u32) -> Self {
        self.imex_channels = count;
        self
    }

    pub fn with_feature_devices(mut self) -> Self {
        self.feature_devices = true;
        self
    }

    pub fn with_compat32(mut self) -> Self {
        self.compat32 = true;
        self
    }

    /// Every optional feature on: drm, graphics, 2 IMEX channels, feature
    /// devices, compat32, and MIG devices gi1/ci0 + gi2/ci0 on GPU 0 and
    /// gi1/ci0 on GPU 1 (when there are that many GPUs).
    pub fn with_all_features(self) -> Self {
        let n = self.gpus.len();
        let mig = [(0, 1, 0), (0, 2, 0), (1, 1, 0)]
            .into_iter()
            .filter(|&(g, _, _)| g < n)
            .map(|(g, gi, ci)| FakeMig::new(g, gi, ci))
            .collect();
        self.with_mig(mig)
            .with_drm()
            .with_graphics()
            .with_imex_channels(2)
            .with_feature_devices()
            .with_compat32()
    }
}

pub struct FakeDriver {
    pub dir: PathBuf,
    pub driver_root: PathBuf,
    pub dev_root: PathBuf,
    pub proc_root: PathBuf,
    pub version: String,
    /// In index order (= sorted bus id).
    pub gpus: Vec<FakeGpu>,
    /// `dir/sys-root` (always created; holds `bus/pci/devices/<bus>/drm/`
    /// entries with `options.drm`).
    pub sys_root: PathBuf,
    /// The MIG devices, sorted by (gpu_index, gi, ci): a GPU's MIG index
    /// order (NVML, nvidia-smi -L) is their order here.
    pub mig: Vec<FakeMig>,
}

/// Number of GPU instance ids (0..=14) and compute instance ids (0..=7) per
/// GPU in the fake `mig-minors`, as in the real file.
pub const MIG_MAX_GI: u32 = 15;
pub const MIG_MAX_CI: u32 = 8;

impl FakeDriver {
    /// Builds the fake driver under `dir`: `driver-root/`, `dev-root/`,
    /// `proc-root/`, `sys-root/`.
    pub fn build(dir: &Path, options: &FakeDriverOptions) -> FakeDriver {
        let mut gpus = options.gpus.clone();
        gpus.sort_by(|a, b| a.bus_id.cmp(&b.bus_id));
        let version = options.version.clone();
        let mut mig = options.mig.clone();
        mig.sort_by_key(|m| (m.gpu_index, m.gi, m.ci));
        for (i, m) in mig.iter().enumerate() {
            assert!(
                m.gpu_index < gpus.len(),
                "MIG device {m:?}: no GPU at that index"
            );
            assert!(
                m.gi < MIG_MAX_GI && m.ci < MIG_MAX_CI,
                "MIG device {m:?}: gi <= 14, ci <= 7"
            );
            assert!(
                i == 0
                    || (mig[i - 1].gpu_index, mig[i - 1].gi, mig[i - 1].ci)
                        != (m.gpu_index, m.gi, m.ci),
                "MIG device {m:?} given twice"
            );
        }
        let driver = FakeDriver {
            dir: dir.to_path_buf(),
            driver_root: dir.join("driver-root"),
            dev_root: dir.join("dev-root"),
            proc_root: dir.join("proc-root"),
            version,
            gpus,
            sys_root: dir.join("sys-root"),
            mig,
        };
        let artifacts = driver_artifacts(&driver.version, &driver.gpus, &driver.mig);
        driver.build_driver_root(&artifacts, options);
        driver.build_dev_root(options);
        driver.build_proc_root(&options.kernel_version, options);
        driver.build_sys_root(options);
        driver
    }

    /// The `nvidia-caps` minor of a MIG access file: `gpu<gpu_minor>/gi<gi>/access`
    /// (ci None) or `gpu<gpu_minor>/gi<gi>/ci<ci>/access`. Same scheme as the
    /// real driver: config 1, monitor 2, then per GPU minor 15 GIs of
    /// 1 + 8 minors each: 3 + gpu_minor * 135 + gi * 9 + (ci + 1 or 0).
    pub fn mig_minor(gpu_minor: u32, gi: u32, ci: Option<u32>) -> u32 {
        assert!(gi < MIG_MAX_GI && ci.is_none_or(|c| c < MIG_MAX_CI));
        let per_gi = 1 + MIG_MAX_CI;
        3 + gpu_minor * MIG_MAX_GI * per_gi + gi * per_gi + ci.map_or(0, |c| c + 1)
    }

    /// The MIG devices of the GPU at `gpu_index`, in MIG index order.
    pub fn mig_devices(&self, gpu_index: usize) -> Vec<&FakeMig> {
        self.mig
            .iter()
            .filter(|m| m.gpu_index == gpu_index)
            .collect()
    }

    /// The DRM card number N (`/dev/dri/card<N>`, render node `renderD<128+N>`)
    /// of the GPU at `index` with `options.drm`.
    pub fn drm_card(index: usize) -> u32 {
        index as u32 + 1
    }

    /// `sys-root/bus/pci/devices/<bus>/drm` of the GPU at `index`.
    pub fn drm_sys_dir(&self, index: usize) -> PathBuf {
        self.sys_root
            .join("bus/pci/devices")
            .join(&self.gpus[index].bus_id)
            .join("drm")
    }

    /// `driver-root/usr/lib/i386-linux-gnu`
    pub fn lib32_dir(&self) -> PathBuf {
        self.driver_root.join(LIB32_DIR)
    }

    pub fn lib_dir(&self) -> PathBuf {
        self.driver_root.join(LIB_DIR)
    }

    /// `driver-root/usr/lib/x86_64-linux-gnu/<name>.so.<version>`
    pub fn lib_path(&self, name: &str) -> PathBuf {
        self.lib_dir().join(format!("{name}.so.{}", self.version))
    }

    pub fn bin_path(&self, name: &str) -> PathBuf {
        self.driver_root.join("usr/bin").join(name)
    }

    pub fn ld_cache_path(&self) -> PathBuf {
        self.driver_root.join("etc/ld.so.cache")
    }

    /// `dev-root/dev/<name>`, e.g. `nvidia1`.
    pub fn dev_path(&self, name: &str) -> PathBuf {
        self.dev_root.join("dev").join(name)
    }

    pub fn debug_log_path(&self) -> PathBuf {
        self.dir.join("runtime-debug.log")
    }

    /// What `nvidia-smi -L` prints in a container given these GPUs (by index).
    pub fn smi_output(&self, indices: &[usize]) -> String {
        let mut out = String::new();
        for (i, &index) in indices.iter().enumerate() {
            writeln!(out, "{}", self.gpus[index].smi_line(i)).unwrap();
            for (j, mig) in self.mig_devices(index).into_iter().enumerate() {
                writeln!(out, "{}", mig.smi_line(j)).unwrap();
            }
        }
        out
    }

    /// Writes a config.toml pointing the runtime at this driver and returns
    /// its path; `extra_runtime_keys` are lines appended inside the
    /// `[nvidia-container-runtime]` table.
    pub fn write_config(&self, path: &Path, extra_runtime_keys: &str) -> PathBuf {
        let mut text = String::new();
        writeln!(text, "[nvidia-container-cli]").unwrap();
        writeln!(text, "root = {}", toml_str(&self.driver_root)).unwrap();
        writeln!(text).unwrap();
        writeln!(text, "[nvidia-container-runtime]").unwrap();
        writeln!(text, "dev-root = {}", toml_str(&self.dev_root)).unwrap();
        writeln!(text, "proc-root = {}", toml_str(&self.proc_root)).unwrap();
        writeln!(text, "sys-root = {}", toml_str(&self.sys_root)).unwrap();
        writeln!(text, "debug = {}", toml_str(&self.debug_log_path())).unwrap();
        writeln!(text, "log-level = \"debug\"").unwrap();
        if !extra_runtime_keys.is_empty() {
            text.push_str(extra_runtime_keys);
            if !extra_runtime_keys.ends_with('\n') {
                text.push('\n');
            }
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create config.toml dir");
        }
        fs::write(path, text).expect("write config.toml");
        path.to_path_buf()
    }

    fn build_driver_root(&self, artifacts: &Path, options: &FakeDriverOptions) {
        /// (dir of the built libraries, where they go, `(name, major)`s)
        type LibSet = (
            PathBuf,
            PathBuf,
            &'static [(&'static str, Option<&'static str>)],
        );
        let root = &self.driver_root;
        let lib_dir = self.lib_dir();
        let bin_dir = root.join("usr/bin");
        for d in [&lib_dir, &bin_dir, &root.join("etc"), &root.join("var")] {
            fs::create_dir_all(d).expect("create driver root dirs");
        }
        // (built libs, where they go, their names)
        let mut lib_sets: Vec<LibSet> = vec![(artifacts.join("lib"), lib_dir.clone(), DRIVER_LIBS)];
        if options.graphics {
            lib_sets.push((
                artifacts.join("lib-graphics"),
                lib_dir.clone(),
                GRAPHICS_LIBS,
            ));
        }
        if options.compat32 {
            // Built only when asked for: it needs gcc -m32.
            lib_sets.push((
                compat32_artifacts(&self.version),
                self.lib32_dir(),
                COMPAT32_LIBS,
            ));
        }
        for (built, dest, _) in &lib_sets {
            fs::create_dir_all(dest).expect("create driver lib dir");
            for entry in fs::read_dir(built).expect("read artifact libs") {
                let entry = entry.unwrap();
                fs::copy(entry.path(), dest.join(entry.file_name())).expect("copy driver lib");
            }
        }
        if options.graphics {
            for (path, content) in GRAPHICS_FILES {
                let path = root.join(path);
                fs::create_dir_all(path.parent().unwrap()).expect("create graphics file dir");
                fs::write(path, content).expect("write graphics file");
            }
        }
        for bin in DRIVER_BINS {
            fs::copy(artifacts.join("bin").join(bin), bin_dir.join(bin)).expect("copy driver bin");
        }
        let mut ld_so_conf = format!("/{LIB_DIR}\n");
        if options.compat32 {
            ld_so_conf.push_str(&format!("/{LIB32_DIR}\n"));
        }
        fs::write(root.join("etc/ld.so.conf"), ld_so_conf).expect("write ld.so.conf");
        if options.ld_cache {
            // Creates the SONAME links and etc/ld.so.cache.
            run_ok(Command::new(ldconfig_path()).arg("-r").arg(root));
        } else {
            // SONAME links only (the newest version wins, like ldconfig).
            for (_, dest, libs) in &lib_sets {
                for (name, soname) in libs.iter() {
                    if let Some(major) = soname {
                        symlink(
                            format!("{name}.so.{}", self.version),
                            dest.join(format!("{name}.so.{major}")),
                        )
                        .expect("create SONAME link");
                    }
                }
            }
        }
        symlink("libcuda.so.1", lib_dir.join("libcuda.so")).expect("create libcuda.so link");

        let firmware = root.join("lib/firmware/nvidia").join(&self.version);
        fs::create_dir_all(&firmware).expect("create firmware dir");
        for name in FIRMWARE_FILES {
            fs::write(firmware.join(name), b"\x7fGSPfake").expect("write firmware");
        }

        let persistenced = root.join("run/nvidia-persistenced");
        fs::create_dir_all(&persistenced).expect("create persistenced dir");
        drop(UnixListener::bind(persistenced.join("socket")).expect("bind persistenced socket"));
        symlink("../run", root.join("var/run")).expect("create var/run link");
    }

    fn build_dev_root(&self, options: &FakeDriverOptions) {
        let dev = self.dev_root.join("dev");
        fs::create_dir_all(&dev).expect("create dev root");
        let mut nodes: Vec<(String, u32, u32)> = vec![
            ("nvidiactl".into(), 195, 255),
            ("nvidia-modeset".into(), 195, 254),
            ("nvidia-uvm".into(), NVIDIA_UVM_MAJOR, 0),
            ("nvidia-uvm-tools".into(), NVIDIA_UVM_MAJOR, 1),
        ];
        for gpu in &self.gpus {
            nodes.push((format!("nvidia{}", gpu.minor), 195, gpu.minor));
        }
        if options.drm {
            // card0: the BMC's VGA (no render node), not an NVIDIA GPU.
            nodes.push(("dri/card0".into(), DRM_MAJOR, 0));
            for i in 0..self.gpus.len() {
                let n = Self::drm_card(i);
                nodes.push((format!("dri/card{n}"), DRM_MAJOR, n));
                nodes.push((format!("dri/renderD{}", 128 + n), DRM_MAJOR, 128 + n));
            }
        }
        for n in 0..options.imex_channels {
            nodes.push((
                format!("nvidia-caps-imex-channels/channel{n}"),
                NVIDIA_CAPS_IMEX_CHANNELS_MAJOR,
                n,
            ));
        }
        if options.feature_devices {
            nodes.extend([
                ("nvidia-fs0".into(), NVIDIA_FS_MAJOR, 0),
                ("nvidia-fs1".into(), NVIDIA_FS_MAJOR, 1),
                (
                    "infiniband/uverbs0".into(),
                    INFINIBAND_VERBS_MAJOR,
                    INFINIBAND_UVERBS0_MINOR,
                ),
                ("infiniband/rdma_cm".into(), RDMA_CM_MAJOR, RDMA_CM_MINOR),
                ("nvidia-nvswitch0".into(), NVIDIA_NVSWITCH_MAJOR, 0),
                ("nvidia-nvswitch1".into(), NVIDIA_NVSWITCH_MAJOR, 1),
                ("nvidia-nvswitchctl".into(), NVIDIA_NVSWITCH_MAJOR, 255),
                ("gdrdrv".into(), GDRDRV_MAJOR, 0),
            ]);
        }
        for (name, major, minor) in nodes {
            let path = dev.join(name);
            fs::create_dir_all(path.parent().unwrap()).expect("create dev dir");
            mknod(&path, major, minor);
        }
        // MIG capability nodes, mode from their procfs file like nvidia-modprobe.
        for (_, minor, mode) in self.mig_capabilities() {
            let caps = dev.join("nvidia-caps");
            fs::create_dir_all(&caps).expect("create dev/nvidia-caps");
            mknod_mode(
                &caps.join(format!("nvidia-cap{minor}")),
                NVIDIA_CAPS_MAJOR,
                minor,
                mode,
            );
        }
    }

    /// With MIG devices: (path under `proc-root/driver/nvidia/capabilities`,
    /// minor, mode) of mig/config, mig/monitor and every created gi and ci.
    fn mig_capabilities(&self) -> Vec<(String, u32, u32)> {
        if self.mig.is_empty() {
            return Vec::new();
        }
        let mut caps = vec![
            ("mig/config".to_string(), 1, 0o400),
            ("mig/monitor".to_string(), 2, 0o444),
        ];
        for m in &self.mig {
            let gpu_minor = self.gpus[m.gpu_index].minor;
            let gi = format!("gpu{gpu_minor}/mig/gi{}/access", m.gi);
            if !caps.iter().any(|(p, _, _)| *p == gi) {
                caps.push((gi, Self::mig_minor(gpu_minor, m.gi, None), 0o444));
            }
            caps.push((
                format!("gpu{gpu_minor}/mig/gi{}/ci{}/access", m.gi, m.ci),
                Self::mig_minor(gpu_minor, m.gi, Some(m.ci)),
                0o444,
            ));
        }
        caps
    }

    fn build_sys_root(&self, options: &FakeDriverOptions) {
        fs::create_dir_all(&self.sys_root).expect("create sys root");
        if !options.drm {
            return;
        }
        let devices = self.sys_root.join("bus/pci/devices");
        // (bus, vendor, class, drm entries)
        let mut pci: Vec<(String, &str, &str, Vec<String>)> = vec![(
            "0000:02:00.0".into(),
            "0x1a03",
            "0x030000",
            vec!["card0".into()],
        )];
        for (i, gpu) in self.gpus.iter().enumerate() {
            let n = Self::drm_card(i);
            pci.push((
                gpu.bus_id.clone(),
                "0x10de",
                "0x030200",
                vec![format!("card{n}"), format!("renderD{}", 128 + n)],
            ));
        }
        for (bus, vendor, class, entries) in pci {
            let dir = devices.join(&bus);
            for entry in entries {
                fs::create_dir_all(dir.join("drm").join(entry)).expect("create sysfs drm dir");
            }
            fs::write(dir.join("vendor"), format!("{vendor}\n")).expect("write sysfs vendor");
            fs::write(dir.join("class"), format!("{class}\n")).expect("write sysfs class");
        }
    }

    fn build_proc_root(&self, kernel_version: &str, options: &FakeDriverOptions) {
        let nvidia = self.proc_root.join("driver/nvidia");
        fs::create_dir_all(nvidia.join("gpus")).expect("create proc root");
        fs::write(
            nvidia.join("version"),
            format!(
                "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {kernel_version}  Tue Mar  5 22:23:56 UTC 2024\n\
                 GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n"
            ),
        )
        .expect("write proc version");
        for (i, gpu) in self.gpus.iter().enumerate() {
            let gpu_dir = nvidia.join("gpus").join(&gpu.bus_id);
            fs::create_dir_all(&gpu_dir).expect("create proc gpu dir");
            fs::write(gpu_dir.join("information"), proc_information(gpu, i))
                .expect("write proc gpu information");
        }
        fs::write(nvidia.join("params"), PROC_PARAMS).expect("write proc params");
        let mut extra_majors: Vec<(u32, &str)> = Vec::new();
        if options.feature_devices {
            extra_majors.extend([
                (NVIDIA_FS_MAJOR, "nvidia-fs"),
                (INFINIBAND_VERBS_MAJOR, "infiniband_verbs"),
                (RDMA_CM_MAJOR, "rdma_cm"),
                (NVIDIA_NVSWITCH_MAJOR, "nvidia-nvswitch"),
                (GDRDRV_MAJOR, "gdrdrv"),
            ]);
        }
        fs::write(self.proc_root.join("devices"), proc_devices(&extra_majors))
            .expect("write proc devices");

        let caps = self.mig_capabilities();
        if !caps.is_empty() {
            let caps_dir = self.proc_root.join("driver/nvidia-caps");
            fs::create_dir_all(&caps_dir).expect("create proc nvidia-caps");
            let mut gpu_minors: Vec<u32> = self.gpus.iter().map(|g| g.minor).collect();
            gpu_minors.sort();
            let mut listing = String::from("config 1\nmonitor 2\n");
            for m in gpu_minors {
                for gi in 0..MIG_MAX_GI {
                    let minor = Self::mig_minor(m, gi, None);
                    writeln!(listing, "gpu{m}/gi{gi}/access {minor}").unwrap();
                    for ci in 0..MIG_MAX_CI {
                        let minor = Self::mig_minor(m, gi, Some(ci));
                        writeln!(listing, "gpu{m}/gi{gi}/ci{ci}/access {minor}").unwrap();
                    }
                }
            }
            fs::write(caps_dir.join("mig-minors"), listing).expect("write mig-minors");
            for (path, minor, mode) in caps {
                let path = nvidia.join("capabilities").join(path);
                fs::create_dir_all(path.parent().unwrap()).expect("create proc capability dir");
                fs::write(
                    path,
                    format!(
                        "DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n"
                    ),
                )
                .expect("write proc capability file");
            }
        }
    }
}

fn proc_information(gpu: &FakeGpu, index: usize) -> String {
    // Same padding as the real file: key, colon, spaces/tabs, one space.
    format!(
        "Model: \t\t {}\n\
         IRQ:   \t\t {}\n\
         GPU UUID: \t {}\n\
         Video BIOS: \t 96.00.99.00.01\n\
         Bus Type: \t PCIe\n\
         DMA Size: \t 47 bits\n\
         DMA Mask: \t 0x7fffffffffff\n\
         Bus Location: \t {}\n\
         Device Minor: \t {}\n\
         GPU Excluded:\t No\n",
        gpu.model,
        408 + index,
        gpu.uuid,
        gpu.bus_id,
        gpu.minor
    )
}

const PROC_PARAMS: &str = "\
ResmanDebugLevel: 4294967295
RmLogonRC: 1
ModifyDeviceFiles: 1
DeviceFileUID: 0
DeviceFileGID: 0
DeviceFileMode: 438
InitializeSystemMemoryAllocations: 1
UsePageAttributeTable: 4294967295
EnableMSI: 1
EnablePCIeGen3: 0
MemoryPoolSize: 0
KMallocHeapMaxSize: 0
VMallocHeapMaxSize: 0
IgnoreMMIOCheck: 0
TCEBypassMode: 0
EnableStreamMemOPs: 0
EnableUserNUMAManagement: 1
NvLinkDisable: 0
RmProfilingAdminOnly: 1
PreserveVideoMemoryAllocations: 0
DynamicPowerManagement: 3
DynamicPowerManagementVideoMemoryThreshold: 200
RegisterPCIDriver: 1
EnablePCIERelaxedOrderingMode: 0
EnableResizableBar: 0
EnableGpuFirmware: 18
EnableGpuFirmwareLogs: 2
EnableDbgBreakpoint: 0
OpenRmEnableUnsupportedGpus: 0
DmaRemapPeerMmio: 1
RegistryDwords: \"\"
RegistryDwordsPerDevice: \"\"
RmMsg: \"\"
GpuBlacklist: \"\"
TemporaryFilePath: \"\"
ExcludedGpus: \"\"
";

const PROC_DEVICES: &str = "\
Character devices:
  1 mem
  4 /dev/vc/0
  4 tty
  4 ttyS
  5 /dev/tty
  5 /dev/console
  5 /dev/ptmx
  7 vcs
 10 misc
 13 input
 29 fb
128 ptm
136 pts
180 usb
189 usb_device
195 nvidia
195 nvidia-modeset
195 nvidiactl
226 drm
508 nvidia-caps-imex-channels
510 nvidia-caps
511 nvidia-uvm

Block devices:
  7 loop
  8 sd
  9 md
 65 sd
259 blkext
";

/// Compiles (once per process and content hash) the driver's libraries and
/// binaries; returns a dir with `lib/` and `bin/`.
fn driver_artifacts(version: &str, gpus: &[FakeGpu], mig: &[FakeMig]) -> PathBuf {
    let header = gpu_header(version, gpus, mig);
    let key = content_key(&[
        "driver", version, &header, SRC_CUDA, SRC_NVML, SRC_SMI, SRC_TOOL, SRC_LIB,
    ]);
    let version = version.to_string();
    cached_build(&format!("driver-{key}"), move |out| {
        let lib = out.join("lib");
        let lib_graphics = out.join("lib-graphics");
        let bin = out.join("bin");
        let src = out.join("src");
        for d in [&lib, &lib_graphics, &bin, &src] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(src.join("fake_gpus.h"), &header).unwrap();
        let write_src = |name: &str, text: &str| {
            let p = src.join(name);
            fs::write(&p, text).unwrap();
            p
        };
        let cuda = write_src("fake_cuda.c", SRC_CUDA);
        let nvml = write_src("fake_nvml.c", SRC_NVML);
        let smi = write_src("fake_smi.c", SRC_SMI);
        let tool = write_src("fake_tool.c", SRC_TOOL);
        let plain = write_src("fake_lib.c", SRC_LIB);

        for (name, major) in DRIVER_LIBS {
            let file = format!("{name}.so.{version}");
            let soname = match major {
                Some(major) => format!("{name}.so.{major}"),
                None => file.clone(),
            };
            let source = match *name {
                "libcuda" => &cuda,
                "libnvidia-ml" => &nvml,
                _ => &plain,
            };
            gcc_shared(
                source,
                &soname,
                &lib.join(&file),
                &[&format!("-DLIB_NAME=\"{name}\"")],
            );
        }
        gcc_shared(
            &cuda,
            "libcuda.so.1",
            &lib.join(format!("libcuda.so.{STALE_DRIVER_VERSION}")),
            &["-DFAKE_CUDA_DRIVER_VERSION=12020"],
        );
        for (name, major) in GRAPHICS_LIBS {
            let file = format!("{name}.so.{version}");
            let soname = match major {
                Some(major) => format!("{name}.so.{major}"),
                None => file.clone(),
            };
            gcc_shared(
                &plain,
                &soname,
                &lib_graphics.join(&file),
                &[&format!("-DLIB_NAME=\"{name}\"")],
            );
        }

        // nvidia-smi links against the SONAME, without an rpath.
        let link_dir = out.join("link");
        fs::create_dir_all(&link_dir).unwrap();
        symlink(
            lib.join(format!("libnvidia-ml.so.{version}")),
            link_dir.join("libnvidia-ml.so.1"),
        )
        .unwrap();
        run_ok(
            Command::new("gcc")
                .args(["-O2", "-Wall", "-o"])
                .arg(bin.join("nvidia-smi"))
                .arg(&smi)
                .arg("-L")
                .arg(&link_dir)
                .arg("-l:libnvidia-ml.so.1"),
        );
        for tool_name in ["nvidia-debugdump", "nvidia-cuda-mps-control"] {
            run_ok(
                Command::new("gcc")
                    .args([
                        "-O2",
                        "-Wall",
                        &format!("-DTOOL_NAME=\"{tool_name}\""),
                        "-o",
                    ])
                    .arg(bin.join(tool_name))
                    .arg(&tool),
            );
        }
        fs::remove_dir_all(&link_dir).unwrap();
    })
}

/// Compiles (once, cached) the i386 libraries; returns the dir holding them.
fn compat32_artifacts(version: &str) -> PathBuf {
    let key = content_key(&["compat32", version, SRC_CUDA, SRC_LIB]);
    let version = version.to_string();
    cached_build(&format!("compat32-{key}"), move |out| {
        let src = out.join("src");
        let lib = out.join("lib");
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&lib).unwrap();
        fs::write(src.join("fake_cuda.c"), SRC_CUDA).unwrap();
        fs::write(src.join("fake_lib.c"), SRC_LIB).unwrap();
        build_compat32_libs(
            &src,
            &lib,
            &version,
            &src.join("fake_cuda.c"),
            &src.join("fake_lib.c"),
        );
    })
    .join("lib")
}

/// The i386 copies (`COMPAT32_LIBS`) into `out`: libcuda from fake_cuda.c,
/// the others from fake_lib.c (no libc headers needed, so no
/// libc6-dev-i386). They are linked with `-nostdlib` against a stub i386
/// `libc.so.6` (built in `work`) so that they have `DT_NEEDED libc.so.6`, like
/// the real ones: `ldconfig` then lists them as `(libc6)`, flags 0x0003
/// (without that NEEDED they would be plain `(ELF)`, 0x0001).
fn build_compat32_libs(work: &Path, out: &Path, version: &str, cuda: &Path, plain: &Path) {
    fs::create_dir_all(work).unwrap();
    let stub = work.join("libc_stub.c");
    fs::write(&stub, "int fake_i386_libc_stub;\n").unwrap();
    let gcc32 = |source: &Path, soname: &str, output: &Path, extra: &[&str]| {
        let mut cmd = Command::new("gcc");
        cmd.args(["-m32", "-O2", "-Wall", "-shared", "-nostdlib", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(output)
            .arg(source)
            .args(extra);
        let result = cmd
            .output()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        assert!(
            result.status.success(),
            "{cmd:?} failed: gcc cannot build i386 libraries here (apt-get install -y gcc-multilib)\n{}",
            String::from_utf8_lossy(&result.stderr)
        );
    };
    gcc32(&stub, "libc.so.6", &work.join("libc.so.6"), &[]);
    let link = format!("-L{}", work.display());
    for (name, major) in COMPAT32_LIBS {
        let file = format!("{name}.so.{version}");
        let soname = match major {
            Some(major) => format!("{name}.so.{major}"),
            None => file.clone(),
        };
        let source = if *name == "libcuda" { cuda } else { plain };
        let define = format!("-DLIB_NAME=\"{name}\"");
        gcc32(
            source,
            &soname,
            &out.join(&file),
            &[&define, &link, "-Wl,--no-as-needed", "-l:libc.so.6"],
        );
    }
}

fn gpu_header(version: &str, gpus: &[FakeGpu], mig: &[FakeMig]) -> String {
    let mut h = String::new();
    writeln!(h, "/* Generated by tests/common/mod.rs */").unwrap();
    writeln!(h, "#define FAKE_DRIVER_VERSION \"{}\"", c_escape(version)).unwrap();
    writeln!(h, "#define FAKE_GPU_COUNT {}u", gpus.len()).unwrap();
    writeln!(h, "static const struct fake_gpu FAKE_GPUS[] = {{").unwrap();
    for gpu in gpus {
        let (domain, bus, device, _) = parse_bus_id(&gpu.bus_id);
        writeln!(
            h,
            "    {{ {}, \"{}\", \"{}\", \"{}\", {domain}u, {bus}u, {device}u }},",
            gpu.minor,
            c_escape(&gpu.uuid),
            c_escape(&gpu.model),
            gpu.nvml_bus_id()
        )
        .unwrap();
    }
    // Sentinel, so that the array is never empty.
    writeln!(h, "    {{ -1, \"\", \"\", \"\", 0u, 0u, 0u }},").unwrap();
    writeln!(h, "}};").unwrap();
    // MIG devices: { parent index, gi, ci, MIG index on the parent, uuid },
    // sorted by parent, then MIG index.
    writeln!(h, "#define FAKE_MIG_PROFILE \"{MIG_PROFILE}\"").unwrap();
    writeln!(h, "#define FAKE_MIG_COUNT {}u", mig.len()).unwrap();
    writeln!(h, "static const struct fake_mig FAKE_MIGS[] = {{").unwrap();
    let mut mig_index = 0;
    for (i, m) in mig.iter().enumerate() {
        if i > 0 && mig[i - 1].gpu_index != m.gpu_index {
            mig_index = 0;
        }
        writeln!(
            h,
            "    {{ {}, {}u, {}u, {mig_index}u, \"{}\" }},",
            m.gpu_index,
            m.gi,
            m.ci,
            c_escape(&m.uuid)
        )
        .unwrap();
        mig_index += 1;
    }
    writeln!(h, "    {{ -1, 0u, 0u, 0u, \"\" }},").unwrap();
    writeln!(h, "}};").unwrap();
    h
}

fn c_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn toml_str(p: &Path) -> String {
    format!(
        "\"{}\"",
        p.display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    )
}

fn gcc_shared(source: &Path, soname: &str, out: &Path, defines: &[&str]) {
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-shared", "-fPIC"])
            .arg(format!("-Wl,-soname,{soname}"))
            .args(defines)
            .arg("-o")
            .arg(out)
            .arg(source),
    );
}

fn mknod(path: &Path, major: u32, minor: u32) {
    mknod_mode(path, major, minor, 0o666);
}

fn mknod_mode(path: &Path, major: u32, minor: u32, mode: u32) {
    run_ok(
        Command::new("mknod")
            .args(["-m", &format!("{mode:o}")])
            .arg(path)
            .args(["c", &major.to_string(), &minor.to_string()]),
    );
}

/// `PROC_DEVICES` with extra character majors, in major order.
fn proc_devices(extra: &[(u32, &str)]) -> String {
    if extra.is_empty() {
        return PROC_DEVICES.to_string();
    }
    let (chars, block) = PROC_DEVICES
        .split_once("\nBlock devices:")
        .expect("PROC_DEVICES has a block section");
    let mut lines: Vec<(u32, String)> = chars
        .lines()
        .skip(1)
        .map(|l| {
            (
                l.trim().split(' ').next().unwrap().parse().unwrap(),
                l.to_string(),
            )
        })
        .collect();
    lines.extend(
        extra
            .iter()
            .map(|(major, name)| (*major, format!("{major:>3} {name}"))),
    );
    lines.sort_by_key(|(major, _)| *major);
    let mut text = String::from("Character devices:\n");
    for (_, line) in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text + "\nBlock devices:" + block
}

// ---------------------------------------------------------------------------
// Build cache
// ---------------------------------------------------------------------------

fn cache_root() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join("gpu-test-fixtures")
}

fn content_key(parts: &[&str]) -> String {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Runs `build(out_dir)` once per `name`: per process through a `OnceLock`
/// per name, and across processes by publishing the finished dir with an
/// atomic rename under the cache root (a dir that exists there is complete).
fn cached_build(name: &str, build: impl FnOnce(&Path)) -> PathBuf {
    static CELLS: OnceLock<Mutex<HashMap<String, Arc<OnceLock<PathBuf>>>>> = OnceLock::new();
    let cell = {
        let mut cells = CELLS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cells.entry(name.to_string()).or_default().clone()
    };
    cell.get_or_init(|| {
        let root = cache_root();
        let done = root.join(name);
        if done.is_dir() {
            return done;
        }
        fs::create_dir_all(&root).expect("create fixture cache dir");
        let tmp = root.join(format!(
            "{name}.tmp-{}-{}",
            std::process::id(),
            next_counter()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).expect("create fixture build dir");
        build(&tmp);
        if fs::rename(&tmp, &done).is_err() {
            // Another process published it first.
            assert!(
                done.is_dir(),
                "could not publish fixture build {}",
                done.display()
            );
            let _ = fs::remove_dir_all(&tmp);
        }
        done
    })
    .clone()
}

fn next_counter() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// Root filesystems
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootfsKind {
    /// Static busybox only, no libc, not Debian-family.
    Busybox,
    /// Debian 12 like (merged /usr): busybox + host glibc, `/etc/debian_version`,
    /// its own `libimage.so.1` and `/usr/bin/use-image-lib`; with `ldconfig`,
    /// `/sbin/ldconfig` and an `/etc/ld.so.cache`.
    Glibc { ldconfig: bool },
}

pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "cat", "ls", "echo", "test", "readlink", "stat", "sleep", "true", "wc", "grep", "env",
    "head", "mkdir",
];

/// Builds (copies from a per-process template) a root filesystem at
/// `dir/rootfs` and returns its path.
pub fn build_rootfs(dir: &Path, kind: RootfsKind) -> PathBuf {
    let template = rootfs_template(kind);
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(&rootfs).expect("create rootfs dir");
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(template.join("."))
            .arg(&rootfs),
    );
    rootfs
}

fn rootfs_template(kind: RootfsKind) -> PathBuf {
    let busybox = host_busybox();
    let key = content_key(&[
        "rootfs",
        &format!("{kind:?}"),
        SRC_IMAGE_LIB,
        SRC_USE_IMAGE_LIB,
        &file_identity(&busybox),
        &file_identity(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
        &file_identity(&ldconfig_path()),
    ]);
    let name = match kind {
        RootfsKind::Busybox => format!("rootfs-busybox-{key}"),
        RootfsKind::Glibc { ldconfig: true } => format!("rootfs-glibc-ldconfig-{key}"),
        RootfsKind::Glibc { ldconfig: false } => format!("rootfs-glibc-{key}"),
    };
    cached_build(&name, |out| {
        let root = out.join("rootfs");
        match kind {
            RootfsKind::Busybox => build_busybox_rootfs(&root, &busybox),
            RootfsKind::Glibc { ldconfig } => build_glibc_rootfs(&root, &busybox, ldconfig, out),
        }
    })
    .join("rootfs")
}

fn file_identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match fs::metadata(path) {
        Ok(m) => format!("{}:{}:{}", path.display(), m.size(), m.mtime()),
        Err(_) => format!("{}:missing", path.display()),
    }
}

fn host_busybox() -> PathBuf {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let p = Path::new(candidate);
        if p.exists() && is_static_elf(p) {
            return p.to_path_buf();
        }
    }
    panic!("a static /bin/busybox is needed: apt-get install -y busybox-static");
}

/// An ELF without a PT_INTERP program header (static or static-pie).
fn is_static_elf(path: &Path) -> bool {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(_) => return false,
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= data.len() && u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) != 3
    })
}

fn mkdirs(root: &Path, dirs: &[&str]) {
    for d in dirs {
        fs::create_dir_all(root.join(d)).expect("create rootfs dir");
    }
}

fn install_busybox(bin_dir: &Path, busybox: &Path) {
    fs::copy(busybox, bin_dir.join("busybox")).expect("copy busybox");
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", bin_dir.join(applet)).expect("create busybox applet link");
    }
}

fn build_busybox_rootfs(root: &Path, busybox: &Path) {
    mkdirs(
        root,
        &[
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "etc",
            "usr/bin",
            "usr/lib64",
        ],
    );
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    install_busybox(&root.join("bin"), busybox);
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}

fn build_glibc_rootfs(root: &Path, busybox: &Path, ldconfig: bool, work: &Path) {
    mkdirs(
        root,
        &[
            "usr/bin",
            "usr/sbin",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib64",
            "usr/local/bin",
            "usr/local/lib",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "var",
            "root",
            "etc/ld.so.conf.d",
        ],
    );
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // Merged /usr, like Debian 12 images.
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link)).unwrap();
    }
    symlink("../run", root.join("var/run")).unwrap();
    install_busybox(&root.join("usr/bin"), busybox);

    let multiarch = root.join(LIB_DIR);
    let ld_so = "ld-linux-x86-64.so.2";
    let host_libs = [
        "libc.so.6",
        "libm.so.6",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        ld_so,
    ];
    for lib in host_libs {
        let host = Path::new("/lib/x86_64-linux-gnu").join(lib);
        if !host.exists() {
            assert!(
                lib != "libc.so.6" && lib != ld_so,
                "host has no {}",
                host.display()
            );
            continue;
        }
        let real = fs::canonicalize(&host).expect("resolve host lib");
        fs::copy(&real, multiarch.join(lib)).expect("copy host lib");
    }
    // Debian: /lib64/ld-linux-x86-64.so.2 -> ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    symlink(
        format!("../lib/x86_64-linux-gnu/{ld_so}"),
        root.join("usr/lib64").join(ld_so),
    )
    .unwrap();

    fs::write(root.join("etc/debian_version"), "12.0\n").unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(
        root.join("etc/ld.so.conf"),
        "include /etc/ld.so.conf.d/*.conf\n\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ld.so.conf.d/libc.conf"),
        "# libc default configuration\n/usr/local/lib\n",
    )
    .unwrap();
    fs::write(
        root.join("etc/ld.so.conf.d/x86_64-linux-gnu.conf"),
        "# Multiarch support\n/usr/local/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n",
    )
    .unwrap();

    // The image's own library and a program using it.
    let src = work.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("image_lib.c"), SRC_IMAGE_LIB).unwrap();
    fs::write(src.join("use_image_lib.c"), SRC_USE_IMAGE_LIB).unwrap();
    gcc_shared(
        &src.join("image_lib.c"),
        "libimage.so.1",
        &multiarch.join("libimage.so.1.0.0"),
        &[],
    );
    symlink("libimage.so.1.0.0", multiarch.join("libimage.so.1")).unwrap();
    let link_dir = work.join("link");
    fs::create_dir_all(&link_dir).unwrap();
    symlink(
        multiarch.join("libimage.so.1.0.0"),
        link_dir.join("libimage.so.1"),
    )
    .unwrap();
    run_ok(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(root.join("usr/bin/use-image-lib"))
            .arg(src.join("use_image_lib.c"))
            .arg("-L")
            .arg(&link_dir)
            .arg("-l:libimage.so.1"),
    );

    if ldconfig {
        let host_ldconfig = ldconfig_path();
        assert!(
            is_static_elf(&host_ldconfig),
            "{} is not static; it cannot run inside the image",
            host_ldconfig.display()
        );
        fs::copy(&host_ldconfig, root.join("usr/sbin/ldconfig")).expect("copy ldconfig");
        run_ok(Command::new(&host_ldconfig).arg("-r").arg(root));
    }
}

fn ldconfig_path() -> PathBuf {
    ["/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("ldconfig not found (libc-bin)")
}

// ---------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------

pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Writes `dir/config.json` (the `runc spec` defaults, with the given
    /// args and env, terminal off, writable root) and `dir/rootfs`.
    pub fn new(dir: &Path, kind: RootfsKind, args: &[&str], env: &[&str]) -> Bundle {
        fs::create_dir_all(dir).expect("create bundle dir");
        let rootfs = build_rootfs(dir, kind);
        let mut config = runc_spec_template().clone();
        let mut process_env = vec![format!("PATH={CONTAINER_PATH}")];
        process_env.extend(env.iter().map(|s| s.to_string()));
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["process"]["env"] = json!(process_env);
        config["root"] = json!({"path": "rootfs", "readonly": false});
        config["hostname"] = json!("fixture");
        let bundle = Bundle {
            dir: dir.to_path_buf(),
            rootfs,
        };
        bundle.write_config(&config);
        bundle
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    pub fn read_config(&self) -> Value {
        let text = fs::read_to_string(self.config_path()).expect("read config.json");
        serde_json::from_str(&text).expect("parse config.json")
    }

    pub fn write_config(&self, value: &Value) {
        let text = serde_json::to_string_pretty(value).expect("serialize config.json");
        fs::write(self.config_path(), text).expect("write config.json");
    }

    /// Where `run_container`/`create_start_delete` make the runtime log (`--log`).
    pub fn runtime_log_path(&self) -> PathBuf {
        self.dir.join("runtime-log.json")
    }

    /// Edits config.json in place.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let mut config = self.read_config();
        edit(&mut config);
        self.write_config(&config);
    }

    /// Adds a read-only bind mount (ro,bind,nosuid,nodev) of `source` at `destination`.
    pub fn add_bind_mount(&self, source: &Path, destination: &str) {
        self.edit_config(|c| {
            c["mounts"]
                .as_array_mut()
                .expect("mounts array")
                .push(json!({
                    "destination": destination,
                    "type": "bind",
                    "source": source,
                    "options": ["ro", "bind", "nosuid", "nodev"],
                }));
        });
    }

    /// Adds `linux.devices` entry for a char device (mode 0666), and, if
    /// `allow`, a device cgroup rule allowing rw to it.
    pub fn add_char_device(&self, path: &str, major: u32, minor: u32, allow: bool) {
        self.edit_config(|c| {
            let linux = c["linux"].as_object_mut().expect("linux object");
            let devices = linux.entry("devices").or_insert_with(|| json!([]));
            devices.as_array_mut().unwrap().push(json!({
                "path": path, "type": "c", "major": major, "minor": minor,
                "fileMode": 0o666, "uid": 0, "gid": 0,
            }));
            if allow {
                let rules = c["linux"]["resources"]["devices"].as_array_mut().expect("device rules");
                rules.push(json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
            }
        });
    }
}

fn runc_spec_template() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let dir = cache_root().join(format!(
            "runc-spec-{}-{}",
            std::process::id(),
            next_counter()
        ));
        fs::create_dir_all(&dir).expect("create runc spec dir");
        run_ok(Command::new(runc_path()).arg("spec").current_dir(&dir));
        let text = fs::read_to_string(dir.join("config.json")).expect("read runc spec");
        let _ = fs::remove_dir_all(&dir);
        serde_json::from_str(&text).expect("parse runc spec")
    })
}

// ---------------------------------------------------------------------------
// Running containers
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct RunOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Panics with stdout and stderr unless the status is 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert_eq!(
            self.status, 0,
            "{what} failed with status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        );
        self
    }
}

/// Time limit for one container run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn runtime_command(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    env: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(runtime);
    cmd.arg("--root")
        .arg(state_root)
        .arg("--log")
        .arg(bundle.runtime_log_path())
        .args(["--log-format", "json"])
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `<runtime> --root <state_root> --log <bundle>/runtime-log.json
/// --log-format json run --bundle <bundle.dir> <id>` with stdin null and the
/// extra env vars; returns its output (the container's stdout/stderr are the
/// runtime's, as terminal=false). Times out after `RUN_TIMEOUT`.
pub fn run_container(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> RunOutput {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.arg("run").arg("--bundle").arg(&bundle.dir).arg(id);
    let output = output_with_timeout(cmd, RUN_TIMEOUT);
    match output {
        Some(out) => out,
        None => {
            force_delete(runtime, state_root, bundle, id, env);
            panic!(
                "`{} run {id}` did not finish within {RUN_TIMEOUT:?}",
                runtime.display()
            );
        }
    }
}

/// `create` (container stdout/stderr go to files in the bundle dir),
/// `start`, waits until `state` says stopped (10 s), `delete`. Returns the
/// container's output; `status` is the first failing runtime command's exit
/// status (0 if all succeeded: the container's own exit code is not known),
/// and `stderr` also holds the runtime's own stderr of `create`.
pub fn create_start_delete(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> RunOutput {
    let stdout_path = bundle.dir.join(format!("{id}.stdout"));
    let stderr_path = bundle.dir.join(format!("{id}.stderr"));
    let read_outputs = |status: i32, extra: &str| RunOutput {
        status,
        stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default() + extra,
    };

    let mut create = runtime_command(runtime, state_root, bundle, env);
    create
        .arg("create")
        .arg("--bundle")
        .arg(&bundle.dir)
        .arg(id)
        .stdout(fs::File::create(&stdout_path).expect("create stdout file"))
        .stderr(fs::File::create(&stderr_path).expect("create stderr file"));
    let status = create.status().expect("spawn runtime create");
    if !status.success() {
        force_delete(runtime, state_root, bundle, id, env);
        return read_outputs(exit_code(status), "");
    }

    let mut start = runtime_command(runtime, state_root, bundle, env);
    start.arg("start").arg(id);
    let started = output_with_timeout(start, RUN_TIMEOUT).expect("runtime start timed out");
    if !started.success() {
        force_delete(runtime, state_root, bundle, id, env);
        return read_outputs(started.status, &started.stderr);
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match container_status(runtime, state_root, bundle, id, env) {
            Some(s) if s == "stopped" => break,
            None => break,
            _ if Instant::now() > deadline => {
                force_delete(runtime, state_root, bundle, id, env);
                panic!("container {id} did not stop within 10s");
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }

    let mut delete = runtime_command(runtime, state_root, bundle, env);
    delete.arg("delete").arg(id);
    let deleted = output_with_timeout(delete, RUN_TIMEOUT).expect("runtime delete timed out");
    if !deleted.success() {
        force_delete(runtime, state_root, bundle, id, env);
    }
    read_outputs(deleted.status, &deleted.stderr)
}

/// `status` of `<runtime> state <id>`, or None if the container is unknown.
pub fn container_status(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> Option<String> {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.arg("state").arg(id);
    let out = output_with_timeout(cmd, RUN_TIMEOUT).expect("runtime state timed out");
    if !out.success() {
        return None;
    }
    let state: Value = serde_json::from_str(&out.stdout).expect("parse runtime state");
    state["status"].as_str().map(str::to_string)
}

fn force_delete(
    runtime: &Path,
    state_root: &Path,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) {
    let mut cmd = runtime_command(runtime, state_root, bundle, env);
    cmd.args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
}

/// Runs `cmd`, collecting stdout/stderr; None (after killing it) on timeout.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Option<RunOutput> {
    let mut child: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Some(RunOutput {
        status: exit_code(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn run_ok(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A container id unique across threads and processes.
pub fn unique_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        next_counter(),
        nanos & 0xffff
    )
}

/// Effective uid, from /proc/self/status (std has no geteuid).
fn effective_uid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .expect("effective uid in /proc/self/status")
}

/// True if running as root. Otherwise prints a loud SKIPPED line and returns
/// false, or panics when `CI` is set (tests must not skip in CI).
pub fn require_root() -> bool {
    if effective_uid() == 0 {
        return true;
    }
    skip("this test needs root (runc, mknod, device cgroups)");
    false
}

/// Like `require_root` for a tool on PATH: its path, or None after a loud skip
/// (panics when `CI` is set).
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = find_in_path(name);
    if found.is_none() {
        skip(&format!("`{name}` is not installed"));
    }
    found
}

fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so this test must not skip: {reason}");
    }
    eprintln!("\n********** SKIPPED: {reason} **********\n");
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            p.is_file()
                && fs::metadata(p)
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
        })
}

/// Path of `runc`; panics with a clear message if it is missing.
pub fn runc_path() -> PathBuf {
    find_in_path("runc").expect("runc is not installed: apt-get install -y runc")
}

/// A fresh temp dir (removed on drop).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_id(prefix));
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One test's host: a fake driver, a config.toml pointing the runtime at it,
/// and a runc state root, all in one temp dir (removed on drop). Test files
/// add their own `impl World` blocks for how they drive the runtime.
pub struct World {
    pub tmp: TempDir,
    pub driver: FakeDriver,
    pub config: PathBuf,
    pub state_root: PathBuf,
}

impl World {
    /// `top_level_keys` go before the first table of config.toml,
    /// `runtime_keys` into `[nvidia-container-runtime]`.
    pub fn build(
        name: &str,
        options: &FakeDriverOptions,
        top_level_keys: &str,
        runtime_keys: &str,
    ) -> World {
        let tmp = TempDir::new(name);
        let driver = FakeDriver::build(&tmp.path().join("driver"), options);
        let config = driver.write_config(&tmp.path().join("config.toml"), runtime_keys);
        if !top_level_keys.is_empty() {
            let text = fs::read_to_string(&config).expect("read config.toml");
            fs::write(&config, format!("{top_level_keys}\n{text}")).expect("write config.toml");
        }
        let state_root = tmp.path().join("state");
        fs::create_dir_all(&state_root).expect("create state root");
        World {
            tmp,
            driver,
            config,
            state_root,
        }
    }

    /// The environment that points the runtime at this world's config.
    pub fn config_env(&self) -> Vec<(&str, &str)> {
        vec![(
            "NVIDIA_CTK_CONFIG_FILE_PATH",
            self.config.to_str().expect("UTF-8 config path"),
        )]
    }

    /// A bundle in this world's temp dir.
    pub fn bundle(&self, name: &str, kind: RootfsKind, args: &[&str], env: &[&str]) -> Bundle {
        Bundle::new(&self.tmp.path().join(name), kind, args, env)
    }
}

/// Runs a command to completion (stdin as the command says) and collects
/// its exit status and output.
pub fn command_output(mut command: Command) -> RunOutput {
    let out = command.output().expect("spawn");
    RunOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A container command that lists `/dev`, then runs `nvidia-smi -L`; see
/// [`assert_sees_only_gpu`].
pub const GPU_SCRIPT: &str = "ls /dev; echo ---; nvidia-smi -L";

/// Asserts that `stdout` of [`GPU_SCRIPT`] shows exactly GPU `index` of
/// `driver`: its node, the control and uvm nodes plus `extra_nodes`, and
/// that GPU alone in `nvidia-smi -L`.
pub fn assert_sees_only_gpu(
    driver: &FakeDriver,
    stdout: &str,
    index: usize,
    extra_nodes: &[&str],
    what: &str,
) {
    let (listing, smi) = stdout
        .split_once("---\n")
        .unwrap_or_else(|| panic!("{what}: unexpected output\n{stdout}"));
    let mut nodes: Vec<&str> = listing
        .split_whitespace()
        .filter(|n| n.starts_with("nvidia"))
        .collect();
    nodes.sort();
    let gpu_node = format!("nvidia{}", driver.gpus[index].minor);
    let mut expected = vec![
        gpu_node.as_str(),
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "nvidiactl",
    ];
    expected.extend_from_slice(extra_nodes);
    expected.sort();
    assert_eq!(nodes, expected, "{what}: /dev listing\n{stdout}");
    assert_eq!(smi, driver.smi_output(&[index]), "{what}: nvidia-smi -L");
}
