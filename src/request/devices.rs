//! The device-id grammar of a request: GPU indices, UUIDs, PCI bus ids, MIG
//! devices (`MIG-<uuid>`, `<gpu>:<mig>`), `all`, `none`, `void`, and the
//! fully qualified CDI names a list or an annotation may hold.

use std::collections::HashSet;
use std::fmt;

use serde_json::Value;

use crate::cdi::name::{looks_qualified, parse_qualified_name};

use super::RequestError;

/// A PCI bus id, compared numerically so that `0000:3b:00.0` (procfs, 16-bit
/// domain) and `00000000:3B:00.0` (NVML, 32-bit domain) are the same GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusId {
    pub domain: u32,
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl BusId {
    /// Parses `DDDD:BB:DD.F` or `DDDDDDDD:BB:DD.F` (hex, any case).
    pub fn parse(text: &str) -> Option<BusId> {
        let (domain, rest) = text.split_once(':')?;
        let (bus, rest) = rest.split_once(':')?;
        let (device, function) = rest.split_once('.')?;
        let hex = |s: &str, max_len: usize| {
            (!s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        if domain.len() != 4 && domain.len() != 8 {
            return None;
        }
        Some(BusId {
            domain: hex(domain, 8)?,
            bus: u8::try_from(hex(bus, 2)?).ok()?,
            device: u8::try_from(hex(device, 2)?).ok()?,
            function: u8::try_from(hex(function, 1)?).ok()?,
        })
    }
}

impl fmt::Display for BusId {
    /// The procfs (16-bit domain) form when the domain fits, as NVIDIA's
    /// tools print it in `/proc/driver/nvidia/gpus`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// One device named in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceId {
    Index(u32),
    /// A full `GPU-...` UUID, as written (matched case-insensitively).
    Uuid(String),
    BusId(BusId),
    /// A MIG device by its `MIG-...` UUID.
    MigUuid(String),
    /// A MIG device as `<gpu index>:<MIG index>` (NVML's MIG index order).
    MigIndex {
        gpu: u32,
        mig: u32,
    },
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Index(index) => write!(f, "{index}"),
            DeviceId::Uuid(uuid) => f.write_str(uuid),
            DeviceId::BusId(bus) => write!(f, "{bus}"),
            DeviceId::MigUuid(uuid) => f.write_str(uuid),
            DeviceId::MigIndex { gpu, mig } => write!(f, "{gpu}:{mig}"),
        }
    }
}

/// Which GPUs a GPU container gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Every GPU of the host.
    All,
    /// No GPU device node, but the driver's files and control nodes.
    NoGpu,
    /// These GPUs, in the order asked (duplicates removed later).
    List(Vec<DeviceId>),
}

/// Validates each item of `items` as a qualified CDI name and appends the
/// ones not `seen` before to `names`. A set, not a scan of `names`: a list
/// may have 100,000 entries.
fn add_cdi_names<'a>(
    items: impl Iterator<Item = &'a str>,
    source_name: &str,
    names: &mut Vec<String>,
    seen: &mut HashSet<&'a str>,
) -> Result<(), RequestError> {
    for item in items {
        parse_qualified_name(item).map_err(|error| RequestError::BadCdiName {
            source_name: source_name.to_string(),
            problem: error.to_string(),
        })?;
        if seen.insert(item) {
            names.push(item.to_string());
        }
    }
    Ok(())
}

/// The fully qualified CDI names (`vendor/class=name`) of a device list,
/// validated, each once. [`parse_devices`] leaves them out of its list.
pub fn cdi_names(value: &str, source_name: &str) -> Result<Vec<String>, RequestError> {
    let mut names = Vec::new();
    let items = value
        .split(',')
        .map(str::trim)
        .filter(|i| looks_qualified(i));
    add_cdi_names(items, source_name, &mut names, &mut HashSet::new())?;
    Ok(names)
}

/// CDI names in the annotations whose key starts with one of `prefixes`
/// (`cdi.k8s.io/<any>: nvidia.com/gpu=0,nvidia.com/gpu=1`), each once, in
/// the document's order.
pub(super) fn cdi_annotation_devices(
    spec: &Value,
    prefixes: &[String],
) -> Result<Vec<String>, RequestError> {
    let Some(annotations) = spec.get("annotations").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for (key, value) in annotations {
        if !prefixes
            .iter()
            .any(|p| !p.is_empty() && key.starts_with(p.as_str()))
        {
            continue;
        }
        let source_name = format!("annotation {key}");
        let value = value.as_str().ok_or_else(|| RequestError::BadCdiName {
            source_name: source_name.clone(),
            problem: "the value is not a string".to_string(),
        })?;
        let items = value.split(',').map(str::trim).filter(|i| !i.is_empty());
        add_cdi_names(items, &source_name, &mut names, &mut seen)?;
    }
    Ok(names)
}

/// Parses a device list (`all`, `none`, `void`, or a comma list).
/// `Ok(None)`: not a GPU container.
pub fn parse_devices(value: &str, source_name: &str) -> Result<Option<Devices>, RequestError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed.split(',').any(|d| d.trim() == "void") {
        return Ok(None);
    }
    let items: Vec<&str> = trimmed.split(',').map(str::trim).collect();
    if items.contains(&"all") {
        return Ok(Some(Devices::All));
    }
    if items.iter().all(|d| *d == "none") {
        return Ok(Some(Devices::NoGpu));
    }
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        // CDI names are read by `cdi_names`; what they mean depends on the mode.
        if item == "none" || looks_qualified(item) {
            continue;
        }
        ids.push(parse_device_id(item, source_name, trimmed)?);
    }
    Ok(Some(Devices::List(ids)))
}

/// The start of a long value, for an error message: the engine shows our
/// error as one line, and a 100,000-entry list would bury what went wrong.
fn abbreviate(value: &str) -> String {
    const SHOWN: usize = 100;
    match value.char_indices().nth(SHOWN) {
        None => value.to_string(),
        Some((end, _)) => format!("{}... ({} bytes)", &value[..end], value.len()),
    }
}

fn parse_device_id(item: &str, source_name: &str, whole: &str) -> Result<DeviceId, RequestError> {
    if item.is_empty() {
        return Err(RequestError::EmptyDevice {
            source_name: source_name.to_string(),
            value: abbreviate(whole),
        });
    }
    if item.bytes().all(|b| b.is_ascii_digit()) {
        return item
            .parse()
            .map(DeviceId::Index)
            .map_err(|_| RequestError::MalformedDevice {
                source_name: source_name.to_string(),
                device: item.to_string(),
            });
    }
    if item.len() > 4 && item.as_bytes()[..4].eq_ignore_ascii_case(b"GPU-") {
        return Ok(DeviceId::Uuid(item.to_string()));
    }
    if item.len() > 4 && item.as_bytes()[..4].eq_ignore_ascii_case(b"MIG-") {
        return Ok(DeviceId::MigUuid(item.to_string()));
    }
    if let Some((gpu, mig)) = mig_pair(item) {
        return Ok(DeviceId::MigIndex { gpu, mig });
    }
    BusId::parse(item)
        .map(DeviceId::BusId)
        .ok_or_else(|| RequestError::MalformedDevice {
            source_name: source_name.to_string(),
            device: item.to_string(),
        })
}

/// `<gpu>:<mig>` with both sides decimal.
fn mig_pair(item: &str) -> Option<(u32, u32)> {
    let (gpu, mig) = item.split_once(':')?;
    let decimal = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !decimal(gpu) || !decimal(mig) {
        return None;
    }
    Some((gpu.parse().ok()?, mig.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::request::test_support::{request, spec_with_env};
    use crate::request::Request;
    use serde_json::json;

    #[test]
    fn device_forms() {
        let devices = |value: &str| parse_devices(value, "X").unwrap().unwrap();
        assert_eq!(devices("all"), Devices::All);
        assert_eq!(devices("0,all"), Devices::All);
        assert_eq!(devices("none"), Devices::NoGpu);
        assert_eq!(
            devices("0, GPU-6b4f,0000:3b:00.0,00000000:3B:00.0"),
            Devices::List(vec![
                DeviceId::Index(0),
                DeviceId::Uuid("GPU-6b4f".into()),
                DeviceId::BusId(BusId::parse("0000:3b:00.0").unwrap()),
                DeviceId::BusId(BusId::parse("0000:3b:00.0").unwrap()),
            ])
        );
        assert!(matches!(
            parse_devices("0,,1", "X"),
            Err(RequestError::EmptyDevice { .. })
        ));
        assert!(matches!(
            parse_devices("gpu0", "X"),
            Err(RequestError::MalformedDevice { .. })
        ));
        assert_eq!(
            devices("MIG-abc,1:2"),
            Devices::List(vec![
                DeviceId::MigUuid("MIG-abc".into()),
                DeviceId::MigIndex { gpu: 1, mig: 2 },
            ])
        );
        // CDI names are not GPU ids: `cdi_names` reads them.
        assert_eq!(devices("nvidia.com/gpu=0"), Devices::List(vec![]));
        assert_eq!(
            devices("1,nvidia.com/gpu=0"),
            Devices::List(vec![DeviceId::Index(1)])
        );
        assert_eq!(
            cdi_names("1, nvidia.com/gpu=0,example.com/x=a,nvidia.com/gpu=0", "X").unwrap(),
            ["nvidia.com/gpu=0", "example.com/x=a"]
        );
        let error = cdi_names("nvidia.com/gpu=", "X").unwrap_err().to_string();
        assert!(
            error.starts_with("X: ") && error.contains("nvidia.com/gpu="),
            "{error}"
        );
        assert!(matches!(
            parse_devices("99999999999", "X"),
            Err(RequestError::MalformedDevice { .. })
        ));
    }

    #[test]
    fn bus_ids() {
        let short = BusId::parse("0000:3b:00.0").unwrap();
        assert_eq!(BusId::parse("00000000:3B:00.0"), Some(short));
        assert_eq!(short.to_string(), "0000:3b:00.0");
        for bad in [
            "000:3b:00.0",
            "0000:3b:00",
            "0000:3b:0g.0",
            "0000:3b:00.10",
            "0000:123:00.0",
        ] {
            assert_eq!(BusId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cdi_channels() {
        // NVIDIA_VISIBLE_DEVICES with qualified names.
        let request = request(&["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1"])
            .unwrap()
            .unwrap();
        assert_eq!(request.devices, Devices::List(vec![]));
        assert_eq!(request.cdi_devices, ["nvidia.com/gpu=1"]);
        assert!(!request.cdi_from_annotations);
        // Annotations alone make a request, and win over the env.
        let mut spec = spec_with_env(&["NVIDIA_VISIBLE_DEVICES=all"]);
        spec["annotations"] = json!({
            "other": "x",
            "cdi.k8s.io/a": "example.com/device=foo, nvidia.com/gpu=0",
            "cdi.k8s.io/b": "nvidia.com/gpu=0"
        });
        let request = Request::from_spec(&spec, &Config::default())
            .unwrap()
            .unwrap();
        assert_eq!(request.devices, Devices::All);
        assert_eq!(
            request.cdi_devices,
            ["example.com/device=foo", "nvidia.com/gpu=0"]
        );
        assert!(request.cdi_from_annotations);
        spec["process"]["env"] = json!([]);
        let request = Request::from_spec(&spec, &Config::default())
            .unwrap()
            .unwrap();
        assert_eq!(request.devices, Devices::List(vec![]));
        spec["annotations"]["cdi.k8s.io/c"] = json!("gpu0");
        let error = Request::from_spec(&spec, &Config::default())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("annotation cdi.k8s.io/c") && error.contains("gpu0"),
            "{error}"
        );
        // Mount requests for CDI devices.
        let config = Config {
            accept_nvidia_visible_devices_as_volume_mounts: true,
            ..Default::default()
        };
        let mut spec = spec_with_env(&[]);
        spec["mounts"] = json!([
            {"destination": "/var/run/nvidia-container-devices/cdi/nvidia.com/gpu/0", "source": "/dev/null"},
            {"destination": "/var/run/nvidia-container-devices/cdi/example.com/device/foo", "source": "/dev/null"}
        ]);
        let request = Request::from_spec(&spec, &config).unwrap().unwrap();
        assert_eq!(request.devices, Devices::List(vec![]));
        assert_eq!(
            request.cdi_devices,
            ["nvidia.com/gpu=0", "example.com/device=foo"]
        );
    }
}
