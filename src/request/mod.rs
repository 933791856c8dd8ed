//! The request: what a container asks for, read from its `config.json`.
//!
//! One owner for contract.md §2, shared by the runtime (on `create`) and the
//! hook: `NVIDIA_VISIBLE_DEVICES` (or the `swarm-resource` variables, or
//! `/var/run/nvidia-container-devices/<id>` mount requests), the driver
//! capabilities, the `NVIDIA_REQUIRE_*` constraints, the legacy `CUDA_VERSION`
//! rule and the unprivileged-trust setting. Nothing here touches the host.
//!
//! [`devices`] is the device-id grammar (and the CDI names a request may
//! hold), [`capabilities`] the driver capabilities.

use std::collections::HashMap;

use serde_json::Value;

use crate::config::Config;

pub mod capabilities;
pub mod devices;
pub mod prefilter;

pub use capabilities::{Capabilities, Capability};
pub use devices::{cdi_names, parse_devices, BusId, DeviceId, Devices};
pub use prefilter::{may_request_devices, may_request_devices_in};

use devices::cdi_annotation_devices;

pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
pub const DRIVER_CAPABILITIES: &str = "NVIDIA_DRIVER_CAPABILITIES";
pub const DISABLE_REQUIRE: &str = "NVIDIA_DISABLE_REQUIRE";
pub const REQUIRE_PREFIX: &str = "NVIDIA_REQUIRE_";
pub const REQUIRE_CUDA: &str = "NVIDIA_REQUIRE_CUDA";
pub const LEGACY_CUDA_VERSION: &str = "CUDA_VERSION";
/// Mount destinations under these dirs are device requests (when enabled).
pub const DEVICE_MOUNT_DIRS: &[&str] = &[
    "/var/run/nvidia-container-devices/",
    "/run/nvidia-container-devices/",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{variable} names unknown driver capability \"{name}\": use a comma list of compute, compat32, graphics, utility, video, display, ngx, or all")]
    UnknownCapability { variable: String, name: String },
    #[error("{source_name} has an empty device in \"{value}\": use a comma list of GPU indices, UUIDs or PCI bus ids, or all, none, void")]
    EmptyDevice { source_name: String, value: String },
    #[error("{source_name} names device \"{device}\", which is not a GPU index, a GPU UUID (GPU-...) or a PCI bus id (0000:3b:00.0): fix the value")]
    MalformedDevice { source_name: String, device: String },
    #[error("{variable}={value} asks for MIG {what}, which only a privileged container may have: run it privileged, or unset {variable}")]
    MigNeedsPrivilege {
        variable: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{variable}=\"{value}\" is not supported: the only value is all")]
    MigAllOnly {
        variable: &'static str,
        value: String,
    },
    #[error("NVIDIA_IMEX_CHANNELS names channel \"{channel}\", which is not a channel number: use a comma list of numbers, or all")]
    BadImexChannel { channel: String },
    #[error("{source_name}: {problem}")]
    BadCdiName {
        source_name: String,
        problem: String,
    },
    #[error("config.json is not an OCI runtime spec: {field} must be {expected}")]
    BadSpecField {
        field: &'static str,
        expected: &'static str,
    },
}

/// A GPU container's request. `None` from [`Request::from_spec`] means the
/// container is not a GPU container and must be left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub devices: Devices,
    /// Where the device list came from (`NVIDIA_VISIBLE_DEVICES`, a swarm
    /// variable, mounts), to name it in errors.
    pub devices_source: String,
    pub capabilities: Capabilities,
    /// `(variable, expression)` of every `NVIDIA_REQUIRE_*`, plus the legacy
    /// `CUDA_VERSION` rule as `("CUDA_VERSION", "cuda>=X.Y")`.
    pub requirements: Vec<(String, String)>,
    /// `NVIDIA_DISABLE_REQUIRE` or the config's `disable-require`.
    pub disable_require: bool,
    /// CAP_SYS_ADMIN in the bounding set: what runc calls privileged.
    pub privileged: bool,
    /// `NVIDIA_MIG_CONFIG_DEVICES=all` (privileged only).
    pub mig_config: bool,
    /// `NVIDIA_MIG_MONITOR_DEVICES=all` (privileged only).
    pub mig_monitor: bool,
    pub imex_channels: Option<ImexChannels>,
    pub features: FeatureDevices,
    /// Fully qualified CDI device names (`vendor/class=name`), each once:
    /// those of the CDI annotations if any, else those of the channel
    /// `devices` came from (mount requests or NVIDIA_VISIBLE_DEVICES).
    /// Which of them are used depends on the mode ([`crate::runtime::mode`]).
    pub cdi_devices: Vec<String>,
    /// `cdi_devices` came from the annotations (`cdi.k8s.io/*`).
    pub cdi_from_annotations: bool,
}

/// The container's environment as the container will see it: the last entry
/// of a key wins (docker `--gpus` appends its own), entries without `=` are
/// ignored like the kernel's execve does not care about them.
pub fn environment(spec: &Value) -> Result<HashMap<&str, &str>, RequestError> {
    let mut env = HashMap::new();
    let Some(list) = spec.pointer("/process/env") else {
        return Ok(env);
    };
    let list = list.as_array().ok_or(RequestError::BadSpecField {
        field: "process.env",
        expected: "a list of strings",
    })?;
    for entry in list {
        let Some(entry) = entry.as_str() else {
            return Err(RequestError::BadSpecField {
                field: "process.env",
                expected: "a list of strings",
            });
        };
        if let Some((key, value)) = entry.split_once('=') {
            env.insert(key, value);
        }
    }
    Ok(env)
}

/// CAP_SYS_ADMIN in `process.capabilities.bounding`.
pub fn is_privileged(spec: &Value) -> bool {
    spec.pointer("/process/capabilities/bounding")
        .and_then(Value::as_array)
        .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")))
}

/// Device ids asked for by `/var/run/nvidia-container-devices/<id>` mounts;
/// `cdi/<vendor>/<class>/<name>` asks for the CDI device
/// `<vendor>/<class>=<name>`.
fn devices_from_mounts(spec: &Value) -> Vec<String> {
    let Some(mounts) = spec.get("mounts").and_then(Value::as_array) else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter_map(|mount| {
            let destination = mount.get("destination")?.as_str()?;
            DEVICE_MOUNT_DIRS.iter().find_map(|dir| {
                destination
                    .strip_prefix(dir)
                    .map(|id| id.trim_end_matches('/').to_string())
            })
        })
        .filter(|id| !id.is_empty())
        .map(|id| {
            match id
                .strip_prefix("cdi/")
                .and_then(|kind_name| kind_name.rsplit_once('/'))
            {
                Some((kind, name)) => format!("{kind}={name}"),
                None => id,
            }
        })
        .collect()
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "y" | "on" | "enabled" | "t"
    )
}

/// IMEX channels a container asks for (`NVIDIA_IMEX_CHANNELS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImexChannels {
    All,
    List(Vec<u32>),
}

/// The opt-in device families (`NVIDIA_GDS`, ... = `enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeatureDevices {
    /// GPUDirect Storage: `/dev/nvidia-fs*`.
    pub gds: bool,
    /// Mellanox OFED: `/dev/infiniband/uverbs*`, `/dev/infiniband/rdma_cm`.
    pub mofed: bool,
    /// `/dev/nvidia-nvswitch*`.
    pub nvswitch: bool,
    /// `/dev/gdrdrv`.
    pub gdrcopy: bool,
}

pub const MIG_CONFIG_DEVICES: &str = "NVIDIA_MIG_CONFIG_DEVICES";
pub const MIG_MONITOR_DEVICES: &str = "NVIDIA_MIG_MONITOR_DEVICES";
pub const IMEX_CHANNELS: &str = "NVIDIA_IMEX_CHANNELS";

/// `NVIDIA_MIG_CONFIG_DEVICES` / `NVIDIA_MIG_MONITOR_DEVICES`: `all` or
/// nothing; only privileged containers may ask (the capabilities let a
/// process reconfigure or watch every MIG instance of the GPU).
fn mig_capability(
    env: &HashMap<&str, &str>,
    variable: &'static str,
    what: &'static str,
    privileged: bool,
) -> Result<bool, RequestError> {
    let value = env.get(variable).map(|v| v.trim()).unwrap_or("");
    if value.is_empty() || value == "none" || value == "void" {
        return Ok(false);
    }
    if value != "all" {
        return Err(RequestError::MigAllOnly {
            variable,
            value: value.to_string(),
        });
    }
    if !privileged {
        return Err(RequestError::MigNeedsPrivilege {
            variable,
            value: value.to_string(),
            what,
        });
    }
    Ok(true)
}

fn imex_channels(env: &HashMap<&str, &str>) -> Result<Option<ImexChannels>, RequestError> {
    let value = env.get(IMEX_CHANNELS).map(|v| v.trim()).unwrap_or("");
    if value.is_empty() || value == "none" || value == "void" {
        return Ok(None);
    }
    if value == "all" {
        return Ok(Some(ImexChannels::All));
    }
    let mut channels = Vec::new();
    for channel in value.split(',').map(str::trim) {
        let number = channel.parse().map_err(|_| RequestError::BadImexChannel {
            channel: channel.to_string(),
        })?;
        if !channels.contains(&number) {
            channels.push(number);
        }
    }
    Ok(Some(ImexChannels::List(channels)))
}

fn feature_devices(env: &HashMap<&str, &str>) -> FeatureDevices {
    // The anchor's contract: exactly `enabled` turns a family on.
    let enabled = |name: &str| env.get(name).is_some_and(|v| v.trim() == "enabled");
    FeatureDevices {
        gds: enabled("NVIDIA_GDS"),
        mofed: enabled("NVIDIA_MOFED"),
        nvswitch: enabled("NVIDIA_NVSWITCH"),
        gdrcopy: enabled("NVIDIA_GDRCOPY"),
    }
}

/// `major.minor` of a `CUDA_VERSION` value like `12.4.1`.
fn cuda_major_minor(version: &str) -> Option<String> {
    let mut parts = version.trim().split('.');
    let major = parts.next().filter(|p| !p.is_empty())?;
    let minor = parts.next().unwrap_or("0");
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
}

impl Request {
    /// Reads the request from a parsed `config.json`. `Ok(None)`: not a GPU
    /// container (the spec must not be touched).
    pub fn from_spec(spec: &Value, config: &Config) -> Result<Option<Request>, RequestError> {
        let env = environment(spec)?;
        let privileged = is_privileged(spec);
        let legacy_cuda_version = env
            .get(LEGACY_CUDA_VERSION)
            .filter(|_| !env.contains_key(REQUIRE_CUDA))
            .copied();

        // The CDI annotations win over the other channels (the anchor's
        // order); a container that has only them is a CDI request.
        let annotation_devices = cdi_annotation_devices(
            spec,
            &config
                .nvidia_container_runtime
                .modes
                .cdi
                .annotation_prefixes,
        )?;
        let channel = Self::devices(spec, config, &env, privileged, legacy_cuda_version)?;
        let (devices, devices_source, cdi_devices, cdi_from_annotations) = match channel {
            Some((devices, source, names)) if annotation_devices.is_empty() => {
                (devices, source, names, false)
            }
            Some((devices, source, _)) => (devices, source, annotation_devices, true),
            None if !annotation_devices.is_empty() => (
                Devices::List(Vec::new()),
                "the CDI annotations".to_string(),
                annotation_devices,
                true,
            ),
            None => return Ok(None),
        };

        let capabilities = match env.get(DRIVER_CAPABILITIES).map(|v| v.trim()) {
            Some(list) if !list.is_empty() => Capabilities::parse(list, DRIVER_CAPABILITIES)?,
            // A legacy image (CUDA_VERSION without NVIDIA_REQUIRE_CUDA) got
            // every capability from nvidia-docker 1; keep that.
            _ if legacy_cuda_version.is_some() => Capabilities::all(),
            _ => [Capability::Utility, Capability::Compute]
                .into_iter()
                .collect(),
        };
        // The admin's `supported-driver-capabilities` caps what any container
        // gets; an unknown name there is the admin's error, reported as such.
        let supported = Capabilities::parse(
            &config.supported_driver_capabilities,
            "supported-driver-capabilities in config.toml",
        )?;
        let capabilities = capabilities.intersection(supported);

        let mut requirements: Vec<(String, String)> = env
            .iter()
            .filter(|(key, value)| key.starts_with(REQUIRE_PREFIX) && !value.trim().is_empty())
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        requirements.sort();
        if let Some(version) = legacy_cuda_version.and_then(cuda_major_minor) {
            requirements.push((LEGACY_CUDA_VERSION.to_string(), format!("cuda>={version}")));
        }
        let disable_require =
            config.disable_require || env.get(DISABLE_REQUIRE).is_some_and(|v| is_truthy(v));

        Ok(Some(Request {
            devices,
            devices_source,
            capabilities,
            requirements,
            disable_require,
            privileged,
            mig_config: mig_capability(&env, MIG_CONFIG_DEVICES, "configuration", privileged)?,
            mig_monitor: mig_capability(&env, MIG_MONITOR_DEVICES, "monitoring", privileged)?,
            imex_channels: imex_channels(&env)?,
            features: feature_devices(&env),
            cdi_devices,
            cdi_from_annotations,
        }))
    }

    /// A request for `devices` with `capabilities` and nothing else (no
    /// requirements, no MIG, IMEX or feature devices): what `nvidia-ctk cdi
    /// generate` asks [`crate::edits::ContainerEdits::for_request`] for.
    pub fn for_devices(devices: Devices, capabilities: Capabilities, source: &str) -> Request {
        Request {
            devices,
            devices_source: source.to_string(),
            capabilities,
            requirements: Vec::new(),
            disable_require: true,
            privileged: false,
            mig_config: false,
            mig_monitor: false,
            imex_channels: None,
            features: FeatureDevices::default(),
            cdi_devices: Vec::new(),
            cdi_from_annotations: false,
        }
    }

    fn devices(
        spec: &Value,
        config: &Config,
        env: &HashMap<&str, &str>,
        privileged: bool,
        legacy_cuda_version: Option<&str>,
    ) -> Result<Option<(Devices, String, Vec<String>)>, RequestError> {
        // The GPU ids and the CDI names of one list, and where it came from.
        let with_source = |value: &str, source: &str| {
            let Some(devices) = parse_devices(value, source)? else {
                return Ok(None);
            };
            Ok(Some((
                devices,
                source.to_string(),
                cdi_names(value, source)?,
            )))
        };
        // Mount requests come first: Kubernetes device plugins use them so
        // that a pod's env cannot pick GPUs.
        if config.accept_nvidia_visible_devices_as_volume_mounts {
            let ids = devices_from_mounts(spec);
            if !ids.is_empty() {
                let source = "a /var/run/nvidia-container-devices mount";
                return with_source(&ids.join(","), source);
            }
        }
        if !privileged && !config.accept_nvidia_visible_devices_envvar_when_unprivileged {
            tracing::info!(
                "ignoring {VISIBLE_DEVICES} of an unprivileged container \
                 (accept-nvidia-visible-devices-envvar-when-unprivileged = false)"
            );
            return Ok(None);
        }
        // `swarm-resource` names variables Docker Swarm sets for generic
        // resources; the first one present wins over NVIDIA_VISIBLE_DEVICES.
        let swarm_variables = config
            .swarm_resource
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty());
        for name in swarm_variables.chain(std::iter::once(VISIBLE_DEVICES)) {
            if let Some(value) = env.get(name) {
                return with_source(value, name);
            }
        }
        // A legacy CUDA image that does not say which GPUs gets all of them.
        Ok(
            legacy_cuda_version
                .map(|_| (Devices::All, LEGACY_CUDA_VERSION.to_string(), Vec::new())),
        )
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use serde_json::json;

    pub(crate) fn spec_with_env(env: &[&str]) -> Value {
        json!({"ociVersion": "1.0.2", "process": {"env": env}})
    }

    pub(crate) fn request(env: &[&str]) -> Result<Option<Request>, RequestError> {
        Request::from_spec(&spec_with_env(env), &Config::default())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{request, spec_with_env};
    use super::*;
    use serde_json::json;

    #[test]
    fn not_a_gpu_container() {
        for env in [
            vec![],
            vec!["NVIDIA_VISIBLE_DEVICES="],
            vec!["NVIDIA_VISIBLE_DEVICES=void"],
            vec!["NVIDIA_VISIBLE_DEVICES=0,void"],
            vec!["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES="],
        ] {
            assert_eq!(request(&env).unwrap(), None, "{env:?}");
        }
    }

    #[test]
    fn last_duplicate_wins() {
        let request = request(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=1"])
            .unwrap()
            .unwrap();
        assert_eq!(request.devices, Devices::List(vec![DeviceId::Index(1)]));
    }

    #[test]
    fn legacy_cuda_image() {
        let request = request(&["CUDA_VERSION=11.0.3"]).unwrap().unwrap();
        assert_eq!(request.devices, Devices::All);
        assert_eq!(request.capabilities, Capabilities::all());
        assert_eq!(
            request.requirements,
            vec![("CUDA_VERSION".to_string(), "cuda>=11.0".to_string())]
        );
        // With NVIDIA_REQUIRE_CUDA the image is not legacy.
        assert_eq!(
            super::tests::request(&["CUDA_VERSION=12.4.1", "NVIDIA_REQUIRE_CUDA=cuda>=12.4"])
                .unwrap(),
            None
        );
        let request = super::tests::request(&[
            "CUDA_VERSION=12.4.1",
            "NVIDIA_REQUIRE_CUDA=cuda>=12.4",
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DISABLE_REQUIRE=true",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            request.requirements,
            vec![("NVIDIA_REQUIRE_CUDA".to_string(), "cuda>=12.4".to_string())]
        );
        assert!(request.disable_require);
    }

    #[test]
    fn unprivileged_trust_setting() {
        let config = Config {
            accept_nvidia_visible_devices_envvar_when_unprivileged: false,
            ..Default::default()
        };
        let unprivileged = spec_with_env(&["NVIDIA_VISIBLE_DEVICES=all"]);
        assert_eq!(Request::from_spec(&unprivileged, &config).unwrap(), None);
        let mut privileged = unprivileged.clone();
        privileged["process"]["capabilities"] = json!({"bounding": ["CAP_SYS_ADMIN"]});
        let request = Request::from_spec(&privileged, &config).unwrap().unwrap();
        assert!(request.privileged);
        assert_eq!(request.devices, Devices::All);
    }

    #[test]
    fn mount_requests_when_enabled() {
        let mut config = Config {
            accept_nvidia_visible_devices_envvar_when_unprivileged: false,
            accept_nvidia_visible_devices_as_volume_mounts: true,
            ..Default::default()
        };
        let mut spec = spec_with_env(&["NVIDIA_VISIBLE_DEVICES=all"]);
        spec["mounts"] = json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/var/run/nvidia-container-devices/1", "source": "/dev/null", "type": "bind"},
            {"destination": "/var/run/nvidia-container-devices/GPU-abc", "source": "/dev/null", "type": "bind"}
        ]);
        let request = Request::from_spec(&spec, &config).unwrap().unwrap();
        assert_eq!(
            request.devices,
            Devices::List(vec![DeviceId::Index(1), DeviceId::Uuid("GPU-abc".into())])
        );
        // Disabled: the mounts mean nothing.
        config.accept_nvidia_visible_devices_as_volume_mounts = false;
        assert_eq!(Request::from_spec(&spec, &config).unwrap(), None);
    }

    #[test]
    fn mig_capabilities_need_privilege() {
        let env = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"];
        let error = request(&env).unwrap_err();
        assert!(
            matches!(error, RequestError::MigNeedsPrivilege { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("privileged"), "{error}");
        let mut spec = spec_with_env(&env);
        spec["process"]["capabilities"] = json!({"bounding": ["CAP_SYS_ADMIN"]});
        let request = Request::from_spec(&spec, &Config::default())
            .unwrap()
            .unwrap();
        assert!(request.mig_config && !request.mig_monitor);
        let error =
            super::tests::request(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_MONITOR_DEVICES=0"])
                .unwrap_err();
        assert!(matches!(error, RequestError::MigAllOnly { .. }), "{error}");
    }

    #[test]
    fn imex_and_feature_devices() {
        let request = request(&[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_IMEX_CHANNELS=1,0,1",
            "NVIDIA_GDS=enabled",
            "NVIDIA_MOFED=disabled",
            "NVIDIA_GDRCOPY=enabled",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(request.imex_channels, Some(ImexChannels::List(vec![1, 0])));
        assert_eq!(
            request.features,
            FeatureDevices {
                gds: true,
                mofed: false,
                nvswitch: false,
                gdrcopy: true
            }
        );
        let all = super::tests::request(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=all"])
            .unwrap()
            .unwrap();
        assert_eq!(all.imex_channels, Some(ImexChannels::All));
        let error = super::tests::request(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_IMEX_CHANNELS=x"])
            .unwrap_err();
        assert!(error.to_string().contains("\"x\""), "{error}");
    }

    #[test]
    fn swarm_resource() {
        let config = Config {
            swarm_resource: "DOCKER_RESOURCE_GPU".into(),
            ..Default::default()
        };
        let spec = spec_with_env(&["DOCKER_RESOURCE_GPU=GPU-1", "NVIDIA_VISIBLE_DEVICES=all"]);
        let request = Request::from_spec(&spec, &config).unwrap().unwrap();
        assert_eq!(
            request.devices,
            Devices::List(vec![DeviceId::Uuid("GPU-1".into())])
        );
    }

    #[test]
    fn env_entries_without_equals_are_ignored_and_bad_types_rejected() {
        let spec = spec_with_env(&["JUSTAKEY", "NVIDIA_VISIBLE_DEVICES=0"]);
        assert!(Request::from_spec(&spec, &Config::default())
            .unwrap()
            .is_some());
        let spec = json!({"process": {"env": "NVIDIA_VISIBLE_DEVICES=0"}});
        assert!(matches!(
            Request::from_spec(&spec, &Config::default()),
            Err(RequestError::BadSpecField { .. })
        ));
    }
}
