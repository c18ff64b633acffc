//! The network and login bounds (against exhaustion), against the real binary on
//! loopback: stalled TLS handshakes dropped on every listener (implicit TLS and after
//! STARTTLS), strangers closed at the pre-login deadline however they trickle, a big literal
//! before login refused without a continuation, every listener's connection cap answered
//! politely (`* BYE`, `421`, `503`), the web's header and idle timeouts real, and a burst of
//! logins past the password-hashing queue refused at once. Raw sockets where the bytes
//! matter; Python's imaplib, smtplib and ssl (`tests/scripts/limits_probe.py`) where a real
//! client's view does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::DataDir;

const PASSWORD: &str = "limits-test-pw";
/// How long a test waits for the server to do what a bound says, at most.
const WAIT: Duration = Duration::from_secs(6);

/// A data folder whose keys (`section.key`) are set as given.
fn data_with(settings: &[(&str, &str)]) -> DataDir {
    let data = DataDir::init_with("limits.test", &["--hostname", "localhost"]);
    data.set(settings);
    data.add_accounts(&["user@limits.test"], PASSWORD);
    data
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// Reads one line (CRLF stripped); `None` when the server closed the connection.
fn line(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut text = String::new();
    match reader.read_line(&mut text) {
        Ok(0) => None,
        Ok(_) => Some(text.trim_end().to_string()),
        Err(error) => panic!("no line within {WAIT:?}: {error}"),
    }
}

/// How long until the server closed `stream` (it is silent meanwhile); panics if it is still
/// open after `WAIT`.
fn closed_within(stream: &mut TcpStream, started: Instant, what: &str) -> Duration {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: still open after {:?}", started.elapsed())
            }
            Err(_) => return started.elapsed(),
        }
    }
}

/// Reads SMTP reply lines up to the last of one reply (`250 ` after `250-` lines).
fn smtp_reply(reader: &mut BufReader<TcpStream>) -> String {
    loop {
        let text = line(reader).expect("an SMTP reply");
        if text.as_bytes().get(3) != Some(&b'-') {
            return text;
        }
    }
}

fn probe(args: &[&str]) -> serde_json::Value {
    let output = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/scripts/limits_probe.py"
        ))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "limits_probe.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_stalled_tls_handshake_is_dropped_on_every_listener() {
    let data = data_with(&[("limits.tls_handshake_ms_max", "500")]);
    let _server = data.serve();
    let base = data.port_base;
    // Implicit TLS: the client connects and never says hello.
    for (name, port) in [
        ("imaps", base + 993),
        ("submissions", base + 465),
        ("https", base + 443),
    ] {
        let started = Instant::now();
        let mut stream = connect(port);
        let took = closed_within(&mut stream, started, name);
        assert!(
            took >= Duration::from_millis(400),
            "{name}: closed too early, {took:?}"
        );
        assert!(took < Duration::from_millis(3_000), "{name}: {took:?}");
    }
    // STARTTLS: the client asks for TLS, is told to go ahead, and stalls.
    {
        let stream = connect(base + 143);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert!(line(&mut reader).unwrap().starts_with("* OK"));
        (&stream).write_all(b"a STARTTLS\r\n").unwrap();
        assert!(line(&mut reader).unwrap().starts_with("a OK"));
        let started = Instant::now();
        let mut stream = stream;
        let took = closed_within(&mut stream, started, "imap STARTTLS");
        assert!(
            took < Duration::from_millis(3_000),
            "imap STARTTLS: {took:?}"
        );
    }
    for (name, port) in [("smtp", base + 25), ("submission", base + 587)] {
        let stream = connect(port);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert!(smtp_reply(&mut reader).starts_with("220"));
        (&stream).write_all(b"EHLO probe.test\r\n").unwrap();
        assert!(smtp_reply(&mut reader).starts_with("250"));
        (&stream).write_all(b"STARTTLS\r\n").unwrap();
        assert!(smtp_reply(&mut reader).starts_with("220"));
        let started = Instant::now();
        let mut stream = stream;
        let took = closed_within(&mut stream, started, name);
        assert!(
            took < Duration::from_millis(3_000),
            "{name} STARTTLS: {took:?}"
        );
    }
}

#[test]
fn a_stranger_trickling_bytes_is_closed_at_the_prelogin_deadline() {
    let data = data_with(&[
        ("imap.prelogin_idle_ms_max", "1000"),
        ("smtp.prelogin_idle_ms_max", "1000"),
    ]);
    let _server = data.serve();
    let base = data.port_base;
    // A byte every 100 ms: the connection is never silent, and never sends a whole command.
    let trickle = |port: u16,
                   first: fn(&mut BufReader<TcpStream>) -> String,
                   bytes: &[u8]|
     -> (String, Duration) {
        let stream = connect(port);
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        reader.get_ref().set_read_timeout(Some(WAIT)).unwrap();
        first(&mut reader);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        for byte in bytes.iter().cycle().take(60) {
            (&stream).write_all(&[*byte]).unwrap();
            let mut text = String::new();
            match reader.read_line(&mut text) {
                Ok(_) if !text.is_empty() => {
                    return (text.trim_end().to_string(), started.elapsed())
                }
                Ok(_) => return (String::new(), started.elapsed()),
                Err(_) => {}
            }
        }
        panic!("port {port}: still open after {:?}", started.elapsed());
    };
    let (bye, took) = trickle(base + 143, |r| line(r).unwrap(), b"a NOOP");
    assert_eq!(
        bye,
        "* BYE no complete command within 1000 ms before login, closing"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(3_000),
        "{took:?}"
    );
    for port in [base + 25, base + 587] {
        let (bye, took) = trickle(port, smtp_reply, b"EHLO x");
        assert_eq!(
            bye,
            "421 4.4.2 no complete command within 1000 ms before AUTH or MAIL; closing the connection"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(3_000),
            "{took:?}"
        );
    }
}

#[test]
fn an_smtp_client_that_never_reads_its_replies_is_closed_and_a_silent_one_may_wait() {
    let data = data_with(&[
        ("imap.prelogin_idle_ms_max", "1000"),
        ("smtp.prelogin_idle_ms_max", "1000"),
    ]);
    let _server = data.serve();
    let base = data.port_base;
    for port in [base + 25, base + 587] {
        // Pipelined EHLOs whose replies are never read: once the socket buffers are full the
        // server's write waits, and gives up at the pre-login deadline (it waited for ever).
        let stream = connect(port);
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let chunk = b"EHLO x\r\n".repeat(4096);
        let started = Instant::now();
        let error = loop {
            if let Err(error) = (&stream).write_all(&chunk) {
                break error;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "port {port}: never closed"
            );
        };
        assert!(
            matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            ),
            "port {port}: {error:?} after {:?} (a write timeout means the server still held it)",
            started.elapsed()
        );
    }
    // Between commands, before AUTH or MAIL, a sender may wait longer than the line deadline
    // (RFC 5321 section 4.5.3.2.7 asks for minutes): the deadline runs from a line's first byte.
    let stream = connect(base + 25);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    reader.get_ref().set_read_timeout(Some(WAIT)).unwrap();
    assert!(smtp_reply(&mut reader).starts_with("220 "));
    std::thread::sleep(Duration::from_millis(2_500));
    (&stream).write_all(b"NOOP\r\n").unwrap();
    assert!(
        smtp_reply(&mut reader).starts_with("250 "),
        "a silent sender was cut"
    );
}

#[test]
fn a_big_literal_before_login_is_refused_without_a_continuation() {
    let data = data_with(&[]);
    let _server = data.serve();
    let stream = connect(data.port_base + 143);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert!(line(&mut reader).unwrap().starts_with("* OK"));
    (&stream).write_all(b"a LOGIN {60000000}\r\n").unwrap();
    assert_eq!(
        line(&mut reader).unwrap(),
        "a NO [TOOBIG] 60000000 bytes is over the limit of 8192 before login"
    );
    (&stream).write_all(b"b NOOP\r\n").unwrap();
    assert_eq!(
        line(&mut reader).unwrap(),
        "b OK completed",
        "the session goes on"
    );
    (&stream).write_all(b"c LOGIN {60000000+}\r\n").unwrap();
    assert_eq!(
        line(&mut reader).unwrap(),
        "* BYE [TOOBIG] a literal of 60000000 bytes is over the limit of 8192 before login"
    );
    assert_eq!(
        line(&mut reader),
        None,
        "closed: the literal was on its way"
    );
}

#[test]
fn every_listener_refuses_politely_past_its_connection_cap() {
    let data = data_with(&[
        ("imap.connections_max", "2"),
        ("smtp.connections_max", "2"),
        ("limits.web_connections_max", "2"),
    ]);
    let _server = data.serve();
    let base = data.port_base;
    // IMAP: two sessions hold the listener; the third is told why and closed.
    let held: Vec<BufReader<TcpStream>> = (0..2)
        .map(|_| {
            let mut reader = BufReader::new(connect(base + 143));
            assert!(line(&mut reader).unwrap().starts_with("* OK"));
            reader
        })
        .collect();
    let mut third = BufReader::new(connect(base + 143));
    assert_eq!(
        line(&mut third).unwrap(),
        "* BYE [UNAVAILABLE] the server has too many connections; try again later"
    );
    assert_eq!(line(&mut third), None);
    // The cap is of connections open: one closes, the next is served.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut next = BufReader::new(connect(base + 143));
        if line(&mut next).unwrap().starts_with("* OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a freed slot was never given again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let held: Vec<BufReader<TcpStream>> = (0..2)
        .map(|_| {
            let mut reader = BufReader::new(connect(base + 25));
            assert!(smtp_reply(&mut reader).starts_with("220"));
            reader
        })
        .collect();
    let mut third = BufReader::new(connect(base + 25));
    assert_eq!(
        smtp_reply(&mut third),
        "421 4.7.0 the server has too many connections; try again later"
    );
    drop(held);

    // HTTPS: two connections that have not even shaken hands hold the listener.
    let held: Vec<TcpStream> = (0..2).map(|_| connect(base + 443)).collect();
    let answer = probe(&["get", &(base + 443).to_string()]);
    assert_eq!(
        answer["status"], "HTTP/1.1 503 Service Unavailable",
        "{answer}"
    );
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .contains("too many connections"),
        "{answer}"
    );
    drop(held);

    // On a TLS port each refusal waits for a handshake to be read; a flood of silent
    // refused clients gets REFUSALS_IN_FLIGHT_MAX (64) of those, and the rest are closed
    // at once instead of each holding a task for the handshake's time.
    let held: Vec<TcpStream> = (0..2).map(|_| connect(base + 993)).collect();
    let waiting: Vec<TcpStream> = (0..64).map(|_| connect(base + 993)).collect();
    let mut extra = connect(base + 993);
    let started = Instant::now();
    let took = closed_within(&mut extra, started, "the 65th refusal");
    assert!(
        took < Duration::from_millis(1_000),
        "closed at once, not after a handshake: {took:?}"
    );
    let mut first_waiting = waiting.into_iter().next().unwrap();
    first_waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(first_waiting.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a refusal within the bound waits for the client's handshake"
    );
    drop(held);
}

#[test]
fn the_web_bounds_a_slow_header_and_an_idle_connection() {
    let data = data_with(&[
        ("limits.http_header_read_ms_max", "1000"),
        ("limits.http_idle_ms_max", "1500"),
    ]);
    let _server = data.serve();
    let port = (data.port_base + 443).to_string();
    let slow = probe(&["slow-header", &port]);
    let closed = slow["closed_after"]
        .as_f64()
        .expect("closed while the header trickled");
    assert!((0.9..3.0).contains(&closed), "{slow}");

    // A body trickled after a whole header: cut once it falls behind the minimum rate after
    // the header's allowance (it was read for as long as the client kept sending).
    let slow = probe(&["slow-body", &port]);
    let closed = slow["closed_after"]
        .as_f64()
        .expect("closed while the body trickled");
    assert!((0.9..3.0).contains(&closed), "{slow}");

    let kept = probe(&["idle-keepalive", &port]);
    assert_eq!(kept["status"], "HTTP/1.1 200 OK", "{kept}");
    let closed = kept["closed_after"]
        .as_f64()
        .expect("an idle keep-alive connection is closed");
    assert!((0.9..3.0).contains(&closed), "{kept}");

    let h2 = probe(&["h2-idle", &port]);
    assert_eq!(h2["speaks_h2"], true, "{h2}");
    let closed = h2["closed_after"]
        .as_f64()
        .expect("an idle HTTP/2 connection is closed");
    assert!((1.4..4.0).contains(&closed), "{h2}");
}

#[test]
fn a_burst_of_logins_past_the_hashing_queue_is_refused_at_once() {
    let data = data_with(&[("limits.password_hash_queue_max", "0")]);
    let _server = data.serve();
    let base = data.port_base;
    let burst = probe(&[
        "hash-burst",
        &(base + 993).to_string(),
        &(base + 465).to_string(),
        "user@limits.test",
        PASSWORD,
        "16",
    ]);
    let results = burst["results"].as_array().unwrap();
    assert_eq!(results.len(), 32, "{burst}");
    let answered = |protocol: &str, prefix: &str| {
        results
            .iter()
            .filter(|r| r["protocol"] == protocol && r["answer"].as_str().unwrap().contains(prefix))
            .count()
    };
    let imap_refused = answered(
        "imap",
        "[UNAVAILABLE] too many logins are being checked right now",
    );
    let smtp_refused = answered(
        "smtp",
        "454 4.7.0 too many logins are being checked right now",
    );
    assert!(
        answered("imap", "OK") + answered("smtp", "235") >= 2,
        "some got through: {burst}"
    );
    assert!(
        imap_refused + smtp_refused >= 1,
        "the queue refused some: {burst}"
    );
    // Nothing but those two answers: no failure was counted, no one waited out a pause.
    for result in results {
        let answer = result["answer"].as_str().unwrap();
        assert!(
            answer == "OK"
                || answer == "235"
                || answer.contains("too many logins are being checked"),
            "{result}"
        );
    }
}
