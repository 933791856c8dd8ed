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

mod containerd;
mod crio;
mod docker;
mod podman;
mod toml;

pub use containerd::containerd_cri_plugin;
pub use crio::unset_crio_default;
pub use docker::{edit_docker, DockerChanges};

/// The default name of our runtime entry in every engine.
pub const DEFAULT_RUNTIME_NAME: &str = "nvidia";
/// Where the packages install the runtime.
pub const DEFAULT_RUNTIME_PATH: &str = "/usr/bin/nvidia-container-runtime";
/// The name of our drop-in file (containerd and CRI-O read drop-ins in
/// lexical order; `99-` puts ours last so that it wins).
pub const DROP_IN_NAME: &str = "99-nvidia.toml";

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
    /// containerd: the drop-in's path as containerd sees it, for the
    /// `imports` line, when this program sees it elsewhere (NVIDIA's
    /// RUNTIME_DROP_IN_CONFIG_HOST_PATH: the installer's container mounts
    /// the host's conf.d at another path). `None`: `drop_in_path`.
    pub drop_in_host_path: Option<PathBuf>,
    /// containerd: the version of a config file that does not exist yet (or
    /// is empty). `None`: 2, the version of containerd 1.x.
    pub containerd_config_version: Option<i64>,
    /// Take our entry out again instead of adding it.
    pub uninstall: bool,
    /// Let the engine resolve CDI device names itself: containerd's CRI
    /// `enable_cdi = true` (CRI `CDIDevices`; with it off containerd ignores
    /// them silently), dockerd's `features.cdi = true` (on by default from
    /// docker 28). `nvidia-ctk runtime configure --cdi.enabled`, as NVIDIA's.
    pub enable_cdi: bool,
    /// containerd: the pod annotations the CRI passes to our runtime entry
    /// (`container_annotations`), so that CDI requests made as annotations
    /// (the device plugin's cdi-annotations strategy) reach us. NVIDIA's
    /// default: `cdi.k8s.io/*`, from its default annotation prefix.
    pub container_annotations: Vec<String>,
    /// More entries beside `runtime_name`, each `(name, binary)`, written to
    /// the same file with the same settings (NVIDIA's node installer
    /// registers `nvidia-cdi` and `nvidia-legacy` beside `nvidia`, in one
    /// drop-in). Uninstall takes them out too. `set_as_default` only ever
    /// names `runtime_name`. Empty for `nvidia-ctk runtime configure`.
    pub extra_runtimes: Vec<(String, PathBuf)>,
}

/// The CRI annotations containerd passes to our runtime by default.
pub const DEFAULT_CONTAINER_ANNOTATIONS: &[&str] = &["cdi.k8s.io/*"];

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
            drop_in_host_path: None,
            containerd_config_version: None,
            uninstall: false,
            enable_cdi: false,
            container_annotations: DEFAULT_CONTAINER_ANNOTATIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            extra_runtimes: Vec::new(),
        }
    }

    /// Every entry this plan writes (or takes out): `runtime_name` first,
    /// then `extra_runtimes`, as `(name, binary)`.
    pub fn entries(&self) -> Vec<(&str, &Path)> {
        std::iter::once((self.runtime_name.as_str(), self.runtime_path.as_path()))
            .chain(
                self.extra_runtimes
                    .iter()
                    .map(|(name, path)| (name.as_str(), path.as_path())),
            )
            .collect()
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
    for (name, path) in options.entries() {
        validate_name(name)?;
        if !options.uninstall && !path.is_absolute() {
            return Err(ConfigureError::RuntimePath(path.to_path_buf()));
        }
    }
    match options.engine {
        Engine::Docker => docker::plan(options),
        Engine::Containerd => containerd::plan(options),
        Engine::Crio => crio::plan(options),
        Engine::Podman => podman::plan(options),
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

/// `dir(path)/name`.
fn sibling_dir(path: &Path, name: &str) -> PathBuf {
    path.parent().unwrap_or(Path::new("/")).join(name)
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
        durability: crate::atomic::Durability::Crash,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn docker_options() -> Options {
        Options::new(Engine::Docker)
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

    fn with_extras(engine: Engine, config: &Path) -> Options {
        let mut options = Options::new(engine);
        options.config = Some(config.to_path_buf());
        options.runtime_path = PathBuf::from("/t/nvidia-container-runtime");
        options.extra_runtimes = vec![
            (
                "nvidia-cdi".into(),
                "/t/nvidia-container-runtime.cdi".into(),
            ),
            (
                "nvidia-legacy".into(),
                "/t/nvidia-container-runtime.legacy".into(),
            ),
        ];
        options
    }

    #[test]
    fn extra_runtimes_land_in_one_containerd_drop_in_and_leave_again() {
        let dir = crate::testing::TempDir::new("configure-extras-ctd");
        let config = dir.join("config.toml");
        std::fs::write(&config, "version = 2\n").unwrap();
        let options = with_extras(Engine::Containerd, &config);
        let install = plan(&options).unwrap();
        let drop_in = install.files[0].after.as_deref().unwrap();
        for (name, binary) in options.entries() {
            assert!(
                drop_in.contains(&format!("runtimes.{name}]")),
                "{name} missing:\n{drop_in}"
            );
            assert!(drop_in.contains(&format!("BinaryName = \"{}\"", binary.display())));
        }
        apply(&install).unwrap();
        let mut uninstall = options.clone();
        uninstall.uninstall = true;
        let removal = plan(&uninstall).unwrap();
        assert_eq!(removal.files[0].after, None);
        assert_eq!(removal.files[1].after.as_deref(), Some("version = 2\n"));
    }

    #[test]
    fn extra_runtimes_in_docker_and_crio() {
        let dir = crate::testing::TempDir::new("configure-extras-other");
        let docker = with_extras(Engine::Docker, &dir.join("daemon.json"));
        let text = plan(&docker).unwrap().files[0].after.clone().unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["runtimes"]["nvidia-legacy"]["path"],
            "/t/nvidia-container-runtime.legacy"
        );
        let mut crio = with_extras(Engine::Crio, &dir.join("crio.conf"));
        crio.set_as_default = true;
        let file = plan(&crio).unwrap().files[0].clone();
        let text = file.after.clone().unwrap();
        assert!(
            text.contains("[crio.runtime.runtimes.nvidia-cdi]"),
            "{text}"
        );
        assert!(text.contains("default_runtime = \"nvidia\""), "{text}");
        std::fs::create_dir_all(file.path.parent().unwrap()).unwrap();
        std::fs::write(&file.path, &text).unwrap();
        // Cleanup keeps the entries and drops only the default.
        let unset = unset_crio_default(&crio).unwrap();
        let after = unset.files[0].after.clone().unwrap();
        assert!(
            after.contains("[crio.runtime.runtimes.nvidia-cdi]"),
            "{after}"
        );
        assert!(!after.contains("default_runtime"), "{after}");
    }
}
