//! The HTTP/2 client against a scripted server: what it sends, what it
//! acks, and every way an answer can be broken.

use super::*;
use crate::testing::TempDir;
use std::os::unix::net::UnixListener;

/// A scripted server: reads the client's preface and request, then
/// writes `frames` and reads what the client sends back until it
/// closes (returned, for the test to check the acks).
/// The server's thread: what the client sent before the answer (its
/// request), and after it (its acks).
type Server = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

fn serve(frames: Vec<Vec<u8>>) -> (TempDir, Server) {
    let dir = TempDir::new("grpc");
    let socket = dir.join("grpc.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = vec![0u8; PREFACE.len()];
        stream.read_exact(&mut request).unwrap();
        // SETTINGS, WINDOW_UPDATE, HEADERS, DATA.
        for _ in 0..4 {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).unwrap();
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).unwrap();
            request.extend_from_slice(&header);
            request.extend_from_slice(&payload);
        }
        // A client that gave up closes: the rest is not written.
        for frame in frames {
            if stream.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        (request, rest)
    });
    (dir, thread)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_frame(&mut out, kind, flags, stream, payload);
    out
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        hpack::encode_literal(&mut out, name, value);
    }
    out
}

/// A HEADERS frame whose block ends the stream (trailers, or a
/// trailers-only answer).
fn ending(fields: &[(&str, &str)]) -> Vec<u8> {
    frame(HEADERS, END_HEADERS | END_STREAM, STREAM, &block(fields))
}

fn message(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

fn call(frames: Vec<Vec<u8>>) -> (Result<Vec<u8>, EngineApiError>, Vec<u8>, Vec<u8>) {
    let (dir, server) = serve(frames);
    let result = unary(
        &dir.join("grpc.sock"),
        "/runtime.v1.RuntimeService/Version",
        b"\x0a\x050.1.0",
        Duration::from_secs(10),
    );
    let (request, acks) = server.join().unwrap();
    (result, request, acks)
}

const OK_HEADERS: [(&str, &str); 2] = [(":status", "200"), ("content-type", "application/grpc")];

/// The answer split the way servers may split it: padded HEADERS with
/// priority, a CONTINUATION, the message over two padded DATA frames,
/// a PING and the server's SETTINGS in between, trailers last.
#[test]
fn reads_an_answer_in_pieces_and_acks_what_it_must() {
    let headers = block(&OK_HEADERS);
    let (first, second) = headers.split_at(3);
    let mut padded_headers = vec![2u8];
    padded_headers.extend_from_slice(&[0, 0, 0, 0, 16]);
    padded_headers.extend_from_slice(first);
    padded_headers.extend_from_slice(&[0, 0]);
    let body = message(b"\x12\x0acontainerd");
    let (one, two) = body.split_at(4);
    let mut padded = vec![1u8];
    padded.extend_from_slice(two);
    padded.push(0);
    let (result, request, acks) = call(vec![
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(HEADERS, PADDED | PRIORITY, STREAM, &padded_headers),
        frame(CONTINUATION, END_HEADERS, STREAM, second),
        frame(PING, 0, 0, b"12345678"),
        frame(DATA, 0, STREAM, one),
        frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1, 0]),
        frame(0xfa, 0, 0, b"unknown type"),
        frame(DATA, PADDED, STREAM, &padded),
        ending(&[("grpc-status", "0")]),
    ]);
    assert_eq!(result.unwrap(), b"\x12\x0acontainerd");
    // The request: preface, SETTINGS, a HEADERS block naming the
    // method, DATA with the message and END_STREAM.
    assert!(request.starts_with(PREFACE));
    let mut settings = vec![0, 2, 0, 0, 0, 0, 0, 4];
    settings.extend_from_slice(&WINDOW.to_be_bytes());
    let mut opening = frame(SETTINGS, 0, 0, &settings);
    opening.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(WINDOW - DEFAULT_WINDOW).to_be_bytes(),
    ));
    assert!(request[PREFACE.len()..].starts_with(&opening));
    let fields = Decoder::new(HEADER_TABLE)
        .decode(&request[PREFACE.len() + 9 + 12 + 9 + 4 + 9..request.len() - 9 - 12])
        .unwrap();
    assert!(fields.contains(&(
        b":path".to_vec(),
        b"/runtime.v1.RuntimeService/Version".to_vec()
    )));
    assert!(request.ends_with(
        &[
            &[0, 0, 12, DATA, END_STREAM, 0, 0, 0, 1][..],
            &message(b"\x0a\x050.1.0")
        ]
        .concat()
    ));
    // SETTINGS ack, PING ack with its payload; no WINDOW_UPDATE (the
    // window was granted in the request).
    let mut expected = frame(SETTINGS, ACK, 0, &[]);
    expected.extend(frame(PING, ACK, 0, b"12345678"));
    assert_eq!(acks, expected);
}

/// grpc-go answers an error with headers and trailers in one block.
#[test]
fn a_trailers_only_error_is_its_status_and_message() {
    let (result, _, _) = call(vec![ending(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "12"),
        (
            "grpc-message",
            "unknown service runtime.v1.RuntimeService%21",
        ),
    ])]);
    match result {
        Err(EngineApiError::Status { code, message, .. }) => {
            assert_eq!(code, 12);
            assert_eq!(message, "unknown service runtime.v1.RuntimeService!");
        }
        other => panic!("{other:?}"),
    }
    let error = call(vec![ending(&[
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-status", "12"),
    ])])
    .0
    .unwrap_err();
    assert!(error.to_string().contains("Unimplemented"), "{error}");
}

#[test]
fn resets_goaways_and_broken_answers_are_errors_that_say_so() {
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (
            vec![frame(RST_STREAM, 0, STREAM, &[0, 0, 0, 7])],
            "reset the call (RST_STREAM, HTTP/2 error code 7)",
        ),
        (
            vec![frame(
                GOAWAY,
                0,
                0,
                &[&[0u8, 0, 0, 0, 0, 0, 0, 1][..], b"bye"].concat(),
            )],
            "GOAWAY, HTTP/2 error code 1: bye",
        ),
        (vec![], "closed the connection before it answered"),
        (vec![ending(&[(":status", "404")])], "HTTP status \"404\""),
        (
            vec![
                frame(HEADERS, END_HEADERS, STREAM, &block(&OK_HEADERS)),
                frame(DATA, 0, STREAM, &message(b"x")[..3]),
                ending(&[("grpc-status", "0")]),
            ],
            "without its message",
        ),
        (
            vec![
                frame(HEADERS, END_HEADERS, STREAM, &block(&OK_HEADERS)),
                frame(DATA, END_STREAM, STREAM, &message(b"x")),
            ],
            "without a grpc-status",
        ),
        (
            vec![
                frame(HEADERS, 0, STREAM, &block(&OK_HEADERS)),
                frame(DATA, END_STREAM, STREAM, &message(b"x")),
            ],
            "interrupted",
        ),
        (
            vec![frame(HEADERS, END_HEADERS, STREAM, &[0xbf])],
            "table index 63",
        ),
        (
            vec![[&[0x01u8, 0, 0, DATA][..], &[0; 5]].concat()],
            "above the 16384",
        ),
    ];
    for (frames, expected) in cases {
        let error = crate::logging::error_chain(&call(frames).0.unwrap_err());
        assert!(error.contains(expected), "{expected}: {error}");
    }
}

/// An answer over MAX_BODY is a limit, read no further.
#[test]
fn an_answer_over_the_limit_is_refused() {
    let chunk = vec![0u8; MAX_FRAME];
    let mut frames = vec![frame(HEADERS, END_HEADERS, STREAM, &block(&OK_HEADERS))];
    frames.extend((0..=MAX_BODY / MAX_FRAME).map(|_| frame(DATA, 0, STREAM, &chunk)));
    let error = crate::logging::error_chain(&call(frames).0.unwrap_err());
    assert!(error.contains("an answer above 16777216 bytes"), "{error}");
}

#[test]
fn nobody_listening_and_silence() {
    let dir = TempDir::new("grpc");
    let error = unary(&dir.join("none.sock"), "/a/b", b"", Duration::from_secs(1)).unwrap_err();
    assert!(matches!(error, EngineApiError::Connect { .. }), "{error}");
    // A listener that never answers: the deadline.
    let socket = dir.join("silent.sock");
    let _listener = UnixListener::bind(&socket).unwrap();
    let started = Instant::now();
    let error = unary(&socket, "/a/b", b"", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(error, EngineApiError::Timeout { .. }), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%20b%zz%2"), "a b%zz%2");
}
