//! Registration with container engines: `nvidia-ctk runtime configure`.
//!
//! This module owns what the admin's engine config says about us: dockerd's
//! `daemon.json`, containerd's `config.toml` (versions 1, 2 and 3, with a
//! drop-in and the `imports` line), CRI-O's drop-in and podman's
//! `containers.conf`. It turns [`Options`] into a [`Plan`] (the new text of
//! every file, computed in memory from the current text) and [`apply`]s it.
//!
//! The rules every engine gets (engines.md):
//! - Merge, never clobber: only our entry (and, on request, the default
//!   runtime) changes; every other key, comment and the file's order survive
//!   (`toml_edit` for TOML, `serde_json` with order preserved for JSON).
//! - Validate first: a file that does not parse is reported with its path and
//!   the parser's line/column, and nothing is written. A syntax error in
//!   `daemon.json` stops dockerd from starting, so we never write one.
//! - Write atomically (temp file in the same dir, fsync, rename), keep the
//!   previous file as `<file>.bak`, keep its mode and owner.
//! - Idempotent: a plan whose text equals the file's is not written, so a
//!   second run changes nothing (not even the backup).

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use toml_edit::{Array, DocumentMut, Item, Table, TableLike, Value};

/// The default name of our runtime entry in every engine.
pub const DEFAULT_RUNTIME_NAME: &str = "nvidia";
/// Where the packages install the runtime.
pub const DEFAULT_RUNTIME_PATH: &str = "/usr/bin/nvidia-container-runtime";
/// The name of our drop-in file (containerd and CRI-O read drop-ins in
/// lexical order; `99-` puts ours last so that it wins).
pub const DROP_IN_NAME: &str = "99-nvidia.toml";
/// containerd's shim for runc-compatible runtimes (the one that honours
/// `options.BinaryName`).
const RUNC_V2_SHIM: &str = "io.containerd.runc.v2";
/// containerd 1.x's legacy shim, configured through `options.Runtime`.
const LINUX_V1_SHIM: &str = "io.containerd.runtime.v1.linux";

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid {format} (line {line}, column {column}: {message}); it was left untouched: fix it, then run this command again")]
    Parse {
        path: PathBuf,
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: `{key}` is {found}, not {expected}; it was left untouched: fix it, then run this command again")]
    Shape {
        path: PathBuf,
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("{path}: containerd config version {version} is not supported: use 1, 2 or 3")]
    ContainerdVersion { path: PathBuf, version: i64 },
    #[error("{path}: containerd config version 1 has no imports: run again with --drop-in=false, or migrate the file to version 2 (`containerd config migrate`)")]
    DropInNeedsVersion2 { path: PathBuf },
    #[error("the runtime name must be a non-empty word without dots, quotes or spaces, got {0:?}")]
    RuntimeName(String),
    #[error("the runtime path must be absolute (engines do not search PATH for it), got {0:?}")]
    RuntimePath(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = ConfigureError> = std::result::Result<T, E>;

/// The engines we register with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Engine {
    /// The engine's main config file.
    pub fn default_config_path(self) -> &'static Path {
        Path::new(match self {
            Engine::Docker => "/etc/docker/daemon.json",
            Engine::Containerd => "/etc/containerd/config.toml",
            Engine::Crio => "/etc/crio/crio.conf",
            Engine::Podman => "/etc/containers/containers.conf",
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Containerd => "containerd",
            Engine::Crio => "crio",
            Engine::Podman => "podman",
        }
    }
}

/// What the admin asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub engine: Engine,
    /// The engine's main config file; `None`: [`Engine::default_config_path`].
    pub config: Option<PathBuf>,
    pub runtime_name: String,
    pub runtime_path: PathBuf,
    pub set_as_default: bool,
    /// containerd and CRI-O: write our entry to a drop-in instead of the main
    /// file. `None`: on for containerd config version 2/3 and for CRI-O.
    pub drop_in: Option<bool>,
    /// The drop-in file; `None`: `conf.d/99-nvidia.toml` (containerd) or
    /// `crio.conf.d/99-nvidia.toml` (CRI-O) next to the main file.
    pub drop_in_path: Option<PathBuf>,
    /// containerd: the version of a config file that does not exist yet (or
    /// is empty). `None`: 2, the version of containerd 1.x.
    pub containerd_config_version: Option<i64>,
    /// Take our entry out again instead of adding it.
    pub uninstall: bool,
}

impl Options {
    /// Options with the defaults for `engine`.
    pub fn new(engine: Engine) -> Options {
        Options {
            engine,
            config: None,
            runtime_name: DEFAULT_RUNTIME_NAME.to_string(),
            runtime_path: PathBuf::from(DEFAULT_RUNTIME_PATH),
            set_as_default: false,
            drop_in: None,
            drop_in_path: None,
            containerd_config_version: None,
            uninstall: false,
        }
    }

    /// The main config file, absolute: containerd's `imports` and the
    /// messages name it, and they must not depend on the cwd.
    fn config_path(&self) -> PathBuf {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| self.engine.default_config_path().to_path_buf());
        absolute(&path)
    }

    fn drop_in_path(&self) -> Option<PathBuf> {
        self.drop_in_path.as_deref().map(absolute)
    }
}

/// One file's text before and after; `None` means "does not exist" (after:
/// "remove it").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl FileChange {
    pub fn changes_anything(&self) -> bool {
        self.before != self.after
    }
}

/// What [`plan`] decided: the files, and what the admin must do afterwards.
#[derive(Debug, Clone)]
pub struct Plan {
    pub files: Vec<FileChange>,
    /// Commands and notes for the admin, printed after a write.
    pub next_steps: Vec<String>,
}

impl Plan {
    /// True when applying it would change nothing.
    pub fn is_noop(&self) -> bool {
        !self.files.iter().any(FileChange::changes_anything)
    }

    /// What `--dry-run` prints: each file that would change, in full.
    pub fn dry_run_text(&self) -> String {
        let mut out = String::new();
        for file in self.files.iter().filter(|f| f.changes_anything()) {
            match &file.after {
                Some(text) => {
                    let _ = writeln!(out, "# {}", file.path.display());
                    out.push_str(text);
                    if !text.ends_with('\n') {
                        out.push('\n');
                    }
                }
                None => {
                    let _ = writeln!(out, "# {}: would be removed", file.path.display());
                }
            }
        }
        out
    }
}

/// Computes the new text of every file involved, reading but writing
/// nothing. Every input is validated before anything is decided.
pub fn plan(options: &Options) -> Result<Plan> {
    validate_name(&options.runtime_name)?;
    if !options.uninstall && !options.runtime_path.is_absolute() {
        return Err(ConfigureError::RuntimePath(options.runtime_path.clone()));
    }
    match options.engine {
        Engine::Docker => plan_docker(options),
        Engine::Containerd => plan_containerd(options),
        Engine::Crio => plan_crio(options),
        Engine::Podman => plan_podman(options),
    }
}

/// What [`apply`] did to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Written {
        path: PathBuf,
        backup: Option<PathBuf>,
    },
    Removed {
        path: PathBuf,
        backup: PathBuf,
    },
}

/// Writes every changed file of `plan`: the previous text to `<file>.bak`,
/// then the new text atomically with the previous file's mode and owner.
/// Files are written in plan order (a drop-in before the main file that
/// imports it, so the engine never reads an import of a missing file).
pub fn apply(plan: &Plan) -> Result<Vec<Applied>> {
    let mut applied = Vec::new();
    for file in plan.files.iter().filter(|f| f.changes_anything()) {
        // Write through a symlink (e.g. /etc/docker/daemon.json managed
        // elsewhere) instead of replacing the link with a file.
        let path = std::fs::canonicalize(&file.path).unwrap_or_else(|_| file.path.clone());
        let metadata = std::fs::metadata(&path).ok();
        let write_error = |source| ConfigureError::Write {
            path: path.clone(),
            source,
        };
        let backup = match (&file.before, &metadata) {
            (Some(before), Some(metadata)) => {
                let backup = backup_path(&path);
                write_atomically(&backup, before.as_bytes(), Some(metadata)).map_err(|source| {
                    ConfigureError::Write {
                        path: backup.clone(),
                        source,
                    }
                })?;
                Some(backup)
            }
            _ => None,
        };
        match &file.after {
            Some(text) => {
                write_atomically(&path, text.as_bytes(), metadata.as_ref()).map_err(write_error)?;
                applied.push(Applied::Written { path, backup });
            }
            None => {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(write_error(error)),
                }
                if let Some(backup) = backup {
                    applied.push(Applied::Removed { path, backup });
                }
            }
        }
    }
    Ok(applied)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `<file>.bak` next to `<file>`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".bak");
    path.with_file_name(name)
}

/// Writes `contents` to a temp file in `path`'s dir, fsyncs it, gives it the
/// mode and owner of `previous` (0644 root for a new file), renames it over
/// `path` and fsyncs the dir: a reader sees the old file or the new one,
/// never half of one, even after a crash.
pub fn write_atomically(
    path: &Path,
    contents: &[u8],
    previous: Option<&std::fs::Metadata>,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let options = crate::atomic::Options {
        mode: previous.map_or(0o644, |m| m.mode() & 0o7777),
        owner: previous.map(|m| (m.uid(), m.gid())),
        // An engine config must survive a crash as written.
        sync_dir: true,
    };
    crate::atomic::write(path, contents, &options)
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ConfigureError::RuntimeName(name.to_string()))
    }
}

/// The file's text, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigureError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

// ---------------------------------------------------------------------------
// Docker
// ---------------------------------------------------------------------------

/// What changed in daemon.json, for the next steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DockerChanges {
    pub runtimes: bool,
    pub default_runtime: bool,
}

fn plan_docker(options: &Options) -> Result<Plan> {
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
                    message: crate::config::one_line(&error.to_string()),
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
            changes.runtimes = runtimes.shift_remove(name).is_some();
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
        let entry = runtimes
            .entry(name.clone())
            .or_insert_with(|| Json::Object(Map::new()));
        let Json::Object(entry) = entry else {
            return Err(shape_error(format!("runtimes.{name}"), entry));
        };
        let path_value = Json::from(options.runtime_path.to_string_lossy().into_owned());
        entry.insert("path".to_string(), path_value);
        let args = entry.shift_remove("args");
        if !entry.contains_key("runtimeArgs") {
            entry.insert(
                "runtimeArgs".to_string(),
                args.unwrap_or_else(|| Json::Array(Vec::new())),
            );
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

fn json_kind(value: &Json) -> &'static str {
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

// ---------------------------------------------------------------------------
// TOML helpers
// ---------------------------------------------------------------------------

fn parse_toml(text: &str, path: &Path) -> Result<DocumentMut> {
    text.parse::<DocumentMut>().map_err(|error| {
        let (line, column) = error
            .span()
            .map_or((0, 0), |span| line_column(text, span.start));
        ConfigureError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            line,
            column,
            message: crate::config::one_line(error.message()),
        }
    })
}

fn item_kind(item: &Item) -> &'static str {
    match item {
        Item::None => "missing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a datetime",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

/// A dotted key path and the file, for error messages while walking.
struct Walk<'p> {
    path: &'p Path,
    keys: Vec<String>,
}

impl<'p> Walk<'p> {
    fn new(path: &'p Path) -> Self {
        Walk {
            path,
            keys: Vec::new(),
        }
    }

    fn shape(&self, key: &str, item: &Item, expected: &'static str) -> ConfigureError {
        let mut keys = self.keys.clone();
        keys.push(key.to_string());
        ConfigureError::Shape {
            path: self.path.to_path_buf(),
            key: keys.join("."),
            found: item_kind(item),
            expected,
        }
    }
}

/// The table at `keys` below `table`, created (as implicit tables, so that
/// no empty `[a]` headers appear) where missing.
fn table_at<'t>(
    table: &'t mut dyn TableLike,
    keys: &[&str],
    walk: &mut Walk,
) -> Result<&'t mut dyn TableLike> {
    let Some((first, rest)) = keys.split_first() else {
        return Ok(table);
    };
    let child = table.entry(first).or_insert_with(|| {
        let mut child = Table::new();
        child.set_implicit(true);
        Item::Table(child)
    });
    if !child.is_table_like() {
        return Err(walk.shape(first, child, "a table"));
    }
    walk.keys.push(first.to_string());
    match child.as_table_like_mut() {
        Some(child) => table_at(child, rest, walk),
        None => Err(walk.shape(first, &Item::None, "a table")),
    }
}

/// The table at `keys` below `table` if it exists, without creating any.
fn existing_table_at<'t>(
    table: &'t mut dyn TableLike,
    keys: &[&str],
) -> Option<&'t mut dyn TableLike> {
    let Some((first, rest)) = keys.split_first() else {
        return Some(table);
    };
    let child = table.get_mut(first)?.as_table_like_mut()?;
    existing_table_at(child, rest)
}

/// Sets `key` to a string unless it already is that string (so that the
/// admin's formatting of an unchanged value survives).
fn set_str(table: &mut dyn TableLike, key: &str, value: &str) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) if old.as_str() == Some(value) => {}
        Some(old) => {
            // Keep the line's indentation and trailing comment.
            let decor = old.decor().clone();
            *old = Value::from(value);
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, toml_edit::value(value));
        }
    }
}

/// A copy of `item` with comments and blank lines dropped and the
/// indentation of every header and key kept: for an entry cloned from
/// another one (runc's), whose comments speak about that one.
fn fresh_copy(item: &Item) -> Item {
    match item {
        Item::Value(value) => {
            let mut value = value.clone();
            value.decor_mut().set_prefix(" ");
            Item::Value(value)
        }
        Item::Table(table) => Item::Table(fresh_table(table)),
        Item::ArrayOfTables(array) => {
            let mut copy = toml_edit::ArrayOfTables::new();
            for table in array.iter() {
                copy.push(fresh_table(table));
            }
            Item::ArrayOfTables(copy)
        }
        Item::None => Item::None,
    }
}

fn fresh_table(table: &Table) -> Table {
    let mut copy = Table::new();
    copy.set_implicit(table.is_implicit());
    copy.set_dotted(table.is_dotted());
    let indent = indentation(table.decor().prefix());
    copy.decor_mut().set_prefix(format!("\n{indent}"));
    for (key, item) in table.iter() {
        copy.insert(key, fresh_copy(item));
        let key_indent = table.key(key).map(|k| indentation(k.leaf_decor().prefix()));
        if let (Some(indent), Some(mut key)) = (key_indent, copy.key_mut(key)) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
    copy
}

/// The whitespace after the last newline of a decor prefix: the line's
/// indentation.
fn indentation(prefix: Option<&toml_edit::RawString>) -> String {
    let text = prefix.and_then(|raw| raw.as_str()).unwrap_or("");
    let last_line = text.rsplit('\n').next().unwrap_or("");
    if last_line.chars().all(|c| c == ' ' || c == '\t') {
        last_line.to_string()
    } else {
        String::new()
    }
}

/// The indentation of a table's first key.
fn first_key_indent(table: &dyn TableLike) -> Option<String> {
    let (first, _) = table.iter().next()?;
    let key = table.key(first)?;
    Some(indentation(key.leaf_decor().prefix()))
}

/// The document's text, ending in a newline unless empty (removing the last
/// key can take the final newline with it).
fn toml_text(doc: &DocumentMut) -> String {
    let mut text = doc.to_string();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// True when the document holds no key-value at any depth.
fn has_no_values(table: &dyn TableLike) -> bool {
    table.iter().all(|(_, item)| match item.as_table_like() {
        Some(child) => has_no_values(child),
        None => false,
    })
}

// ---------------------------------------------------------------------------
// containerd
// ---------------------------------------------------------------------------

/// The CRI plugin's key in each containerd config version: `cri` (v1),
/// `io.containerd.grpc.v1.cri` (v2, containerd 1.x), and
/// `io.containerd.cri.v1.runtime` (v3, containerd 2.x), where the runtimes
/// live.
pub fn containerd_cri_plugin(version: i64) -> Option<&'static str> {
    match version {
        1 => Some("cri"),
        2 => Some("io.containerd.grpc.v1.cri"),
        3 => Some("io.containerd.cri.v1.runtime"),
        _ => None,
    }
}

fn containerd_version(
    doc: &DocumentMut,
    text: &str,
    path: &Path,
    options: &Options,
) -> Result<i64> {
    match doc.get("version") {
        Some(item) => item.as_integer().ok_or_else(|| ConfigureError::Shape {
            path: path.to_path_buf(),
            key: "version".to_string(),
            found: item_kind(item),
            expected: "an integer",
        }),
        // A new file gets the requested version; containerd reads an
        // existing file without `version` as version 1.
        None if text.trim().is_empty() => Ok(options.containerd_config_version.unwrap_or(2)),
        None => Ok(1),
    }
}

fn plan_containerd(options: &Options) -> Result<Plan> {
    let path = options.config_path();
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let version = containerd_version(&doc, text, &path, options)?;
    let plugin = containerd_cri_plugin(version).ok_or(ConfigureError::ContainerdVersion {
        path: path.clone(),
        version,
    })?;
    let drop_in = options.drop_in.unwrap_or(version >= 2);
    if drop_in && version < 2 {
        return Err(ConfigureError::DropInNeedsVersion2 { path });
    }
    let runtimes_keys = ["plugins", plugin, "containerd", "runtimes"];
    let containerd_keys = ["plugins", plugin, "containerd"];
    if text.trim().is_empty() && !options.uninstall {
        doc.insert("version", toml_edit::value(version));
    }

    let mut files = Vec::new();
    let mut notes = Vec::new();
    if drop_in {
        let drop_in_path = options
            .drop_in_path()
            .unwrap_or_else(|| sibling_dir(&path, "conf.d").join(DROP_IN_NAME));
        let drop_in_before = read_optional(&drop_in_path)?;
        if let Some(text) = &drop_in_before {
            // Validate it too: we replace it, but a broken file there means
            // the admin edited it, and they should hear about it first.
            parse_toml(text, &drop_in_path)?;
        }
        let import = drop_in_glob(&drop_in_path);
        let drop_in_after = if options.uninstall {
            None
        } else {
            Some(containerd_drop_in(
                &doc,
                version,
                plugin,
                options,
                &path,
                &drop_in_path,
            )?)
        };
        // Uninstall also takes out an entry of ours that an earlier run
        // with --drop-in=false put in the main file.
        if options.uninstall {
            remove_containerd_entry(&mut doc, &runtimes_keys, &containerd_keys, options);
        }
        let others_use_glob = other_drop_ins(&drop_in_path);
        let imports_changed = if options.uninstall {
            !others_use_glob && remove_import(&mut doc, &import)
        } else {
            add_import(&mut doc, &import, &path)?
        };
        files.push(FileChange {
            path: drop_in_path.clone(),
            before: drop_in_before,
            after: drop_in_after,
        });
        let after = toml_text(&doc);
        files.push(FileChange {
            path: path.clone(),
            after: if before.is_none() && after.trim().is_empty() {
                None
            } else {
                Some(after)
            },
            before,
        });
        if !options.uninstall {
            notes.push(format!(
                "{} holds a copy of the [plugins.\"{plugin}\"] section of {}: containerd replaces a plugin's whole section with the imported one (it does not merge keys), so after editing that section in {}, run this command again",
                drop_in_path.display(),
                path.display(),
                path.display()
            ));
        } else if !imports_changed && others_use_glob {
            notes.push(format!(
                "kept `imports = [\"{import}\"]` in {}: other drop-ins use it",
                path.display()
            ));
        }
    } else {
        if options.uninstall {
            remove_containerd_entry(&mut doc, &runtimes_keys, &containerd_keys, options);
        } else {
            let runtimes = table_at(doc.as_table_mut(), &runtimes_keys, &mut Walk::new(&path))?;
            set_containerd_runtime(runtimes, options, &path)?;
            if options.set_as_default {
                let containerd =
                    table_at(doc.as_table_mut(), &containerd_keys, &mut Walk::new(&path))?;
                set_str(containerd, "default_runtime_name", &options.runtime_name);
            }
        }
        let after = toml_text(&doc);
        files.push(FileChange {
            path: path.clone(),
            after: if before.is_none() && options.uninstall {
                None
            } else {
                Some(after)
            },
            before,
        });
    }
    let mut next_steps = Vec::new();
    if files.iter().any(FileChange::changes_anything) {
        // containerd reads its config only at start.
        next_steps.push("restart containerd: systemctl restart containerd".to_string());
        if !options.uninstall {
            next_steps.push(format!(
                "Kubernetes: create a RuntimeClass with handler: {} (examples/k8s/runtimeclass.yaml) and set runtimeClassName: {} in the pod spec",
                options.runtime_name, options.runtime_name
            ));
            next_steps.push(format!(
                "without CRI: ctr run --runc-binary {} ...",
                options.runtime_path.display()
            ));
        }
        next_steps.extend(notes);
    }
    Ok(Plan { files, next_steps })
}

/// `dir(path)/name`.
fn sibling_dir(path: &Path, name: &str) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).join(name)
}

/// The `imports` entry that covers our drop-in: every `*.toml` of its dir,
/// so that the admin's other drop-ins there are read too.
fn drop_in_glob(drop_in: &Path) -> String {
    drop_in
        .parent()
        .unwrap_or(Path::new("/"))
        .join("*.toml")
        .to_string_lossy()
        .into_owned()
}

/// True if the drop-in's dir holds `*.toml` files other than ours.
fn other_drop_ins(drop_in: &Path) -> bool {
    let Some(dir) = drop_in.parent() else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        Some(name.as_os_str()) != drop_in.file_name()
            && Path::new(&name).extension().is_some_and(|e| e == "toml")
    })
}

/// Adds `import` to the top-level `imports` array unless it (or our
/// drop-in's exact path) is already there. Returns whether it changed.
fn add_import(doc: &mut DocumentMut, import: &str, path: &Path) -> Result<bool> {
    // toml_edit writes root keys before all tables, so a new `imports`
    // stays a top-level key.
    let item = doc
        .as_table_mut()
        .entry("imports")
        .or_insert_with(|| toml_edit::value(Array::new()));
    let kind = item_kind(item);
    let Some(array) = item.as_array_mut() else {
        return Err(ConfigureError::Shape {
            path: path.to_path_buf(),
            key: "imports".to_string(),
            found: kind,
            expected: "an array of paths",
        });
    };
    if array.iter().any(|v| v.as_str() == Some(import)) {
        return Ok(false);
    }
    array.push(import);
    Ok(true)
}

fn remove_import(doc: &mut DocumentMut, import: &str) -> bool {
    let root = doc.as_table_mut();
    let Some(array) = root.get_mut("imports").and_then(Item::as_array_mut) else {
        return false;
    };
    let before = array.len();
    array.retain(|v| v.as_str() != Some(import));
    let changed = array.len() != before;
    if array.is_empty() {
        root.remove("imports");
    }
    changed
}

fn remove_containerd_entry(
    doc: &mut DocumentMut,
    runtimes_keys: &[&str],
    containerd_keys: &[&str],
    options: &Options,
) {
    if let Some(runtimes) = existing_table_at(doc.as_table_mut(), runtimes_keys) {
        runtimes.remove(&options.runtime_name);
    }
    if let Some(containerd) = existing_table_at(doc.as_table_mut(), containerd_keys) {
        if containerd
            .get("default_runtime_name")
            .and_then(Item::as_str)
            == Some(options.runtime_name.as_str())
        {
            containerd.remove("default_runtime_name");
        }
    }
}

/// Our runtime entry in `runtimes`: a copy of the runc entry (so that
/// `SystemdCgroup` and the other shim options match what the node's other
/// pods get) with `BinaryName` pointing at us. An existing entry of ours
/// keeps everything the admin set in it but the binary.
fn set_containerd_runtime(
    runtimes: &mut dyn TableLike,
    options: &Options,
    path: &Path,
) -> Result<()> {
    let name = options.runtime_name.as_str();
    if runtimes.get(name).is_none() {
        let entry = match runtimes.get("runc") {
            Some(runc) if runc.is_table_like() => fresh_copy(runc),
            _ => {
                let mut table = Table::new();
                table.decor_mut().set_prefix("\n");
                Item::Table(table)
            }
        };
        runtimes.insert(name, entry);
    }
    let mut walk = Walk::new(path);
    walk.keys.extend(["runtimes".to_string()]);
    let entry = table_at(runtimes, &[name], &mut walk)?;
    if entry.get("runtime_type").is_none() {
        entry.insert("runtime_type", toml_edit::value(RUNC_V2_SHIM));
    }
    // The v1 shim takes the runtime binary as `Runtime`; runc.v2 as
    // `BinaryName` (containerd's runc options).
    let binary_key = if entry.get("runtime_type").and_then(Item::as_str) == Some(LINUX_V1_SHIM) {
        "Runtime"
    } else {
        "BinaryName"
    };
    // A new BinaryName lines up with the options copied from runc.
    let indent = entry
        .get("options")
        .and_then(Item::as_table_like)
        .and_then(first_key_indent);
    walk.keys.push(name.to_string());
    let options_table = table_at(entry, &["options"], &mut walk)?;
    let path_text = options.runtime_path.to_string_lossy();
    let new_key = options_table.get(binary_key).is_none();
    set_str(options_table, binary_key, &path_text);
    if let (true, Some(indent)) = (new_key, indent) {
        if let Some(mut key) = options_table.key_mut(binary_key) {
            key.leaf_decor_mut().set_prefix(indent);
        }
    }
    Ok(())
}

/// The drop-in's text: the main file's CRI plugin section with our runtime
/// added. containerd (1.x: `mergeConfig` replaces `to.Plugins[k]` with the
/// imported file's) takes a plugin's section whole from the last file that
/// has it, so a drop-in holding only our runtime would wipe the admin's
/// CRI settings (runc's `SystemdCgroup`, `sandbox_image`, ...).
fn containerd_drop_in(
    main: &DocumentMut,
    version: i64,
    plugin: &str,
    options: &Options,
    main_path: &Path,
    drop_in_path: &Path,
) -> Result<String> {
    let mut doc = DocumentMut::new();
    doc.decor_mut().set_prefix(format!(
        "# Written by `nvidia-ctk runtime configure --runtime=containerd`: the {} runtime.\n\
         # It holds a copy of the [plugins.\"{plugin}\"] section of {} because containerd\n\
         # replaces a plugin's whole section with the imported one. Edit that file, then run\n\
         # the command again; edits made here are lost on the next run.\n",
        options.runtime_name,
        main_path.display()
    ));
    doc.insert("version", toml_edit::value(version));
    let mut plugins = Table::new();
    plugins.set_implicit(true);
    let section = main
        .get("plugins")
        .and_then(|plugins| plugins.get(plugin))
        .map(fresh_copy);
    let mut section = match section {
        Some(Item::Table(table)) => table,
        Some(other) => {
            // An inline table or dotted keys: normalise to a table.
            let mut table = Table::new();
            if let Some(like) = other.as_table_like() {
                for (key, item) in like.iter() {
                    table.insert(key, fresh_copy(item));
                }
            }
            table
        }
        None => Table::new(),
    };
    section.set_implicit(true);
    section.set_dotted(false);
    section.decor_mut().clear();
    plugins.insert(plugin, Item::Table(section));
    doc.insert("plugins", Item::Table(plugins));
    let path = drop_in_path;
    let runtimes = table_at(
        doc.as_table_mut(),
        &["plugins", plugin, "containerd", "runtimes"],
        &mut Walk::new(path),
    )?;
    set_containerd_runtime(runtimes, options, path)?;
    if options.set_as_default {
        let containerd = table_at(
            doc.as_table_mut(),
            &["plugins", plugin, "containerd"],
            &mut Walk::new(path),
        )?;
        set_str(containerd, "default_runtime_name", &options.runtime_name);
    }
    Ok(toml_text(&doc))
}

// ---------------------------------------------------------------------------
// CRI-O
// ---------------------------------------------------------------------------

fn plan_crio(options: &Options) -> Result<Plan> {
    let main = options.config_path();
    let drop_in = options.drop_in.unwrap_or(true);
    // CRI-O decodes every drop-in over the config key by key, so ours only
    // needs our entry (unlike containerd's plugin sections).
    let path = if drop_in {
        options
            .drop_in_path()
            .unwrap_or_else(|| sibling_dir(&main, "crio.conf.d").join(DROP_IN_NAME))
    } else {
        main
    };
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let name = options.runtime_name.as_str();
    if options.uninstall {
        if let Some(runtimes) =
            existing_table_at(doc.as_table_mut(), &["crio", "runtime", "runtimes"])
        {
            runtimes.remove(name);
        }
        if let Some(runtime) = existing_table_at(doc.as_table_mut(), &["crio", "runtime"]) {
            if runtime.get("default_runtime").and_then(Item::as_str) == Some(name) {
                runtime.remove("default_runtime");
            }
        }
    } else {
        if text.trim().is_empty() {
            doc.decor_mut()
                .set_prefix("# Written by `nvidia-ctk runtime configure --runtime=crio`.\n");
        }
        let mut walk = Walk::new(&path);
        let entry = table_at(
            doc.as_table_mut(),
            &["crio", "runtime", "runtimes", name],
            &mut walk,
        )?;
        set_str(
            entry,
            "runtime_path",
            &options.runtime_path.to_string_lossy(),
        );
        if entry.get("runtime_type").is_none() {
            entry.insert("runtime_type", toml_edit::value("oci"));
        }
        if options.set_as_default {
            let runtime = table_at(
                doc.as_table_mut(),
                &["crio", "runtime"],
                &mut Walk::new(&path),
            )?;
            set_str(runtime, "default_runtime", name);
        }
    }
    let after =
        if options.uninstall && (before.is_none() || (drop_in && has_no_values(doc.as_table()))) {
            None
        } else {
            Some(toml_text(&doc))
        };
    let file = FileChange {
        path,
        before,
        after,
    };
    let mut next_steps = Vec::new();
    if file.changes_anything() {
        next_steps.push("restart CRI-O: systemctl restart crio".to_string());
        if !options.uninstall {
            next_steps.push(format!(
                "Kubernetes: create a RuntimeClass with handler: {name} (examples/k8s/runtimeclass.yaml)"
            ));
        }
    }
    Ok(Plan {
        files: vec![file],
        next_steps,
    })
}

// ---------------------------------------------------------------------------
// podman
// ---------------------------------------------------------------------------

fn plan_podman(options: &Options) -> Result<Plan> {
    let path = options.config_path();
    let before = read_optional(&path)?;
    let text = before.as_deref().unwrap_or("");
    let mut doc = parse_toml(text, &path)?;
    let name = options.runtime_name.as_str();
    let runtime_path = options.runtime_path.to_string_lossy();
    if options.uninstall {
        if let Some(runtimes) = existing_table_at(doc.as_table_mut(), &["engine", "runtimes"]) {
            runtimes.remove(name);
        }
        if let Some(engine) = existing_table_at(doc.as_table_mut(), &["engine"]) {
            if engine.get("runtime").and_then(Item::as_str) == Some(name) {
                engine.remove("runtime");
            }
        }
    } else {
        let runtimes = table_at(
            doc.as_table_mut(),
            &["engine", "runtimes"],
            &mut Walk::new(&path),
        )?;
        // podman takes the first path of the list that exists.
        let listed = runtimes
            .get(name)
            .and_then(Item::as_array)
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            == Some(runtime_path.as_ref());
        if !listed {
            let mut paths = Array::new();
            paths.push(runtime_path.as_ref());
            runtimes.insert(name, toml_edit::value(paths));
        }
        if options.set_as_default {
            let engine = table_at(doc.as_table_mut(), &["engine"], &mut Walk::new(&path))?;
            set_str(engine, "runtime", name);
        }
    }
    let file = FileChange {
        after: if before.is_none() && options.uninstall {
            None
        } else {
            Some(toml_text(&doc))
        },
        path,
        before,
    };
    let mut next_steps = Vec::new();
    if file.changes_anything() && !options.uninstall {
        // podman reads containers.conf on every command: no daemon.
        next_steps.push(format!(
            "nothing to restart (podman reads containers.conf on every command): podman run --runtime {name} -e NVIDIA_VISIBLE_DEVICES=all IMAGE nvidia-smi -L"
        ));
    }
    Ok(Plan {
        files: vec![file],
        next_steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn toml_error_position() {
        let error = parse_toml("a = 1\nb = = 2\n", Path::new("/c.toml")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("line 2, column 5"), "{message}");
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a.b", "a b", "a\"b"] {
            let mut options = docker_options();
            options.runtime_name = bad.to_string();
            assert!(
                matches!(plan(&options), Err(ConfigureError::RuntimeName(_))),
                "{bad}"
            );
        }
        let mut options = docker_options();
        options.runtime_path = PathBuf::from("nvidia-container-runtime");
        assert!(matches!(
            plan(&options),
            Err(ConfigureError::RuntimePath(_))
        ));
    }
}
