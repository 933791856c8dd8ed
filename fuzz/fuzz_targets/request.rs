//! The request parser: a `config.json` built from the fuzz input (env list,
//! annotations, mounts, capabilities, odd shapes) and a config with the
//! request-related settings; `Request::from_spec` never panics, and the
//! device list parser agrees with itself.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::config::Config;
use nvidia_container_runtime::request::{parse_devices, Devices, Request};
use serde_json::{json, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    env: Vec<String>,
    annotations: Vec<(String, String)>,
    /// (destination, source) of bind mounts; destinations are often
    /// prefixed with the device-request dir (see `mount_prefix`).
    mounts: Vec<(String, String)>,
    mount_prefix: bool,
    cap_sys_admin: bool,
    volume_mounts: bool,
    envvar_when_unprivileged: bool,
    swarm_resource: String,
    supported_capabilities: Option<String>,
    disable_require: bool,
    /// 0..: which field gets a wrong JSON type, if any.
    odd_shape: u8,
}

fuzz_target!(|input: Input| {
    let mounts: Vec<Value> = input
        .mounts
        .iter()
        .map(|(destination, source)| {
            let destination = if input.mount_prefix {
                format!("/var/run/nvidia-container-devices/{destination}")
            } else {
                destination.clone()
            };
            json!({"destination": destination, "source": source, "type": "bind"})
        })
        .collect();
    let annotations: serde_json::Map<String, Value> = input
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let bounding: Vec<&str> = if input.cap_sys_admin {
        vec!["CAP_CHOWN", "CAP_SYS_ADMIN"]
    } else {
        vec!["CAP_CHOWN"]
    };
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "process": {"env": input.env, "capabilities": {"bounding": bounding}},
        "mounts": mounts,
        "annotations": annotations,
    });
    match input.odd_shape % 8 {
        1 => spec["process"]["env"] = json!("NVIDIA_VISIBLE_DEVICES=all"),
        2 => spec["process"]["env"] = json!([1, null, "NVIDIA_VISIBLE_DEVICES=0"]),
        3 => spec["mounts"] = json!({"destination": "/var/run/nvidia-container-devices/0"}),
        4 => spec["process"] = Value::Null,
        5 => spec["annotations"] = json!([1, 2]),
        6 => spec["process"]["capabilities"]["bounding"] = json!("CAP_SYS_ADMIN"),
        _ => {}
    }
    let mut config = Config {
        accept_nvidia_visible_devices_as_volume_mounts: input.volume_mounts,
        accept_nvidia_visible_devices_envvar_when_unprivileged: input.envvar_when_unprivileged,
        swarm_resource: input.swarm_resource.clone(),
        disable_require: input.disable_require,
        ..Config::default()
    };
    if let Some(supported) = &input.supported_capabilities {
        config.supported_driver_capabilities = supported.clone();
    }
    if let Ok(Some(request)) = Request::from_spec(&spec, &config) {
        // The admin's list caps what a container gets.
        if let Ok(supported) = nvidia_container_runtime::request::Capabilities::parse(
            &config.supported_driver_capabilities,
            "supported",
        ) {
            assert_eq!(
                request.capabilities.intersection(supported),
                request.capabilities
            );
        }
        if request.disable_require {
            assert!(
                config.disable_require
                    || input
                        .env
                        .iter()
                        .any(|e| e.starts_with("NVIDIA_DISABLE_REQUIRE="))
            );
        }
    }
    // Every env value is also a device list: parsing never panics and
    // agrees with itself, and `all` wins over anything else in the list.
    // (A list of only CDI names is an empty `List`: CDI names are read
    // separately, so emptiness is not an invariant.)
    for entry in &input.env {
        let value = entry.split_once('=').map_or(entry.as_str(), |(_, v)| v);
        let first = parse_devices(value, "NVIDIA_VISIBLE_DEVICES");
        assert_eq!(first, parse_devices(value, "NVIDIA_VISIBLE_DEVICES"));
        let has_all = value.split(',').any(|d| d.trim() == "all");
        let has_void = value.split(',').any(|d| d.trim() == "void");
        if has_all && !has_void {
            assert_eq!(first, Ok(Some(Devices::All)), "{value:?}");
        }
    }
});
