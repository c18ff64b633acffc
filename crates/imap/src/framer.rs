//! Cuts the client's byte stream into commands: a line, plus the literals it announces, each
//! within its limit. Bytes are pushed in as they arrive; `next_frame` says what is complete.

/// Bounds on what one command may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameLimits {
    /// Longest command line between literals, CRLF included.
    pub(crate) line_bytes_max: usize,
    /// Largest single literal.
    pub(crate) literal_bytes_max: u64,
    /// Largest whole command, lines and literals together.
    pub(crate) command_bytes_max: u64,
}

/// What the framer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole command, literals inline as `{n}\r\n` followed by their bytes.
    Command(Vec<u8>),
    /// The client announced a synchronising literal: answer `+` and keep reading.
    NeedContinuation,
    /// A line ran past `line_bytes_max`; the rest of it is being discarded.
    LineTooLong { tag: Option<String> },
    /// A literal over the limit. A synchronising one was not sent yet: the command is dropped
    /// and reading goes on. A non-synchronising one is on its way: the session must close.
    LiteralTooBig {
        tag: Option<String>,
        synchronizing: bool,
        size: u64,
    },
}

pub(crate) struct Framer {
    limits: FrameLimits,
    input: Vec<u8>,
    command: Vec<u8>,
    /// Length of the current line part (since the last literal) held in `command`.
    literal_left: u64,
    discarding_line: bool,
}

impl Framer {
    pub(crate) fn new(limits: FrameLimits) -> Self {
        Self {
            limits,
            input: Vec::new(),
            command: Vec::new(),
            literal_left: 0,
            discarding_line: false,
        }
    }

    /// Puts new bounds in force for the next command (a login lifts the small pre-login ones).
    pub(crate) fn set_limits(&mut self, limits: FrameLimits) {
        self.limits = limits;
    }

    /// The bounds in force.
    pub(crate) fn limits(&self) -> FrameLimits {
        self.limits
    }

    /// Adds bytes read from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Takes the bytes not yet framed, for a layer that takes the stream over (COMPRESS).
    pub(crate) fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.input)
    }

    /// Gives back spare capacity (the session is about to sit idle).
    pub(crate) fn shrink(&mut self) {
        self.input.shrink_to_fit();
        self.command.shrink_to_fit();
    }

    /// Bytes received but not yet part of a frame (after STARTTLS they must be none).
    pub(crate) fn buffered(&self) -> usize {
        self.input.len()
    }

    /// The next complete frame, or `None` when more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.literal_left > 0 {
                let take = usize::try_from(self.literal_left)
                    .unwrap_or(usize::MAX)
                    .min(self.input.len());
                self.command.extend(self.input.drain(..take));
                self.literal_left -= take as u64;
                if self.literal_left > 0 {
                    return None;
                }
                continue;
            }
            let line_end = self.input.iter().position(|&b| b == b'\n');
            if self.discarding_line {
                match line_end {
                    Some(at) => {
                        self.input.drain(..=at);
                        self.discarding_line = false;
                        continue;
                    }
                    None => {
                        self.input.clear();
                        return None;
                    }
                }
            }
            let Some(at) = line_end else {
                if self.input.len() > self.limits.line_bytes_max {
                    return Some(self.line_too_long());
                }
                return None;
            };
            if at + 1 > self.limits.line_bytes_max {
                let tag = tag_of(if self.command.is_empty() {
                    &self.input
                } else {
                    &self.command
                });
                self.input.drain(..=at);
                self.command.clear();
                return Some(Frame::LineTooLong { tag });
            }
            self.command.extend(self.input.drain(..=at));
            match literal_announced(&self.command) {
                None => return Some(Frame::Command(std::mem::take(&mut self.command))),
                Some((size, synchronizing)) => {
                    let total = self.command.len() as u64 + size;
                    if size > self.limits.literal_bytes_max || total > self.limits.command_bytes_max
                    {
                        let tag = tag_of(&self.command);
                        self.command.clear();
                        return Some(Frame::LiteralTooBig {
                            tag,
                            synchronizing,
                            size,
                        });
                    }
                    self.literal_left = size;
                    if synchronizing {
                        return Some(Frame::NeedContinuation);
                    }
                }
            }
        }
    }

    fn line_too_long(&mut self) -> Frame {
        let tag = tag_of(if self.command.is_empty() {
            &self.input
        } else {
            &self.command
        });
        self.input.clear();
        self.command.clear();
        self.discarding_line = true;
        Frame::LineTooLong { tag }
    }
}

/// `{n}`, `{n+}` or `~{n}` (BINARY) at the end of a line: the size and whether the client
/// waits for a continuation.
fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let spec = &inner[open + 1..];
    let (digits, synchronizing) = match spec.strip_suffix(b"+").or_else(|| spec.strip_suffix(b"-"))
    {
        Some(digits) => (digits, false),
        None => (spec, true),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits)
        .ok()?
        .parse()
        .ok()
        .map(|size| (size, synchronizing))
}

/// The tag of a command, if it starts with something that can be one.
pub(crate) fn tag_of(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
        .unwrap_or(bytes.len());
    let tag = &bytes[..end];
    let valid = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b));
    valid.then(|| String::from_utf8_lossy(tag).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer() -> Framer {
        Framer::new(FrameLimits {
            line_bytes_max: 40,
            literal_bytes_max: 10,
            command_bytes_max: 60,
        })
    }

    #[test]
    fn commands_literals_and_limits_frame_as_expected() {
        let mut f = framer();
        f.push(b"a1 NOOP\r\na2 LOG");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Command(b"a1 NOOP\r\n".to_vec()))
        );
        assert_eq!(f.next_frame(), None);
        f.push(b"IN {3}\r\n");
        assert_eq!(f.next_frame(), Some(Frame::NeedContinuation));
        assert_eq!(f.next_frame(), None);
        f.push(b"bob {2+}\r\npw\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Command(
                b"a2 LOGIN {3}\r\nbob {2+}\r\npw\r\n".to_vec()
            ))
        );

        f.push(b"a3 APPEND x {11}\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::LiteralTooBig {
                tag: Some("a3".into()),
                synchronizing: true,
                size: 11
            })
        );
        f.push(b"a4 X {99+}\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::LiteralTooBig {
                tag: Some("a4".into()),
                synchronizing: false,
                size: 99
            })
        );

        let mut f = framer();
        f.push(b"a5 ");
        f.push(&[b'x'; 50]);
        assert_eq!(
            f.next_frame(),
            Some(Frame::LineTooLong {
                tag: Some("a5".into())
            })
        );
        f.push(b"xxxx\r\na6 NOOP\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Command(b"a6 NOOP\r\n".to_vec()))
        );

        let mut f = framer();
        f.set_limits(FrameLimits {
            literal_bytes_max: 100,
            command_bytes_max: 200,
            ..f.limits()
        });
        f.push(b"b1 APPEND x {99}\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::NeedContinuation),
            "raised limits in force"
        );

        let mut f = framer();
        f.push(b"a7 X {99999999999999999999}\r\n");
        assert_eq!(
            f.next_frame(),
            Some(Frame::Command(b"a7 X {99999999999999999999}\r\n".to_vec())),
            "not a literal: the parser refuses it"
        );
    }
}
