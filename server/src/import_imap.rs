//! `sealpost import imap`: copies an account's mail from another IMAP server over TLS
//! (verified against the CA file given, or the system's): every selectable folder, with
//! flags and internal dates, in batches of `IMPORT_FETCH_BATCH` messages so memory stays
//! bounded. Resumable: a message already in the folder (same Message-ID, size and date) is
//! not copied again, so a run that stopped is simply run again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use sealpost_storage::{Flags, InternalDate, SystemFlag};

/// Messages fetched per command.
pub(crate) const IMPORT_FETCH_BATCH: usize = 200;
/// Longest response line read, in bytes (literals are read apart).
pub(crate) const IMPORT_LINE_BYTES_MAX: usize = 1024 * 1024;
/// Largest message literal taken, in bytes.
pub(crate) const IMPORT_LITERAL_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of messages one command may bring (a batch of large messages is refused whole,
/// rather than held in memory).
pub(crate) const IMPORT_COMMAND_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Untagged responses one command may bring.
pub(crate) const IMPORT_RESPONSES_PER_COMMAND_MAX: usize = 1_000_000;
/// Seconds a read or write may wait.
pub(crate) const IMPORT_TIMEOUT_SECONDS: u64 = 120;

/// One response: its text with each literal replaced by `{N}` and the literals in order.
struct Response {
    text: Vec<u8>,
    literals: Vec<Vec<u8>>,
}

pub(crate) struct Client {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    next_tag: u32,
}

impl Client {
    /// Connects with implicit TLS to `host:port`, verifying the certificate for `host`.
    pub(crate) fn connect(host: &str, port: u16, ca_file: Option<&Path>) -> anyhow::Result<Client> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = match ca_file {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
            }
            None => std::fs::read("/etc/ssl/certs/ca-certificates.crt")
                .context("reading the system's CA bundle")?,
        };
        let mut pinned = Vec::new();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.context("a CA certificate")?;
            pinned.push(cert.as_ref().to_vec());
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .context("the certificate check")?;
        let verifier = Arc::new(Pinned {
            webpki,
            // A file given by hand may hold the server's own self-signed certificate.
            pinned: if ca_file.is_some() {
                pinned
            } else {
                Vec::new()
            },
            provider: provider.clone(),
        });
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .context("the server's name")?;
        let connection = rustls::ClientConnection::new(Arc::new(config), name).context("TLS")?;
        let tcp = TcpStream::connect((host, port))
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let timeout = Some(std::time::Duration::from_secs(IMPORT_TIMEOUT_SECONDS));
        tcp.set_read_timeout(timeout)?;
        tcp.set_write_timeout(timeout)?;
        let mut client = Client {
            stream: BufReader::new(rustls::StreamOwned::new(connection, tcp)),
            next_tag: 1,
        };
        let greeting = client.read_response()?;
        if !greeting.text.starts_with(b"* OK") {
            bail!(
                "the server did not greet: {}",
                String::from_utf8_lossy(&greeting.text)
            );
        }
        Ok(client)
    }

    fn read_line(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.stream)
            .take(IMPORT_LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            bail!("the server closed the connection or sent a line over {IMPORT_LINE_BYTES_MAX} bytes");
        }
        Ok(line)
    }

    /// One whole response: a line, and the literals it announces with the text after them.
    fn read_response(&mut self) -> anyhow::Result<Response> {
        let mut response = Response {
            text: Vec::new(),
            literals: Vec::new(),
        };
        loop {
            let line = self.read_line()?;
            let trimmed = line
                .strip_suffix(b"\r\n")
                .or_else(|| line.strip_suffix(b"\n"))
                .unwrap_or(&line);
            response.text.extend_from_slice(trimmed);
            let Some(size) = literal_size(trimmed) else {
                return Ok(response);
            };
            if size > IMPORT_LITERAL_BYTES_MAX {
                bail!("a message of {size} bytes, over {IMPORT_LITERAL_BYTES_MAX}");
            }
            let mut literal = vec![0u8; size];
            self.stream.read_exact(&mut literal)?;
            response.literals.push(literal);
        }
    }

    /// Sends a command; the untagged responses and the tagged result (an error unless OK).
    fn command(&mut self, command: &str) -> anyhow::Result<Vec<Response>> {
        let tag = format!("i{}", self.next_tag);
        self.next_tag += 1;
        let stream = self.stream.get_mut();
        stream.write_all(format!("{tag} {command}\r\n").as_bytes())?;
        stream.flush()?;
        let mut untagged = Vec::new();
        let mut bytes = 0usize;
        loop {
            let response = self.read_response()?;
            bytes = bytes.saturating_add(response.literals.iter().map(Vec::len).sum::<usize>());
            if bytes > IMPORT_COMMAND_BYTES_MAX
                || untagged.len() >= IMPORT_RESPONSES_PER_COMMAND_MAX
            {
                bail!(
                    "the server's answer to one command is over {IMPORT_COMMAND_BYTES_MAX} bytes or \
                     {IMPORT_RESPONSES_PER_COMMAND_MAX} responses"
                );
            }
            if response.text.starts_with(format!("{tag} ").as_bytes()) {
                let rest = &response.text[tag.len() + 1..];
                if rest.starts_with(b"OK") {
                    return Ok(untagged);
                }
                let verb = command.split_whitespace().next().unwrap_or("");
                bail!("{verb} refused: {}", String::from_utf8_lossy(rest));
            }
            untagged.push(response);
        }
    }

    pub(crate) fn login(&mut self, user: &str, password: &str) -> anyhow::Result<()> {
        self.command(&format!("LOGIN {} {}", quoted(user), quoted(password)))
            .context("logging in")?;
        Ok(())
    }

    /// The selectable folders, with their names in our form (`/` between levels).
    pub(crate) fn folders(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for response in self.command("LIST \"\" \"*\"")? {
            let text = String::from_utf8_lossy(&response.text).into_owned();
            let Some(rest) = text.strip_prefix("* LIST (") else {
                continue;
            };
            let Some((attributes, rest)) = rest.split_once(") ") else {
                continue;
            };
            if attributes.to_ascii_lowercase().contains("\\noselect") {
                continue;
            }
            let (delimiter, name) = match rest.strip_prefix("NIL ") {
                Some(name) => (None, name.to_string()),
                None => {
                    let delimiter = rest.get(1..2).and_then(|d| d.chars().next());
                    (delimiter, rest.get(4..).unwrap_or("").to_string())
                }
            };
            let name = match response.literals.first() {
                Some(literal) if name.starts_with('{') => {
                    String::from_utf8_lossy(literal).into_owned()
                }
                _ => unquote(&name),
            };
            let ours = match delimiter {
                Some(d) if d != '/' => name.replace(d, "/"),
                _ => name.clone(),
            };
            out.push((name, ours));
        }
        Ok(out)
    }

    /// The UIDs of a folder (selected read-only).
    pub(crate) fn uids(&mut self, folder: &str) -> anyhow::Result<Vec<u32>> {
        self.command(&format!("EXAMINE {}", quoted(folder)))?;
        let mut uids = Vec::new();
        for response in self.command("UID SEARCH ALL")? {
            let text = String::from_utf8_lossy(&response.text).into_owned();
            if let Some(list) = text.strip_prefix("* SEARCH") {
                uids.extend(
                    list.split_whitespace()
                        .filter_map(|u| u.parse::<u32>().ok()),
                );
            }
        }
        uids.sort_unstable();
        Ok(uids)
    }

    /// Messages with these UIDs: (bytes, flags, internal date).
    pub(crate) fn fetch(
        &mut self,
        uids: &[u32],
    ) -> anyhow::Result<Vec<(Vec<u8>, Flags, InternalDate)>> {
        let set = uids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut out = Vec::new();
        for response in self.command(&format!(
            "UID FETCH {set} (UID FLAGS INTERNALDATE BODY.PEEK[])"
        ))? {
            let text = String::from_utf8_lossy(&response.text).into_owned();
            if !text.contains(" FETCH (") {
                continue;
            }
            let Some(raw) = response.literals.into_iter().last() else {
                continue;
            };
            let flags = text
                .split_once("FLAGS (")
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(list, _)| parse_flags(list))
                .unwrap_or_default();
            let date = text
                .split_once("INTERNALDATE \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .and_then(|(date, _)| parse_internal_date(date))
                .unwrap_or_else(InternalDate::now);
            out.push((raw, flags, date));
        }
        Ok(out)
    }
}

/// The CA check, and besides it the exact certificates of the file given: a server's own
/// self-signed certificate, which the CA check refuses as a CA used as its own end entity.
#[derive(Debug)]
struct Pinned {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_slice() == end_entity.as_ref()) =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn literal_size(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let inner = text.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn unquote(text: &str) -> String {
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => text.to_string(),
    }
}

fn parse_flags(list: &str) -> Flags {
    let mut flags = Flags::new();
    for flag in list.split_whitespace() {
        let system = match flag.to_ascii_lowercase().as_str() {
            "\\seen" => Some(SystemFlag::Seen),
            "\\answered" => Some(SystemFlag::Answered),
            "\\flagged" => Some(SystemFlag::Flagged),
            "\\deleted" => Some(SystemFlag::Deleted),
            "\\draft" => Some(SystemFlag::Draft),
            _ => None,
        };
        if let Some(system) = system {
            flags = flags.with(system);
        }
    }
    flags
}

/// `17-Jul-1996 02:44:25 -0700`; the day may also be ` 7` (RFC 3501's date-day-fixed) or `7`.
fn parse_internal_date(text: &str) -> Option<InternalDate> {
    let format = time::macros::format_description!(
        "[day]-[month repr:short]-[year] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]"
    );
    let (day, rest) = text.trim().split_once('-')?;
    let day: u8 = day.trim().parse().ok()?;
    let at = time::OffsetDateTime::parse(&format!("{day:02}-{rest}"), &format).ok()?;
    Some(InternalDate {
        unix_seconds: at.unix_timestamp(),
        offset_minutes: at.offset().whole_minutes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parts_read_as_servers_write_them() {
        assert_eq!(literal_size(b"* 1 FETCH (UID 4 BODY[] {123}"), Some(123));
        assert_eq!(literal_size(b"* 1 FETCH (UID 4)"), None);
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(unquote("\"Work/Sub \\\"x\\\"\""), "Work/Sub \"x\"");
        let flags = parse_flags("\\Seen \\Flagged $Label");
        assert!(
            flags.has(SystemFlag::Seen)
                && flags.has(SystemFlag::Flagged)
                && !flags.has(SystemFlag::Draft)
        );
        for text in [
            " 7-Jul-1996 02:44:25 -0700",
            "07-Jul-1996 02:44:25 -0700",
            "7-Jul-1996 02:44:25 -0700",
        ] {
            let date = parse_internal_date(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(
                (date.unix_seconds, date.offset_minutes),
                (836_732_665, -420),
                "{text}"
            );
        }
        assert!(parse_internal_date("yesterday").is_none());
    }
}
