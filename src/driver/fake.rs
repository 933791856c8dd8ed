//! A fake driver for unit tests that run as an ordinary user: procfs,
//! driver root and dev root in a temporary directory, the library files as
//! plain files listed in a real `ld.so.cache` (written with
//! [`crate::ldcache`]), and the device nodes as placeholder files that a
//! [`RecordingSystem`] reports as character devices. The integration tests
//! (`tests/common`) build the real thing: gcc-built libraries, mknod'ed
//! nodes, real runc.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ldcache::{CacheEntry, LdCache, FLAGS_X86_64_LIBC6};
use crate::system::{NodeStat, RecordingSystem};

use super::{Driver, Roots};

pub const VERSION: &str = "550.54.15";
pub const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

/// The GPUs: (procfs dir / bus id, UUID, device minor). Bus order is index
/// order, and the minors differ from the indices, as on real hosts.
pub const GPUS: &[(&str, &str, u32)] = &[
    (
        "0000:06:00.0",
        "GPU-11111111-1111-1111-1111-111111111111",
        3,
    ),
    (
        "0000:3b:00.0",
        "GPU-22222222-2222-2222-2222-222222222222",
        0,
    ),
];

/// `(SONAME, file name)` of each library, one or more per capability.
pub const LIBRARIES: &[(&str, &str)] = &[
    ("libcuda.so.1", "libcuda.so.550.54.15"),
    ("libnvidia-ml.so.1", "libnvidia-ml.so.550.54.15"),
    (
        "libnvidia-ptxjitcompiler.so.1",
        "libnvidia-ptxjitcompiler.so.550.54.15",
    ),
    ("libnvcuvid.so.1", "libnvcuvid.so.550.54.15"),
    ("libnvidia-encode.so.1", "libnvidia-encode.so.550.54.15"),
    ("libGLX_nvidia.so.0", "libGLX_nvidia.so.550.54.15"),
    ("libnvidia-ngx.so.1", "libnvidia-ngx.so.550.54.15"),
];

pub const NVIDIA_MAJOR: u64 = 195;
pub const UVM_MAJOR: u64 = 511;
pub const CAPS_MAJOR: u64 = 510;
pub const IMEX_MAJOR: u64 = 508;

/// The MIG capability minors (`mig-minors`) of GPU minor 3's gi 1 / ci 0.
pub const MIG_GI_MINOR: u32 = 30;
pub const MIG_CI_MINOR: u32 = 31;

/// A fake driver under a directory that is removed on drop.
pub struct FakeDriver {
    pub root: PathBuf,
    pub system: Arc<RecordingSystem>,
}

impl FakeDriver {
    /// Builds it under a fresh temp dir named after `name`.
    pub fn new(name: &str) -> FakeDriver {
        let root =
            std::env::temp_dir().join(format!("ncr-fake-driver-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let driver = FakeDriver {
            root,
            system: Arc::new(RecordingSystem::new()),
        };
        driver.write_procfs();
        driver.write_libraries();
        driver.write("usr/bin/nvidia-smi", b"");
        driver.write("usr/bin/nvidia-cuda-mps-control", b"");
        driver.node("nvidiactl", NVIDIA_MAJOR, 255);
        for (_, _, minor) in GPUS {
            driver.node(&format!("nvidia{minor}"), NVIDIA_MAJOR, u64::from(*minor));
        }
        driver.node("nvidia-uvm", UVM_MAJOR, 0);
        driver.node("nvidia-uvm-tools", UVM_MAJOR, 1);
        for minor in [MIG_GI_MINOR, MIG_CI_MINOR] {
            let name = format!("nvidia-caps/nvidia-cap{minor}");
            driver.node(&name, CAPS_MAJOR, u64::from(minor));
        }
        for channel in 0..2 {
            let name = format!("nvidia-caps-imex-channels/channel{channel}");
            driver.node(&name, IMEX_MAJOR, channel);
        }
        driver
    }

    pub fn roots(&self) -> Roots {
        Roots {
            driver_root: self.root.clone(),
            dev_root: self.root.clone(),
            proc_root: self.root.join("proc"),
            sys_root: self.root.join("sys"),
        }
    }

    pub fn discover(&self) -> Driver {
        Driver::discover_with(self.roots(), self.system.clone()).expect("fake driver discovery")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn write(&self, relative: &str, bytes: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/"))).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }

    /// A placeholder file under `dev/` that the system reports as a
    /// character device.
    pub fn node(&self, name: &str, major: u64, minor: u64) {
        let relative = format!("dev/{name}");
        self.write(&relative, b"");
        self.system
            .add_device_node(self.path(&relative), NodeStat::char_device(major, minor));
    }

    fn write_procfs(&self) {
        self.write(
            "proc/driver/nvidia/version",
            format!("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {VERSION}  Tue Mar  5 22:23:56 UTC 2024\n").as_bytes(),
        );
        self.write("proc/driver/nvidia/params", b"ModifyDeviceFiles: 1\n");
        for (bus, uuid, minor) in GPUS {
            let information = format!(
                "Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t {uuid}\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"
            );
            self.write(
                &format!("proc/driver/nvidia/gpus/{bus}/information"),
                information.as_bytes(),
            );
        }
        self.write(
            "proc/driver/nvidia-caps/mig-minors",
            format!("config 1\nmonitor 2\ngpu3/gi1/access {MIG_GI_MINOR}\ngpu3/gi1/ci0/access {MIG_CI_MINOR}\n").as_bytes(),
        );
        self.write(
            "proc/driver/nvidia/capabilities/gpu3/mig/gi1/access",
            b"DeviceFileMinor: 30\n",
        );
        self.write(
            "proc/driver/nvidia/capabilities/gpu3/mig/gi1/ci0/access",
            b"DeviceFileMinor: 31\n",
        );
    }

    fn write_libraries(&self) {
        let mut cache = LdCache::default();
        for (soname, file) in LIBRARIES {
            self.write(&format!("{LIB_DIR}/{file}"), b"\x7fELF");
            cache.add_or_replace(CacheEntry {
                flags: FLAGS_X86_64_LIBC6,
                key: soname.to_string(),
                value: format!("/{LIB_DIR}/{file}"),
                os_version: 0,
                hwcap: 0,
            });
        }
        self.write("etc/ld.so.cache", &cache.to_bytes());
    }
}

impl Drop for FakeDriver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
