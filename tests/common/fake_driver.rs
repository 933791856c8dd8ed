//! The fake NVIDIA driver: real down to the file level (gcc-built ELF
//! libraries, a real ld.so.cache, mknod'ed device nodes, procfs files in
//! which device minors differ from GPU indices).

#![allow(dead_code)]

use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

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

pub(crate) const SRC_CUDA: &str = include_str!("../fixtures/fake_cuda.c");
pub(crate) const SRC_NVML: &str = include_str!("../fixtures/fake_nvml.c");
pub(crate) const SRC_SMI: &str = include_str!("../fixtures/fake_smi.c");
pub(crate) const SRC_TOOL: &str = include_str!("../fixtures/fake_tool.c");
pub(crate) const SRC_LIB: &str = include_str!("../fixtures/fake_lib.c");
pub(crate) const SRC_IMAGE_LIB: &str = include_str!("../fixtures/image_lib.c");
pub(crate) const SRC_USE_IMAGE_LIB: &str = include_str!("../fixtures/use_image_lib.c");
pub(crate) const SRC_CUDA_VERSION: &str = include_str!("../fixtures/cuda_version.c");

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
    ("libnvidia-allocator", Some("1")),
];
/// Graphics libraries versioned on their own, not with the driver:
/// (file name, SONAME).
pub const GRAPHICS_OWN_VERSION_LIBS: &[(&str, &str)] = &[(
    "libnvidia-egl-wayland.so.1.1.13",
    "libnvidia-egl-wayland.so.1",
)];
/// The X server modules of `options.graphics`: (dir under the driver root,
/// file name with `{version}` for the driver version).
pub const XORG_MODULES: &[(&str, &str)] = &[
    ("usr/lib/xorg/modules/drivers", "nvidia_drv.so"),
    (
        "usr/lib/xorg/modules/extensions",
        "libglxserver_nvidia.so.{version}",
    ),
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
    (
        "usr/share/X11/xorg.conf.d/10-nvidia.conf",
        "Section \"OutputClass\"\n    Identifier \"nvidia\"\n    MatchDriver \"nvidia-drm\"\n    Driver \"nvidia\"\n    ModulePath \"/usr/lib/x86_64-linux-gnu/nvidia/xorg\"\nEndSection\n",
    ),
];

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

pub(crate) fn parse_bus_id(bus_id: &str) -> (u32, u32, u32, u32) {
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
        if !extra_runtime_keys.contains("runtimes =") {
            // The low-level runtime under test (NCR_TEST_LOW_LEVEL).
            text.push_str(&generation().runtimes_key());
        }
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
            for (dir, name) in XORG_MODULES {
                let name = name.replace("{version}", &self.version);
                let dest = root.join(dir);
                fs::create_dir_all(&dest).expect("create xorg module dir");
                fs::copy(artifacts.join("xorg").join(&name), dest.join(&name))
                    .expect("copy xorg module");
            }
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

pub(crate) fn mknod(path: &Path, major: u32, minor: u32) {
    mknod_mode(path, major, minor, 0o666);
}

pub(crate) fn mknod_mode(path: &Path, major: u32, minor: u32, mode: u32) {
    run_ok(
        Command::new("mknod")
            .args(["-m", &format!("{mode:o}")])
            .arg(path)
            .args(["c", &major.to_string(), &minor.to_string()]),
    );
}
