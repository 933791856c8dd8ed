//! Our edits in CDI's terms and back: [`to_cdi`] for generated specs, and
//! [`ContainerEdits::from_cdi`] for the edits that CDI names resolved to,
//! so that [`crate::oci::patch`] applies them like our own (it already
//! follows CDI's rules: env add-or-replace by key, device nodes replace by
//! path plus a cgroup allow rule, mounts replace by container path, hooks
//! appended).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::cdi;
use crate::driver::{DeviceNode, FULL_ACCESS};

use super::{ContainerEdits, EditsError, Hook, Mount};

impl ContainerEdits {
    /// The edits that CDI names resolved to ([`cdi::Registry::resolve`]),
    /// as our model. An edit this runtime cannot apply is an error naming
    /// the device and the spec file.
    pub fn from_cdi(resolved: &cdi::Resolved) -> Result<ContainerEdits, EditsError> {
        let mut edits = ContainerEdits::default();
        for part in &resolved.parts {
            edits.add_cdi(&part.edits, &part.name, &part.path)?;
        }
        Ok(edits)
    }

    fn add_cdi(&mut self, edits: &cdi::Edits, name: &str, path: &Path) -> Result<(), EditsError> {
        let bad = |problem: String| EditsError::CdiEdit {
            name: name.to_string(),
            path: path.to_path_buf(),
            problem,
        };
        if edits.intel_rdt.is_some()
            || !edits.additional_gids.is_empty()
            || edits.net_devices.is_some()
        {
            return Err(bad(
                "it uses intelRdt, additionalGids or netDevices, which this runtime cannot apply; \
                 let the engine apply the spec, or remove them"
                    .to_string(),
            ));
        }
        self.env.extend(edits.env.iter().cloned());
        for node in &edits.device_nodes {
            self.device_nodes.push(device_node(node).map_err(&bad)?);
        }
        for mount in &edits.mounts {
            self.mounts.push(Mount {
                host_path: PathBuf::from(&mount.host_path),
                container_path: PathBuf::from(&mount.container_path),
                options: mount.options.clone(),
                mount_type: mount
                    .mount_type
                    .clone()
                    .unwrap_or_else(|| "bind".to_string()),
            });
        }
        for hook in &edits.hooks {
            let timeout = hook
                .timeout
                .map(u32::try_from)
                .transpose()
                .map_err(|_| bad(format!("hook {}: timeout out of range", hook.path)))?;
            self.hooks.push(Hook {
                hook_name: hook.hook_name.clone(),
                path: PathBuf::from(&hook.path),
                args: hook.args.clone(),
                env: hook.env.clone(),
                timeout,
            });
        }
        Ok(())
    }
}

/// A CDI device node as our model's node: what the spec leaves out (type,
/// major, minor, file mode) is read from the host node, as the CDI library
/// does when it applies a spec.
fn device_node(node: &cdi::DeviceNode) -> Result<DeviceNode, String> {
    let host_path = PathBuf::from(node.host_path.as_deref().unwrap_or(&node.path));
    let needs_stat = node.node_type.is_none()
        || node.major.is_none()
        || node.minor.is_none()
        || node.file_mode.is_none();
    let stat = if needs_stat {
        match std::fs::metadata(&host_path) {
            Ok(meta) => Some(meta),
            // Everything but the mode is given: 0666, runc's default.
            Err(_) if node.node_type.is_some() && node.major.is_some() && node.minor.is_some() => {
                None
            }
            Err(error) => {
                return Err(format!(
                    "device node {}: cannot stat {}: {error}; is the device present on this host?",
                    node.path,
                    host_path.display()
                ))
            }
        }
    } else {
        None
    };
    let node_type = match (&node.node_type, &stat) {
        (Some(t), _) => t.clone(),
        (None, Some(meta)) if meta.file_type().is_char_device() => "c".to_string(),
        (None, Some(meta)) if meta.file_type().is_block_device() => "b".to_string(),
        (None, _) => {
            return Err(format!(
                "device node {}: {} is not a device",
                node.path,
                host_path.display()
            ))
        }
    };
    if node_type != "c" {
        return Err(format!(
            "device node {} is of type \"{node_type}\"; this runtime injects character devices only",
            node.path
        ));
    }
    let rdev = stat.as_ref().map(|meta| meta.rdev());
    let number = |given: Option<i64>, from_stat: fn(u64) -> u64, what: &str| match (given, rdev) {
        (Some(n), _) => {
            u64::try_from(n).map_err(|_| format!("device node {}: negative {what}", node.path))
        }
        (None, Some(rdev)) => Ok(from_stat(rdev)),
        (None, None) => Err(format!("device node {}: no {what}", node.path)),
    };
    Ok(DeviceNode {
        path: PathBuf::from(&node.path),
        host_path: host_path.clone(),
        major: number(node.major, nix::sys::stat::major, "major")?,
        minor: number(node.minor, nix::sys::stat::minor, "minor")?,
        // Go's os.FileMode keeps the permission bits in the low 9 bits.
        file_mode: node
            .file_mode
            .or_else(|| stat.as_ref().map(|meta| meta.mode()))
            .map_or(0o666, |mode| mode & 0o777),
        uid: node.uid.unwrap_or(0),
        gid: node.gid.unwrap_or(0),
        permissions: node
            .permissions
            .clone()
            .unwrap_or_else(|| FULL_ACCESS.to_string()),
    })
}

/// `edits` less everything `common` already has (hooks are never per
/// device, see [`super::generate::generate`]).
pub fn without(edits: &ContainerEdits, common: &ContainerEdits) -> ContainerEdits {
    ContainerEdits {
        env: edits
            .env
            .iter()
            .filter(|e| !common.env.contains(e))
            .cloned()
            .collect(),
        device_nodes: edits
            .device_nodes
            .iter()
            .filter(|n| !common.device_nodes.iter().any(|c| c.path == n.path))
            .cloned()
            .collect(),
        mounts: edits
            .mounts
            .iter()
            .filter(|m| !common.mounts.contains(m))
            .cloned()
            .collect(),
        hooks: Vec::new(),
    }
}

/// Our edits in CDI's terms. Device nodes carry only `path` and `hostPath`,
/// as the anchor's do: the engine stats the host node when it applies the
/// spec, so a node whose major is allocated at module load (nvidia-uvm)
/// stays right after a reboot.
pub fn to_cdi(edits: &ContainerEdits) -> cdi::Edits {
    let text = |path: &Path| path.to_string_lossy().into_owned();
    cdi::Edits {
        env: edits.env.clone(),
        device_nodes: edits
            .device_nodes
            .iter()
            .map(|node| cdi::DeviceNode {
                path: text(&node.path),
                host_path: Some(text(&node.host_path)),
                node_type: None,
                major: None,
                minor: None,
                file_mode: None,
                permissions: None,
                uid: None,
                gid: None,
            })
            .collect(),
        hooks: edits
            .hooks
            .iter()
            .map(|hook| cdi::Hook {
                hook_name: hook.hook_name.clone(),
                path: text(&hook.path),
                args: hook.args.clone(),
                env: hook.env.clone(),
                timeout: hook.timeout.map(i64::from),
            })
            .collect(),
        mounts: edits
            .mounts
            .iter()
            .map(|mount| cdi::Mount {
                host_path: text(&mount.host_path),
                container_path: text(&mount.container_path),
                options: mount.options.clone(),
                mount_type: None,
            })
            .collect(),
        intel_rdt: None,
        additional_gids: Vec::new(),
        net_devices: None,
    }
}
