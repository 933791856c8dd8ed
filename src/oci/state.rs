//! The container state that the runtime pipes to an OCI hook's stdin
//! (runtime-spec `state`): the fields a hook needs, `id`, `pid`, `bundle`.

use std::io::{self, Read};
use std::path::PathBuf;

use serde_json::Value;

/// The state on stdin is a small JSON object; anything larger is not runc's.
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the container state on stdin: {source}: run this only as an OCI prestart hook (runc passes the state)")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("the container state on stdin is not valid: {problem}: run this only as an OCI prestart hook (runc passes the state)")]
    Bad { problem: String },
}

/// The fields of the OCI state that the hook uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    /// The container's init process, in the runtime's pid namespace.
    pub pid: i32,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
}

impl State {
    /// Reads the state JSON that runc writes to a hook's stdin.
    pub fn read(input: &mut dyn Read) -> Result<State, StateError> {
        let mut bytes = Vec::new();
        input
            .take(MAX_STATE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|source| StateError::Read { source })?;
        Self::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        let bad = |problem: String| StateError::Bad { problem };
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("{e} (read {} bytes)", bytes.len())))?;
        let pid = value
            .get("pid")
            .and_then(Value::as_i64)
            .and_then(|pid| i32::try_from(pid).ok())
            .filter(|pid| *pid > 0)
            .ok_or_else(|| bad("it has no positive \"pid\"".to_string()))?;
        let bundle = value
            .get("bundle")
            .and_then(Value::as_str)
            .filter(|b| b.starts_with('/'))
            .ok_or_else(|| bad("it has no absolute \"bundle\" path".to_string()))?;
        let id = value.get("id").and_then(Value::as_str).unwrap_or_default();
        Ok(State {
            id: id.to_string(),
            pid,
            bundle: PathBuf::from(bundle),
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
                bundle: "/b".into()
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
}
