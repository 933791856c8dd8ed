//! The hook's argv, as [`crate::edits::prestart_hook`] writes it.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::edits::HOOK_INJECTED_FLAG;

use super::HookError;

/// The hook's stage (its first positional argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Prestart,
    /// podman's hooks.d extension stage: the proposed config.json on stdin,
    /// the one to use on stdout.
    Precreate,
    /// `poststart`, `poststop` or anything else: nothing to do.
    Other(String),
}

/// The hook's argv, as [`crate::edits::prestart_hook`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookArgs {
    pub stage: Stage,
    /// [`HOOK_INJECTED_FLAG`]: the entry was written by our runtime, not by
    /// docker's `--gpus`.
    pub injected: bool,
    pub config: Option<PathBuf>,
    /// `(soname, absolute container path)` of each injected library.
    pub libraries: Vec<(String, PathBuf)>,
    /// procfs directory names of the selected GPUs (`0000:06:00.0`).
    pub gpus: Vec<String>,
    /// Further files of `/proc/driver/nvidia` the container keeps seeing
    /// through the mask, relative to it (`capabilities/gpu1/mig/gi2/access`).
    pub proc_files: Vec<PathBuf>,
    /// `(target, absolute link path in the container)` of each symlink to
    /// create (`--link TARGET::LINK`, as NVIDIA's `create-symlinks`).
    pub links: Vec<(PathBuf, PathBuf)>,
}

impl HookArgs {
    /// Parses argv (with `argv[0]`). Problems are only errors for `prestart`:
    /// every other stage exits 0 whatever else its entry says, so that an
    /// engine's poststop never fails on us.
    pub fn parse(args: &[OsString]) -> Result<HookArgs, HookError> {
        let mut parsed = HookArgs {
            stage: Stage::Other(String::new()),
            injected: false,
            config: None,
            libraries: Vec::new(),
            gpus: Vec::new(),
            proc_files: Vec::new(),
            links: Vec::new(),
        };
        let mut stage: Option<String> = None;
        let mut problem: Option<String> = None;
        let mut note = |text: String| {
            problem.get_or_insert(text);
        };
        let mut rest = args.iter().skip(1);
        while let Some(arg) = rest.next() {
            let Some(text) = arg.to_str() else {
                note(format!("argument {arg:?} is not UTF-8"));
                continue;
            };
            if text == HOOK_INJECTED_FLAG {
                parsed.injected = true;
                continue;
            }
            let (flag, inline) = match text.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
                _ => (text, None),
            };
            if !flag.starts_with('-') {
                if stage.is_none() {
                    stage = Some(text.to_string());
                } else {
                    note(format!("unexpected argument \"{text}\""));
                }
                continue;
            }
            if !matches!(
                flag,
                "--config" | "--library" | "--gpu" | "--proc-file" | "--link"
            ) {
                note(format!("unknown option \"{flag}\""));
                continue;
            }
            let value =
                match inline.or_else(|| rest.next().and_then(|v| v.to_str()).map(str::to_string)) {
                    Some(value) => value,
                    None => {
                        note(format!("{flag} needs a value"));
                        continue;
                    }
                };
            match flag {
                "--config" => parsed.config = Some(PathBuf::from(value)),
                "--library" => match parse_library(&value) {
                    Ok(library) => parsed.libraries.push(library),
                    Err(text) => note(text),
                },
                "--link" => match parse_link(&value) {
                    Ok(link) => parsed.links.push(link),
                    Err(text) => note(text),
                },
                "--proc-file" => match is_relative_below(&value) {
                    true => parsed.proc_files.push(PathBuf::from(value)),
                    false => note(format!(
                        "--proc-file \"{value}\" is not a path below /proc/driver/nvidia like capabilities/mig/config"
                    )),
                },
                _ => match is_single_component(&value) {
                    true => parsed.gpus.push(value),
                    false => note(format!(
                        "--gpu \"{value}\" is not a procfs directory name like 0000:06:00.0"
                    )),
                },
            }
        }
        parsed.stage = match stage.as_deref() {
            Some("prestart") => Stage::Prestart,
            Some("precreate") => Stage::Precreate,
            Some(other) => Stage::Other(other.to_string()),
            None => Stage::Other(String::new()),
        };
        match problem {
            Some(problem) if parsed.stage == Stage::Prestart => Err(HookError::Args { problem }),
            _ => Ok(parsed),
        }
    }
}

/// `soname=/abs/path` -> `(soname, path)`.
fn parse_library(value: &str) -> Result<(String, PathBuf), String> {
    let bad = || format!("--library \"{value}\" is not <soname>=<absolute path in the container>");
    let (soname, path) = value.split_once('=').ok_or_else(bad)?;
    if !is_single_component(soname) || !path.starts_with('/') {
        return Err(bad());
    }
    Ok((soname.to_string(), PathBuf::from(path)))
}

/// `TARGET::LINK`: any target (a symlink may point anywhere; it is never
/// followed by the hook), an absolute link path without `..`.
fn parse_link(value: &str) -> Result<(PathBuf, PathBuf), String> {
    let bad = || format!("--link \"{value}\" is not <target>::<absolute path in the container>");
    let (target, link) = value.split_once("::").ok_or_else(bad)?;
    let below = link.strip_prefix('/').ok_or_else(bad)?;
    if target.is_empty() || !is_relative_below(below) {
        return Err(bad());
    }
    Ok((PathBuf::from(target), PathBuf::from(link)))
}

/// A plain file name: not empty, no `/`, not `.` or `..`.
pub(super) fn is_single_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(components.next(), Some(Component::Normal(_)))
        && components.next().is_none()
        && !name.contains('/')
}

/// A relative path of plain names only: nothing absolute, no `.` or `..`.
pub(super) fn is_relative_below(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && path.split('/').all(is_single_component)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_the_runtime_entry() {
        let args = HookArgs::parse(&os(&[
            "nvidia-container-runtime-hook",
            "prestart",
            "--injected-by-runtime",
            "--config",
            "/etc/c.toml",
            "--library",
            "libcuda.so.1=/usr/lib64/libcuda.so.1",
            "--gpu=0000:06:00.0",
            "--gpu",
            "0000:3b:00.0",
            "--proc-file",
            "capabilities/gpu1/mig/gi2/access",
        ]))
        .unwrap();
        assert_eq!(args.stage, Stage::Prestart);
        assert!(args.injected);
        assert_eq!(args.config, Some(PathBuf::from("/etc/c.toml")));
        assert_eq!(
            args.libraries,
            [(
                "libcuda.so.1".to_string(),
                PathBuf::from("/usr/lib64/libcuda.so.1")
            )]
        );
        assert_eq!(args.gpus, ["0000:06:00.0", "0000:3b:00.0"]);
        assert_eq!(
            args.proc_files,
            [PathBuf::from("capabilities/gpu1/mig/gi2/access")]
        );
    }

    #[test]
    fn matches_what_edits_writes() {
        let settings = crate::edits::HookSettings {
            path: "/usr/bin/nvidia-container-runtime-hook".into(),
            config_path: Some("/c.toml".into()),
        };
        let hook = crate::edits::prestart_hook(
            &settings,
            &[(
                "libnvidia-ml.so.1".into(),
                "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1".into(),
            )],
            &["0000:06:00.0"],
            &["capabilities/mig/config".to_string()],
            &[(
                "../libnvidia-allocator.so.1".into(),
                "/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so".into(),
            )],
        );
        let args: Vec<OsString> = hook.args.iter().map(OsString::from).collect();
        let parsed = HookArgs::parse(&args).unwrap();
        assert!(parsed.injected);
        assert_eq!(parsed.libraries.len(), 1);
        assert_eq!(parsed.gpus, ["0000:06:00.0"]);
        assert_eq!(
            parsed.proc_files,
            [PathBuf::from("capabilities/mig/config")]
        );
        assert_eq!(
            parsed.links,
            [(
                PathBuf::from("../libnvidia-allocator.so.1"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/gbm/nvidia-drm_gbm.so")
            )]
        );
    }

    #[test]
    fn bad_arguments_fail_prestart_only() {
        for bad in [
            &["h", "prestart", "--library", "libcuda.so.1"][..],
            &["h", "prestart", "--library", "a/b=/x"],
            &["h", "prestart", "--library", "libx.so=relative"],
            &["h", "prestart", "--gpu", "../x"],
            &["h", "prestart", "--gpu", ".."],
            &["h", "prestart", "--frobnicate"],
            &["h", "prestart", "extra"],
            &["h", "prestart", "--config"],
            &["h", "prestart", "--proc-file", "/proc/driver/nvidia/params"],
            &["h", "prestart", "--proc-file", "capabilities/../../x"],
            &["h", "prestart", "--link", "target-only"],
            &["h", "prestart", "--link", "x::relative/link"],
            &["h", "prestart", "--link", "x::/usr/../../etc/passwd"],
            &["h", "prestart", "--link", "::/dev/dri/by-path/x"],
        ] {
            let error = HookArgs::parse(&os(bad)).unwrap_err();
            assert!(matches!(error, HookError::Args { .. }), "{bad:?}: {error}");
        }
        let args = HookArgs::parse(&os(&["h", "poststop", "--frobnicate"])).unwrap();
        assert_eq!(args.stage, Stage::Other("poststop".into()));
        assert_eq!(
            HookArgs::parse(&os(&["h"])).unwrap().stage,
            Stage::Other(String::new())
        );
    }
}
