//! The runtime's mode (contract.md §2, §4): whether a request goes the
//! legacy way (driver discovery and our own edits), the CDI way (names
//! resolved from the spec dirs), or leaves config.json alone.

use crate::cdi::{parse_kind, Registry};
use crate::config::{Config, Mode};
use crate::edits::generate::ALL_DEVICE;
use crate::edits::ContainerEdits;
use crate::request::{Devices, Request};

use super::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum ModeError {
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
}

/// Which way a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The legacy path: driver discovery and our own edits.
    Legacy,
    /// Nothing to inject; leave config.json alone.
    Untouched,
    /// Resolve these qualified names from the spec dirs and apply them.
    Cdi(Vec<String>),
}

/// Decides between the legacy path and CDI (contract.md §2, §4):
/// - `mode = "cdi"`: the CDI annotations if any, else the request's GPU ids
///   as `<default-kind>=<id>` (`all` included) and its qualified names;
/// - `mode = "auto"`: CDI when the annotations name devices or the request
///   names only qualified CDI names; a list mixing both kinds is an error;
/// - `legacy` (and `csv`): qualified names are an error; the annotations are
///   not looked at (a request made only of them leaves the spec alone).
pub fn route(config: &Config, request: &Request) -> Result<Route, ModeError> {
    let mode = config.nvidia_container_runtime.mode;
    let has_ids = request.devices != Devices::List(Vec::new());
    let names = || request.cdi_devices.join(", ");
    match mode {
        Mode::Legacy | Mode::Csv => {
            if request.cdi_from_annotations {
                tracing::debug!("mode = legacy: CDI annotations ignored");
                return Ok(if has_ids {
                    Route::Legacy
                } else {
                    Route::Untouched
                });
            }
            if request.cdi_devices.is_empty() {
                return Ok(Route::Legacy);
            }
            Err(ModeError::NotCdiMode {
                names: names(),
                mode: if mode == Mode::Csv { "csv" } else { "legacy" },
            })
        }
        Mode::Auto => {
            if request.cdi_devices.is_empty() {
                return Ok(Route::Legacy);
            }
            if has_ids && !request.cdi_from_annotations {
                return Err(ModeError::Mixed {
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
            Ok(Route::Cdi(request.cdi_devices.clone()))
        }
        Mode::Cdi => {
            if request.cdi_from_annotations {
                return Ok(Route::Cdi(request.cdi_devices.clone()));
            }
            let kind = &config.nvidia_container_runtime.modes.cdi.default_kind;
            if parse_kind(kind).is_err() {
                return Err(ModeError::BadDefaultKind { kind: kind.clone() });
            }
            let mut all = match &request.devices {
                Devices::All => vec![format!("{kind}={ALL_DEVICE}")],
                Devices::NoGpu => Vec::new(),
                Devices::List(ids) => ids.iter().map(|id| format!("{kind}={id}")).collect(),
            };
            all.extend(request.cdi_devices.iter().cloned());
            if all.is_empty() {
                tracing::info!("mode = cdi and no device requested: spec left untouched");
                return Ok(Route::Untouched);
            }
            Ok(Route::Cdi(all))
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

/// The edits the CDI names `names` resolve to in the configured spec dirs.
pub fn cdi_edits(config: &Config, names: &[String]) -> Result<ContainerEdits, RuntimeError> {
    let registry = Registry::load(&config.cdi_spec_dirs());
    for broken in &registry.broken {
        tracing::warn!(
            "CDI spec {} ignored: {}",
            broken.path.display(),
            broken.problem
        );
    }
    let resolved = registry.resolve(names)?;
    let edits = ContainerEdits::from_cdi(&resolved)?;
    tracing::info!(
        "CDI devices {}: {} device nodes, {} mounts, {} hooks",
        names.join(", "),
        edits.device_nodes.len(),
        edits.mounts.len(),
        edits.hooks.len()
    );
    Ok(edits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Capabilities, DeviceId};

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
        let inject = |names: &[&str]| Route::Cdi(names.iter().map(|s| s.to_string()).collect());

        assert_eq!(
            route(&config(Mode::Auto), &only_cdi).unwrap(),
            inject(&["nvidia.com/gpu=1"])
        );
        assert_eq!(route(&config(Mode::Auto), &ids).unwrap(), Route::Legacy);
        let error = route(&config(Mode::Auto), &mixed).unwrap_err().to_string();
        assert!(
            error.contains("nvidia.com/gpu=1") && error.contains("mode = \"cdi\""),
            "{error}"
        );
        assert_eq!(
            route(&config(Mode::Auto), &annotated).unwrap(),
            inject(&["example.com/device=foo"])
        );

        assert_eq!(
            route(&config(Mode::Cdi), &ids).unwrap(),
            inject(&["nvidia.com/gpu=0"])
        );
        assert_eq!(
            route(&config(Mode::Cdi), &mixed).unwrap(),
            inject(&["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
        );
        assert_eq!(
            route(&config(Mode::Cdi), &request(Devices::All, &[], false)).unwrap(),
            inject(&["nvidia.com/gpu=all"])
        );
        assert_eq!(
            route(&config(Mode::Cdi), &request(Devices::NoGpu, &[], false)).unwrap(),
            Route::Untouched
        );

        let error = route(&config(Mode::Legacy), &only_cdi)
            .unwrap_err()
            .to_string();
        assert!(error.contains("mode = \"legacy\""), "{error}");
        assert_eq!(
            route(&config(Mode::Legacy), &annotated).unwrap(),
            Route::Legacy
        );
        assert_eq!(
            route(
                &config(Mode::Legacy),
                &request(Devices::List(vec![]), &["a.b/c=d"], true)
            )
            .unwrap(),
            Route::Untouched
        );
    }
}
