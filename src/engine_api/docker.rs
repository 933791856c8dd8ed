//! dockerd's Engine API on its unix socket: `GET /info`, whose `Runtimes`
//! lists the runtimes the running daemon knows (what `docker info` shows;
//! after a SIGHUP it is how a client sees the reload took). HTTP/1.1 with
//! `Connection: close`; the body by Content-Length, chunked, or to the
//! end, as Go's net/http may send any of them.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{EngineApiError, Malformed};

/// `/info` is a few KiB.
const MAX_ANSWER: usize = 16 << 20;

/// What of `/info` a node agent needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// The names of `Runtimes`.
    pub runtimes: Vec<String>,
    pub default_runtime: String,
    pub server_version: String,
}

/// `GET /info`.
pub fn info(socket: &Path, timeout: Duration) -> Result<Info, EngineApiError> {
    let body = get(socket, "/info", timeout)?;
    parse_info(&body).map_err(|source| EngineApiError::Malformed {
        socket: socket.to_path_buf(),
        call: "GET /info".into(),
        source: Malformed::Json(source),
    })
}

fn parse_info(body: &[u8]) -> Result<Info, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(body)?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(Info {
        runtimes: value
            .get("Runtimes")
            .and_then(|r| r.as_object())
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default(),
        default_runtime: text("DefaultRuntime"),
        server_version: text("ServerVersion"),
    })
}

/// The body of a 200 answer to `GET path`.
fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Vec<u8>, EngineApiError> {
    let call = format!("GET {path}");
    let deadline = Instant::now() + timeout;
    let io = |source: std::io::Error| match source.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => EngineApiError::Timeout {
            socket: socket.to_path_buf(),
            call: call.clone(),
            timeout,
        },
        _ => EngineApiError::Io {
            socket: socket.to_path_buf(),
            call: call.clone(),
            source,
        },
    };
    let malformed = |what: String| EngineApiError::Malformed {
        socket: socket.to_path_buf(),
        call: call.clone(),
        source: Malformed::Protocol(what),
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| EngineApiError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let agent = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: docker\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io(ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(io(error)),
        }
        if answer.len() > MAX_ANSWER {
            return Err(malformed(format!("an answer above {MAX_ANSWER} bytes")));
        }
    }
    let (status, body) = parse_answer(&answer).map_err(malformed)?;
    if status != 200 {
        // The Engine API's errors are {"message": "..."}.
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(EngineApiError::Http {
            socket: socket.to_path_buf(),
            call,
            status,
            message,
        });
    }
    Ok(body)
}

/// An HTTP/1.1 answer read to its end: the status and the body.
fn parse_answer(answer: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an answer without the end of its headers (is this dockerd's socket?)")?;
    let head = String::from_utf8_lossy(&answer[..end]);
    let body = &answer[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("status line {status_line:?}, not HTTP/1.x"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("Content-Length {value:?}"))?,
            );
        }
    }
    if chunked {
        return Ok((status, unchunk(body)?));
    }
    match length {
        Some(length) => body
            .get(..length)
            .map(|b| (status, b.to_vec()))
            .ok_or_else(|| format!("a body of {} bytes, {length} announced", body.len())),
        None => Ok((status, body.to_vec())),
    }
}

/// RFC 9112 §7.1: hex sizes (extensions ignored), a zero-size last chunk.
fn unchunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunked body cut short")?;
        let line = String::from_utf8_lossy(&body[..line_end]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("a chunk cut short")?;
        out.extend_from_slice(chunk);
        body = body
            .get(size..)
            .and_then(|rest| rest.strip_prefix(b"\r\n"))
            .ok_or("a chunk without its CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_length_chunked_and_to_the_end() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\n{}\r\nextra";
        assert_eq!(parse_answer(by_length).unwrap(), (200, b"{}\r\n".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_answer(chunked).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let to_end = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"page not found\"}";
        assert_eq!(parse_answer(to_end).unwrap().0, 404);
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n")
            .unwrap_err()
            .contains("not HTTP"));
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n")
            .unwrap_err()
            .contains("dockerd's socket"));
        assert!(unchunk(b"5\r\nab").unwrap_err().contains("cut short"));
        assert!(unchunk(b"zz\r\n").unwrap_err().contains("chunk size"));
    }

    #[test]
    fn info_names_the_runtimes() {
        let body = br#"{"ServerVersion":"28.5.2","DefaultRuntime":"runc","Runtimes":{"io.containerd.runc.v2":{"path":"runc"},"nvidia":{"path":"/usr/local/nvidia/toolkit/nvidia-container-runtime"},"runc":{"path":"runc"}}}"#;
        let info = parse_info(body).unwrap();
        assert_eq!(info.runtimes, ["io.containerd.runc.v2", "nvidia", "runc"]);
        assert_eq!(info.default_runtime, "runc");
        assert_eq!(info.server_version, "28.5.2");
    }

    /// A fake dockerd on a socket: the request it got, a chunked answer,
    /// and an error answer's message.
    #[test]
    fn get_over_a_socket() {
        use std::os::unix::net::UnixListener;
        let tmp = crate::testing::TempDir::new("docker-api");
        let dir = tmp.path().to_path_buf();
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"[..],
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 22\r\n\r\n{\"message\":\"it broke\"}",
            ] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8];
                while !request.ends_with(b"\r\n\r\n") {
                    stream.read_exact(&mut byte).unwrap();
                    request.push(byte[0]);
                }
                stream.write_all(answer).unwrap();
                requests.push(String::from_utf8(request).unwrap());
            }
            requests
        });
        assert_eq!(
            info(&socket, Duration::from_secs(10)).unwrap(),
            Info::default()
        );
        let error = info(&socket, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(error, EngineApiError::Http { status: 500, .. }),
            "{error}"
        );
        assert!(
            error.to_string().ends_with("answered HTTP 500: it broke"),
            "{error}"
        );
        let requests = server.join().unwrap();
        assert!(
            requests[0].starts_with("GET /info HTTP/1.1\r\nHost: docker\r\n"),
            "{}",
            requests[0]
        );
        assert!(requests[0].contains("Connection: close\r\n"));
    }
}
