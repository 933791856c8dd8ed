//! Device nodes under the dev root: the control and GPU nodes, MIG
//! capability nodes (`/proc/driver/nvidia-caps/mig-minors`), a GPU's DRM
//! nodes (from sysfs), and node families by name prefix (IMEX channels,
//! GDS, MOFED, NVSwitch, GDRCopy). Each is stat'ed through the driver's
//! [`crate::system::System`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::bounded::PROCFS_FILE;
use crate::confined;

use super::{Driver, DriverError, Gpu};

/// A character device node found under the dev root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container (`/dev/nvidia0`).
    pub path: PathBuf,
    /// Path on the host (under the dev root).
    pub host_path: PathBuf,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the host node.
    pub file_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup access the container gets (`rwm`; CDI's `permissions`).
    pub permissions: String,
}

/// The dir under `/dev` of the IMEX channel nodes (`channel<N>`).
pub const IMEX_CHANNEL_DIR: &str = "nvidia-caps-imex-channels";

/// The cgroup access of an injected device node: everything, as runc gives
/// the nodes of its own default device list.
pub const FULL_ACCESS: &str = "rwm";

impl Driver {
    /// Stats `/dev/<name>` under the dev root. `Ok(None)`: it does not exist.
    pub fn device_node(&self, name: &str) -> Result<Option<DeviceNode>, DriverError> {
        let container_path = Path::new("/dev").join(name);
        let host_path = confined::resolve(&self.roots.dev_root, &container_path)
            .unwrap_or_else(|_| self.roots.dev_root.join("dev").join(name));
        let stat = match self.system.device_node(&host_path) {
            Ok(Some(stat)) => stat,
            Ok(None) => return Ok(None),
            Err(source) => {
                return Err(DriverError::Read {
                    path: host_path,
                    source,
                })
            }
        };
        if !stat.is_char_device {
            return Err(DriverError::NotADevice { path: host_path });
        }
        Ok(Some(DeviceNode {
            path: container_path,
            host_path,
            major: stat.major,
            minor: stat.minor,
            file_mode: stat.mode,
            uid: stat.uid,
            gid: stat.gid,
            permissions: FULL_ACCESS.to_string(),
        }))
    }

    /// Like [`Driver::device_node`], but a missing node is an error.
    pub fn required_device_node(&self, name: &str) -> Result<DeviceNode, DriverError> {
        self.device_node(name)?
            .ok_or_else(|| DriverError::MissingNode {
                path: self.roots.dev_root.join("dev").join(name),
            })
    }
}

/// The lines of `/proc/driver/nvidia-caps/mig-minors` (`gpu0/gi1/access
/// 3`): capability name -> minor of its `nvidia-caps/nvidia-cap<minor>`.
pub fn parse_mig_minors(text: &str) -> HashMap<String, u32> {
    text.lines()
        .filter_map(|line| {
            let (name, minor) = line.trim().rsplit_once(char::is_whitespace)?;
            Some((name.trim().to_string(), minor.trim().parse().ok()?))
        })
        .collect()
}

/// The file under `/proc/driver/nvidia` of a MIG capability named as in
/// mig-minors: `gpu0/gi1/ci0/access` -> `capabilities/gpu0/mig/gi1/ci0/access`,
/// `config` -> `capabilities/mig/config`. CUDA reads it to find the
/// capability's node.
pub fn mig_capability_proc_file(name: &str) -> String {
    match name.split_once('/') {
        Some((gpu, rest)) if gpu.starts_with("gpu") => format!("capabilities/{gpu}/mig/{rest}"),
        _ => format!("capabilities/mig/{name}"),
    }
}

/// One MIG device: a GPU instance / compute instance of a parent GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDevice {
    /// Index of the parent GPU in [`Driver::gpus`].
    pub parent_index: usize,
    pub gpu_instance: u32,
    pub compute_instance: u32,
    pub uuid: String,
}

impl Driver {
    /// `/proc/driver/nvidia-caps/mig-minors`: `name -> minor` of every
    /// MIG capability (`config`, `monitor`, `gpu0/gi1/access`, ...).
    pub fn mig_minors(&self) -> Result<HashMap<String, u32>, DriverError> {
        let path = self.roots.proc_root.join("driver/nvidia-caps/mig-minors");
        let text = crate::bounded::read_file_to_string(&path, PROCFS_FILE).map_err(|source| {
            DriverError::Read {
                path: path.clone(),
                source,
            }
        })?;
        Ok(parse_mig_minors(&text))
    }

    /// The `nvidia-caps` node of a MIG capability named as in mig-minors.
    pub fn mig_capability_node(
        &self,
        minors: &HashMap<String, u32>,
        name: &str,
    ) -> Result<DeviceNode, DriverError> {
        let minor = minors
            .get(name)
            .ok_or_else(|| DriverError::MissingMigMinor {
                path: self.roots.proc_root.join("driver/nvidia-caps/mig-minors"),
                key: name.to_string(),
            })?;
        self.required_device_node(&format!("nvidia-caps/nvidia-cap{minor}"))
    }

    /// The capability files of a MIG device relative to
    /// `/proc/driver/nvidia` (`capabilities/gpu1/mig/gi2/access`, and the
    /// compute instance's), after checking the instance exists.
    pub fn mig_access_files(&self, mig: &MigDevice) -> Result<[String; 2], DriverError> {
        let gpu_minor = self
            .gpus
            .get(mig.parent_index)
            .map(|gpu| gpu.minor)
            .unwrap_or_default();
        let gi = format!(
            "capabilities/gpu{gpu_minor}/mig/gi{}/access",
            mig.gpu_instance
        );
        let ci = format!(
            "capabilities/gpu{gpu_minor}/mig/gi{}/ci{}/access",
            mig.gpu_instance, mig.compute_instance
        );
        let ci_path = self.roots.proc_root.join("driver/nvidia").join(&ci);
        if !ci_path.exists() {
            return Err(DriverError::MissingMigInstance {
                gpu_minor,
                gi: mig.gpu_instance,
                ci: mig.compute_instance,
                path: ci_path,
            });
        }
        Ok([gi, ci])
    }

    /// Whether a GPU has MIG GPU instances, from the driver's procfs
    /// (`capabilities/gpu<minor>/mig/gi<N>`): asked before NVML is loaded,
    /// so that a host without MIG never loads it to list none.
    pub fn has_mig_instances(&self, gpu: &Gpu) -> bool {
        let dir = self
            .roots
            .proc_root
            .join("driver/nvidia/capabilities")
            .join(format!("gpu{}", gpu.minor))
            .join("mig");
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .any(|entry| entry.file_name().to_string_lossy().starts_with("gi"))
        })
    }

    /// Every NVIDIA device node a management container (a monitoring
    /// agent such as DCGM) gets, found on the dev root without NVML as
    /// NVIDIA's management specs are: `/dev/nvidia*` (control, GPUs, uvm,
    /// modeset), `nvidia-caps/nvidia-cap*` and
    /// `nvidia-caps-imex-channels/channel*`; not the GPUDirect Storage,
    /// NVSwitch and NVLink nodes, which NVIDIA's leave out too. Sorted by
    /// path; entries that are not character devices are skipped.
    pub fn management_nodes(&self) -> Result<Vec<DeviceNode>, DriverError> {
        use std::os::unix::fs::FileTypeExt;
        const LEFT_OUT: &[&str] = &["nvidia-fs", "nvidia-nvswitch", "nvidia-nvlink"];
        let mut nodes = Vec::new();
        for (dir, prefix) in [
            ("", "nvidia"),
            ("nvidia-caps", "nvidia-cap"),
            (IMEX_CHANNEL_DIR, "channel"),
        ] {
            let base = self.roots.dev_root.join("dev").join(dir);
            let Ok(entries) = std::fs::read_dir(&base) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_type().is_ok_and(|t| t.is_char_device()))
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .filter(|name| !LEFT_OUT.iter().any(|left_out| name.starts_with(left_out)))
                .collect();
            names.sort();
            for name in names {
                let relative = match dir {
                    "" => name,
                    _ => format!("{dir}/{name}"),
                };
                if let Some(node) = self.device_node(&relative)? {
                    nodes.push(node);
                }
            }
        }
        Ok(nodes)
    }

    /// The DRM card and render nodes of a GPU, from
    /// `<sys>/bus/pci/devices/<bus>/drm/`; none when the GPU has no DRM
    /// device (compute-only boards, or nvidia-drm not loaded).
    pub fn drm_nodes(&self, gpu: &Gpu) -> Result<Vec<DeviceNode>, DriverError> {
        let dir = self
            .roots
            .sys_root
            .join("bus/pci/devices")
            .join(gpu.bus_id.to_string())
            .join("drm");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with("card") || name.starts_with("renderD"))
            .collect();
        names.sort();
        let mut nodes = Vec::new();
        for name in names {
            if let Some(node) = self.device_node(&format!("dri/{name}"))? {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    /// Every node under the dev root's `/dev/<dir>` whose name starts with
    /// `prefix` (`nvidia-fs` -> nvidia-fs0, nvidia-fs1, ...), sorted.
    pub fn device_nodes_with_prefix(
        &self,
        dir: &str,
        prefix: &str,
    ) -> Result<Vec<DeviceNode>, DriverError> {
        let base = self.roots.dev_root.join("dev").join(dir);
        let Ok(entries) = std::fs::read_dir(&base) else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        let mut nodes = Vec::new();
        for name in names {
            let relative = if dir.is_empty() {
                name
            } else {
                format!("{dir}/{name}")
            };
            if let Some(node) = self.device_node(&relative)? {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }
}
