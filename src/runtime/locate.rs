//! Where the programs are: the real low-level runtime (the first of the
//! configured candidates, on PATH or in the standard dirs, never this
//! program itself) and our prestart hook.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Source};
use crate::edits::HookSettings;

use super::RuntimeError;

/// Standard dirs searched after PATH, as runc's own users expect a runtime to
/// be found even under a minimal PATH (containerd-shim's environment).
const STANDARD_DIRS: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Finds the real runtime: the first candidate that exists. A candidate that
/// is this very program (a `runc` symlink pointing back at us) is an error:
/// exec'ing it would recurse forever.
pub fn find_runtime(
    candidates: &[String],
    path_env: Option<&str>,
    self_exe: &Path,
) -> Result<PathBuf, RuntimeError> {
    let self_id = std::fs::metadata(self_exe).ok().map(|m| (m.dev(), m.ino()));
    for candidate in candidates.iter().filter(|c| !c.is_empty()) {
        let Some(found) = lookup_executable(candidate, path_env) else {
            tracing::debug!("runtime candidate {candidate} not found");
            continue;
        };
        let found_id = std::fs::metadata(&found).ok().map(|m| (m.dev(), m.ino()));
        if found_id.is_some() && found_id == self_id {
            return Err(RuntimeError::RuntimeIsSelf {
                candidate: candidate.clone(),
                path: found,
            });
        }
        return Ok(found);
    }
    Err(RuntimeError::NoRuntime {
        candidates: candidates.join(", "),
    })
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// An absolute path as is; a name searched on PATH, then the standard dirs.
pub fn lookup_executable(name: &str, path_env: Option<&str>) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable_file(&path).then_some(path);
    }
    path_env
        .unwrap_or("")
        .split(':')
        .filter(|dir| !dir.is_empty())
        .chain(STANDARD_DIRS.iter().copied())
        .map(|dir| Path::new(dir).join(name))
        .find(|path| is_executable_file(path))
}

/// Finds our hook binary: an absolute `path` as is, else the name next to
/// this executable (a package installs both in one dir), else on PATH.
pub fn find_hook(
    config: &Config,
    source: &Source,
    path_env: Option<&str>,
    self_exe: &Path,
) -> Result<HookSettings, RuntimeError> {
    let name = &config.nvidia_container_runtime_hook.path;
    let self_dir = self_exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let beside_us = || {
        let candidate = self_dir.join(name);
        (!name.contains('/') && is_executable_file(&candidate)).then_some(candidate)
    };
    let path = beside_us()
        .or_else(|| lookup_executable(name, path_env))
        .ok_or_else(|| RuntimeError::NoHook {
            name: name.clone(),
            self_dir: self_dir.clone(),
        })?;
    Ok(HookSettings {
        path,
        // The hook chdirs to / before reading it: a relative path (from
        // a relative NVIDIA_CTK_CONFIG_FILE_PATH) must be made absolute here.
        config_path: match source {
            Source::File(path) => Some(std::path::absolute(path).unwrap_or_else(|_| path.clone())),
            Source::Defaults => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_prefers_path_then_standard_dirs() {
        assert_eq!(
            lookup_executable("sh", Some("")),
            Some(PathBuf::from("/usr/bin/sh"))
        );
        assert_eq!(lookup_executable("definitely-not-here-xyz", None), None);
        assert_eq!(
            lookup_executable("/bin/sh", None),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(lookup_executable("/nonexistent/runc", None), None);
    }

    #[test]
    fn self_is_refused_and_missing_is_explained() {
        let sh = lookup_executable("sh", None).unwrap();
        let error = find_runtime(&["sh".into()], None, &sh).unwrap_err();
        assert!(
            matches!(error, RuntimeError::RuntimeIsSelf { .. }),
            "{error}"
        );
        let error = find_runtime(&["nope-1".into(), "nope-2".into()], None, &sh).unwrap_err();
        assert!(error.to_string().contains("nope-1, nope-2"), "{error}");
    }
}
