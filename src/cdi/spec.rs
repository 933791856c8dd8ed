//! The CDI document (SPEC.md "Specification"): its types in the spec's
//! field order, parsing with the reference library's strict checks
//! (`ValidateSpec`), rendering as YAML or JSON, and the atomic write of a
//! spec file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::name::{parse_kind, validate_device_name};
use super::CdiError;

/// Spec versions this parser reads (CDI SPEC.md "Version").
pub const KNOWN_CDI_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0",
];

/// The OCI hook stages a CDI hook may name.
const HOOK_STAGES: &[&str] = &[
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];

/// `null` (an empty YAML key) reads as the empty value, as Go's decoder
/// reads it as a nil slice or map.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A CDI spec file. Field order is the spec's (and its Go types').
/// Unknown fields are errors, as in the reference library's strict parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub devices: Vec<Device>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Edits::is_empty"
    )]
    pub container_edits: Edits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Device {
    pub name: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub container_edits: Edits,
}

/// CDI's `containerEdits`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Edits {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hooks: Vec<Hook>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mounts: Vec<Mount>,
    /// 0.6.0+; parsed so that a spec using it is understood, refused when
    /// applied (this runtime does not set RDT classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<Value>,
    /// 0.7.0+; refused when applied, like `intelRdt`.
    #[serde(
        default,
        rename = "additionalGids",
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub additional_gids: Vec<u32>,
    /// 1.0.0+; refused when applied, like `intelRdt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_devices: Option<Value>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self == &Edits::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceNode {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub options: Vec<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub mount_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// The serialisation of a spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// By file extension, as the CDI library reads spec dirs: `.json` is
    /// JSON, `.yaml` (and `.yml`) YAML; anything else is not a spec file.
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

impl Spec {
    /// Parses and validates a spec's text.
    pub fn parse(text: &str, format: Format) -> Result<Spec, String> {
        let spec: Spec = match format {
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string())?,
            Format::Yaml => serde_norway::from_str(text).map_err(|e| e.to_string())?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The text of the spec: YAML, or JSON indented; ends in a newline.
    pub fn render(&self, format: Format) -> Result<String, CdiError> {
        let encode = |format, message: String| CdiError::Encode { format, message };
        match format {
            Format::Yaml => {
                serde_norway::to_string(self).map_err(|e| encode("YAML", e.to_string()))
            }
            Format::Json => serde_json::to_string_pretty(self)
                .map(|text| text + "\n")
                .map_err(|e| encode("JSON", e.to_string())),
        }
    }

    /// The checks of the CDI library's `ValidateSpec`: a known version, a
    /// valid kind, valid and unique device names, well-formed edits.
    pub fn validate(&self) -> Result<(), String> {
        if !KNOWN_CDI_VERSIONS.contains(&self.cdi_version.as_str()) {
            return Err(format!(
                "cdiVersion \"{}\" is not one of {}",
                self.cdi_version,
                KNOWN_CDI_VERSIONS.join(", ")
            ));
        }
        parse_kind(&self.kind).map_err(|problem| format!("kind \"{}\": {problem}", self.kind))?;
        validate_edits(&self.container_edits)
            .map_err(|problem| format!("containerEdits: {problem}"))?;
        let mut seen = Vec::new();
        for device in &self.devices {
            validate_device_name(&device.name)
                .map_err(|problem| format!("device name \"{}\": {problem}", device.name))?;
            if seen.contains(&device.name.as_str()) {
                return Err(format!("device \"{}\" is listed twice", device.name));
            }
            seen.push(&device.name);
            validate_edits(&device.container_edits)
                .map_err(|problem| format!("device \"{}\": {problem}", device.name))?;
        }
        Ok(())
    }
}

fn validate_edits(edits: &Edits) -> Result<(), String> {
    for entry in &edits.env {
        if entry.split_once('=').is_none_or(|(key, _)| key.is_empty()) {
            return Err(format!("env entry \"{entry}\" is not KEY=VALUE"));
        }
    }
    for node in &edits.device_nodes {
        if !node.path.starts_with('/') {
            return Err(format!(
                "device node path \"{}\" is not absolute",
                node.path
            ));
        }
        if let Some(permissions) = &node.permissions {
            if permissions.is_empty() || !permissions.chars().all(|c| "rwm".contains(c)) {
                return Err(format!(
                    "device node {}: permissions \"{permissions}\" is not a combination of r, w, m",
                    node.path
                ));
            }
        }
    }
    for hook in &edits.hooks {
        if !HOOK_STAGES.contains(&hook.hook_name.as_str()) {
            return Err(format!(
                "hook {}: hookName \"{}\" is not one of {}",
                hook.path,
                hook.hook_name,
                HOOK_STAGES.join(", ")
            ));
        }
        if !hook.path.starts_with('/') {
            return Err(format!("hook path \"{}\" is not absolute", hook.path));
        }
        if hook.timeout.is_some_and(|t| t < 0) {
            return Err(format!("hook {}: timeout is negative", hook.path));
        }
    }
    for mount in &edits.mounts {
        if mount.host_path.is_empty() || mount.container_path.is_empty() {
            return Err("a mount without hostPath or containerPath".to_string());
        }
    }
    Ok(())
}

/// Writes `text` to `path` atomically with mode 0644: a temp file in the
/// same dir, fsync, rename, fsync the dir. Readers (an engine refreshing its
/// spec cache) see the old file or the new one, never half of one.
/// `Ok(false)`: the file already held `text`, and was left untouched.
pub fn write_spec_file(path: &Path, text: &str) -> Result<bool, CdiError> {
    // Unchanged content is not rewritten: the refresh unit runs at every
    // boot and driver change, and every rewrite wakes each engine's spec
    // dir watcher (and a reader could see the old inode go away).
    if spec_file_holds(path, text) {
        return Ok(false);
    }
    let options = crate::atomic::Options {
        // Set explicitly: the umask must not make the spec unreadable to an
        // engine running as another user.
        mode: 0o644,
        owner: None,
        // Engines read it after a reboot too (/etc/cdi).
        durability: crate::atomic::Durability::Crash,
    };
    crate::atomic::write(path, text.as_bytes(), &options).map_err(|source| CdiError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// Whether `path` is already a regular file of mode 0644 holding `text`
/// (a symlink, or a file of another mode or content, is rewritten).
fn spec_file_holds(path: &Path, text: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.permissions().mode() & 0o7777 != 0o644 {
        return false;
    }
    crate::bounded::read_file(path, crate::bounded::CDI_SPEC)
        .is_ok_and(|bytes| bytes == text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_render_round_trip() {
        let text = r#"
cdiVersion: 0.5.0
kind: example.com/device
devices:
- name: foo
  containerEdits:
    env: [FOO=1]
    deviceNodes:
    - path: /dev/foo
      type: c
      major: 1
      minor: 3
      permissions: rw
    mounts:
    - hostPath: /srv/foo
      containerPath: /foo
      options: [ro, bind]
containerEdits:
  hooks:
  - hookName: createContainer
    path: /usr/bin/true
    args: ["true"]
  env:
"#;
        let spec = Spec::parse(text, Format::Yaml).unwrap();
        assert_eq!(
            spec.devices[0].container_edits.device_nodes[0].major,
            Some(1)
        );
        for format in [Format::Yaml, Format::Json] {
            let rendered = spec.render(format).unwrap();
            assert_eq!(Spec::parse(&rendered, format).unwrap(), spec, "{rendered}");
        }
        let unknown = text.replace("kind:", "frobnicate: 1\nkind:");
        assert!(Spec::parse(&unknown, Format::Yaml)
            .unwrap_err()
            .contains("frobnicate"));
        let version = text.replace("0.5.0", "9.9.9");
        assert!(Spec::parse(&version, Format::Yaml)
            .unwrap_err()
            .contains("9.9.9"));
        let stage = text.replace("createContainer", "preStart");
        assert!(Spec::parse(&stage, Format::Yaml)
            .unwrap_err()
            .contains("preStart"));
    }
}
