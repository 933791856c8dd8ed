//! The engines' own APIs, asked what a node agent must know after it
//! changed an engine's config: does the engine answer, and which runtimes
//! does it know. containerd and CRI-O answer the CRI (gRPC on their
//! socket: [`cri`], what kubelet calls), dockerd its Engine API (HTTP/1.1
//! on docker.sock: [`docker`]). Clients only, blocking, one short
//! connection per call, no async runtime: the node installer is a static
//! binary that makes two calls after a restart.

pub mod cri;
pub mod docker;
mod grpc;
mod hpack;
mod huffman;
mod protobuf;

use std::path::PathBuf;
use std::time::Duration;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("{0}")]
    Protocol(String),
    #[error("its header block is not HPACK")]
    Hpack(#[source] hpack::HpackError),
    #[error("its message is not the protobuf expected")]
    Protobuf(#[source] protobuf::ProtobufError),
    #[error("its body is not the JSON expected")]
    Json(#[source] serde_json::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineApiError {
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{call} on {socket}: {source}")]
    Io {
        socket: PathBuf,
        call: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{call} on {socket}: no answer within {timeout:?}")]
    Timeout {
        socket: PathBuf,
        call: String,
        timeout: Duration,
    },
    #[error("{call} on {socket}: cannot read the answer: {source}")]
    Malformed {
        socket: PathBuf,
        call: String,
        #[source]
        source: Malformed,
    },
    #[error("{call} on {socket} failed with gRPC status {code} ({}): {message}", grpc_code_name(*code))]
    Status {
        socket: PathBuf,
        call: String,
        code: u32,
        message: String,
    },
    #[error("{call} on {socket} answered HTTP {status}: {message}")]
    Http {
        socket: PathBuf,
        call: String,
        status: u16,
        message: String,
    },
}

/// gRPC's status codes by name (grpc/grpc doc/statuscodes.md).
fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|code| NAMES.get(code))
        .copied()
        .unwrap_or("not a gRPC code")
}

#[cfg(test)]
pub(crate) mod tests {
    /// Bytes from hex digits with spaces, as RFC 7541's examples print
    /// them.
    pub fn hex(text: &str) -> Vec<u8> {
        let digits: String = text.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }
}
