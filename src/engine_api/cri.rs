//! The two CRI calls (kubernetes/cri-api `runtime.v1.RuntimeService`)
//! that tell whether a node's engine serves kubelet: `Version` (it
//! answers) and `Status` (its RuntimeReady condition, and the runtime
//! handlers it knows). containerd 1.6 serves `runtime.v1` beside
//! `v1alpha2`; kubelet 1.26 and later speak only v1.

use std::path::Path;
use std::time::Duration;

use super::protobuf::{self, Value, Writer};
use super::{grpc, EngineApiError, Malformed};

const VERSION: &str = "/runtime.v1.RuntimeService/Version";
const STATUS: &str = "/runtime.v1.RuntimeService/Status";

/// `VersionResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// `RuntimeCondition`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// `RuntimeReady` or `NetworkReady`.
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// `StatusResponse`, less `features`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub conditions: Vec<Condition>,
    /// Only with `verbose`: containerd puts its CRI config, as JSON, under
    /// `config`.
    pub info: Vec<(String, String)>,
    /// CRI v1.30's `runtime_handlers` (containerd 2.0 and later, CRI-O
    /// 1.30 and later); empty from older engines. The default handler is
    /// listed as `""`.
    pub runtime_handlers: Vec<String>,
}

/// `Version`, as kubelet calls it first.
pub fn version(socket: &Path, timeout: Duration) -> Result<Version, EngineApiError> {
    // kubelet's kubeRuntimeAPIVersion.
    let request = Writer::default().string(1, "0.1.0").finish();
    let answer = grpc::unary(socket, VERSION, &request, timeout)?;
    parse_version(&answer).map_err(|source| malformed(socket, VERSION, source))
}

/// `Status`; `verbose` adds `info`.
pub fn status(socket: &Path, verbose: bool, timeout: Duration) -> Result<Status, EngineApiError> {
    let request = Writer::default().bool(1, verbose).finish();
    let answer = grpc::unary(socket, STATUS, &request, timeout)?;
    parse_status(&answer).map_err(|source| malformed(socket, STATUS, source))
}

fn malformed(socket: &Path, call: &str, source: protobuf::ProtobufError) -> EngineApiError {
    EngineApiError::Malformed {
        socket: socket.to_path_buf(),
        call: call.trim_start_matches('/').to_string(),
        source: Malformed::Protobuf(source),
    }
}

fn parse_version(message: &[u8]) -> Result<Version, protobuf::ProtobufError> {
    let mut version = Version::default();
    for (field, value) in protobuf::fields(message)? {
        let slot = match field {
            1 => &mut version.version,
            2 => &mut version.runtime_name,
            3 => &mut version.runtime_version,
            4 => &mut version.runtime_api_version,
            _ => continue,
        };
        *slot = value.string(field)?;
    }
    Ok(version)
}

fn parse_status(message: &[u8]) -> Result<Status, protobuf::ProtobufError> {
    let mut status = Status::default();
    for (field, value) in protobuf::fields(message)? {
        match field {
            // RuntimeStatus { repeated RuntimeCondition conditions = 1 }
            1 => {
                for (inner, condition) in protobuf::fields(value.message())? {
                    if inner == 1 {
                        status.conditions.push(parse_condition(condition)?);
                    }
                }
            }
            // map<string, string>: entries { key = 1, value = 2 }.
            2 => {
                let (mut key, mut text) = (String::new(), String::new());
                for (inner, part) in protobuf::fields(value.message())? {
                    match inner {
                        1 => key = part.string(inner)?,
                        2 => text = part.string(inner)?,
                        _ => {}
                    }
                }
                status.info.push((key, text));
            }
            // RuntimeHandler { string name = 1; features = 2 }
            3 => {
                let mut name = String::new();
                for (inner, part) in protobuf::fields(value.message())? {
                    if inner == 1 {
                        name = part.string(inner)?;
                    }
                }
                status.runtime_handlers.push(name);
            }
            _ => {}
        }
    }
    Ok(status)
}

fn parse_condition(value: Value<'_>) -> Result<Condition, protobuf::ProtobufError> {
    let mut condition = Condition::default();
    for (field, part) in protobuf::fields(value.message())? {
        match field {
            1 => condition.kind = part.string(field)?,
            2 => condition.status = part.bool(),
            3 => condition.reason = part.string(field)?,
            4 => condition.message = part.string(field)?,
            _ => {}
        }
    }
    Ok(condition)
}

impl Status {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.kind == kind)
    }

    pub fn info(&self, key: &str) -> Option<&str> {
        self.info
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The runtime handlers the engine serves, named: `runtime_handlers`
    /// where the engine fills it (what kubelet 1.30+ copies into
    /// `node.status.runtimeHandlers`), else the runtimes of the CRI config
    /// a verbose Status carries (`info.config`: `containerd.runtimes`,
    /// containerd 1.6 and 1.7). `None`: this engine tells neither.
    pub fn handlers(&self) -> Option<Vec<String>> {
        let named: Vec<String> = self
            .runtime_handlers
            .iter()
            .filter(|name| !name.is_empty())
            .cloned()
            .collect();
        if !named.is_empty() {
            return Some(named);
        }
        let config: serde_json::Value = serde_json::from_str(self.info("config")?).ok()?;
        let runtimes = config.get("containerd")?.get("runtimes")?.as_object()?;
        Some(runtimes.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(build: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        build(&mut out);
        out
    }

    /// A length-delimited field (the tests' encoder for nested messages).
    fn nested(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
        out.push((field << 3) | 2);
        assert!(bytes.len() < 128);
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }

    #[test]
    fn version_answer() {
        let answer = Writer::default()
            .string(1, "0.1.0")
            .string(2, "containerd")
            .string(3, "v2.1.9")
            .string(4, "v1")
            .finish();
        assert_eq!(
            parse_version(&answer).unwrap(),
            Version {
                version: "0.1.0".into(),
                runtime_name: "containerd".into(),
                runtime_version: "v2.1.9".into(),
                runtime_api_version: "v1".into(),
            }
        );
    }

    /// A Status as containerd 2 sends it (handlers, conditions), and one
    /// as 1.6 sends it (no handlers; the config under info).
    #[test]
    fn status_answers_of_both_generations() {
        let ready = Writer::default()
            .string(1, "RuntimeReady")
            .bool(2, true)
            .finish();
        let network = Writer::default()
            .string(1, "NetworkReady")
            .string(3, "NetworkPluginNotReady")
            .string(4, "cni plugin not initialized")
            .finish();
        let runtime_status = message(|out| {
            nested(out, 1, &ready);
            nested(out, 1, &network);
        });
        let handler = |name: &str| {
            message(|out| {
                out.extend(Writer::default().string(1, name).finish());
                // features { user namespaces = true }: skipped.
                nested(out, 2, &[0x08, 0x01]);
            })
        };
        let modern = message(|out| {
            nested(out, 1, &runtime_status);
            nested(out, 3, &handler(""));
            nested(out, 3, &handler("nvidia"));
            nested(out, 3, &handler("runc"));
            // features = 4: skipped.
            nested(out, 4, &[0x08, 0x01]);
        });
        let status = parse_status(&modern).unwrap();
        assert!(status.condition("RuntimeReady").unwrap().status);
        let network = status.condition("NetworkReady").unwrap();
        assert!(!network.status);
        assert_eq!(network.message, "cni plugin not initialized");
        assert_eq!(status.runtime_handlers, ["", "nvidia", "runc"]);
        assert_eq!(status.handlers().unwrap(), ["nvidia", "runc"]);

        let config =
            r#"{"containerd":{"defaultRuntimeName":"runc","runtimes":{"runc":{},"nvidia":{}}}}"#;
        let entry = Writer::default()
            .string(1, "config")
            .string(2, config)
            .finish();
        let mut old = message(|out| nested(out, 1, &runtime_status));
        old.push(2 << 3 | 2);
        // A varint length above 127.
        old.extend_from_slice(&[(entry.len() as u8 & 0x7f) | 0x80, (entry.len() >> 7) as u8]);
        old.extend_from_slice(&entry);
        let status = parse_status(&old).unwrap();
        assert_eq!(status.info("config"), Some(config));
        let mut handlers = status.handlers().unwrap();
        handlers.sort();
        assert_eq!(handlers, ["nvidia", "runc"]);

        // Neither: cannot tell.
        assert_eq!(
            parse_status(&message(|out| nested(out, 1, &runtime_status)))
                .unwrap()
                .handlers(),
            None
        );
    }
}
