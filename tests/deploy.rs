//! The Kubernetes manifests of deploy/kubernetes, checked as far as this
//! machine allows: Kubernetes itself cannot run here (Debian's archive has
//! no kubelet), so `kubectl` parses them offline (`kubectl label --local`,
//! which needs no API server), and the test reads them to check that they
//! fit the installer: every environment variable the DaemonSet sets is one
//! the installer reads, every path it names lies in a volume mounted from
//! the host path the installer assumes, and the RuntimeClasses name the
//! handlers the installer registers.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde::Deserialize;
use serde_json::Value;

const INSTALLER: &str = env!("CARGO_BIN_EXE_nvidia-ctk-installer");

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(name)
}

/// Every document of a multi-document YAML file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

#[test]
fn kubectl_parses_every_manifest() {
    let Some(kubectl) = require_tool("kubectl") else {
        return;
    };
    for name in [
        "runtimeclasses.yaml",
        "daemonset.yaml",
        "validation-pod.yaml",
    ] {
        let out = command_output({
            let mut command = Command::new(&kubectl);
            command
                .args(["label", "--local", "-o", "name", "-f"])
                .arg(manifest(name))
                .arg("checked=true")
                // No cluster: nothing may be contacted.
                .env("KUBECONFIG", "/nonexistent");
            command
        });
        out.assert_success(&format!("kubectl label --local -f {name}"));
        let count = documents(&manifest(name)).len();
        assert_eq!(out.stdout.lines().count(), count, "{name}: {}", out.stdout);
    }
}

#[test]
fn the_runtime_classes_name_the_installers_handlers() {
    let handlers: Vec<String> = documents(&manifest("runtimeclasses.yaml"))
        .iter()
        .map(|class| {
            assert_eq!(class["kind"], "RuntimeClass");
            assert_eq!(class["metadata"]["name"], class["handler"]);
            class["handler"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(handlers, ["nvidia", "nvidia-cdi", "nvidia-legacy"]);
}

#[test]
fn the_daemonset_fits_the_installer() {
    let daemonset = documents(&manifest("daemonset.yaml"))
        .into_iter()
        .find(|document| document["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    // As the GPU Operator sets them.
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(
        pod["nodeSelector"]["nvidia.com/gpu.deploy.container-toolkit"],
        "true"
    );
    assert!(pod["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "nvidia.com/gpu" && t["operator"] == "Exists"));
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["privileged"], true);
    assert_eq!(container["command"][0], "nvidia-toolkit");

    // Each variable is one the installer documents (its --help lists the
    // variables of its flags and the pass-throughs).
    let help = command_output({
        let mut command = Command::new(INSTALLER);
        command.arg("--help");
        command
    });
    help.assert_success("nvidia-ctk-installer --help");
    let env: BTreeMap<String, String> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for name in env.keys() {
        // NVIDIA_VISIBLE_DEVICES=void is for the container runtime that
        // starts the installer's own pod, not for the installer.
        if name != "NVIDIA_VISIBLE_DEVICES" {
            assert!(
                help.stdout.contains(name.as_str()),
                "the DaemonSet sets {name}, which nvidia-ctk-installer --help does not name"
            );
        }
    }

    // Every path the installer is given is inside a mounted volume, and the
    // drop-in's host path is where that volume comes from.
    let volumes: BTreeMap<String, String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["hostPath"]["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mounts: Vec<(String, String)> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let mount_path = m["mountPath"].as_str().unwrap().trim_end_matches('/');
            let host = &volumes[m["name"].as_str().unwrap()];
            (mount_path.to_string(), host.clone())
        })
        .collect();
    let host_path_of = |path: &str| -> String {
        let (mount, host) = mounts
            .iter()
            .filter(|(mount, _)| Path::new(path).starts_with(mount))
            .max_by_key(|(mount, _)| mount.len())
            .unwrap_or_else(|| panic!("{path} is in no volume of the DaemonSet"));
        let rest = Path::new(path).strip_prefix(mount).unwrap();
        match rest.as_os_str().is_empty() {
            true => host.clone(),
            false => Path::new(host).join(rest).display().to_string(),
        }
    };
    for name in [
        "RUNTIME_CONFIG",
        "RUNTIME_DROP_IN_CONFIG",
        "RUNTIME_SOCKET",
        "ROOT",
        "TOOLKIT_PID_FILE",
        "HOST_ROOT_MOUNT",
        "DRIVER_ROOT_CTR_PATH",
    ] {
        let value = env
            .get(name)
            .unwrap_or_else(|| panic!("the DaemonSet does not set {name}"));
        host_path_of(value);
    }
    assert_eq!(
        host_path_of(&env["RUNTIME_DROP_IN_CONFIG"]),
        env["RUNTIME_DROP_IN_CONFIG_HOST_PATH"]
    );
    assert_eq!(host_path_of(&env["HOST_ROOT_MOUNT"]), "/");
    // $ROOT is the same path on the host (the engine execs the wrappers
    // there) as in the pod.
    assert_eq!(host_path_of(&env["ROOT"]), env["ROOT"]);
    assert_eq!(
        host_path_of(&env["RUNTIME_CONFIG"]),
        "/etc/containerd/config.toml"
    );
}
