//! One unary gRPC call (grpc.io's "gRPC over HTTP2" protocol doc) over
//! HTTP/2 with prior knowledge (RFC 9113 §3.3) on a unix socket: blocking,
//! on a connection of its own, closed after the answer. This is how
//! kubelet's and crictl's grpc-go clients talk to containerd and CRI-O,
//! less everything a single small call never needs (streams beyond the
//! first, server push, compression, keepalive). Written here rather than
//! linked (tonic, hyper, tokio): the installer is a static binary and its
//! check is two small calls.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::hpack::{self, Decoder, Field};
use super::{EngineApiError, Malformed};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// SETTINGS parameters (§6.5.2).
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
/// The flow-control window of a new stream and of a connection before
/// any WINDOW_UPDATE (§6.9.2).
const DEFAULT_WINDOW: u32 = 65_535;

/// Our one stream: a client's first stream id.
const STREAM: u32 = 1;
/// SETTINGS_MAX_FRAME_SIZE's initial value, which we keep: no frame sent
/// to us is larger.
const MAX_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE's initial value, which we keep.
const HEADER_TABLE: usize = 4_096;
/// An answer's header blocks (a few hundred bytes from containerd).
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// An answer's body: containerd's verbose Status (its whole CRI config as
/// JSON) is tens of KiB.
const MAX_BODY: usize = 16 << 20;
/// gRPC's message prefix: a compressed flag and a 4-byte length.
const MESSAGE_PREFIX: usize = 5;
/// The flow-control window we grant, the stream's and the connection's,
/// once, up front: room for the largest answer we read and one frame
/// more, so a server never waits for credit below the limit and one that
/// goes past it is caught by the limit, not by a stall.
const WINDOW: u32 = (MAX_BODY + MAX_FRAME) as u32;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// A connection for one call, with the deadline every read and write
/// keeps.
struct Connection {
    stream: UnixStream,
    socket: PathBuf,
    call: String,
    deadline: Instant,
    timeout: Duration,
}

/// Calls `method` (`/package.Service/Method`) with the serialized
/// `request` and returns the serialized answer, or the server's gRPC
/// status as [`EngineApiError::Status`].
pub fn unary(
    socket: &Path,
    method: &str,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, EngineApiError> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(socket).map_err(|source| EngineApiError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let mut connection = Connection {
        stream,
        socket: socket.to_path_buf(),
        call: method.trim_start_matches('/').to_string(),
        deadline,
        timeout,
    };
    connection.send_request(method, request)?;
    let answer = connection.read_answer()?;
    answer.message(&connection)
}

/// What came back on our stream.
struct Answer {
    /// The header blocks in order: the headers, then the trailers (one
    /// block only for a "trailers-only" answer, which is how grpc-go sends
    /// an error).
    blocks: Vec<Vec<Field>>,
    body: Vec<u8>,
}

impl Connection {
    fn malformed(&self, what: impl Into<String>) -> EngineApiError {
        EngineApiError::Malformed {
            socket: self.socket.clone(),
            call: self.call.clone(),
            source: Malformed::Protocol(what.into()),
        }
    }

    fn io(&self, source: std::io::Error) -> EngineApiError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => EngineApiError::Timeout {
                socket: self.socket.clone(),
                call: self.call.clone(),
                timeout: self.timeout,
            },
            _ => EngineApiError::Io {
                socket: self.socket.clone(),
                call: self.call.clone(),
                source,
            },
        }
    }

    fn remaining(&self) -> Result<Duration, EngineApiError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.io(ErrorKind::TimedOut.into()));
        }
        Ok(left)
    }

    fn write_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), EngineApiError> {
        let mut bytes = Vec::with_capacity(9 + payload.len());
        append_frame(&mut bytes, kind, flags, stream, payload);
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), EngineApiError> {
        let left = self.remaining()?;
        self.stream
            .set_write_timeout(Some(left))
            .and_then(|()| self.stream.write_all(bytes))
            .map_err(|source| self.io(source))
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), EngineApiError> {
        let left = self.remaining()?;
        match self
            .stream
            .set_read_timeout(Some(left))
            .and_then(|()| self.stream.read_exact(buffer))
        {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                Err(self.malformed("the server closed the connection before it answered"))
            }
            Err(error) => Err(self.io(error)),
        }
    }

    /// The preface, our SETTINGS (no push, our window) and the
    /// connection's window, the request's HEADERS and its one DATA frame,
    /// in one write: a client need not wait for the server's SETTINGS
    /// (§3.4).
    fn send_request(&mut self, method: &str, request: &[u8]) -> Result<(), EngineApiError> {
        if request.len() + MESSAGE_PREFIX > MAX_FRAME {
            return Err(self.malformed(format!(
                "a request of {} bytes does not fit one frame",
                request.len()
            )));
        }
        let mut bytes = PREFACE.to_vec();
        let mut settings = Vec::new();
        settings.extend_from_slice(&SETTINGS_ENABLE_PUSH.to_be_bytes());
        settings.extend_from_slice(&0u32.to_be_bytes());
        settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        settings.extend_from_slice(&WINDOW.to_be_bytes());
        append_frame(&mut bytes, SETTINGS, 0, 0, &settings);
        let credit = WINDOW - DEFAULT_WINDOW;
        append_frame(&mut bytes, WINDOW_UPDATE, 0, 0, &credit.to_be_bytes());
        let mut block = Vec::new();
        // Pseudo-headers first (§8.3); the rest as grpc-go's client sends
        // them.
        let timeout = format!("{}m", self.timeout.as_millis().min(99_999_999));
        let agent = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("user-agent", agent),
            ("te", "trailers"),
            ("grpc-timeout", &timeout),
        ] {
            hpack::encode_literal(&mut block, name, value);
        }
        append_frame(&mut bytes, HEADERS, END_HEADERS, STREAM, &block);
        let mut data = vec![0u8];
        // Checked above: far below 4 GiB.
        data.extend_from_slice(&(request.len() as u32).to_be_bytes());
        data.extend_from_slice(request);
        append_frame(&mut bytes, DATA, END_STREAM, STREAM, &data);
        self.write(&bytes)
    }

    fn read_frame(&mut self) -> Result<Frame, EngineApiError> {
        let mut header = [0u8; 9];
        self.read_exact(&mut header)?;
        let length =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        if length > MAX_FRAME {
            return Err(self.malformed(format!(
                "a frame of {length} bytes, above the {MAX_FRAME} we allow (is this an HTTP/2 server?)"
            )));
        }
        let mut payload = vec![0u8; length];
        self.read_exact(&mut payload)?;
        Ok(Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames until our stream ends, answering what the server
    /// asks of every client on the way (SETTINGS and PING acks; the
    /// window was granted up front).
    fn read_answer(&mut self) -> Result<Answer, EngineApiError> {
        let mut decoder = Decoder::new(HEADER_TABLE);
        let mut answer = Answer {
            blocks: Vec::new(),
            body: Vec::new(),
        };
        // A header block still waiting for its CONTINUATIONs, and whether
        // its HEADERS frame ended the stream.
        let mut pending: Option<(Vec<u8>, bool)> = None;
        loop {
            let frame = self.read_frame()?;
            if let Some((mut block, ends_stream)) = pending.take() {
                // §6.10: nothing may come between a HEADERS frame and its
                // CONTINUATIONs.
                if frame.kind != CONTINUATION || frame.stream != STREAM {
                    return Err(self.malformed("a header block interrupted by another frame"));
                }
                block.extend_from_slice(&frame.payload);
                if block.len() > MAX_HEADER_BLOCK {
                    return Err(
                        self.malformed(format!("a header block above {MAX_HEADER_BLOCK} bytes"))
                    );
                }
                if frame.flags & END_HEADERS == 0 {
                    pending = Some((block, ends_stream));
                    continue;
                }
                answer.blocks.push(self.decode(&mut decoder, &block)?);
                if ends_stream {
                    return Ok(answer);
                }
                continue;
            }
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => self.write_frame(SETTINGS, ACK, 0, &[])?,
                PING if frame.flags & ACK == 0 => self.write_frame(PING, ACK, 0, &frame.payload)?,
                GOAWAY => {
                    let last_stream = frame
                        .payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
                        .unwrap_or(0);
                    // A GOAWAY that covers our stream still lets it finish.
                    if last_stream < STREAM {
                        let code = error_code(frame.payload.get(4..8));
                        let debug = String::from_utf8_lossy(frame.payload.get(8..).unwrap_or(&[]))
                            .into_owned();
                        return Err(self.malformed(format!(
                            "the server closed the connection without taking the call (GOAWAY, HTTP/2 error code {code}{}{debug})",
                            if debug.is_empty() { "" } else { ": " }
                        )));
                    }
                }
                RST_STREAM if frame.stream == STREAM => {
                    let code = error_code(frame.payload.get(..4));
                    return Err(self.malformed(format!(
                        "the server reset the call (RST_STREAM, HTTP/2 error code {code})"
                    )));
                }
                HEADERS if frame.stream == STREAM => {
                    let fragment = self.unpad(&frame, true)?.to_vec();
                    let ends_stream = frame.flags & END_STREAM != 0;
                    if frame.flags & END_HEADERS == 0 {
                        pending = Some((fragment, ends_stream));
                        continue;
                    }
                    answer.blocks.push(self.decode(&mut decoder, &fragment)?);
                    if ends_stream {
                        return Ok(answer);
                    }
                }
                DATA if frame.stream == STREAM => {
                    let data = self.unpad(&frame, false)?;
                    if answer.body.len() + data.len() > MAX_BODY {
                        return Err(self.malformed(format!("an answer above {MAX_BODY} bytes")));
                    }
                    answer.body.extend_from_slice(data);
                    if frame.flags & END_STREAM != 0 {
                        return Ok(answer);
                    }
                }
                PUSH_PROMISE => {
                    return Err(self.malformed("a PUSH_PROMISE, which our SETTINGS forbade"))
                }
                CONTINUATION => return Err(self.malformed("a CONTINUATION frame after no HEADERS")),
                // WINDOW_UPDATE, PRIORITY, acks, other streams' frames,
                // and frame types we do not know (§4.1: ignored).
                _ => {}
            }
        }
    }

    /// The frame's payload less its padding and, for HEADERS, the
    /// priority fields (§6.1, §6.2).
    fn unpad<'a>(&self, frame: &'a Frame, headers: bool) -> Result<&'a [u8], EngineApiError> {
        let mut payload = &frame.payload[..];
        let mut padding = 0;
        if frame.flags & PADDED != 0 {
            let (&length, rest) = payload
                .split_first()
                .ok_or_else(|| self.malformed("a padded frame without its pad length"))?;
            padding = usize::from(length);
            payload = rest;
        }
        if headers && frame.flags & PRIORITY != 0 {
            payload = payload.get(5..).ok_or_else(|| {
                self.malformed("a HEADERS frame shorter than its priority fields")
            })?;
        }
        let end = payload
            .len()
            .checked_sub(padding)
            .ok_or_else(|| self.malformed("a frame whose padding is longer than it"))?;
        Ok(&payload[..end])
    }

    fn decode(&self, decoder: &mut Decoder, block: &[u8]) -> Result<Vec<Field>, EngineApiError> {
        decoder
            .decode(block)
            .map_err(|source| EngineApiError::Malformed {
                socket: self.socket.clone(),
                call: self.call.clone(),
                source: Malformed::Hpack(source),
            })
    }
}

impl Answer {
    fn header(block: &[Field], name: &str) -> Option<String> {
        block
            .iter()
            .find(|(field, _)| field == name.as_bytes())
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    }

    /// The one message of a successful answer; the gRPC status otherwise.
    fn message(self, connection: &Connection) -> Result<Vec<u8>, EngineApiError> {
        let (Some(headers), Some(trailers)) = (self.blocks.first(), self.blocks.last()) else {
            return Err(connection.malformed("an answer without headers"));
        };
        let status = Self::header(headers, ":status").unwrap_or_default();
        if status != "200" {
            return Err(connection.malformed(format!(
                "HTTP status {status:?}, not a gRPC answer (is this the engine's gRPC socket?)"
            )));
        }
        let content_type = Self::header(headers, "content-type").unwrap_or_default();
        if !content_type.starts_with("application/grpc") {
            return Err(
                connection.malformed(format!("content-type {content_type:?}, not a gRPC answer"))
            );
        }
        let Some(code) = Self::header(trailers, "grpc-status") else {
            return Err(connection.malformed("an answer that ends without a grpc-status"));
        };
        let code: u32 = code
            .parse()
            .map_err(|_| connection.malformed(format!("grpc-status {code:?}, not a number")))?;
        if code != 0 {
            return Err(EngineApiError::Status {
                socket: connection.socket.clone(),
                call: connection.call.clone(),
                code,
                message: percent_decode(
                    &Self::header(trailers, "grpc-message").unwrap_or_default(),
                ),
            });
        }
        let body = self.body;
        if body.len() < MESSAGE_PREFIX {
            return Err(connection.malformed(format!(
                "a successful answer of {} bytes, without its message",
                body.len()
            )));
        }
        if body[0] != 0 {
            return Err(connection.malformed("a compressed message, which we did not ask for"));
        }
        let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() != MESSAGE_PREFIX + length {
            return Err(connection.malformed(format!(
                "a message of {length} bytes in an answer of {}",
                body.len()
            )));
        }
        Ok(body[MESSAGE_PREFIX..].to_vec())
    }
}

fn append_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    // Every payload we write is below MAX_FRAME, so 3 bytes hold it.
    let length = payload.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn error_code(bytes: Option<&[u8]>) -> u32 {
    bytes
        .filter(|b| b.len() == 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// grpc-message is percent-encoded (the gRPC HTTP/2 protocol doc).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests;
