//! `/proc/driver/nvidia` masked to the selected GPUs: a read-only tmpfs
//! over it in the container, holding `version`, `params` with
//! `ModifyDeviceFiles: 0` (CVE-2021-1056), `registry`, and the selected
//! GPUs' own dirs.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use serde_json::Value;

use crate::bounded::PROCFS_FILE;
use crate::system::{RealSystem, System};

use super::args::{is_relative_below, is_single_component};
use super::rootfs::is_absent;
use super::HookError;

/// Where the driver's procfs is, relative to a proc root or to a rootfs.
pub(super) const PROC_DRIVER_NVIDIA: &str = "driver/nvidia";

/// Mode of the files of the masked `/proc/driver/nvidia` (as in the driver's
/// procfs) and of its directories.
const MASKED_FILE_MODE: u32 = 0o444;
const MASKED_DIR_MODE: u32 = 0o555;

/// The line of `params` that lets a process with the control device create
/// device nodes for every GPU (CVE-2021-1056).
const MODIFY_DEVICE_FILES: &str = "ModifyDeviceFiles:";

/// The content of a masked `/proc/driver/nvidia`: paths relative to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedTree {
    /// Directories; a set of paths iterates parents first (`gpus`,
    /// `gpus/0000:06:00.0`).
    pub dirs: BTreeSet<PathBuf>,
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// `params` with the `ModifyDeviceFiles:` line set to 0 (appended if the
/// driver did not list it), every other line as it was.
pub fn mask_params(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 24);
    let mut found = false;
    for line in text.split_inclusive('\n') {
        if line.starts_with(MODIFY_DEVICE_FILES) {
            found = true;
            out.push_str(MODIFY_DEVICE_FILES);
            out.push_str(" 0\n");
        } else {
            out.push_str(line);
        }
    }
    if !found {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(MODIFY_DEVICE_FILES);
        out.push_str(" 0\n");
    }
    out
}

/// Reads what a container may see of the driver's procfs at `source`
/// (`<proc-root>/driver/nvidia`): `version`, `params` masked, `registry` if
/// present, every regular file of `gpus/<dir>` for the selected GPUs, and
/// the `extra_files` (relative paths, e.g. MIG capability files).
/// The procfs dirs (`0000:3b:00.0`) of the GPUs whose `/dev/nvidia<minor>`
/// nodes are in the spec's `linux.devices`, matched by `Device Minor` in
/// each GPU's `information`; sorted. Unreadable files count as no match:
/// the mask then shows fewer GPUs, never more.
pub fn gpu_dirs_from_devices(spec: &Value, proc_source: &Path) -> Vec<String> {
    let minors: Vec<u32> = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|device| device.get("path")?.as_str()?.strip_prefix("/dev/nvidia"))
        .filter(|suffix| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|suffix| suffix.parse().ok())
        .collect();
    if minors.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(proc_source.join("gpus")) else {
        return Vec::new();
    };
    let mut dirs: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let text =
                crate::bounded::read_file_to_string(&entry.path().join("information"), PROCFS_FILE)
                    .ok()?;
            let minor: u32 = crate::driver::parse_information(&text)
                .find(|(key, _)| *key == "Device Minor")?
                .1
                .parse()
                .ok()?;
            minors
                .contains(&minor)
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
        .collect();
    dirs.sort();
    dirs
}

/// What the mask shows: the GPU dirs and extra files the hook's argv
/// names (our runtime's entry), else what the spec's device nodes give (a
/// CDI spec's shared entry names none): [`gpu_dirs_from_devices`] and
/// [`mig_files_from_devices`].
pub fn mask_selection(
    spec: &Value,
    proc_source: &Path,
    named_gpus: &[String],
    named_files: &[PathBuf],
) -> (Vec<String>, Vec<PathBuf>) {
    if !named_gpus.is_empty() || !named_files.is_empty() {
        return (named_gpus.to_vec(), named_files.to_vec());
    }
    (
        gpu_dirs_from_devices(spec, proc_source),
        mig_files_from_devices(spec, proc_source),
    )
}

/// The MIG capability files (`capabilities/gpu0/mig/gi1/access`, ...) of
/// the `/dev/nvidia-caps/nvidia-cap<minor>` nodes in the spec's
/// `linux.devices`, through the driver's `nvidia-caps/mig-minors` next to
/// `proc_source`; sorted. CUDA finds a MIG device's nodes through these
/// files, so a container given the nodes by a CDI spec must see them. An
/// unreadable mig-minors gives none: the mask then shows less, never more.
pub fn mig_files_from_devices(spec: &Value, proc_source: &Path) -> Vec<PathBuf> {
    let minors: Vec<u32> = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|device| {
            device
                .get("path")?
                .as_str()?
                .strip_prefix("/dev/nvidia-caps/nvidia-cap")
        })
        .filter_map(|suffix| suffix.parse().ok())
        .collect();
    if minors.is_empty() {
        return Vec::new();
    }
    let Some(mig_minors_path) = proc_source
        .parent()
        .map(|driver| driver.join("nvidia-caps/mig-minors"))
    else {
        return Vec::new();
    };
    let Ok(text) = crate::bounded::read_file_to_string(&mig_minors_path, PROCFS_FILE) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = crate::driver::parse_mig_minors(&text)
        .into_iter()
        .filter(|(_, minor)| minors.contains(minor))
        .map(|(name, _)| PathBuf::from(crate::driver::mig_capability_proc_file(&name)))
        .filter(|file| is_relative_below(&file.to_string_lossy()))
        .collect();
    files.sort();
    files
}

pub fn read_masked_tree(
    source: &Path,
    gpu_dirs: &[String],
    extra_files: &[PathBuf],
) -> Result<MaskedTree, HookError> {
    let read = |relative: &Path| {
        let path = source.join(relative);
        crate::bounded::read_file(&path, PROCFS_FILE)
            .map_err(|source| HookError::ProcSource { path, source })
    };
    let mut tree = MaskedTree::default();
    tree.files
        .push(("version".into(), read(Path::new("version"))?));
    let params = match read(Path::new("params")) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(HookError::ProcSource { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            String::new()
        }
        Err(error) => return Err(error),
    };
    tree.files
        .push(("params".into(), mask_params(&params).into_bytes()));
    match read(Path::new("registry")) {
        Ok(bytes) => tree.files.push(("registry".into(), bytes)),
        Err(HookError::ProcSource { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if !gpu_dirs.is_empty() {
        tree.dirs.insert("gpus".into());
    }
    for gpu in gpu_dirs {
        if !is_single_component(gpu) {
            return Err(HookError::Args {
                problem: format!("--gpu \"{gpu}\" is not a procfs directory name"),
            });
        }
        let relative = Path::new("gpus").join(gpu);
        let dir = source.join(&relative);
        let entries = std::fs::read_dir(&dir).map_err(|source| HookError::ProcSource {
            path: dir.clone(),
            source,
        })?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HookError::ProcSource {
                path: dir.clone(),
                source,
            })?;
            let is_file = entry.file_type().is_ok_and(|t| t.is_file());
            if is_file {
                names.push(entry.file_name());
            }
        }
        names.sort();
        tree.dirs.insert(relative.clone());
        for name in names {
            let file = relative.join(&name);
            let bytes = read(&file)?;
            tree.files.push((file, bytes));
        }
    }
    for file in extra_files {
        let valid = file.to_str().is_some_and(is_relative_below);
        if !valid {
            return Err(HookError::Args {
                problem: format!(
                    "--proc-file \"{}\" is not a path below /proc/driver/nvidia",
                    file.display()
                ),
            });
        }
        if tree.files.iter().any(|(path, _)| path == file) {
            continue;
        }
        let mut parent = file.parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            tree.dirs.insert(dir.to_path_buf());
            parent = dir.parent();
        }
        let bytes = read(file)?;
        tree.files.push((file.clone(), bytes));
    }
    Ok(tree)
}

impl MaskedTree {
    /// Creates the tree inside the directory `dir` (which must not hold any
    /// of its names): files 0444, directories 0555, as in the driver's procfs.
    pub fn write_into(&self, system: &dyn System, dir: BorrowedFd<'_>) -> io::Result<()> {
        for relative in &self.dirs {
            system.make_directory(dir, relative, 0o755)?;
        }
        for (relative, bytes) in &self.files {
            let mut file = File::from(system.create_file(dir, relative, MASKED_FILE_MODE)?);
            file.write_all(bytes)?;
            file.set_permissions(std::fs::Permissions::from_mode(MASKED_FILE_MODE))?;
        }
        // Read-only last, deepest first, so that the files could be created.
        for relative in self.dirs.iter().rev() {
            system.set_mode(dir, relative, MASKED_DIR_MODE)?;
        }
        Ok(())
    }
}

/// Builds the masked tree of `source` (`<proc-root>/driver/nvidia`) in
/// `destination_dir`, an existing directory: what the hook puts on the
/// tmpfs over the container's `/proc/driver/nvidia`.
pub fn build_masked_tree(
    source: &Path,
    destination_dir: &Path,
    gpu_dirs: &[String],
) -> Result<MaskedTree, HookError> {
    let tree = read_masked_tree(source, gpu_dirs, &[])?;
    let mask_error = |action: String| move |source: io::Error| HookError::Mask { action, source };
    let dir = File::open(destination_dir)
        .map_err(mask_error(format!("open {}", destination_dir.display())))?;
    tree.write_into(&RealSystem, dir.as_fd())
        .map_err(mask_error(format!(
            "write into {}",
            destination_dir.display()
        )))?;
    Ok(tree)
}

/// Mounts a tmpfs over the container's `/proc/driver/nvidia` (nosuid, nodev,
/// noexec), fills it with `tree` and remounts it read-only. Returns false
/// when the container has no `/proc/driver/nvidia` (no driver loaded, or no
/// `/proc` mounted): then `tree`'s error, if any, does not matter.
///
/// Must run in the container's mount namespace, before `pivot_root`: the
/// mount targets are fds opened inside `root` (named to the kernel as
/// `/proc/self/fd/N`), so no path is resolved outside it.
///
/// `require_procfs`: refuse unless the container's `/proc` is a procfs (the
/// hook-only mode, where no runtime of ours decided the container's
/// mounts; runc CVE-2019-16884).
pub fn mask_proc_driver(
    system: &dyn System,
    root: BorrowedFd<'_>,
    tree: &Result<MaskedTree, HookError>,
    require_procfs: bool,
) -> Result<bool, HookError> {
    let relative = format!("proc/{PROC_DRIVER_NVIDIA}");
    let fail = |action: &str| {
        let action = action.to_string();
        move |errno: Errno| HookError::Mask {
            action,
            source: errno.into(),
        }
    };
    // Out of band, only a real procfs is masked: an image (or a volume,
    // or a tmpfs in the spec) that puts its own files at /proc must not
    // steer where the hook mounts.
    if require_procfs {
        match system.open_in_root(root, "proc", OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(proc) => {
                if !system
                    .is_procfs(proc.as_fd())
                    .map_err(fail("statfs /proc"))?
                {
                    return Err(HookError::Mask {
                        action: "check /proc".to_string(),
                        source: io::Error::other(
                            "the container's /proc is not a procfs (the image, a volume or the spec put something else there)",
                        ),
                    });
                }
            }
            Err(errno) if is_absent(errno) => return Ok(false),
            Err(errno) => return Err(fail("open /proc")(errno)),
        }
    }
    let target = match system.open_in_root(root, &relative, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(errno) if is_absent(errno) => return Ok(false),
        Err(errno) => return Err(fail("open /proc/driver/nvidia")(errno)),
    };
    let tree = match tree {
        Ok(tree) => tree,
        Err(error) => {
            // The container would see every GPU's procfs entry and a
            // ModifyDeviceFiles it can use: refuse to start it.
            return Err(HookError::Mask {
                action: "read the driver's procfs".to_string(),
                source: io::Error::other(crate::logging::error_chain(error)),
            });
        }
    };
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    system
        .mount_tmpfs(target.as_fd(), flags, "mode=0555,size=16m")
        .map_err(fail("mount a tmpfs"))?;
    // The fd still names the covered directory; the tmpfs is what a fresh
    // lookup of the same path now reaches.
    let masked = system
        .open_in_root(root, &relative, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(fail("open the new tmpfs"))?;
    if !system
        .is_tmpfs(masked.as_fd())
        .map_err(fail("statfs the new tmpfs"))?
    {
        return Err(fail("check the new tmpfs")(Errno::EXDEV));
    }
    tree.write_into(system, masked.as_fd())
        .map_err(|source| HookError::Mask {
            action: "fill the tmpfs".to_string(),
            source,
        })?;
    system
        .remount_read_only(masked.as_fd(), flags)
        .map_err(fail("remount the tmpfs read-only"))?;
    tracing::info!(
        "masked /proc/driver/nvidia: {} files in {} subdirs",
        tree.files.len(),
        tree.dirs.len()
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_masking() {
        assert_eq!(
            mask_params("A: 1\nModifyDeviceFiles: 1\nB: \"\"\n"),
            "A: 1\nModifyDeviceFiles: 0\nB: \"\"\n"
        );
        assert_eq!(mask_params("A: 1"), "A: 1\nModifyDeviceFiles: 0\n");
        assert_eq!(mask_params(""), "ModifyDeviceFiles: 0\n");
    }

    #[test]
    fn gpus_of_a_cdi_container_come_from_its_device_nodes() {
        let dir = std::env::temp_dir().join(format!("ncr-hook-gpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (bus, minor) in [("0000:06:00.0", 1), ("0000:3b:00.0", 0)] {
            let gpu = dir.join("gpus").join(bus);
            std::fs::create_dir_all(&gpu).unwrap();
            std::fs::write(
                gpu.join("information"),
                format!("Model: \t X\nDevice Minor: \t {minor}\n"),
            )
            .unwrap();
        }
        let spec = serde_json::json!({"linux": {"devices": [
            {"path": "/dev/nvidiactl"}, {"path": "/dev/nvidia0"}, {"path": "/dev/nvidia-uvm"}
        ]}});
        assert_eq!(gpu_dirs_from_devices(&spec, &dir), ["0000:3b:00.0"]);
        let none = serde_json::json!({"linux": {"devices": [{"path": "/dev/nvidiactl"}]}});
        assert!(gpu_dirs_from_devices(&none, &dir).is_empty());
        assert!(gpu_dirs_from_devices(&serde_json::json!({}), &dir).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mig_files_of_a_cdi_container_come_from_its_capability_nodes() {
        let dir = std::env::temp_dir().join(format!("ncr-hook-mig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let proc_source = dir.join("driver/nvidia");
        std::fs::create_dir_all(&proc_source).unwrap();
        std::fs::create_dir_all(dir.join("driver/nvidia-caps")).unwrap();
        std::fs::write(
            dir.join("driver/nvidia-caps/mig-minors"),
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu1/gi2/access 150\n",
        )
        .unwrap();
        let spec = serde_json::json!({"linux": {"devices": [
            {"path": "/dev/nvidia0"},
            {"path": "/dev/nvidia-caps/nvidia-cap13"},
            {"path": "/dev/nvidia-caps/nvidia-cap12"},
            {"path": "/dev/nvidia-caps/nvidia-cap2"},
            {"path": "/dev/nvidia-caps/nvidia-capx"}
        ]}});
        assert_eq!(
            mig_files_from_devices(&spec, &proc_source),
            [
                PathBuf::from("capabilities/gpu0/mig/gi1/access"),
                PathBuf::from("capabilities/gpu0/mig/gi1/ci0/access"),
                PathBuf::from("capabilities/mig/monitor"),
            ]
        );
        // The argv's own selection wins: our runtime's entry names them.
        let named = [PathBuf::from("capabilities/mig/config")];
        assert_eq!(
            mask_selection(&spec, &proc_source, &[], &named).1,
            named.to_vec()
        );
        // Without mig-minors the mask shows no MIG file (less, never more).
        std::fs::remove_file(dir.join("driver/nvidia-caps/mig-minors")).unwrap();
        assert!(mig_files_from_devices(&spec, &proc_source).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
