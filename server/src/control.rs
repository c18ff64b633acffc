//! The control socket: how `sealpost` subcommands reach a running server. `serve` listens on
//! `DATA/control.sock` (mode 0600, and only the server's own user or root is answered); a
//! subcommand that finds it running sends its arguments and standard input there, and the
//! server runs the same code the console's pages call, with its live parts (so a disable
//! ends the account's IMAP sessions, a policy is in force at once, a lockout can be lifted).
//! Without a running server the subcommand opens the store itself.
//!
//! Protocol: the client sends one JSON line `{"args": [...], "input": "..."|null, "user":
//! "..."}`; the server answers with frames, each a kind byte (`o` standard output, `e`
//! standard error, `x` exit status), a 4-byte big-endian length and the bytes. The exit frame
//! is last.

use std::io::{BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sealpost_control::{read_frame, read_request, request_line, write_frame, Frame, Request};
use tracing::{info, warn};

use crate::cli::Run;
use crate::config::Loaded;

/// The socket's name in the data folder.
pub(crate) const SOCKET_NAME: &str = "control.sock";
/// Control connections served at once; more are told to try again.
pub(crate) const CONTROL_CONNECTIONS_MAX: usize = 4;
/// Largest standard input a subcommand takes (a policy, a password), in bytes.
pub(crate) const CONTROL_INPUT_BYTES_MAX: u64 = 1024 * 1024;
/// How long the server waits for a request line, in ms.
pub(crate) const CONTROL_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Largest frame the server writes, in bytes (a longer output is cut into several).
const FRAME_CHUNK_BYTES: usize = 1024 * 1024;
/// How long one frame may wait for the client to read, in ms.
pub(crate) const CONTROL_WRITE_TIMEOUT_MS: u64 = 60_000;

pub(crate) fn socket_path(data: &Path) -> PathBuf {
    data.join(SOCKET_NAME)
}

/// What the server lends the subcommands it runs.
pub(crate) struct ServerSide {
    pub(crate) loaded: Loaded,
    pub(crate) console: sealpost_console::Console,
    pub(crate) health: sealpost_console::HealthInfo,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) certs: Arc<crate::acme::Certificates>,
}

/// Removes the socket when the server stops.
pub(crate) struct Listening {
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `DATA/control.sock` in a thread of its own.
pub(crate) fn listen(data: &Path, side: ServerSide) -> anyhow::Result<Listening> {
    let path = socket_path(data);
    // A socket left by a server that did not stop cleanly; the store's lock, taken before
    // this, shows no other server runs here.
    if path.exists() {
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    info!(path = %path.display(), "control socket listening");
    let side = Arc::new(side);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                if active.fetch_add(1, Ordering::SeqCst) >= CONTROL_CONNECTIONS_MAX {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = frame(
                        &mut stream,
                        b'e',
                        b"sealpost: the server is busy with other commands; try again\n",
                    );
                    let _ = frame(&mut stream, b'x', &[75]);
                    continue;
                }
                let (side, active) = (side.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("control-command".into())
                    .spawn(move || {
                        if let Err(error) = answer(&side, stream) {
                            warn!(%error, "control connection");
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    warn!("control: no thread for a command");
                }
            }
        })
        .context("starting the control thread")?;
    Ok(Listening { path })
}

fn frame(stream: &mut UnixStream, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
    write_frame(stream, kind, bytes)
}

/// Standard output or error of a command run in the server, sent as frames.
struct Frames {
    stream: UnixStream,
    kind: u8,
}

impl Write for Frames {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let chunk = &bytes[..bytes.len().min(FRAME_CHUNK_BYTES)];
        frame(&mut self.stream, self.kind, chunk)?;
        Ok(chunk.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let credentials = rustix::net::sockopt::socket_peercred(stream)?;
    Ok(credentials.uid.as_raw())
}

fn answer(side: &ServerSide, mut stream: UnixStream) -> anyhow::Result<()> {
    let uid = peer_uid(&stream)?;
    let own = rustix::process::geteuid().as_raw();
    if uid != own && uid != 0 {
        frame(
            &mut stream,
            b'e',
            b"sealpost: only the server's own user or root may use its control socket\n",
        )?;
        frame(&mut stream, b'x', &[77])?;
        return Ok(());
    }
    stream.set_read_timeout(Some(Duration::from_millis(CONTROL_REQUEST_TIMEOUT_MS)))?;
    // A client that stops reading frees its slot instead of holding it for ever.
    stream.set_write_timeout(Some(Duration::from_millis(CONTROL_WRITE_TIMEOUT_MS)))?;
    let request: Request = match read_request(&stream)? {
        Some(request) => request,
        None => {
            frame(
                &mut stream,
                b'e',
                b"sealpost: the control request did not read\n",
            )?;
            frame(&mut stream, b'x', &[64])?;
            return Ok(());
        }
    };
    let parsed =
        crate::Args::try_parse_from(std::iter::once("sealpost".to_string()).chain(request.args));
    let command = match parsed.map(|args| args.command) {
        Ok(crate::Command::Admin(command)) => command,
        Ok(_) => {
            frame(
                &mut stream,
                b'e',
                b"sealpost: that command runs only with the server stopped (stop `sealpost serve` first)\n",
            )?;
            frame(&mut stream, b'x', &[1])?;
            return Ok(());
        }
        Err(error) => {
            frame(&mut stream, b'e', error.to_string().as_bytes())?;
            frame(&mut stream, b'x', &[2])?;
            return Ok(());
        }
    };
    // The actor is who the kernel says is calling; the name the client sends is only noted.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = sealpost_control::user_of_uid(&passwd, uid);
    let claimed = sealpost_control::actor_user(&request.user);
    let actor = sealpost_storage::Actor {
        name: format!("cli:{user}"),
        peer: format!("control socket, uid {uid}, says {claimed}"),
    };
    let mut out = std::io::BufWriter::with_capacity(
        64 * 1024,
        Frames {
            stream: stream.try_clone()?,
            kind: b'o',
        },
    );
    let mut err = Frames {
        stream: stream.try_clone()?,
        kind: b'e',
    };
    let result = crate::cli::execute(
        command,
        &mut Run {
            loaded: &side.loaded,
            console: &side.console,
            health: Some(&side.health),
            runtime: Some(&side.runtime),
            certs: Some(&side.certs),
            input: request.input,
            via_server: true,
            actor,
            out: &mut out,
            err: &mut err,
        },
    );
    out.flush()?;
    drop(out);
    let code = match result {
        Ok(code) => code,
        Err(error) => {
            frame(
                &mut stream,
                b'e',
                format!("sealpost: {error:#}\n").as_bytes(),
            )?;
            1
        }
    };
    frame(&mut stream, b'x', &[code])?;
    Ok(())
}

/// The running server's control socket, if one answers.
pub(crate) fn connect(data: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data)).ok()
}

/// Runs this process's subcommand in the server: sends the arguments and `input`, writes what
/// comes back to standard output (or `output`) and standard error, and exits as it did.
pub(crate) fn forward(
    mut stream: UnixStream,
    input: Option<String>,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    send(&mut stream, std::env::args().skip(1).collect(), input)?;
    let partial = output.map(crate::files::part_path);
    let mut out: Box<dyn Write> = match &partial {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let result = relay(stream, &mut out);
    drop(out);
    if let (Some(partial), Some(output)) = (&partial, output) {
        match &result {
            Ok(code) if *code == 0 => std::fs::rename(partial, output)
                .with_context(|| format!("renaming into {}", output.display()))?,
            _ => {
                let _ = std::fs::remove_file(partial);
            }
        }
    }
    result.map(ExitCode::from)
}

fn send(stream: &mut UnixStream, args: Vec<String>, input: Option<String>) -> anyhow::Result<()> {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_string());
    let request = Request { args, input, user };
    let line = request_line(&request).context("writing the control request")?;
    stream
        .write_all(&line)
        .context("sending the command to the server")
}

/// Runs `args` (a console command) in the running server and returns its exit status and
/// standard output (its standard error goes to this process's).
pub(crate) fn run_in_server(data: &Path, args: &[&str]) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut stream = connect(data).context("the server is not running")?;
    send(
        &mut stream,
        args.iter().map(|a| a.to_string()).collect(),
        None,
    )?;
    let mut out = Vec::new();
    let code = relay(stream, &mut out)?;
    Ok((code, out))
}

/// Copies the server's frames out until the exit frame; returns the exit status.
fn relay(stream: UnixStream, out: &mut dyn Write) -> anyhow::Result<u8> {
    let mut reader = BufReader::new(stream);
    loop {
        match read_frame(&mut reader)? {
            Frame::Out(bytes) => out.write_all(&bytes)?,
            Frame::Err(bytes) => std::io::stderr().write_all(&bytes)?,
            Frame::Exit(code) => {
                out.flush()?;
                return Ok(code);
            }
        }
    }
}
