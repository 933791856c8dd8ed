//! The OCI side: the bundle's `config.json` ([`bundle`]: read whole, parsed
//! as a `serde_json::Value`, written back atomically), the application of
//! [`crate::edits::ContainerEdits`] to it ([`patch`]), and the container
//! state an OCI hook reads on stdin ([`state`]).

use std::path::PathBuf;

use serde_json::Value;

use crate::bounded::TooLarge;

pub mod bundle;
pub mod patch;
pub mod state;

pub use bundle::{BundleSpec, RawSpec};
pub use state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}: is the bundle directory right?")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    TooLarge {
        path: PathBuf,
        #[source]
        source: TooLarge,
    },
    #[error("{path} is not valid JSON ({message}): the engine wrote a broken bundle; recreate the container")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field} must be {expected}, but it is {found}: fix the container's spec")]
    Shape {
        path: PathBuf,
        field: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("cannot write {path}: {source}; the original config.json was left as it was")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
