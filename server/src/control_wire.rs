//! The control socket's wire format, apart from the server so that the fuzzer and the test
//! that replays its corpora reach it (this is the `sealpost` package's small library; the
//! socket itself, who may use it and what runs are in the binary's `control.rs`).
//!
//! The client sends one JSON line `{"args": [...], "input": "..."|null, "user": "..."}` of at
//! most `CONTROL_REQUEST_BYTES_MAX` bytes; the server answers with frames, each a kind byte
//! (`o` standard output, `e` standard error, `x` exit status), a 4-byte big-endian length and
//! the bytes. The exit frame is last.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

/// Largest request line (arguments and standard input), in bytes.
pub const CONTROL_REQUEST_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// Largest frame the client accepts, in bytes.
pub const FRAME_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Longest client user name recorded as the audit's actor, in characters.
pub const CONTROL_USER_CHARS_MAX: usize = 64;

/// What a client asks the server to run.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub args: Vec<String>,
    pub input: Option<String>,
    pub user: String,
}

/// Reads the request line (within `CONTROL_REQUEST_BYTES_MAX`); `Ok(None)` when it is not a
/// request.
pub fn read_request(reader: impl Read) -> std::io::Result<Option<Request>> {
    let mut line = Vec::new();
    BufReader::new(reader.take(CONTROL_REQUEST_BYTES_MAX)).read_until(b'\n', &mut line)?;
    Ok(serde_json::from_slice(&line).ok())
}

/// The request as the client sends it: one JSON line.
pub fn request_line(request: &Request) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    Ok(line)
}

/// The name of the user with `uid` in a passwd file's text (`/etc/passwd`), printable ASCII
/// within `CONTROL_USER_CHARS_MAX`; `uid N` when no line has it. The control socket records
/// its caller under this name, taken from the kernel's peer credentials: what the client
/// claims (`$SUDO_USER`, `$USER`) is kept only as a detail.
pub fn user_of_uid(passwd: &str, uid: u32) -> String {
    passwd
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id = fields.nth(1)?;
            (id.parse::<u32>().ok()? == uid).then(|| actor_user(name))
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The client's user name as the audit records it: printable ASCII, at most
/// `CONTROL_USER_CHARS_MAX` characters.
pub fn actor_user(user: &str) -> String {
    user.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(CONTROL_USER_CHARS_MAX)
        .collect()
}

/// Writes one frame.
pub fn write_frame(stream: &mut impl Write, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
    let length = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&length.to_be_bytes());
    stream.write_all(&head)?;
    stream.write_all(bytes)
}

/// One frame from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Out(Vec<u8>),
    Err(Vec<u8>),
    /// The exit status; the last frame.
    Exit(u8),
}

/// Reads one frame. A frame longer than `FRAME_BYTES_MAX`, of an unknown kind, or cut short
/// is an error; memory is taken as the bytes arrive, not as the length claims.
pub fn read_frame(reader: &mut impl Read) -> anyhow::Result<Frame> {
    let mut head = [0u8; 5];
    reader.read_exact(&mut head).map_err(|_| {
        anyhow::anyhow!("the server closed the control connection before the command ended")
    })?;
    let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    anyhow::ensure!(
        length <= FRAME_BYTES_MAX,
        "the server sent a frame of {length} bytes"
    );
    let mut bytes = Vec::new();
    reader
        .take(u64::from(length))
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("reading the server's answer: {e}"))?;
    anyhow::ensure!(
        bytes.len() == length as usize,
        "reading the server's answer: it ended {} bytes short",
        length as usize - bytes.len()
    );
    match head[0] {
        b'o' => Ok(Frame::Out(bytes)),
        b'e' => Ok(Frame::Err(bytes)),
        b'x' => Ok(Frame::Exit(bytes.first().copied().unwrap_or(1))),
        other => anyhow::bail!("the server sent a frame of unknown kind {other}"),
    }
}

/// Entry points for the fuzzer (`fuzz/`) and for the test that replays its corpora. Not an
/// API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Most frames read from one fuzzed answer.
    const FUZZ_FRAMES_MAX: usize = 10_000;

    /// `data[0]` bit 0: the rest is what a client sent the server (a request line, read as the
    /// server reads it), else what a server sent a client (frames, read up to the exit frame).
    /// A request read must survive being written and read again unchanged.
    pub fn wire(data: &[u8]) {
        let Some((selector, input)) = data.split_first() else {
            return;
        };
        if selector & 1 == 1 {
            let Ok(Some(request)) = read_request(input) else {
                return;
            };
            let user = actor_user(&request.user);
            assert!(
                user.chars().count() <= CONTROL_USER_CHARS_MAX
                    && user.chars().all(|c| c.is_ascii_graphic())
            );
            if let Ok(line) = request_line(&request) {
                let again = read_request(line.as_slice());
                assert!(
                    matches!(&again, Ok(Some(r)) if *r == request),
                    "a request did not read back as it was written"
                );
            }
            return;
        }
        let mut reader = input;
        for _ in 0..FUZZ_FRAMES_MAX {
            match read_frame(&mut reader) {
                Ok(Frame::Out(bytes) | Frame::Err(bytes)) => {
                    let mut written = Vec::new();
                    if write_frame(&mut written, b'o', &bytes).is_ok() {
                        assert!(
                            matches!(read_frame(&mut written.as_slice()), Ok(Frame::Out(b)) if b == bytes)
                        );
                    }
                }
                Ok(Frame::Exit(_)) | Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_as_written_and_lies_about_length_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b'o', b"hello").unwrap();
        write_frame(&mut wire, b'x', &[3]).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(
            read_frame(&mut reader).unwrap(),
            Frame::Out(b"hello".to_vec())
        );
        assert_eq!(read_frame(&mut reader).unwrap(), Frame::Exit(3));
        // A length past FRAME_BYTES_MAX, a frame cut short, an unknown kind.
        let error = read_frame(&mut [b'o', 0xff, 0xff, 0xff, 0xff].as_slice()).unwrap_err();
        assert!(
            error.to_string().contains("a frame of 4294967295 bytes"),
            "{error}"
        );
        let error = read_frame(&mut [b'o', 0, 0, 0, 9, b'a'].as_slice()).unwrap_err();
        assert!(error.to_string().contains("8 bytes short"), "{error}");
        let error = read_frame(&mut [b'?', 0, 0, 0, 0].as_slice()).unwrap_err();
        assert!(error.to_string().contains("unknown kind 63"), "{error}");
    }

    #[test]
    fn requests_read_within_their_bound_and_user_names_are_cleaned() {
        let request = Request {
            args: vec!["account".into(), "list".into()],
            input: None,
            user: "root".into(),
        };
        let line = request_line(&request).unwrap();
        assert_eq!(read_request(line.as_slice()).unwrap(), Some(request));
        assert_eq!(read_request(b"not json\n".as_slice()).unwrap(), None);
        assert_eq!(actor_user("a b\u{7}\nc"), "abc");
        assert_eq!(actor_user(&"x".repeat(100)).len(), CONTROL_USER_CHARS_MAX);
    }

    #[test]
    fn the_caller_is_named_by_its_uid_never_by_what_it_claims() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# a comment:x:5\nsealpost:x:998:998::/var/lib/sealpost:/usr/sbin/nologin\nbad\nevil\u{7}name:x:1001:1001::/:/bin/sh\n";
        assert_eq!(user_of_uid(passwd, 0), "root");
        assert_eq!(user_of_uid(passwd, 998), "sealpost");
        assert_eq!(user_of_uid(passwd, 1001), "evilname");
        assert_eq!(user_of_uid(passwd, 4242), "uid 4242");
        assert_eq!(user_of_uid("", 7), "uid 7");
    }
}
