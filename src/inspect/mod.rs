//! `nvidia-ctk info` ([`info`]) and `nvidia-ctk doctor` ([`doctor`]): the
//! host as the runtime sees it, and the failures users hit most, each with
//! its fix. Read only; reached from the admin's tool, never from a
//! container start. [`engines`] reads the engines' configs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{Config, Source};

pub mod doctor;
pub mod engines;
pub mod info;

/// Where the host's files are: `/`, or a mounted host root (an installer
/// container's `/host`, a test's fake host). Engine configs, `/proc` and
/// `/sys` are read under it; the driver's files come from config.toml's
/// roots as the runtime reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoot(pub PathBuf);

impl HostRoot {
    /// `absolute` under the host root.
    pub fn path(&self, absolute: &Path) -> PathBuf {
        self.0.join(absolute.strip_prefix("/").unwrap_or(absolute))
    }
}

impl Default for HostRoot {
    fn default() -> HostRoot {
        HostRoot(PathBuf::from("/"))
    }
}

/// The runtime's config.toml as found, or why it cannot be used.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// The file read, `None` for the built-in defaults.
    pub file: Option<PathBuf>,
    /// The file's error; the report then goes on with the defaults.
    pub error: Option<String>,
    #[serde(skip)]
    config: Option<Config>,
}

impl ConfigReport {
    /// `--config FILE`, else the runtime's own search.
    pub fn load(path: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> ConfigReport {
        let loaded = match path {
            Some(path) => {
                Config::from_file(path).map(|config| (config, Source::File(path.to_path_buf())))
            }
            None => Config::load(env),
        };
        match loaded {
            Ok((config, source)) => ConfigReport {
                file: match source {
                    Source::File(path) => Some(path),
                    Source::Defaults => None,
                },
                error: None,
                config: Some(config),
            },
            Err(error) => ConfigReport {
                file: path.map(Path::to_path_buf),
                error: Some(crate::logging::error_chain(&error)),
                config: None,
            },
        }
    }

    /// The config the rest of the report uses: the file's, or the defaults
    /// when it cannot be used.
    pub fn effective(&self) -> Config {
        self.config.clone().unwrap_or_default()
    }

    /// The loaded config, `None` when the file cannot be used.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    pub fn describe(&self) -> String {
        match (&self.file, &self.error) {
            (_, Some(error)) => format!("not usable: {error}"),
            (Some(file), None) => file.display().to_string(),
            (None, None) => "no file, the built-in defaults".to_string(),
        }
    }
}
