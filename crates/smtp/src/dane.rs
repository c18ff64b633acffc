//! DANE for outbound SMTP (RFC 7672): TLSA records, looked up through a DNSSEC-validating
//! resolver, decide which certificate a receiving server may present.
//!
//! The validation is the resolver's: a query goes out with the AD bit set, and an answer counts
//! as signed only when the resolver sets AD in its reply. That bit crosses the network
//! unprotected, so it is trusted only from resolvers on this machine (a loopback address, as
//! with Postfix's `smtp_dns_support_level = dnssec` and a local unbound). With any other
//! resolver DANE is off and certificates are checked against the CAs alone.
//!
//! Which records apply: only when the domain's MX answer was signed (or the destination is the
//! configured smarthost) and the host's `_PORT._tcp.HOST` TLSA answer is signed too. Usable
//! records are DANE-EE (3), which pins the server's own certificate or key and ignores its
//! names and dates, and DANE-TA (2), which names a CA in the chain the server sends; the
//! certificate then must chain to it and carry the MX host's name. PKIX-TA and PKIX-EE (0, 1)
//! are unusable for SMTP (RFC 7672, 3.1.3). When a host has usable records and none matches, or
//! its TLSA look-up fails, it has no verified TLS: the message goes to another host or to the
//! portal, never in plaintext.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::hickory_resolver::proto::op::{
    Edns, Message, MessageType, OpCode, Query, ResponseCode,
};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The UDP payload a query asks for (the DNS flag day's size); larger answers come over TCP.
const UDP_PAYLOAD_BYTES_MAX: u16 = 1232;
/// The largest answer read over TCP (the protocol's own limit).
const TCP_ANSWER_BYTES_MAX: usize = 65_535;
/// Datagrams read while waiting for the one answering a query (others are dropped).
const UDP_DATAGRAMS_READ_MAX: usize = 8;
/// TLSA records considered per host; more are ignored.
const TLSA_RECORDS_MAX: usize = 16;

/// An answer from the resolver: the records of the type asked for, whether the resolver
/// vouched for them (AD), and its response code.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) records: Vec<Record>,
    pub(crate) authentic: bool,
    pub(crate) code: ResponseCode,
}

/// Queries to the resolvers whose AD bit is trusted.
#[derive(Debug)]
pub(crate) struct SecureDns {
    servers: Vec<SocketAddr>,
    timeout: Duration,
}

impl SecureDns {
    /// DANE's resolver: `servers` when every one is on this machine, else none (with the
    /// reason, for the log).
    pub(crate) fn for_servers(servers: Vec<SocketAddr>, timeout: Duration) -> Result<Self, String> {
        if servers.is_empty() {
            return Err("no DNS server is configured".into());
        }
        if let Some(remote) = servers.iter().find(|s| !s.ip().is_loopback()) {
            return Err(format!(
                "the DNS server {remote} is not on this machine, and its DNSSEC answers cross the network unsigned"
            ));
        }
        Ok(Self { servers, timeout })
    }

    /// Asks each server in turn until one answers; an answer with an error code is an answer.
    pub(crate) async fn query(&self, name: &str, kind: RecordType) -> Result<Answer, String> {
        let name =
            Name::from_ascii(name).map_err(|e| format!("{name} is not a domain name: {e}"))?;
        let mut last = String::from("no DNS server");
        for server in &self.servers {
            match tokio::time::timeout(self.timeout, self.ask(*server, &name, kind)).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(why)) => last = why,
                Err(_) => last = format!("{kind} look-up timed out"),
            }
        }
        Err(last)
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        kind: RecordType,
    ) -> Result<Answer, String> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        // RFC 6840, 5.7: AD in a query asks the resolver to say whether it validated.
        query.metadata.authentic_data = true;
        query.add_query(Query::query(name.clone(), kind));
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD_BYTES_MAX);
        edns.flags_mut().dnssec_ok = true;
        query.set_edns(edns);
        let bytes = query
            .to_vec()
            .map_err(|e| format!("encoding a {kind} query: {e}"))?;
        let id = query.metadata.id;

        let local: SocketAddr = if server.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(|e| e.to_string())?;
        socket.connect(server).await.map_err(|e| e.to_string())?;
        socket.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buffer = vec![0u8; usize::from(UDP_PAYLOAD_BYTES_MAX)];
        for _ in 0..UDP_DATAGRAMS_READ_MAX {
            let n = socket.recv(&mut buffer).await.map_err(|e| e.to_string())?;
            let Ok(reply) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            if !answers(&reply, id, name, kind) {
                continue;
            }
            if reply.metadata.truncation {
                return self.ask_tcp(server, &bytes, id, name, kind).await;
            }
            return Ok(answer_of(reply, kind));
        }
        Err(format!("no answer to the {kind} query"))
    }

    async fn ask_tcp(
        &self,
        server: SocketAddr,
        query: &[u8],
        id: u16,
        name: &Name,
        kind: RecordType,
    ) -> Result<Answer, String> {
        let mut stream = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let length = u16::try_from(query.len()).map_err(|_| "query too long".to_string())?;
        let mut framed = length.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(|e| e.to_string())?;
        let length = usize::from(stream.read_u16().await.map_err(|e| e.to_string())?);
        let mut buffer = vec![0u8; length.min(TCP_ANSWER_BYTES_MAX)];
        stream
            .read_exact(&mut buffer)
            .await
            .map_err(|e| e.to_string())?;
        let reply = Message::from_vec(&buffer).map_err(|e| format!("a malformed answer: {e}"))?;
        if !answers(&reply, id, name, kind) {
            return Err(format!(
                "an answer to another question than the {kind} query"
            ));
        }
        Ok(answer_of(reply, kind))
    }

    /// The usable TLSA records of `host`'s SMTP service on `port`: `Ok(None)` when DANE does
    /// not apply (no records, none usable, or not signed), an error when the look-up failed
    /// (and the host must not be trusted).
    pub(crate) async fn tlsa(&self, host: &str, port: u16) -> Result<Option<Vec<Tlsa>>, String> {
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        let answer = self.query(&name, RecordType::TLSA).await?;
        match answer.code {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            code => return Err(format!("TLSA look-up for {host} failed: {code}")),
        }
        if !answer.authentic {
            return Ok(None);
        }
        let usable: Vec<Tlsa> = answer
            .records
            .iter()
            .filter_map(|record| match &record.data {
                RData::TLSA(tlsa) => Tlsa::usable(
                    tlsa.cert_usage.into(),
                    tlsa.selector.into(),
                    tlsa.matching.into(),
                    &tlsa.cert_data,
                ),
                _ => None,
            })
            .take(TLSA_RECORDS_MAX)
            .collect();
        Ok((!usable.is_empty()).then_some(usable))
    }
}

/// Whether `reply` is the answer to query `id` for `name` and `kind`.
fn answers(reply: &Message, id: u16, name: &Name, kind: RecordType) -> bool {
    reply.metadata.id == id
        && reply.metadata.message_type == MessageType::Response
        && reply.metadata.op_code == OpCode::Query
        && reply
            .queries
            .first()
            .is_some_and(|q| q.query_type() == kind && q.name() == name)
}

fn answer_of(reply: Message, kind: RecordType) -> Answer {
    Answer {
        authentic: reply.metadata.authentic_data,
        code: reply.metadata.response_code,
        records: reply
            .answers
            .into_iter()
            .filter(|r| r.record_type() == kind)
            .collect(),
    }
}

/// One usable TLSA record (RFC 6698, 2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tlsa {
    usage: Usage,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    selector: u8,
    /// 0: the selected bytes themselves; 1: their SHA-256; 2: their SHA-512.
    matching: u8,
    data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    /// DANE-TA: a CA in the chain the server sends.
    TrustAnchor,
    /// DANE-EE: the server's own certificate.
    EndEntity,
}

impl Tlsa {
    /// The record, if SMTP may use it: usage 2 or 3, known selector and matching type.
    pub(crate) fn usable(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Option<Self> {
        let usage = match usage {
            2 => Usage::TrustAnchor,
            3 => Usage::EndEntity,
            _ => return None,
        };
        let length_ok = match matching {
            0 => !data.is_empty(),
            1 => data.len() == 32,
            2 => data.len() == 64,
            _ => false,
        };
        (selector <= 1 && length_ok).then(|| Self {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        })
    }

    /// "DANE-EE 3 1 1", for delivery records.
    fn describe(&self) -> String {
        let (name, number) = match self.usage {
            Usage::TrustAnchor => ("DANE-TA", 2),
            Usage::EndEntity => ("DANE-EE", 3),
        };
        format!("{name} {number} {} {}", self.selector, self.matching)
    }

    /// Whether the certificate `der` is the one this record names.
    fn matches(&self, der: &[u8]) -> bool {
        let selected = match self.selector {
            0 => der,
            _ => match x509_parser::parse_x509_certificate(der) {
                Ok((_, certificate)) => certificate.tbs_certificate.subject_pki.raw,
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => {
                ring::digest::digest(&ring::digest::SHA256, selected).as_ref()
                    == self.data.as_slice()
            }
            _ => {
                ring::digest::digest(&ring::digest::SHA512, selected).as_ref()
                    == self.data.as_slice()
            }
        }
    }
}

/// Checks a server's certificate against its TLSA records instead of the CAs; remembers which
/// record matched.
#[derive(Debug)]
pub(crate) struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
    matched: Mutex<Option<String>>,
}

impl DaneVerifier {
    pub(crate) fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            records,
            provider,
            matched: Mutex::new(None),
        }
    }

    /// The record that matched in the handshake, described ("DANE-EE 3 1 1").
    pub(crate) fn matched(&self) -> Option<String> {
        self.matched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// DANE-TA: `anchor` (a certificate the server sent) as the only root, the usual chain,
    /// name and date checks otherwise.
    fn chains_to(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(anchor.clone().into_owned()).is_err() {
            return false;
        }
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build() else {
            return false;
        };
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
            .is_ok()
    }
}

/// Why a certificate was refused under DANE. rustls shows it with Debug, so that says the
/// sentence too.
struct NoRecordMatches;

impl std::fmt::Display for NoRecordMatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("it matches none of the host's DNSSEC-signed TLSA records")
    }
}

impl std::fmt::Debug for NoRecordMatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NoRecordMatches {}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        for record in &self.records {
            let matched = match record.usage {
                // Names and dates do not matter: the record pins this very certificate or key.
                Usage::EndEntity => record.matches(end_entity),
                Usage::TrustAnchor => {
                    intermediates
                        .iter()
                        .filter(|c| record.matches(c))
                        .any(|anchor| {
                            self.chains_to(anchor, end_entity, intermediates, server_name, now)
                        })
                }
            };
            if matched {
                *self.matched.lock().unwrap_or_else(|e| e.into_inner()) = Some(record.describe());
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NoRecordMatches))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
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
        cert: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            signature,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    fn certificate(names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn records_outside_smtp_dane_are_unusable() {
        assert!(Tlsa::usable(3, 1, 1, &[0; 32]).is_some());
        assert!(Tlsa::usable(2, 0, 2, &[0; 64]).is_some());
        assert!(
            Tlsa::usable(1, 1, 1, &[0; 32]).is_none(),
            "PKIX-EE is unusable for SMTP"
        );
        assert!(
            Tlsa::usable(0, 0, 1, &[0; 32]).is_none(),
            "PKIX-TA is unusable for SMTP"
        );
        assert!(
            Tlsa::usable(3, 2, 1, &[0; 32]).is_none(),
            "unknown selector"
        );
        assert!(
            Tlsa::usable(3, 1, 3, &[0; 32]).is_none(),
            "unknown matching type"
        );
        assert!(
            Tlsa::usable(3, 1, 1, &[0; 31]).is_none(),
            "a SHA-256 is 32 bytes"
        );
        assert!(Tlsa::usable(3, 0, 0, &[]).is_none());
    }

    #[test]
    fn each_selector_and_matching_type_names_one_certificate() {
        let (cert, key) = certificate(&["mx.example.test"]);
        let (other, _) = certificate(&["mx.example.test"]);
        let der = cert.der().as_ref();
        let spki = key.subject_public_key_info();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        for (selector, selected) in [(0, der.to_vec()), (1, spki.clone())] {
            for (matching, data) in [
                (0, selected.clone()),
                (1, sha256(&selected)),
                (2, sha512(&selected)),
            ] {
                let record = Tlsa::usable(3, selector, matching, &data).unwrap();
                assert!(
                    record.matches(der),
                    "3 {selector} {matching} matches its certificate"
                );
                assert!(
                    !record.matches(other.der()),
                    "3 {selector} {matching} matches another"
                );
            }
        }
    }

    #[test]
    fn dane_ee_ignores_names_and_dane_ta_requires_the_chain_and_the_name() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = UnixTime::now();
        let host = ServerName::try_from("mx.example.test").unwrap();

        // DANE-EE: a self-signed certificate for another name passes when pinned, else fails.
        let (cert, key) = certificate(&["elsewhere.test"]);
        let pin = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        let verifier = DaneVerifier::new(
            vec![Tlsa::usable(3, 1, 1, pin.as_ref()).unwrap()],
            provider.clone(),
        );
        assert!(verifier
            .verify_server_cert(cert.der(), &[], &host, &[], now)
            .is_ok());
        assert_eq!(verifier.matched().as_deref(), Some("DANE-EE 3 1 1"));
        let (stranger, _) = certificate(&["mx.example.test"]);
        let verifier = DaneVerifier::new(
            vec![Tlsa::usable(3, 1, 1, pin.as_ref()).unwrap()],
            provider.clone(),
        );
        assert!(verifier
            .verify_server_cert(stranger.der(), &[], &host, &[], now)
            .is_err());
        assert_eq!(verifier.matched(), None);

        // DANE-TA: a private CA named by its certificate's hash, sent in the chain.
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let wrong_name = rcgen::CertificateParams::new(vec!["other.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let ca_hash = ring::digest::digest(&ring::digest::SHA256, ca.der());
        let record = Tlsa::usable(2, 0, 1, ca_hash.as_ref()).unwrap();
        let chain = [ca.der().clone()];
        let check = |leaf: &CertificateDer<'_>, chain: &[CertificateDer<'_>]| {
            DaneVerifier::new(vec![record.clone()], provider.clone())
                .verify_server_cert(leaf, chain, &host, &[], now)
                .is_ok()
        };
        assert!(check(leaf.der(), &chain), "the leaf chains to the named CA");
        assert!(!check(leaf.der(), &[]), "the CA must be in the chain sent");
        assert!(
            !check(wrong_name.der(), &chain),
            "DANE-TA keeps the name check"
        );
        assert!(
            !check(ca.der(), &[]),
            "the CA alone is no server certificate"
        );
    }

    #[test]
    fn only_resolvers_on_this_machine_are_trusted_to_validate() {
        let timeout = Duration::from_secs(1);
        assert!(SecureDns::for_servers(vec!["127.0.0.1:53".parse().unwrap()], timeout).is_ok());
        assert!(SecureDns::for_servers(vec!["[::1]:53".parse().unwrap()], timeout).is_ok());
        let mixed = vec![
            "127.0.0.1:53".parse().unwrap(),
            "192.0.2.1:53".parse().unwrap(),
        ];
        assert!(SecureDns::for_servers(mixed, timeout)
            .unwrap_err()
            .contains("192.0.2.1:53"));
        assert!(SecureDns::for_servers(vec![], timeout).is_err());
    }
}
