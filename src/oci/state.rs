//! The container state that the runtime pipes to an OCI hook's stdin
//! (runtime-spec `state`): the fields a hook needs, `id`, `pid`, `bundle`.

use std::io::{self, Read};
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::bounded::{self, TooLarge, HOOK_STATE};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the container state on stdin: {source}: run this only as an OCI prestart hook (runc passes the state)")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("the container state on stdin is not valid: {problem}: run this only as an OCI prestart hook (runc passes the state)")]
    Bad { problem: String },
    #[error(transparent)]
    TooLarge(TooLarge),
}

/// The fields of the OCI state that the hook uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// The container's init process, in the runtime's pid namespace; 0
    /// only from [`State::read_at_create_container`] (crun's createContainer).
    pub pid: i32,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
    /// `creating` (runc) or `created` (crun) while prestart hooks run.
    pub status: String,
}

/// Which `pid` values a caller accepts.
#[derive(Clone, Copy)]
enum Pid {
    Positive,
    ZeroAllowed,
}

/// What is kept of the state when it is parsed: every other member
/// (`annotations`, which runc copies from config.json and which may be
/// megabytes) is skipped, never stored as a value.
#[derive(Deserialize)]
struct Kept {
    id: Option<Value>,
    pid: Option<Value>,
    bundle: Option<Value>,
    status: Option<Value>,
}

impl State {
    /// Reads the state JSON that runc writes to a hook's stdin: whole, up
    /// to [`HOOK_STATE`]'s limit (reported as a limit), then parsed from the
    /// slice keeping only the four fields, which is what makes a state of
    /// many megabytes cheap (serde_json skips a slice's strings by
    /// scanning, where a reader goes byte by byte: 256 MiB took over 25 s
    /// through a reader in a debug build).
    pub fn read(input: &mut dyn Read) -> Result<State, StateError> {
        Self::read_with(input, Pid::Positive)
    }

    /// [`State::read`] for a hook that may run at createContainer, where
    /// crun (1.28 seen) passes `"pid": 0`: it runs those hooks from the
    /// container's init, in its mount namespace, before it knows the pid
    /// the runtime's namespace gives it. runc passes the real pid there.
    pub fn read_at_create_container(input: &mut dyn Read) -> Result<State, StateError> {
        Self::read_with(input, Pid::ZeroAllowed)
    }

    fn read_with(input: &mut dyn Read, pid: Pid) -> Result<State, StateError> {
        let bytes =
            bounded::read_to_end(input, HOOK_STATE, 0).map_err(
                |source| match bounded::is_too_large(&source) {
                    true => StateError::TooLarge(TooLarge { limit: HOOK_STATE }),
                    false => StateError::Read { source },
                },
            )?;
        Self::parse_with(&bytes, pid)
    }

    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        Self::parse_with(bytes, Pid::Positive)
    }

    fn parse_with(bytes: &[u8], pid: Pid) -> Result<State, StateError> {
        let kept: Kept = serde_json::from_slice(bytes).map_err(|e| StateError::Bad {
            problem: format!("{e} (read {} bytes)", bytes.len()),
        })?;
        Self::from_kept(kept, pid)
    }

    fn from_kept(kept: Kept, expected_pid: Pid) -> Result<State, StateError> {
        let bad = |problem: &str| StateError::Bad {
            problem: problem.to_string(),
        };
        let lowest = match expected_pid {
            Pid::Positive => 1,
            Pid::ZeroAllowed => 0,
        };
        let pid = kept
            .pid
            .as_ref()
            .and_then(Value::as_i64)
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|pid| *pid >= lowest)
            .ok_or_else(|| match expected_pid {
                Pid::Positive => bad("it has no positive \"pid\""),
                Pid::ZeroAllowed => bad("it has no \"pid\" of 0 or more"),
            })?;
        let bundle = kept
            .bundle
            .as_ref()
            .and_then(Value::as_str)
            .filter(|b| b.starts_with('/'))
            .ok_or_else(|| bad("it has no absolute \"bundle\" path"))?;
        let text = |value: &Option<Value>| {
            value
                .as_ref()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(State {
            id: text(&kept.id),
            pid,
            bundle: PathBuf::from(bundle),
            status: text(&kept.status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parsing() {
        let state = State::parse(
            br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#,
        )
        .unwrap();
        assert_eq!(
            state,
            State {
                id: "c1".into(),
                pid: 42,
                bundle: "/b".into(),
                status: "creating".into()
            }
        );
        for bad in [
            &b""[..],
            b"{}",
            br#"{"pid":0,"bundle":"/b"}"#,
            br#"{"pid":1,"bundle":"b"}"#,
        ] {
            assert!(matches!(State::parse(bad), Err(StateError::Bad { .. })));
        }
    }

    #[test]
    fn crun_create_container_state_has_pid_zero() {
        // As crun 1.28 pipes it to a createContainer hook.
        let crun = b"{\n  \"ociVersion\": \"1.0\",\n  \"id\": \"x1\",\n  \"pid\": 0,\n  \"root\": \"rootfs\",\n  \"bundle\": \"\\/tmp\\/b\",\n  \"status\": \"created\"\n}";
        assert!(matches!(State::parse(crun), Err(StateError::Bad { .. })));
        let state = State::read_at_create_container(&mut &crun[..]).unwrap();
        assert_eq!((state.pid, state.bundle), (0, PathBuf::from("/tmp/b")));
        assert!(State::read_at_create_container(&mut &br#"{"pid":-1,"bundle":"/b"}"#[..]).is_err());
    }
}
