//! dockerd's `daemon.json`: `runtimes.<name>` and `default-runtime`.

use std::path::Path;

use serde_json::{Map, Value as Json};

use super::{read_optional, ConfigureError, FileChange, Options, Plan, Result};

/// What changed in daemon.json, for the next steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DockerChanges {
    pub runtimes: bool,
    pub default_runtime: bool,
}

pub(super) fn plan(options: &Options) -> Result<Plan> {
    let path = options.config_path();
    let before = read_optional(&path)?;
    let (after, changes) = edit_docker(before.as_deref().unwrap_or(""), &path, options)?;
    let after = if before.is_none() && options.uninstall {
        None
    } else {
        Some(after)
    };
    let file = FileChange {
        path: path.clone(),
        before,
        after,
    };
    let mut next_steps = Vec::new();
    if file.changes_anything() {
        // dockerd re-reads `runtimes` on SIGHUP, but `default-runtime` only
        // at start (engines.md).
        if changes.default_runtime {
            next_steps.push("restart dockerd to apply default-runtime: systemctl restart docker (or stop dockerd and start it again)".to_string());
        } else {
            next_steps.push(
                "reload dockerd's runtimes: systemctl reload docker, or kill -s HUP $(pidof dockerd)"
                    .to_string(),
            );
        }
        if !options.uninstall {
            next_steps.push(format!(
                "then: docker run --rm --runtime={} -e NVIDIA_VISIBLE_DEVICES=all IMAGE nvidia-smi -L",
                options.runtime_name
            ));
        }
    }
    Ok(Plan {
        files: vec![file],
        next_steps,
    })
}

/// Edits daemon.json's text: `runtimes.<name> = {"path", "runtimeArgs"}`
/// (dockerd reads `runtimeArgs`; the anchor's `args` is ignored by dockerd,
/// so a stale `args` in our entry is dropped), and `default-runtime` on
/// request. Every other key keeps its value and its place.
pub fn edit_docker(text: &str, path: &Path, options: &Options) -> Result<(String, DockerChanges)> {
    let mut root: Map<String, Json> = if text.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Json>(text) {
            Ok(Json::Object(map)) => map,
            Ok(other) => {
                return Err(ConfigureError::Shape {
                    path: path.to_path_buf(),
                    key: "(top level)".to_string(),
                    found: json_kind(&other),
                    expected: "an object",
                })
            }
            Err(error) => {
                return Err(ConfigureError::Parse {
                    path: path.to_path_buf(),
                    format: "JSON",
                    line: error.line(),
                    column: error.column(),
                    message: crate::logging::one_line(&error.to_string()),
                })
            }
        }
    };
    let original = root.clone();
    let name = &options.runtime_name;
    let shape_error = |key: String, found: &Json| ConfigureError::Shape {
        path: path.to_path_buf(),
        key,
        found: json_kind(found),
        expected: "an object",
    };
    let mut changes = DockerChanges::default();
    if options.uninstall {
        if let Some(runtimes) = root.get_mut("runtimes") {
            let Json::Object(runtimes) = runtimes else {
                return Err(shape_error("runtimes".to_string(), runtimes));
            };
            for (entry, _) in options.entries() {
                changes.runtimes |= runtimes.shift_remove(entry).is_some();
            }
            if runtimes.is_empty() {
                root.shift_remove("runtimes");
            }
        }
        if root.get("default-runtime").and_then(Json::as_str) == Some(name.as_str()) {
            // Without the key dockerd uses runc, its built-in default.
            root.shift_remove("default-runtime");
            changes.default_runtime = true;
        }
    } else {
        let runtimes = root
            .entry("runtimes")
            .or_insert_with(|| Json::Object(Map::new()));
        let Json::Object(runtimes) = runtimes else {
            return Err(shape_error("runtimes".to_string(), runtimes));
        };
        for (entry_name, binary) in options.entries() {
            let entry = runtimes
                .entry(entry_name.to_string())
                .or_insert_with(|| Json::Object(Map::new()));
            let Json::Object(entry) = entry else {
                return Err(shape_error(format!("runtimes.{entry_name}"), entry));
            };
            let path_value = Json::from(binary.to_string_lossy().into_owned());
            entry.insert("path".to_string(), path_value);
            let args = entry.shift_remove("args");
            if !entry.contains_key("runtimeArgs") {
                entry.insert(
                    "runtimeArgs".to_string(),
                    args.unwrap_or_else(|| Json::Array(Vec::new())),
                );
            }
        }
        if options.enable_cdi {
            let features = root
                .entry("features")
                .or_insert_with(|| Json::Object(Map::new()));
            let Json::Object(features) = features else {
                return Err(shape_error("features".to_string(), features));
            };
            features.insert("cdi".to_string(), Json::Bool(true));
        }
        if options.set_as_default
            && root.get("default-runtime").and_then(Json::as_str) != Some(name.as_str())
        {
            root.insert("default-runtime".to_string(), Json::from(name.clone()));
            changes.default_runtime = true;
        }
        changes.runtimes = root.get("runtimes") != original.get("runtimes");
    }
    if root == original && !text.trim().is_empty() {
        // Nothing to change: keep the admin's formatting byte for byte.
        return Ok((text.to_string(), DockerChanges::default()));
    }
    Ok((
        to_json_text(&Json::Object(root), &json_indent(text)),
        changes,
    ))
}

pub(super) fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The indentation of the first indented line (default two spaces, as in
/// Docker's documentation).
fn json_indent(text: &str) -> String {
    text.lines()
        .skip(1)
        .map(|line| {
            let trimmed = line.trim_start_matches([' ', '\t']);
            &line[..line.len() - trimmed.len()]
        })
        .find(|indent| !indent.is_empty())
        .unwrap_or("  ")
        .to_string()
}

fn to_json_text(value: &Json, indent: &str) -> String {
    use serde::Serialize as _;
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing a Value into a Vec cannot fail: no I/O, and every key is a
    // string.
    let _ = value.serialize(&mut serializer);
    let mut text = String::from_utf8_lossy(&out).into_owned();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configure::{Engine, DEFAULT_RUNTIME_PATH};

    fn docker_options() -> Options {
        Options::new(Engine::Docker)
    }

    #[test]
    fn docker_merges_and_keeps_order() {
        let text = "{\n    \"log-driver\": \"journald\",\n    \"runtimes\": {\"other\": {\"path\": \"/x\"}},\n    \"zz\": 1\n}\n";
        let (out, changes) = edit_docker(text, Path::new("/d.json"), &docker_options()).unwrap();
        assert!(changes.runtimes && !changes.default_runtime);
        let keys: Vec<String> = serde_json::from_str::<Map<String, Json>>(&out)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["log-driver", "runtimes", "zz"]);
        assert!(out.contains("\n    \"log-driver\""), "{out}");
        assert!(out.contains("\"runtimeArgs\": []"), "{out}");
        let (again, changes) = edit_docker(&out, Path::new("/d.json"), &docker_options()).unwrap();
        assert_eq!(again, out);
        assert_eq!(changes, DockerChanges::default());
    }

    #[test]
    fn docker_args_become_runtime_args() {
        let text = r#"{"runtimes": {"nvidia": {"path": "/old", "args": ["--x"]}}}"#;
        let (out, _) = edit_docker(text, Path::new("/d.json"), &docker_options()).unwrap();
        let value: Json = serde_json::from_str(&out).unwrap();
        assert_eq!(
            value["runtimes"]["nvidia"],
            serde_json::json!({"path": DEFAULT_RUNTIME_PATH, "runtimeArgs": ["--x"]})
        );
    }

    #[test]
    fn docker_syntax_error_has_line_and_column() {
        let error = edit_docker(
            "{\n  \"a\": 1,\n  oops\n}",
            Path::new("/etc/d.json"),
            &docker_options(),
        )
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/etc/d.json"), "{message}");
        assert!(message.contains("line 3, column 3"), "{message}");
    }
}
