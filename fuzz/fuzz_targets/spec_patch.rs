//! The spec patcher: arbitrary JSON in, fixed edits applied. It never
//! panics; a non-object is a shape error; the output serializes to JSON that
//! parses back to it, keeps every input field (and their order) that the
//! edits do not own, holds every edit exactly once, and applying the edits
//! again changes nothing.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use nvidia_container_runtime::driver::DeviceNode;
use nvidia_container_runtime::edits::{ContainerEdits, Hook, Mount, HOOK_INJECTED_FLAG};
use nvidia_container_runtime::oci::{patch::apply, SpecError};
use serde_json::Value;

fn edits() -> ContainerEdits {
    let node = |path: &str, minor| DeviceNode {
        path: PathBuf::from(path),
        host_path: PathBuf::from(path),
        major: 195,
        minor,
        file_mode: 0o666,
        uid: 0,
        gid: 0,
        permissions: "rwm".into(),
    };
    ContainerEdits {
        env: vec!["NVIDIA_VISIBLE_DEVICES=void".into(), "A=1".into()],
        device_nodes: vec![node("/dev/nvidiactl", 255), node("/dev/nvidia1", 1)],
        mounts: vec![Mount {
            host_path: "/d/libcuda.so.550.54.15".into(),
            container_path: "/usr/lib64/libcuda.so.1".into(),
            options: vec!["ro".into(), "nosuid".into(), "nodev".into(), "bind".into()],
            mount_type: "bind".into(),
        }],
        hooks: vec![Hook {
            hook_name: "prestart".into(),
            path: "/usr/bin/nvidia-container-runtime-hook".into(),
            args: vec![
                "nvidia-container-runtime-hook".into(),
                "prestart".into(),
                HOOK_INJECTED_FLAG.into(),
            ],
            env: vec!["PATH=/usr/bin".into()],
            timeout: Some(30),
        }],
    }
}

/// JSON equality where floats may differ in the last bit: serde_json's
/// default float parser is not always correctly rounded, so a re-parse of
/// printed floats can be off by one ulp (runc's Go parser is exact).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x.to_bits() as i64 - y.to_bits() as i64).abs() <= 1
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same(vx, vy))
        }
        _ => a == b,
    }
}

/// Every key of `input` except `owned` is in `output` with the same value,
/// and the input's keys keep their order.
fn keeps_fields(input: &Value, output: &Value, owned: &[&str], at: &str) {
    let (Some(input), Some(output)) = (input.as_object(), output.as_object()) else {
        return;
    };
    for (key, value) in input {
        let kept = output
            .get(key)
            .unwrap_or_else(|| panic!("{at}.{key} was dropped"));
        if !owned.contains(&key.as_str()) {
            assert_eq!(kept, value, "{at}.{key} changed");
        }
    }
    let order: Vec<&String> = output.keys().filter(|k| input.contains_key(*k)).collect();
    assert!(
        order.iter().copied().eq(input.keys()),
        "{at}: key order changed"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let edits = edits();
    let path = Path::new("/bundle/config.json");
    let patched = match apply(&input, &edits, path) {
        Ok(patched) => patched,
        Err(SpecError::Shape { .. }) => return,
        Err(other) => panic!("apply failed with a non-shape error: {other}"),
    };
    assert!(input.is_object());

    let text = serde_json::to_vec(&patched).expect("serialize");
    let reparsed: Value = serde_json::from_slice(&text).expect("the output parses");
    assert!(
        same(&reparsed, &patched),
        "the output does not parse back to itself"
    );

    keeps_fields(
        &input,
        &patched,
        &["process", "linux", "mounts", "hooks"],
        "",
    );
    keeps_fields(&input["process"], &patched["process"], &["env"], "process");
    keeps_fields(
        &input["linux"],
        &patched["linux"],
        &["devices", "resources"],
        "linux",
    );
    keeps_fields(
        &input["linux"]["resources"],
        &patched["linux"]["resources"],
        &["devices"],
        "linux.resources",
    );
    keeps_fields(&input["hooks"], &patched["hooks"], &["prestart"], "hooks");

    let env = patched["process"]["env"].as_array().expect("env is a list");
    for entry in &edits.env {
        let key = entry.split_once('=').unwrap().0;
        let with_key = env
            .iter()
            .filter(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(k, _)| k) == Some(key));
        assert_eq!(with_key.collect::<Vec<_>>(), vec![entry], "env {key}");
    }
    let devices = patched["linux"]["devices"].as_array().expect("devices");
    for node in &edits.device_nodes {
        let path = node.path.to_str().unwrap();
        let count = devices.iter().filter(|d| d["path"] == path).count();
        assert_eq!(count, 1, "device {path}");
    }
    let mounts = patched["mounts"].as_array().expect("mounts");
    for mount in &edits.mounts {
        let destination = mount.container_path.to_str().unwrap();
        let count = mounts
            .iter()
            .filter(|m| m["destination"] == destination)
            .count();
        assert_eq!(count, 1, "mount {destination}");
    }
    let prestart = patched["hooks"]["prestart"].as_array().expect("prestart");
    let ours = prestart
        .iter()
        .filter(|h| {
            h["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == HOOK_INJECTED_FLAG))
        })
        .count();
    assert!(ours >= 1, "our hook is missing");

    let again = apply(&patched, &edits, path).expect("a patched spec patches again");
    assert_eq!(again, patched, "applying twice differs from once");
});
