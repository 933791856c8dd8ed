//! [`apply`]: [`ContainerEdits`] written into a `config.json` value.
//!
//! The spec is patched as a `serde_json::Value` with `preserve_order`, never
//! round-tripped through typed structs: typed OCI structs drop fields they do
//! not know and reorder capability sets, and the engine (or a newer runtime
//! spec) may have put anything in there. Edits follow CDI's rules: env
//! add-or-replace by key, device nodes replace by path and get a cgroup allow
//! rule, mounts replace by container path, hooks are appended. Applying the
//! same edits twice gives the same document as applying them once.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType};
use serde_json::{json, Map, Value};

use crate::driver::DeviceNode;
use crate::edits::{ContainerEdits, Hook, Mount};

use super::{kind_name, SpecError};

/// Hook binaries that docker's `--gpus` adds as a prestart hook (contract.md
/// §2). When we handle the container we inject ourselves, so theirs goes.
pub const DOCKER_GPU_HOOK_NAMES: &[&str] =
    &["nvidia-container-runtime-hook", "nvidia-container-toolkit"];

/// Applies edits to a spec. Shape errors name the field; the document is
/// only modified when every shape check passed (we work on a copy).
pub fn apply(spec: &Value, edits: &ContainerEdits, path: &Path) -> Result<Value, SpecError> {
    let mut patched = spec.clone();
    let shape = |field: &str, expected: &'static str, found: &Value| SpecError::Shape {
        path: path.to_path_buf(),
        field: field.to_string(),
        expected,
        found: kind_name(found),
    };
    let root = patched
        .as_object_mut()
        .ok_or_else(|| shape("the document", "an object", spec))?;

    if !edits.env.is_empty() {
        let process =
            object_entry(root, "process").map_err(|v| shape("process", "an object", &v))?;
        let env = array_entry(process, "env").map_err(|v| shape("process.env", "a list", &v))?;
        for entry in &edits.env {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            env.retain(|e| e.as_str().and_then(|s| s.split_once('=')).map(|(k, _)| k) != Some(key));
            env.push(Value::String(entry.clone()));
        }
    }

    remove_docker_gpu_hooks(root, &edits.hooks)
        .map_err(|v| shape("hooks.prestart", "a list", &v))?;

    if !edits.device_nodes.is_empty() {
        let linux = object_entry(root, "linux").map_err(|v| shape("linux", "an object", &v))?;
        let devices =
            array_entry(linux, "devices").map_err(|v| shape("linux.devices", "a list", &v))?;
        for node in &edits.device_nodes {
            let path_text = node.path.to_string_lossy();
            devices.retain(|d| d.get("path").and_then(Value::as_str) != Some(&path_text));
            devices.push(device_json(node));
        }
        let resources = object_entry(linux, "resources")
            .map_err(|v| shape("linux.resources", "an object", &v))?;
        let rules = array_entry(resources, "devices")
            .map_err(|v| shape("linux.resources.devices", "a list", &v))?;
        for node in &edits.device_nodes {
            let rule = cgroup_rule(node);
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }

    if !edits.mounts.is_empty() {
        let mounts = array_entry(root, "mounts").map_err(|v| shape("mounts", "a list", &v))?;
        for mount in &edits.mounts {
            let destination = mount.container_path.to_string_lossy();
            mounts.retain(|m| m.get("destination").and_then(Value::as_str) != Some(&destination));
            mounts.push(mount_json(mount));
        }
    }

    if !edits.hooks.is_empty() {
        let hooks = object_entry(root, "hooks").map_err(|v| shape("hooks", "an object", &v))?;
        for hook in &edits.hooks {
            let stage = array_entry(hooks, &hook.hook_name)
                .map_err(|v| shape(&format!("hooks.{}", hook.hook_name), "a list", &v))?;
            let entry = hook_json(hook);
            // Appended once: re-applying replaces our own earlier entry.
            stage.retain(|existing| existing != &entry);
            stage.push(entry);
        }
    }
    Ok(patched)
}

/// Removes docker's `--gpus` prestart hooks (matched by the binary's
/// basename), except an entry identical to one we are about to add.
fn remove_docker_gpu_hooks(root: &mut Map<String, Value>, ours: &[Hook]) -> Result<(), Value> {
    let Some(hooks) = root.get_mut("hooks").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(prestart) = hooks.get_mut("prestart") else {
        return Ok(());
    };
    if !prestart.is_array() {
        return Err(prestart.clone());
    }
    let Some(list) = prestart.as_array_mut() else {
        return Ok(());
    };
    let ours: Vec<Value> = ours.iter().map(hook_json).collect();
    list.retain(|hook| {
        let basename = hook
            .get("path")
            .and_then(Value::as_str)
            .map(|p| p.rsplit('/').next().unwrap_or(p));
        let is_docker_gpu_hook = basename.is_some_and(|b| DOCKER_GPU_HOOK_NAMES.contains(&b));
        !is_docker_gpu_hook || ours.contains(hook)
    });
    Ok(())
}

/// `map[key]` as an object, created if absent; `Err(value)` if it is
/// something else.
fn object_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(object) => Ok(object),
        other => Err(other.clone()),
    }
}

/// `map[key]` as a list, created if absent (or null); `Err(value)` if it is
/// something else.
fn array_entry<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Vec<Value>, Value> {
    let entry = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(list) => Ok(list),
        other => Err(other.clone()),
    }
}

/// An OCI `linux.devices` entry, built with oci-spec's typed builder so the
/// field names and encodings are the runtime spec's, then inserted as a value.
fn device_json(node: &DeviceNode) -> Value {
    let device = LinuxDeviceBuilder::default()
        .path(node.path.clone())
        .typ(LinuxDeviceType::C)
        .major(node.major as i64)
        .minor(node.minor as i64)
        .file_mode(node.file_mode)
        .uid(node.uid)
        .gid(node.gid)
        .build()
        // Cannot fail: oci-spec derives these builders with `default`, so
        // `build` has no missing field to report.
        .expect("LinuxDeviceBuilder with defaults");
    serde_json::to_value(device).unwrap_or(Value::Null)
}

/// The `linux.resources.devices` rule that lets the container use a node:
/// runc (or systemd) then owns the cgroup rule, which is what keeps the GPU
/// after `systemctl daemon-reload` (contract.md §3).
fn cgroup_rule(node: &DeviceNode) -> Value {
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(LinuxDeviceType::C)
        .major(node.major as i64)
        .minor(node.minor as i64)
        .access(node.permissions.as_str())
        .build()
        // Cannot fail: see `device_json`.
        .expect("LinuxDeviceCgroupBuilder with defaults");
    serde_json::to_value(rule).unwrap_or(Value::Null)
}

fn mount_json(mount: &Mount) -> Value {
    json!({
        "destination": mount.container_path.to_string_lossy(),
        "type": mount.mount_type,
        "source": mount.host_path.to_string_lossy(),
        "options": mount.options,
    })
}

fn hook_json(hook: &Hook) -> Value {
    let mut entry = json!({
        "path": hook.path.to_string_lossy(),
        "args": hook.args,
        "env": hook.env,
    });
    if let Some(timeout) = hook.timeout {
        entry["timeout"] = json!(timeout);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn node(path: &str, minor: u64) -> DeviceNode {
        DeviceNode {
            path: PathBuf::from(path),
            host_path: PathBuf::from(path),
            major: 195,
            minor,
            file_mode: 0o666,
            uid: 0,
            gid: 0,
            permissions: "rwm".into(),
        }
    }

    fn edits() -> ContainerEdits {
        ContainerEdits {
            env: vec!["A=1".into()],
            device_nodes: vec![node("/dev/nvidiactl", 255), node("/dev/nvidia1", 1)],
            mounts: vec![Mount {
                host_path: "/d/libcuda.so.550".into(),
                container_path: "/usr/lib64/libcuda.so.1".into(),
                options: vec!["ro".into(), "bind".into()],
                mount_type: "bind".into(),
            }],
            hooks: vec![Hook {
                hook_name: "prestart".into(),
                path: "/usr/bin/nvidia-container-runtime-hook".into(),
                args: vec![
                    "nvidia-container-runtime-hook".into(),
                    "prestart".into(),
                    "--ours".into(),
                ],
                env: vec!["PATH=/usr/bin".into()],
                timeout: Some(30),
            }],
        }
    }

    /// Numbers in fields we do not own survive the rewrite exactly: the
    /// fuzzer found a 62-digit integer whose default (not correctly rounded)
    /// parse, printed and parsed again, moved by more than one ulp; with
    /// serde_json's `float_roundtrip` it does not move at all.
    #[test]
    fn large_and_fractional_numbers_survive_a_rewrite_exactly() {
        let text = format!(
            r#"{{"\\":1{}, "f":0.30000000000000004, "e":2.2250738585072014e-308}}"#,
            "2".repeat(61)
        );
        let input: Value = serde_json::from_str(&text).unwrap();
        let patched = apply(&input, &edits(), Path::new("/b/config.json")).unwrap();
        let written = serde_json::to_string(&patched).unwrap();
        let reread: Value = serde_json::from_str(&written).unwrap();
        assert_eq!(reread, patched);
        for key in ["\\", "f", "e"] {
            assert_eq!(patched[key], input[key], "{key}");
        }
    }

    #[test]
    fn unknown_fields_survive_and_order_is_kept() {
        let spec: Value = serde_json::from_str(
            r#"{"zeta":1,"ociVersion":"1.0.2","process":{"env":["A=0","B=2"],"x-new":{"k":[1,2]}},
                "linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},"future":true},
                "alpha":"kept"}"#,
        )
        .unwrap();
        let patched = apply(&spec, &edits(), Path::new("c")).unwrap();
        let keys: Vec<&String> = patched.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..5],
            ["zeta", "ociVersion", "process", "linux", "alpha"]
        );
        assert_eq!(patched["process"]["x-new"], json!({"k": [1, 2]}));
        assert_eq!(patched["linux"]["future"], json!(true));
        assert_eq!(patched["process"]["env"], json!(["B=2", "A=1"]));
        assert_eq!(patched["linux"]["devices"].as_array().unwrap().len(), 2);
        // deny-all stays first, allow rules follow it.
        let rules = patched["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(rules.len(), 3);
    }

    #[test]
    fn applying_twice_equals_once() {
        let spec = json!({"ociVersion": "1.0.2", "mounts": [{"destination": "/proc"}],
            "hooks": {"prestart": [{"path": "/usr/bin/other"}]}});
        let once = apply(&spec, &edits(), Path::new("c")).unwrap();
        let twice = apply(&once, &edits(), Path::new("c")).unwrap();
        assert_eq!(once, twice);
        assert_eq!(
            serde_json::to_string(&once).unwrap(),
            serde_json::to_string(&twice).unwrap()
        );
    }

    #[test]
    fn docker_gpu_hook_is_replaced() {
        let spec = json!({"hooks": {"prestart": [
            {"path": "/usr/bin/nvidia-container-runtime-hook", "args": ["nvidia-container-runtime-hook", "prestart"]},
            {"path": "/usr/local/bin/nvidia-container-toolkit", "args": ["x", "prestart"]},
            {"path": "/usr/bin/keep-me"}
        ]}});
        let patched = apply(&spec, &edits(), Path::new("c")).unwrap();
        let prestart = patched["hooks"]["prestart"].as_array().unwrap();
        assert_eq!(prestart.len(), 2);
        assert_eq!(prestart[0]["path"], "/usr/bin/keep-me");
        assert_eq!(prestart[1]["args"][2], "--ours");
    }

    #[test]
    fn wrong_shapes_are_errors_naming_the_field() {
        let spec = json!({"linux": {"devices": {"not": "a list"}}});
        let error = apply(&spec, &edits(), Path::new("/b/config.json")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("linux.devices must be a list, but it is an object"),
            "{message}"
        );
        let spec = json!({"mounts": null, "linux": null, "process": {"env": null}});
        assert!(apply(&spec, &edits(), Path::new("c")).is_ok());
    }
}
