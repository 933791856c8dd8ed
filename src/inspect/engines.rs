//! What the engines' configs say about us: is `nvidia` registered, is it
//! the default, and does the file even parse. Read only; the writing side
//! is [`crate::configure`].

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value as Json;

use crate::configure::{containerd_cri_plugin, Engine, DEFAULT_RUNTIME_NAME};

use super::HostRoot;

/// One engine's view of us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EngineRegistration {
    pub engine: &'static str,
    /// The engine's main config file (on the host).
    pub config_file: PathBuf,
    /// The file does not exist (the engine runs on its defaults).
    pub missing: bool,
    /// Where our entry is, and the runtime binary it names.
    pub entry: Option<Entry>,
    /// Our runtime is the engine's default.
    pub default: bool,
    /// The engine's default runtime, as its config names it.
    pub default_runtime: Option<String>,
    /// The config does not parse, or has the wrong shape.
    pub problem: Option<String>,
    /// containerd: our drop-in exists but the main config does not import
    /// it, so containerd never reads it.
    pub drop_in_not_imported: Option<PathBuf>,
    /// containerd: the config's version.
    pub config_version: Option<i64>,
    /// docker: `exec-opts` / containerd: `SystemdCgroup`: the systemd
    /// cgroup driver.
    pub systemd_cgroup: bool,
    /// docker: the runtime names `runtimes` defines.
    pub runtimes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub file: PathBuf,
    pub path: String,
}

impl EngineRegistration {
    fn new(engine: Engine, config_file: PathBuf) -> EngineRegistration {
        EngineRegistration {
            engine: engine.name(),
            config_file,
            missing: false,
            entry: None,
            default: false,
            default_runtime: None,
            problem: None,
            drop_in_not_imported: None,
            config_version: None,
            systemd_cgroup: false,
            runtimes: Vec::new(),
        }
    }
}

/// Every engine, from its default config path under `host`.
pub fn registrations(host: &HostRoot) -> Vec<EngineRegistration> {
    [
        Engine::Docker,
        Engine::Containerd,
        Engine::Crio,
        Engine::Podman,
    ]
    .into_iter()
    .map(|engine| registration(engine, &host.path(engine.default_config_path())))
    .collect()
}

/// One engine's registration, from its config file `path`.
pub fn registration(engine: Engine, path: &Path) -> EngineRegistration {
    let mut found = EngineRegistration::new(engine, path.to_path_buf());
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            found.missing = true;
            return found;
        }
        Err(error) => {
            found.problem = Some(format!("cannot read it: {error}"));
            return found;
        }
    };
    match engine {
        Engine::Docker => docker(&mut found, &text),
        Engine::Containerd => containerd(&mut found, &text, path),
        Engine::Crio => crio(&mut found, &text, path),
        Engine::Podman => podman(&mut found, &text, path),
    }
    found.default = found.default_runtime.as_deref() == Some(DEFAULT_RUNTIME_NAME);
    found
}

fn docker(found: &mut EngineRegistration, text: &str) {
    let value: Json = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(error) => {
            found.problem = Some(format!("not valid JSON: {error}"));
            return;
        }
    };
    if let Some(runtimes) = value.get("runtimes").and_then(Json::as_object) {
        found.runtimes = runtimes.keys().cloned().collect();
        if let Some(path) = runtimes
            .get(DEFAULT_RUNTIME_NAME)
            .and_then(|entry| entry.get("path"))
            .and_then(Json::as_str)
        {
            found.entry = Some(Entry {
                file: found.config_file.clone(),
                path: path.to_string(),
            });
        }
    }
    found.default_runtime = value
        .get("default-runtime")
        .and_then(Json::as_str)
        .map(str::to_string);
    found.systemd_cgroup = value
        .get("exec-opts")
        .and_then(Json::as_array)
        .is_some_and(|opts| {
            opts.iter()
                .filter_map(Json::as_str)
                .any(|opt| opt.replace(' ', "") == "native.cgroupdriver=systemd")
        });
}

fn parse_toml(found: &mut EngineRegistration, text: &str, path: &Path) -> Option<toml::Table> {
    match text.parse::<toml::Table>() {
        Ok(table) => Some(table),
        Err(error) => {
            found.problem = Some(format!(
                "{} is not valid TOML: {}",
                path.display(),
                crate::logging::one_line(error.message())
            ));
            None
        }
    }
}

fn at<'t>(table: &'t toml::Table, keys: &[&str]) -> Option<&'t toml::Value> {
    let (last, parents) = keys.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(*key)?.as_table()?;
    }
    current.get(*last)
}

/// containerd's `imports` globs, as containerd resolves them: relative to
/// the main file's dir.
fn imported_files(table: &toml::Table, main: &Path) -> Vec<PathBuf> {
    let dir = main.parent().unwrap_or(Path::new("/"));
    let patterns: Vec<String> = table
        .get("imports")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_str)
        .map(str::to_string)
        .collect();
    let mut files = Vec::new();
    for pattern in patterns {
        let pattern = dir.join(pattern);
        // Only the `<dir>/*.toml` form is expanded; nvidia-ctk writes that.
        match pattern.file_name().and_then(|n| n.to_str()) {
            Some(name) if name.starts_with('*') => {
                let suffix = &name[1..];
                let parent = pattern.parent().unwrap_or(Path::new("/"));
                let mut matches: Vec<PathBuf> = std::fs::read_dir(parent)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|p| p.to_string_lossy().ends_with(suffix))
                    .collect();
                matches.sort();
                files.extend(matches);
            }
            _ => files.push(pattern),
        }
    }
    files
}

fn containerd(found: &mut EngineRegistration, text: &str, path: &Path) {
    let Some(main) = parse_toml(found, text, path) else {
        return;
    };
    let version = main
        .get("version")
        .and_then(toml::Value::as_integer)
        .unwrap_or(1);
    found.config_version = Some(version);
    let Some(plugin) = containerd_cri_plugin(version) else {
        found.problem = Some(format!(
            "config version {version} is not one containerd knows (1, 2 or 3)"
        ));
        return;
    };
    let imports = imported_files(&main, path);
    let drop_in = path
        .parent()
        .unwrap_or(Path::new("/"))
        .join("conf.d")
        .join(crate::configure::DROP_IN_NAME);
    if drop_in.exists() && !imports.contains(&drop_in) {
        found.drop_in_not_imported = Some(drop_in);
    }
    // The main file, then each import: a later one replaces a whole plugin
    // section, as containerd merges them. Every version keeps the runtimes
    // at plugins.<cri plugin>.containerd (nvidia-ctk writes them there).
    let mut files = vec![(path.to_path_buf(), main)];
    for import in imports {
        let Ok(text) = std::fs::read_to_string(&import) else {
            continue;
        };
        if let Some(table) = parse_toml(found, &text, &import) {
            files.push((import, table));
        }
    }
    for (file, table) in &files {
        let Some(section) = at(table, &["plugins", plugin, "containerd"]) else {
            continue;
        };
        if let Some(name) =
            at_value(section, &["default_runtime_name"]).and_then(toml::Value::as_str)
        {
            found.default_runtime = Some(name.to_string());
        }
        let runtimes = at_value(section, &["runtimes"]).and_then(toml::Value::as_table);
        for (name, runtime) in runtimes.into_iter().flatten() {
            found.systemd_cgroup |= at_value(runtime, &["options", "SystemdCgroup"])
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            if name == DEFAULT_RUNTIME_NAME {
                let binary = at_value(runtime, &["options", "BinaryName"])
                    .or_else(|| at_value(runtime, &["runtime_engine"]))
                    .and_then(toml::Value::as_str)
                    .unwrap_or("");
                found.entry = Some(Entry {
                    file: file.clone(),
                    path: binary.to_string(),
                });
            }
        }
    }
}

fn at_value<'v>(value: &'v toml::Value, keys: &[&str]) -> Option<&'v toml::Value> {
    at(value.as_table()?, keys)
}

fn crio(found: &mut EngineRegistration, text: &str, path: &Path) {
    let Some(main) = parse_toml(found, text, path) else {
        return;
    };
    let drop_ins = path.parent().unwrap_or(Path::new("/")).join("crio.conf.d");
    let mut files = vec![(path.to_path_buf(), main)];
    let mut names: Vec<PathBuf> = std::fs::read_dir(&drop_ins)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "conf"))
        .collect();
    names.sort();
    for name in names {
        if let Ok(text) = std::fs::read_to_string(&name) {
            if let Some(table) = parse_toml(found, &text, &name) {
                files.push((name, table));
            }
        }
    }
    for (file, table) in &files {
        if let Some(name) =
            at(table, &["crio", "runtime", "default_runtime"]).and_then(toml::Value::as_str)
        {
            found.default_runtime = Some(name.to_string());
        }
        if let Some(runtime) = at(
            table,
            &["crio", "runtime", "runtimes", DEFAULT_RUNTIME_NAME],
        ) {
            let binary = at_value(runtime, &["runtime_path"])
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            found.entry = Some(Entry {
                file: file.clone(),
                path: binary.to_string(),
            });
        }
    }
}

fn podman(found: &mut EngineRegistration, text: &str, path: &Path) {
    let Some(table) = parse_toml(found, text, path) else {
        return;
    };
    if let Some(paths) =
        at(&table, &["engine", "runtimes", DEFAULT_RUNTIME_NAME]).and_then(toml::Value::as_array)
    {
        let first = paths.first().and_then(toml::Value::as_str).unwrap_or("");
        found.entry = Some(Entry {
            file: path.to_path_buf(),
            path: first.to_string(),
        });
    }
    found.default_runtime = at(&table, &["engine", "runtime"])
        .and_then(toml::Value::as_str)
        .map(str::to_string);
}
