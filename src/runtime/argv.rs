//! The argv scan: what an engine asked the runtime to do, found without parsing.
//!
//! Engines call us exactly like runc (contract.md §1). We must not own runc's
//! command line: unknown flags and future subcommands have to pass through
//! untouched, so this module only *scans* for the few things we need: the
//! subcommand, the bundle, `--log`/`--log-format` (to report errors the way runc
//! does) and `--version`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Flags (global, or of runc's/crun's subcommands) that take a separate value
/// word. Their value must never be mistaken for the subcommand: `--bundle create`
/// names a bundle called `create`, `--root create` a state dir. A flag that is
/// not listed here is treated as boolean unless written `--flag=value`, which is
/// how runc itself treats unknown boolean flags.
const FLAGS_WITH_VALUE: &[&str] = &[
    // runc global flags
    "--root",
    "--log",
    "--log-format",
    "--criu",
    "--rootless",
    // crun global flags
    "--cgroup-manager",
    "--log-level",
    // create/run/exec flags
    "--bundle",
    "-b",
    "--console-socket",
    "--pid-file",
    "--preserve-fds",
    "--process",
    "-p",
    "--cwd",
    "--env",
    "-e",
    "--user",
    "-u",
    "--additional-gids",
    "-g",
    "--apparmor",
    "--process-label",
    "--cap",
    "-c",
    "--signal",
    "-s",
    "--format",
    "-f",
    "--image-path",
    "--work-path",
    "--parent-path",
    "--page-server",
    "--manage-cgroups-mode",
    "--empty-ns",
    "--lsm-profile",
    "--lsm-mount-context",
    "--status-address",
    "--interval",
    "--stats",
];

/// What we learnt from scanning runc-style argv. Paths are kept as `OsString`
/// because argv is bytes, not UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// Index in argv (0 = program name) and text of the subcommand, if any.
    pub subcommand: Option<(usize, String)>,
    /// The bundle directory from `--bundle`/`-b` (last one wins), if given.
    pub bundle: Option<PathBuf>,
    /// `--log` value: the file runc and containerd use for error reporting.
    pub log_path: Option<PathBuf>,
    /// `--log-format` value (`text` or `json`).
    pub log_format: Option<String>,
    /// `--debug` was given.
    pub debug: bool,
    /// `--version` / `-v` was given before any subcommand.
    pub version: bool,
    /// A bundle flag without a value: an error for `create`/`run` only.
    pub bundle_error: Option<ArgvError>,
}

/// What the runtime must do with this invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `--version`: print ours, then exec the real runtime's.
    Version,
    /// `create` or `run`: patch the bundle's `config.json`, then exec.
    Modify,
    /// Anything else: exec the real runtime with argv untouched.
    PassThrough,
}

/// Scan failures. Only a bundle flag without a value is an error: we would
/// otherwise patch the wrong `config.json` (the working directory's).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error(
        "the {flag} flag has no value: pass the bundle directory, as in `{flag} /path/to/bundle`"
    )]
    MissingValue { flag: String },
}

impl Invocation {
    /// The action for this invocation.
    pub fn action(&self) -> Action {
        if self.version {
            return Action::Version;
        }
        match self.subcommand.as_ref().map(|(_, name)| name.as_str()) {
            Some("create") | Some("run") => Action::Modify,
            _ => Action::PassThrough,
        }
    }

    /// Whether errors must be reported as runc's JSON log lines.
    pub fn log_is_json(&self) -> bool {
        self.log_format.as_deref() == Some("json")
    }
}

/// Splits `--flag=value` into its parts; `None` when there is no `=`.
fn split_inline_value(word: &[u8]) -> Option<(&[u8], &[u8])> {
    let eq = word.iter().position(|&b| b == b'=')?;
    Some((&word[..eq], &word[eq + 1..]))
}

fn takes_value(flag: &[u8]) -> bool {
    FLAGS_WITH_VALUE.iter().any(|f| f.as_bytes() == flag)
}

fn to_path(value: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(value))
}

/// Scans argv (including `argv[0]`) the way runc's own flag parsing would see
/// it. Never fails: a bundle flag without a value is recorded in
/// `bundle_error`, so that the error can still be logged where `--log` says.
pub fn scan<S: AsRef<OsStr>>(argv: &[S]) -> Invocation {
    let mut invocation = Invocation::default();
    let mut index = 1;
    let mut positional_only = false;
    while index < argv.len() {
        let word = argv[index].as_ref().as_bytes();
        if positional_only || !word.starts_with(b"-") || word == b"-" {
            if invocation.subcommand.is_none() {
                let name = String::from_utf8_lossy(word).into_owned();
                invocation.subcommand = Some((index, name));
            }
            index += 1;
            continue;
        }
        if word == b"--" {
            positional_only = true;
            index += 1;
            continue;
        }
        let (flag, inline_value) = match split_inline_value(word) {
            Some((flag, value)) => (flag, Some(value)),
            None => (word, None),
        };
        let before_subcommand = invocation.subcommand.is_none();
        // Only `create` and `run` take a bundle; other subcommands' words
        // (e.g. the command of `exec`) are none of our business.
        let modifying = invocation.action() == Action::Modify;
        let value: Option<&[u8]> = if inline_value.is_some() {
            inline_value
        } else if takes_value(flag) {
            index += 1;
            argv.get(index).map(|v| v.as_ref().as_bytes())
        } else {
            None
        };
        match flag {
            b"--bundle" | b"-b" if modifying => match value {
                Some(v) if !v.is_empty() => {
                    invocation.bundle = Some(to_path(v));
                    invocation.bundle_error = None;
                }
                _ => {
                    invocation.bundle_error = Some(ArgvError::MissingValue {
                        flag: String::from_utf8_lossy(flag).into_owned(),
                    })
                }
            },
            b"--log" if before_subcommand => {
                invocation.log_path = value.filter(|v| !v.is_empty()).map(to_path)
            }
            b"--log-format" if before_subcommand => {
                invocation.log_format = value.map(|v| String::from_utf8_lossy(v).into_owned())
            }
            b"--debug" if before_subcommand => invocation.debug = true,
            b"--version" | b"-v" if before_subcommand => invocation.version = true,
            _ => {}
        }
        index += 1;
    }
    invocation
}

/// argv as `OsString`s, for callers holding `std::env::args_os()`.
pub fn collect_args() -> Vec<OsString> {
    std::env::args_os().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_str(args: &str) -> Result<Invocation, ArgvError> {
        let argv: Vec<&str> = std::iter::once("nvidia-container-runtime")
            .chain(args.split_whitespace())
            .collect();
        let invocation = scan(&argv);
        match invocation.bundle_error.clone() {
            Some(error) => Err(error),
            None => Ok(invocation),
        }
    }

    #[test]
    fn docker_create_line() {
        let inv = scan_str(
            "--root /var/run/docker/runtime-runc/moby --log /x/log.json --log-format json \
             create --bundle /x/bundle --pid-file /x/bundle/init.pid abc",
        )
        .unwrap();
        assert_eq!(inv.subcommand, Some((7, "create".to_string())));
        assert_eq!(inv.bundle, Some(PathBuf::from("/x/bundle")));
        assert_eq!(inv.log_path, Some(PathBuf::from("/x/log.json")));
        assert!(inv.log_is_json());
        assert_eq!(inv.action(), Action::Modify);
    }

    #[test]
    fn bundle_forms_last_wins() {
        for (args, expected) in [
            ("create --bundle a id", "a"),
            ("create --bundle=a id", "a"),
            ("create -b a id", "a"),
            ("create -b=a id", "a"),
            ("create -b a --bundle=b id", "b"),
            ("create --bundle create id", "create"),
        ] {
            let inv = scan_str(args).unwrap();
            assert_eq!(inv.bundle, Some(PathBuf::from(expected)), "{args}");
            assert_eq!(inv.action(), Action::Modify, "{args}");
        }
    }

    #[test]
    fn bundle_without_value_is_an_error() {
        assert!(matches!(
            scan_str("create id --bundle"),
            Err(ArgvError::MissingValue { .. })
        ));
        assert!(matches!(
            scan_str("create --bundle= id"),
            Err(ArgvError::MissingValue { .. })
        ));
    }

    #[test]
    fn flag_values_are_not_subcommands() {
        let inv = scan_str("--root create state id").unwrap();
        assert_eq!(inv.subcommand, Some((3, "state".to_string())));
        assert_eq!(inv.action(), Action::PassThrough);
        let inv = scan_str("--log create --log-format json delete --force id").unwrap();
        assert_eq!(inv.subcommand.unwrap().1, "delete");
    }

    #[test]
    fn unknown_flags_and_subcommands_pass_through() {
        let inv = scan_str("--systemd-cgroup --future-flag=x frobnicate id").unwrap();
        assert_eq!(inv.subcommand.clone().unwrap().1, "frobnicate");
        assert_eq!(inv.action(), Action::PassThrough);
        let inv = scan_str("").unwrap();
        assert_eq!(inv.subcommand, None);
        assert_eq!(inv.action(), Action::PassThrough);
    }

    #[test]
    fn run_is_modified_and_version_wins() {
        assert_eq!(scan_str("run -b x id").unwrap().action(), Action::Modify);
        assert_eq!(scan_str("--version").unwrap().action(), Action::Version);
        assert_eq!(scan_str("-v").unwrap().action(), Action::Version);
        // `--version` after a subcommand belongs to the subcommand.
        assert_eq!(
            scan_str("state --version x").unwrap().action(),
            Action::PassThrough
        );
    }

    #[test]
    fn double_dash_ends_flags() {
        let inv = scan_str("exec id -- --bundle").unwrap();
        assert_eq!(inv.subcommand.unwrap().1, "exec");
        assert_eq!(inv.bundle, None);
        let inv = scan_str("create id -- --bundle").unwrap();
        assert_eq!(inv.bundle, None);
        // Other subcommands' words are not checked.
        let inv = scan_str("exec id echo -b").unwrap();
        assert_eq!(inv.bundle, None);
    }
}
