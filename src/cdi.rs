//! CDI (the Container Device Interface): specs written from the discovered
//! driver, and CDI device requests resolved from the spec dirs.
//!
//! This module owns the CDI spec format (cdiVersion, kind, devices,
//! containerEdits: env, deviceNodes, hooks, mounts), qualified device names
//! (`vendor/class=name`), the spec registry (the configured spec dirs, later
//! dirs overriding earlier ones, broken files reported without hiding the
//! good ones), `nvidia-ctk cdi generate` / `cdi list`, and the runtime's CDI
//! mode: which names a request resolves to ([`plan`]) and their application
//! to `config.json` ([`inject`]).
//!
//! One model: a generated spec is made of [`ContainerEdits::for_request`]
//! output (the same discovery and mount rules as the runtime's own patch),
//! and resolved CDI edits are turned back into [`ContainerEdits`] and applied
//! by [`crate::spec::apply`], which already follows CDI's rules (env
//! add-or-replace by key, device nodes replace by path plus a cgroup allow
//! rule, mounts replace by container path, hooks appended). Spec format:
//! <https://github.com/cncf-tags/container-device-interface/blob/main/SPEC.md>.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::{Config, Mode};
use crate::driver::{Driver, LibraryArch};
use crate::driver_api::MigInfo;
use crate::edits::{
    select_devices, ContainerEdits, EditsError, HookSettings, LibraryDirs, MigLookup,
};
use crate::request::{Capabilities, DeviceId, Devices, Request, RequestError};
use crate::spec::SpecError;

/// The version generated specs declare. 0.5.0 is the first with
/// `deviceNodes[].hostPath` (which a driver root or dev root needs), and the
/// newest that podman 4.3's CDI library (Debian 12) accepts.
pub const GENERATED_CDI_VERSION: &str = "0.5.0";

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

/// The name of the device that holds every GPU's edits.
pub const ALL_DEVICE: &str = "all";

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("{what} \"{name}\" is not valid: {problem}")]
    BadName {
        what: &'static str,
        name: String,
        problem: String,
    },
    #[error("CDI device {name} is not defined in any spec in {dirs}{hint}: write a spec for it (NVIDIA GPUs: nvidia-ctk cdi generate --output /var/run/cdi/nvidia.yaml), or request a device that nvidia-ctk cdi list shows")]
    Unresolvable {
        name: String,
        dirs: String,
        hint: String,
    },
    #[error("CDI device {name} is defined only in {path}, which is not a valid CDI spec ({problem}): fix or remove that file")]
    OnlyInBroken {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("CDI device {name} is defined twice in {dir}: in {first} and in {second}; remove one of them")]
    Conflict {
        name: String,
        dir: PathBuf,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("CDI device {name} ({path}): {problem}")]
    BadEdit {
        name: String,
        path: PathBuf,
        problem: String,
    },
    #[error("the container asks for CDI devices {names}, but mode = \"{mode}\" in config.toml: set mode = \"cdi\" or \"auto\" in [nvidia-container-runtime], or request GPUs by index or UUID")]
    NotCdiMode { names: String, mode: &'static str },
    #[error("{source_name} mixes CDI device names ({cdi}) with GPU ids ({legacy}): request either kind alone, or set mode = \"cdi\" in [nvidia-container-runtime] (GPU ids then mean {default_kind}=<id>)")]
    Mixed {
        source_name: String,
        cdi: String,
        legacy: String,
        default_kind: String,
    },
    #[error("default-kind \"{kind}\" in [nvidia-container-runtime.modes.cdi] of config.toml is not a CDI kind: use vendor/class, e.g. nvidia.com/gpu")]
    BadDefaultKind { kind: String },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Edits(#[from] EditsError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot encode the CDI spec as {format}: {message}")]
    Encode {
        format: &'static str,
        message: String,
    },
    #[error("cannot write {path}: {source}; any previous file there was left as it was")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------
// The spec format (SPEC.md "Specification")
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Names (SPEC.md "Kind", "Devices"; the CDI library's parser package)
// ---------------------------------------------------------------------------

/// A parsed `vendor/class=name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.kind, self.name)
    }
}

/// Whether a request item is meant as a CDI name: it has the `/` of a kind
/// and the `=` before the device name (no GPU id has either).
pub fn looks_qualified(item: &str) -> bool {
    item.contains('/') && item.contains('=')
}

/// Parses and validates a fully qualified device name.
pub fn parse_qualified_name(text: &str) -> Result<QualifiedName, CdiError> {
    let bad = |problem: String| CdiError::BadName {
        what: "CDI device name",
        name: text.to_string(),
        problem: format!("{problem}; use vendor/class=name, e.g. nvidia.com/gpu=0"),
    };
    let (kind, name) = text
        .split_once('=')
        .ok_or_else(|| bad("it has no =".to_string()))?;
    parse_kind(kind).map_err(&bad)?;
    validate_device_name(name).map_err(|problem| bad(format!("device name: {problem}")))?;
    Ok(QualifiedName {
        kind: kind.to_string(),
        name: name.to_string(),
    })
}

/// `vendor/class`: the vendor a domain-like name (letters, digits, `-`,
/// `_`, `.`; starts with a letter, ends alphanumeric), the class letters,
/// digits, `-`, `_` (starts with a letter, ends alphanumeric).
pub fn parse_kind(kind: &str) -> Result<(&str, &str), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| "a kind is vendor/class, and this has no /".to_string())?;
    check_chars(vendor, "vendor", |c| c == '-' || c == '_' || c == '.')?;
    check_chars(class, "class", |c| c == '-' || c == '_')?;
    Ok((vendor, class))
}

/// A device name: letters, digits, `-`, `_`, `.`, `:`; starts and ends
/// alphanumeric.
pub fn validate_device_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".to_string());
    }
    let first_last_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_last_ok(name.chars().next()) || !first_last_ok(name.chars().last()) {
        return Err("it must start and end with a letter or digit".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!("'{bad}' is not allowed (letters, digits, - _ . :)"));
    }
    Ok(())
}

fn check_chars(part: &str, what: &str, extra: impl Fn(char) -> bool) -> Result<(), String> {
    let mut chars = part.chars();
    match chars.next() {
        None => return Err(format!("the {what} is empty")),
        Some(first) if !first.is_ascii_alphabetic() => {
            return Err(format!("the {what} must start with a letter"))
        }
        Some(_) => {}
    }
    if !part
        .chars()
        .last()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!("the {what} must end with a letter or digit"));
    }
    if let Some(bad) = part
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || extra(c)))
    {
        return Err(format!("'{bad}' is not allowed in the {what}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------

/// How generated devices are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameStrategy {
    /// `0`, `1`, ... (the NVML index).
    Index,
    /// `GPU-<uuid>`.
    Uuid,
    /// Both, index first.
    Both,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub vendor: String,
    pub class: String,
    pub strategy: NameStrategy,
    /// Our prestart hook: it writes the container's ld.so.cache and masks
    /// `/proc/driver/nvidia` when an engine applies the spec itself.
    pub hook: HookSettings,
}

/// MIG devices are not part of generated specs: nothing may look one up.
struct NoMig;

impl MigLookup for NoMig {
    fn mig_by_uuid(&mut self, uuid: &str) -> Result<MigInfo, String> {
        Err(format!(
            "MIG device {uuid}: generated specs hold whole GPUs only"
        ))
    }
    fn mig_by_index(&mut self, _parent: &str, index: u32) -> Result<Option<MigInfo>, String> {
        Err(format!(
            "MIG device {index}: generated specs hold whole GPUs only"
        ))
    }
}

/// The container library dirs of a generated spec: where the driver keeps
/// its libraries on the host, seen from the driver root (the anchor's
/// choice too). A spec is written before any image is known, so the image's
/// own layout cannot be asked; our hook's ld.so.cache makes the libraries
/// resolve in any glibc image.
fn library_dirs(driver: &Driver, capabilities: Capabilities) -> Result<LibraryDirs, CdiError> {
    let dir_of = |arch, fallback: &str| -> Result<PathBuf, CdiError> {
        let libraries = driver
            .libraries_for(capabilities, arch)
            .map_err(EditsError::from)?;
        let dir = libraries
            .iter()
            .filter_map(|library| library.host_path.parent())
            .filter_map(|dir| dir.strip_prefix(&driver.roots.driver_root).ok())
            .map(|relative| Path::new("/").join(relative))
            .next();
        Ok(dir.unwrap_or_else(|| PathBuf::from(fallback)))
    };
    Ok(LibraryDirs {
        lib64: dir_of(LibraryArch::X86_64, "/usr/lib/x86_64-linux-gnu")?,
        lib32: if capabilities.contains(crate::request::Capability::Compat32) {
            dir_of(LibraryArch::I386, "/usr/lib/i386-linux-gnu")?
        } else {
            PathBuf::from("/usr/lib/i386-linux-gnu")
        },
    })
}

/// The spec for this host: one device per GPU (named per `strategy`), an
/// `all` device, and the common edits (control nodes, libraries, binaries,
/// firmware, IPC sockets, our hook) that every device needs.
///
/// Every part is [`ContainerEdits::for_request`] output: the common edits
/// are a request for no GPU with every capability the config allows; a
/// device's edits are what a request for that GPU (or for all) adds to
/// them. The hook is only in the common edits, without `--gpu`: hooks of
/// several devices would each mount their own `/proc/driver/nvidia` mask
/// over the previous one. Given no `--gpu`, the hook shows the procfs dirs
/// of the GPUs whose `/dev/nvidia<minor>` nodes are in the container's
/// spec (`hook::gpu_dirs_from_devices`), never another GPU's.
pub fn generate(
    driver: &Driver,
    config: &Config,
    options: &GenerateOptions,
) -> Result<Spec, CdiError> {
    let kind = format!("{}/{}", options.vendor, options.class);
    parse_kind(&kind).map_err(|problem| CdiError::BadName {
        what: "CDI kind",
        name: kind.clone(),
        problem,
    })?;
    let capabilities = Capabilities::parse(
        &config.supported_driver_capabilities,
        "supported-driver-capabilities in config.toml",
    )?;
    let dirs = library_dirs(driver, capabilities)?;
    let edits_for = |devices: Devices, hook: Option<&HookSettings>| {
        let request = Request::for_devices(devices, capabilities, "nvidia-ctk cdi generate");
        let selection = select_devices(driver, &request, &mut NoMig)?;
        ContainerEdits::for_request(driver, &request, &selection, &dirs, hook)
    };
    let common = edits_for(Devices::NoGpu, Some(&options.hook))?;
    let mut devices = Vec::new();
    for gpu in &driver.gpus {
        let edits = edits_for(Devices::List(vec![DeviceId::Index(gpu.index as u32)]), None)?;
        let edits = to_cdi(&without(&edits, &common));
        let names = match options.strategy {
            NameStrategy::Index => vec![gpu.index.to_string()],
            NameStrategy::Uuid => vec![gpu.uuid.clone()],
            NameStrategy::Both => vec![gpu.index.to_string(), gpu.uuid.clone()],
        };
        for name in names {
            validate_device_name(&name).map_err(|problem| CdiError::BadName {
                what: "generated device name",
                name: name.clone(),
                problem,
            })?;
            devices.push(Device {
                name,
                annotations: BTreeMap::new(),
                container_edits: edits.clone(),
            });
        }
    }
    if !driver.gpus.is_empty() {
        let all = edits_for(Devices::All, None)?;
        devices.push(Device {
            name: ALL_DEVICE.to_string(),
            annotations: BTreeMap::new(),
            container_edits: to_cdi(&without(&all, &common)),
        });
    }
    let mut container_edits = to_cdi(&common);
    // An engine that applied this spec has done the injection: a legacy
    // runtime or hook that also sees the container (docker's default
    // runtime is nvidia, say) must not inject a second time. The anchor's
    // specs carry the same entry.
    container_edits
        .env
        .insert(0, format!("{}=void", crate::request::VISIBLE_DEVICES));
    Ok(Spec {
        cdi_version: GENERATED_CDI_VERSION.to_string(),
        kind,
        annotations: BTreeMap::new(),
        devices,
        container_edits,
    })
}

/// `edits` less everything `common` already has (hooks are never per
/// device, see [`generate`]).
fn without(edits: &ContainerEdits, common: &ContainerEdits) -> ContainerEdits {
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
fn to_cdi(edits: &ContainerEdits) -> Edits {
    let text = |path: &Path| path.to_string_lossy().into_owned();
    Edits {
        env: edits.env.clone(),
        device_nodes: edits
            .device_nodes
            .iter()
            .map(|node| DeviceNode {
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
            .map(|hook| Hook {
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
            .map(|mount| Mount {
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

/// Writes `text` to `path` atomically with mode 0644: a temp file in the
/// same dir, fsync, rename, fsync the dir. Readers (an engine refreshing its
/// spec cache) see the old file or the new one, never half of one.
pub fn write_spec_file(path: &Path, text: &str) -> Result<(), CdiError> {
    let options = crate::atomic::Options {
        // Set explicitly: the umask must not make the spec unreadable to an
        // engine running as another user.
        mode: 0o644,
        owner: None,
        sync_dir: true,
    };
    crate::atomic::write(path, text.as_bytes(), &options).map_err(|source| CdiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

// ---------------------------------------------------------------------------
// The registry of the spec dirs
// ---------------------------------------------------------------------------

/// A spec file that parsed and validated.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: PathBuf,
    /// Index of its dir in the search list: later dirs override earlier.
    pub priority: usize,
    pub spec: Spec,
}

/// A spec file that did not parse or validate, with what could still be
/// read of it (its kind and device names, when it is at least YAML).
#[derive(Debug, Clone)]
pub struct BrokenSpec {
    pub path: PathBuf,
    pub problem: String,
    pub kind: Option<String>,
    pub device_names: Vec<String>,
}

/// Where a qualified name resolves to.
#[derive(Debug, Clone)]
enum Entry {
    /// (index in `specs`, index in its devices)
    Found(usize, usize),
    /// Two files of the same dir define it.
    Conflict {
        dir: PathBuf,
        first: PathBuf,
        second: PathBuf,
    },
}

/// Every spec in the spec dirs.
#[derive(Debug, Clone)]
pub struct Registry {
    pub dirs: Vec<PathBuf>,
    pub specs: Vec<LoadedSpec>,
    pub broken: Vec<BrokenSpec>,
    /// Qualified names in first-seen order (dirs, then file names, then the
    /// order in the file), each once.
    names: Vec<String>,
    entries: HashMap<String, Entry>,
}

impl Registry {
    /// Reads every `.json` / `.yaml` file of `dirs` (sorted by name, so the
    /// order does not depend on the filesystem). A missing dir is empty; an
    /// unreadable or invalid file is recorded in `broken` and skipped.
    pub fn load(dirs: &[PathBuf]) -> Registry {
        let mut registry = Registry {
            dirs: dirs.to_vec(),
            specs: Vec::new(),
            broken: Vec::new(),
            names: Vec::new(),
            entries: HashMap::new(),
        };
        for (priority, dir) in dirs.iter().enumerate() {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => {
                    registry.broken.push(BrokenSpec {
                        path: dir.clone(),
                        problem: format!("cannot read the spec dir: {error}"),
                        kind: None,
                        device_names: Vec::new(),
                    });
                    continue;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.path())
                .filter(|path| Format::from_path(path).is_some())
                .filter(|path| !is_hidden(path))
                .collect();
            files.sort();
            for path in files {
                if !path.is_file() {
                    continue;
                }
                match load_file(&path) {
                    Ok(spec) => registry.specs.push(LoadedSpec {
                        path,
                        priority,
                        spec,
                    }),
                    Err(problem) => registry.broken.push(salvage(path, problem)),
                }
            }
        }
        registry.index();
        registry
    }

    fn index(&mut self) {
        for (spec_index, loaded) in self.specs.iter().enumerate() {
            for (device_index, device) in loaded.spec.devices.iter().enumerate() {
                let name = format!("{}={}", loaded.spec.kind, device.name);
                let entry = Entry::Found(spec_index, device_index);
                let Some(previous) = self.entries.get(&name) else {
                    self.names.push(name.clone());
                    self.entries.insert(name, entry);
                    continue;
                };
                // A later dir overrides an earlier one; within one dir the
                // two definitions conflict (the CDI library's rule).
                let previous_path = match previous {
                    Entry::Found(s, _) if self.specs[*s].priority < loaded.priority => {
                        self.entries.insert(name, entry);
                        continue;
                    }
                    Entry::Found(s, _) => self.specs[*s].path.clone(),
                    Entry::Conflict { .. } => continue,
                };
                let dir = loaded.path.parent().unwrap_or(Path::new("/")).to_path_buf();
                self.entries.insert(
                    name,
                    Entry::Conflict {
                        dir,
                        first: previous_path,
                        second: loaded.path.clone(),
                    },
                );
            }
        }
    }

    /// Every qualified device name, each once, in first-seen order.
    pub fn device_names(&self) -> &[String] {
        &self.names
    }

    /// Names defined twice in one dir, with the message that resolving
    /// them gives.
    pub fn conflicts(&self) -> Vec<String> {
        self.names
            .iter()
            .filter_map(|name| match self.resolve_one(name) {
                Err(error @ CdiError::Conflict { .. }) => Some(error.to_string()),
                _ => None,
            })
            .collect()
    }

    fn dirs_text(&self) -> String {
        self.dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn resolve_one(&self, name: &str) -> Result<(usize, usize), CdiError> {
        let qualified = parse_qualified_name(name)?;
        match self.entries.get(name) {
            Some(Entry::Found(spec, device)) => Ok((*spec, *device)),
            Some(Entry::Conflict { dir, first, second }) => Err(CdiError::Conflict {
                name: name.to_string(),
                dir: dir.clone(),
                first: first.clone(),
                second: second.clone(),
            }),
            None => Err(self.unresolvable(&qualified)),
        }
    }

    /// The error for a name no valid spec defines: a broken file that
    /// names it is the cause; otherwise the dirs searched, the broken files
    /// that might define it, and what this kind does offer.
    fn unresolvable(&self, qualified: &QualifiedName) -> CdiError {
        let of_kind = |broken: &&BrokenSpec| broken.kind.as_deref() == Some(&qualified.kind);
        if let Some(broken) = self
            .broken
            .iter()
            .filter(of_kind)
            .find(|b| b.device_names.contains(&qualified.name))
        {
            return CdiError::OnlyInBroken {
                name: qualified.to_string(),
                path: broken.path.clone(),
                problem: broken.problem.clone(),
            };
        }
        let mut hints = Vec::new();
        let suspects: Vec<String> = self
            .broken
            .iter()
            .filter(|b| b.kind.is_none() || of_kind(b))
            .map(|b| format!("{} ({})", b.path.display(), b.problem))
            .collect();
        if !suspects.is_empty() {
            hints.push(format!(
                "spec files that could not be read and may define it: {}",
                suspects.join("; ")
            ));
        }
        let prefix = format!("{}=", qualified.kind);
        let offered: Vec<&str> = self
            .names
            .iter()
            .filter(|n| n.starts_with(&prefix))
            .map(String::as_str)
            .collect();
        if !offered.is_empty() {
            hints.push(format!(
                "{} devices there: {}",
                qualified.kind,
                offered.join(", ")
            ));
        }
        let hint = if hints.is_empty() {
            String::new()
        } else {
            format!(" ({})", hints.join("; "))
        };
        CdiError::Unresolvable {
            name: qualified.to_string(),
            dirs: self.dirs_text(),
            hint,
        }
    }

    /// The edits of these devices, in CDI's order: a spec's common edits
    /// once, before its first device's own.
    pub fn resolve(&self, names: &[String]) -> Result<Resolved, CdiError> {
        let mut resolved = Resolved::default();
        let mut specs_seen: Vec<usize> = Vec::new();
        let mut devices_seen = std::collections::HashSet::new();
        for name in names {
            let (spec_index, device_index) = self.resolve_one(name)?;
            if !devices_seen.insert((spec_index, device_index)) {
                continue;
            }
            let loaded = &self.specs[spec_index];
            if !specs_seen.contains(&spec_index) {
                specs_seen.push(spec_index);
                resolved.add(&loaded.spec.container_edits, name, &loaded.path)?;
            }
            let device = &loaded.spec.devices[device_index];
            resolved.add(&device.container_edits, name, &loaded.path)?;
        }
        Ok(resolved)
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn load_file(path: &Path) -> Result<Spec, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    // The extension was checked by the caller.
    let format = Format::from_path(path).unwrap_or(Format::Yaml);
    Spec::parse(&text, format).map_err(|problem| crate::config::one_line(&problem))
}

/// What can still be read of a broken file: its kind and device names if
/// it is YAML (JSON is YAML) at all.
fn salvage(path: PathBuf, problem: String) -> BrokenSpec {
    let loose: Option<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_norway::from_str(&text).ok());
    let kind = loose
        .as_ref()
        .and_then(|v| v.get("kind"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let device_names = loose
        .as_ref()
        .and_then(|v| v.get("devices"))
        .and_then(Value::as_array)
        .map(|devices| {
            devices
                .iter()
                .filter_map(|d| match d.get("name")? {
                    Value::String(s) => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    BrokenSpec {
        path,
        problem,
        kind,
        device_names,
    }
}

// ---------------------------------------------------------------------------
// Application
// ---------------------------------------------------------------------------

/// Resolved CDI edits, as our model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub edits: ContainerEdits,
}

impl Resolved {
    fn add(&mut self, edits: &Edits, name: &str, path: &Path) -> Result<(), CdiError> {
        let bad = |problem: String| CdiError::BadEdit {
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
        self.edits.env.extend(edits.env.iter().cloned());
        for node in &edits.device_nodes {
            self.edits
                .device_nodes
                .push(device_node(node).map_err(&bad)?);
        }
        for mount in &edits.mounts {
            self.edits.mounts.push(crate::edits::Mount {
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
            self.edits.hooks.push(crate::edits::Hook {
                hook_name: hook.hook_name.clone(),
                path: PathBuf::from(&hook.path),
                args: hook.args.clone(),
                env: hook.env.clone(),
                timeout,
            });
        }
        Ok(())
    }

    /// Applies the edits to a `config.json` value with [`crate::spec::apply`].
    pub fn apply(&self, spec: &Value, path: &Path) -> Result<Value, CdiError> {
        Ok(crate::spec::apply(spec, &self.edits, path)?)
    }
}

/// A CDI device node as our model's node: what the spec leaves out (type,
/// major, minor, file mode) is read from the host node, as the CDI library
/// does when it applies a spec.
fn device_node(node: &DeviceNode) -> Result<crate::driver::DeviceNode, String> {
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
    Ok(crate::driver::DeviceNode {
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
            .unwrap_or_else(|| crate::driver::FULL_ACCESS.to_string()),
    })
}

// ---------------------------------------------------------------------------
// The runtime's CDI mode
// ---------------------------------------------------------------------------

/// What the runtime does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The legacy path: driver discovery and our own edits.
    Legacy,
    /// Nothing to inject; leave config.json alone.
    Untouched,
    /// Resolve these qualified names from the spec dirs and apply them.
    Inject(Vec<String>),
}

/// The configured spec dirs, in priority order (later overrides earlier).
pub fn spec_dirs(config: &Config) -> Vec<PathBuf> {
    config
        .nvidia_container_runtime
        .modes
        .cdi
        .spec_dirs
        .iter()
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Decides between the legacy path and CDI (contract.md §2, §4):
/// - `mode = "cdi"`: the CDI annotations if any, else the request's GPU ids
///   as `<default-kind>=<id>` (`all` included) and its qualified names;
/// - `mode = "auto"`: CDI when the annotations name devices or the request
///   names only qualified CDI names; a list mixing both kinds is an error;
/// - `legacy` (and `csv`): qualified names are an error; the annotations are
///   not looked at (a request made only of them leaves the spec alone).
pub fn plan(config: &Config, request: &Request) -> Result<Plan, CdiError> {
    let mode = config.nvidia_container_runtime.mode;
    let has_ids = request.devices != Devices::List(Vec::new());
    let names = || request.cdi_devices.join(", ");
    match mode {
        Mode::Legacy | Mode::Csv => {
            if request.cdi_from_annotations {
                tracing::debug!("mode = legacy: CDI annotations ignored");
                return Ok(if has_ids {
                    Plan::Legacy
                } else {
                    Plan::Untouched
                });
            }
            if request.cdi_devices.is_empty() {
                return Ok(Plan::Legacy);
            }
            Err(CdiError::NotCdiMode {
                names: names(),
                mode: if mode == Mode::Csv { "csv" } else { "legacy" },
            })
        }
        Mode::Auto => {
            if request.cdi_devices.is_empty() {
                return Ok(Plan::Legacy);
            }
            if has_ids && !request.cdi_from_annotations {
                return Err(CdiError::Mixed {
                    source_name: request.devices_source.clone(),
                    cdi: names(),
                    legacy: describe_ids(&request.devices),
                    default_kind: config
                        .nvidia_container_runtime
                        .modes
                        .cdi
                        .default_kind
                        .clone(),
                });
            }
            Ok(Plan::Inject(request.cdi_devices.clone()))
        }
        Mode::Cdi => {
            if request.cdi_from_annotations {
                return Ok(Plan::Inject(request.cdi_devices.clone()));
            }
            let kind = &config.nvidia_container_runtime.modes.cdi.default_kind;
            if parse_kind(kind).is_err() {
                return Err(CdiError::BadDefaultKind { kind: kind.clone() });
            }
            let mut all = match &request.devices {
                Devices::All => vec![format!("{kind}={ALL_DEVICE}")],
                Devices::NoGpu => Vec::new(),
                Devices::List(ids) => ids.iter().map(|id| format!("{kind}={id}")).collect(),
            };
            all.extend(request.cdi_devices.iter().cloned());
            if all.is_empty() {
                tracing::info!("mode = cdi and no device requested: spec left untouched");
                return Ok(Plan::Untouched);
            }
            Ok(Plan::Inject(all))
        }
    }
}

fn describe_ids(devices: &Devices) -> String {
    match devices {
        Devices::All => "all".to_string(),
        Devices::NoGpu => "none".to_string(),
        Devices::List(ids) => ids
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Resolves `names` from the configured spec dirs and applies them to a
/// `config.json` value (`path` names it in errors).
pub fn inject(
    config: &Config,
    names: &[String],
    spec: &Value,
    path: &Path,
) -> Result<Value, CdiError> {
    let registry = Registry::load(&spec_dirs(config));
    for broken in &registry.broken {
        tracing::warn!(
            "CDI spec {} ignored: {}",
            broken.path.display(),
            broken.problem
        );
    }
    let resolved = registry.resolve(names)?;
    tracing::info!(
        "CDI devices {}: {} device nodes, {} mounts, {} hooks",
        names.join(", "),
        resolved.edits.device_nodes.len(),
        resolved.edits.mounts.len(),
        resolved.edits.hooks.len()
    );
    resolved.apply(spec, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let ok = parse_qualified_name("nvidia.com/gpu=0").unwrap();
        assert_eq!(ok.kind, "nvidia.com/gpu");
        assert_eq!(ok.name, "0");
        assert!(parse_qualified_name("example.com/device=foo:bar.1").is_ok());
        assert!(parse_qualified_name("nvidia.com/gpu=GPU-6b4f0c2a-1d").is_ok());
        for bad in [
            "nvidia.com/gpu=",
            "nvidia.com=0",
            "/gpu=0",
            "nvidia.com/=0",
            "nvidia.com/gpu=-0",
            "nvidia.com/gpu=a b",
            "nvidia.com/gpu/x=0",
            "1nvidia.com/gpu=0",
        ] {
            let error = parse_qualified_name(bad).unwrap_err();
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
        assert!(looks_qualified("nvidia.com/gpu=0"));
        assert!(!looks_qualified("GPU-abc"));
        assert!(!looks_qualified("0000:3b:00.0"));
    }

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

    #[test]
    fn plan_by_mode() {
        let request = |devices: Devices, cdi: &[&str], annotations: bool| {
            let mut request =
                Request::for_devices(devices, Capabilities::all(), "NVIDIA_VISIBLE_DEVICES");
            request.cdi_devices = cdi.iter().map(|s| s.to_string()).collect();
            request.cdi_from_annotations = annotations;
            request
        };
        let config = |mode| {
            let mut config = Config::default();
            config.nvidia_container_runtime.mode = mode;
            config
        };
        let only_cdi = request(Devices::List(vec![]), &["nvidia.com/gpu=1"], false);
        let ids = request(Devices::List(vec![DeviceId::Index(0)]), &[], false);
        let mixed = request(
            Devices::List(vec![DeviceId::Index(0)]),
            &["nvidia.com/gpu=1"],
            false,
        );
        let annotated = request(Devices::All, &["example.com/device=foo"], true);
        let inject = |names: &[&str]| Plan::Inject(names.iter().map(|s| s.to_string()).collect());

        assert_eq!(
            plan(&config(Mode::Auto), &only_cdi).unwrap(),
            inject(&["nvidia.com/gpu=1"])
        );
        assert_eq!(plan(&config(Mode::Auto), &ids).unwrap(), Plan::Legacy);
        let error = plan(&config(Mode::Auto), &mixed).unwrap_err().to_string();
        assert!(
            error.contains("nvidia.com/gpu=1") && error.contains("mode = \"cdi\""),
            "{error}"
        );
        assert_eq!(
            plan(&config(Mode::Auto), &annotated).unwrap(),
            inject(&["example.com/device=foo"])
        );

        assert_eq!(
            plan(&config(Mode::Cdi), &ids).unwrap(),
            inject(&["nvidia.com/gpu=0"])
        );
        assert_eq!(
            plan(&config(Mode::Cdi), &mixed).unwrap(),
            inject(&["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
        );
        assert_eq!(
            plan(&config(Mode::Cdi), &request(Devices::All, &[], false)).unwrap(),
            inject(&["nvidia.com/gpu=all"])
        );
        assert_eq!(
            plan(&config(Mode::Cdi), &request(Devices::NoGpu, &[], false)).unwrap(),
            Plan::Untouched
        );

        let error = plan(&config(Mode::Legacy), &only_cdi)
            .unwrap_err()
            .to_string();
        assert!(error.contains("mode = \"legacy\""), "{error}");
        assert_eq!(
            plan(&config(Mode::Legacy), &annotated).unwrap(),
            Plan::Legacy
        );
        assert_eq!(
            plan(
                &config(Mode::Legacy),
                &request(Devices::List(vec![]), &["a.b/c=d"], true)
            )
            .unwrap(),
            Plan::Untouched
        );
    }
}
