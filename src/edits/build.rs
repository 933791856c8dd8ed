//! [`ContainerEdits::for_request`]: the device nodes, mounts and hook of
//! one GPU container, per capability (contract.md §3).

use std::path::{Path, PathBuf};

use crate::driver::{DeviceNode, Driver, DriverError, Library, LibraryArch, IMEX_CHANNEL_DIR};
use crate::request::{Capability, ImexChannels, Request};

use super::prestart::{prestart_hook, HookSettings};
use super::select::Selection;
use super::{
    ContainerEdits, EditsError, LibraryDirs, Mount, FILE_MOUNT_OPTIONS, IPC_MOUNT_OPTIONS,
};

/// An opt-in device family: enabled, its variable, what it is (for the
/// error), and the `(dir under /dev, name prefix)` patterns of its nodes.
type FeatureFamily = (
    bool,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

fn mount(host_path: &Path, container_path: &Path, options: &[&str]) -> Mount {
    Mount {
        mount_type: "bind".to_string(),
        host_path: host_path.to_path_buf(),
        container_path: container_path.to_path_buf(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

impl ContainerEdits {
    /// The edits for one GPU container. `rootfs_dirs` are the container's
    /// library dirs ([`LibraryDirs::for_rootfs`]).
    /// `hook`: where our prestart hook is; `None` leaves it out (CDI specs
    /// for engines that do not run our hook, and tests of the bare edits).
    pub fn for_request(
        driver: &Driver,
        request: &Request,
        selection: &Selection,
        rootfs_dirs: &LibraryDirs,
        hook: Option<&HookSettings>,
    ) -> Result<ContainerEdits, EditsError> {
        let capabilities = request.capabilities;
        let mut edits = ContainerEdits::default();
        let physical = selection.physical_gpus(driver);

        // Device nodes: the control node always, the selected GPUs (a MIG
        // device's parent too), and the nodes of the capabilities. Optional
        // nodes the host lacks are skipped (a host without nvidia-uvm loaded
        // still runs nvidia-smi).
        edits.add_node(driver.required_device_node("nvidiactl")?);
        for gpu in &physical {
            edits.add_node(driver.required_device_node(&format!("nvidia{}", gpu.minor))?);
        }
        let mut proc_files = Vec::new();
        if !selection.migs.is_empty() || request.mig_config || request.mig_monitor {
            let minors = driver.mig_minors()?;
            for mig in &selection.migs {
                // The GPU instance's and the compute instance's capability
                // nodes, as named in mig-minors (`gpu1/gi2/access`, ...).
                for file in driver.mig_access_files(mig)? {
                    let name = file
                        .trim_start_matches("capabilities/")
                        .replace("/mig/", "/");
                    edits.add_node(driver.mig_capability_node(&minors, &name)?);
                    proc_files.push(file);
                }
            }
            for (wanted, name) in [
                (request.mig_config, "config"),
                (request.mig_monitor, "monitor"),
            ] {
                if wanted {
                    edits.add_node(driver.mig_capability_node(&minors, name)?);
                    proc_files.push(format!("capabilities/mig/{name}"));
                }
            }
        }
        let mut optional = Vec::new();
        if capabilities.contains(Capability::Compute) {
            optional.extend(["nvidia-uvm", "nvidia-uvm-tools"]);
        }
        if capabilities.contains(Capability::Display) {
            optional.push("nvidia-modeset");
        }
        for name in optional {
            match driver.device_node(name)? {
                Some(node) => edits.add_node(node),
                None => tracing::warn!("optional device node /dev/{name} not found; skipped"),
            }
        }
        if capabilities.contains(Capability::Graphics) || capabilities.contains(Capability::Display)
        {
            // Only the selected GPUs' DRM nodes: a container must not render
            // on (or read the framebuffer of) a GPU it was not given.
            for gpu in &selection.gpus {
                for node in driver.drm_nodes(gpu)? {
                    edits.add_node(node);
                }
            }
        }
        edits.add_imex_channels(driver, request.imex_channels.as_ref())?;
        edits.add_feature_devices(driver, request)?;

        // Libraries: each real file mounted once, at its own name; our hook
        // links its SONAME (and the dev links NVIDIA's stack makes) to it and
        // lists the file in the container's ld.so.cache under its SONAME.
        // One mount per file: runc's bind mounts are most of what a GPU
        // container's start costs (issue 18).
        let graphics = capabilities.contains(Capability::Graphics)
            || capabilities.contains(Capability::Display);
        let mut cache_entries = Vec::new();
        // Symlinks our hook creates in the rootfs.
        let mut links = Vec::new();
        for library in driver.libraries(capabilities)? {
            let path = edits.add_library(&library, &rootfs_dirs.lib64, graphics, &mut links);
            cache_entries.push((library.soname.clone(), path));
            // Mesa's libgbm loads a driver's GBM backend from
            // <libdir>/gbm/<drm driver>_gbm.so; NVIDIA's is the allocator.
            if graphics && library.soname == "libnvidia-allocator.so.1" {
                links.push((
                    PathBuf::from("../libnvidia-allocator.so.1"),
                    rootfs_dirs.lib64.join("gbm/nvidia-drm_gbm.so"),
                ));
            }
        }
        if capabilities.contains(Capability::Compat32) {
            for library in driver.libraries_for(capabilities, LibraryArch::I386)? {
                edits.add_library(&library, &rootfs_dirs.lib32, graphics, &mut links);
            }
        }
        for binary in driver.binaries(capabilities) {
            edits.mounts.push(mount(
                &binary.host_path,
                &binary.container_path,
                FILE_MOUNT_OPTIONS,
            ));
        }
        for firmware in driver.firmware() {
            edits.mounts.push(mount(
                &firmware.host_path,
                &firmware.container_path,
                FILE_MOUNT_OPTIONS,
            ));
        }
        if graphics {
            let xorg = driver.xorg_modules();
            for file in driver.graphics_files().iter().chain(&xorg.files) {
                edits.mounts.push(mount(
                    &file.host_path,
                    &file.container_path,
                    FILE_MOUNT_OPTIONS,
                ));
            }
            links.extend(xorg.links);
        }
        for ipc in driver.ipc(capabilities) {
            edits.mounts.push(mount(
                &ipc.host_path,
                &ipc.container_path,
                IPC_MOUNT_OPTIONS,
            ));
        }
        if let Some(settings) = hook {
            let proc_dirs: Vec<&str> = physical.iter().map(|g| g.proc_dir_name.as_str()).collect();
            edits.hooks.push(prestart_hook(
                settings,
                &cache_entries,
                &proc_dirs,
                &proc_files,
                &links,
            ));
        }
        Ok(edits)
    }

    /// Adds a device node once (a MIG parent may be selected twice).
    fn add_node(&mut self, node: DeviceNode) {
        if !self.device_nodes.iter().any(|n| n.path == node.path) {
            self.device_nodes.push(node);
        }
    }

    /// Mounts `library` at its file name in `dir` and adds the links to it
    /// to `links`: its SONAME, and the dev links NVIDIA's stack creates
    /// (`libcuda.so` and `libnvidia-opticalflow.so`, which programs
    /// `dlopen`; with graphics, `libGLX_indirect.so.0`, GLVND's fallback
    /// for indirect GLX). Returns the mounted file's container path.
    fn add_library(
        &mut self,
        library: &Library,
        dir: &Path,
        graphics: bool,
        links: &mut Vec<(PathBuf, PathBuf)>,
    ) -> PathBuf {
        let file_name = library.file_name();
        let path = dir.join(&file_name);
        self.mounts
            .push(mount(&library.host_path, &path, FILE_MOUNT_OPTIONS));
        if library.soname != file_name {
            links.push((PathBuf::from(&file_name), dir.join(&library.soname)));
        }
        let dev_link = match library.soname.as_str() {
            "libcuda.so.1" => Some("libcuda.so"),
            "libnvidia-opticalflow.so.1" => Some("libnvidia-opticalflow.so"),
            "libGLX_nvidia.so.0" if graphics => Some("libGLX_indirect.so.0"),
            _ => None,
        };
        if let Some(name) = dev_link {
            links.push((PathBuf::from(&library.soname), dir.join(name)));
        }
        path
    }

    fn add_imex_channels(
        &mut self,
        driver: &Driver,
        channels: Option<&ImexChannels>,
    ) -> Result<(), EditsError> {
        const DIR: &str = IMEX_CHANNEL_DIR;
        match channels {
            None => {}
            Some(ImexChannels::All) => {
                for node in driver.device_nodes_with_prefix(DIR, "channel")? {
                    self.add_node(node);
                }
            }
            Some(ImexChannels::List(list)) => {
                for channel in list {
                    let name = format!("{DIR}/channel{channel}");
                    let node = driver.device_node(&name)?.ok_or_else(|| {
                        DriverError::MissingImexChannel {
                            channel: *channel,
                            path: driver.roots.dev_root.join("dev").join(&name),
                        }
                    })?;
                    self.add_node(node);
                }
            }
        }
        Ok(())
    }

    /// `NVIDIA_GDS`, `NVIDIA_MOFED`, `NVIDIA_NVSWITCH`, `NVIDIA_GDRCOPY`.
    fn add_feature_devices(
        &mut self,
        driver: &Driver,
        request: &Request,
    ) -> Result<(), EditsError> {
        let features = request.features;
        let families: [FeatureFamily; 4] = [
            (
                features.gds,
                "NVIDIA_GDS",
                "/dev/nvidia-fs*",
                &[("", "nvidia-fs")],
            ),
            (
                features.mofed,
                "NVIDIA_MOFED",
                "/dev/infiniband/uverbs* or rdma_cm",
                &[("infiniband", "uverbs"), ("infiniband", "rdma_cm")],
            ),
            (
                features.nvswitch,
                "NVIDIA_NVSWITCH",
                "/dev/nvidia-nvswitch*",
                &[("", "nvidia-nvswitch")],
            ),
            (
                features.gdrcopy,
                "NVIDIA_GDRCOPY",
                "/dev/gdrdrv",
                &[("", "gdrdrv")],
            ),
        ];
        for (enabled, variable, what, patterns) in families {
            if !enabled {
                continue;
            }
            let mut found = Vec::new();
            for (dir, prefix) in patterns {
                found.extend(driver.device_nodes_with_prefix(dir, prefix)?);
            }
            if found.is_empty() {
                return Err(DriverError::MissingFeatureDevices {
                    variable,
                    what,
                    dev_root: driver.roots.dev_root.clone(),
                }
                .into());
            }
            for node in found {
                self.add_node(node);
            }
        }
        Ok(())
    }
}
